import Foundation

/// Reads and writes Hugging Face `tokenizer.json` for byte-level BPE (ByteLevel pre-tokenizer
/// and decoder, BPE model with string merges, special tokens as added tokens).
public enum TokenizerFile {
    public static func write(_ t: Tokenizer, to path: String) throws {
        var vocab: [String: Int] = [:]
        for (id, bytes) in t.model.tokens.enumerated() where !t.specialTokens.values.contains(Int32(id)) {
            vocab[ByteLevelAlphabet.encode(bytes)] = id
        }
        let merges = t.model.merges.map {
            ByteLevelAlphabet.encode(t.model.tokens[Int($0.left)]) + " " + ByteLevelAlphabet.encode(t.model.tokens[Int($0.right)])
        }
        let added: [[String: Any]] = t.specialTokens.sorted { $0.value < $1.value }.map {
            ["id": Int($0.value), "content": $0.key, "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true]
        }
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        let json: [String: Any] = [
            "version": "1.0",
            "truncation": NSNull(),
            "padding": NSNull(),
            "added_tokens": added,
            "normalizer": NSNull(),
            "pre_tokenizer": byteLevel,
            "post_processor": byteLevel,
            "decoder": byteLevel,
            "model": [
                "type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            ] as [String: Any],
        ]
        let data = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
        let tmp = path + ".tmp-\(getpid())"
        try data.write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw TokenizerError.badFile(path: path, reason: "cannot rename into place") }
    }

    public static func load(path: String) throws -> Tokenizer {
        func bad(_ why: String) -> TokenizerError { .badFile(path: path, reason: why) }
        guard let data = FileManager.default.contents(atPath: path) else { throw bad("cannot read the file") }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw bad("not a JSON object") }
        guard let model = json["model"] as? [String: Any], model["type"] as? String == "BPE" else {
            throw bad("model.type must be BPE")
        }
        guard let pre = json["pre_tokenizer"] as? [String: Any], pre["type"] as? String == "ByteLevel" else {
            throw bad("pre_tokenizer must be ByteLevel")
        }
        if pre["add_prefix_space"] as? Bool == true { throw bad("add_prefix_space = true is not supported") }
        guard let vocab = model["vocab"] as? [String: Int] else { throw bad("model.vocab missing") }
        guard let mergeList = model["merges"] as? [Any] else { throw bad("model.merges missing") }
        var idOf: [String: Int32] = [:]
        for (token, id) in vocab { idOf[token] = Int32(id) }
        var bpe = BPEModel()
        // The 256 byte tokens must sit at ids 0...255 (FedLM's layout).
        for b in 0..<256 {
            guard idOf[String(ByteLevelAlphabet.characters[b])] == Int32(b) else {
                throw bad("byte \(b) is not token \(b); only FedLM's id layout is supported")
            }
        }
        for (index, entry) in mergeList.enumerated() {
            let pair: [String]
            if let s = entry as? String {
                pair = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            } else if let a = entry as? [String] {
                pair = a
            } else {
                throw bad("merge \(index) is neither \"a b\" nor [a, b]")
            }
            guard pair.count == 2, let l = idOf[pair[0]], let r = idOf[pair[1]], let m = idOf[pair[0] + pair[1]] else {
                throw bad("merge \(index) names tokens not in the vocabulary")
            }
            let id = bpe.addMerge(l, r)
            guard id == m else { throw bad("merge \(index) produces id \(m), expected \(id) (merges must be in id order)") }
        }
        var specials: [String: Int32] = [:]
        for case let t as [String: Any] in (json["added_tokens"] as? [Any]) ?? [] {
            guard let content = t["content"] as? String, let id = t["id"] as? Int else { throw bad("malformed added token") }
            guard id == bpe.count else { throw bad("added token \(content) has id \(id), expected \(bpe.count)") }
            _ = bpe.addToken(Array(content.utf8))
            specials[content] = Int32(id)
        }
        guard bpe.count == vocab.count + specials.count else {
            throw bad("vocabulary has \(vocab.count) entries but merges and bytes define \(bpe.count - specials.count)")
        }
        return Tokenizer(model: bpe, specialTokens: specials)
    }
}
