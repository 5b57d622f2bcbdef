import FedLMTestSupport
import FedLMTensor
import FedLMTokenizer
import Foundation
import XCTest

final class TokenizerTests: XCTestCase {
    /// A varied alphabet: several scripts, emoji with joiners and modifiers, digits in several
    /// systems, Unicode spaces, apostrophes, code punctuation.
    static let alphabet: [String] = [
        "a", "b", "e", "t", "s", "Z", "Q", "é", "ß", "ø", "ж", "Я", "λ", "Ω", "東", "京", "タ", "ワ", "한", "국", "ع", "ש", "अ",
        "0", "1", "7", "٣", "½", "Ⅻ", " ", " ", " ", "  ", "\n", "\n\n", "\t", "\u{00A0}", "\u{2003}", "\u{3000}", "\r\n",
        "'", "'s", "'ll", "'re", "'t", "'S", ",", ".", "!", "?", "(", ")", "{", "}", "_", "#", "<", ">", "=", "-",
        "👍", "🏽", "👨‍👩‍👧", "🇩🇪", "\u{200D}", "\u{85}", "\u{1C}", "<|endoftext|>",
    ]

    static func randomText(_ rng: inout SeededGenerator, pieces: Int) -> [UInt8] {
        var s: [UInt8] = []
        for _ in 0..<pieces { s += Array(alphabet[Int(rng.next() % UInt64(alphabet.count))].utf8) }
        return s
    }

    static func corpus() -> [UInt8] {
        var rng = SeededGenerator(seed: 1)
        var text: [UInt8] = []
        let words = ["the ", "federated ", "model ", "learns ", "Überall ", "東京 ", "don't ", "it's ", "  ", "\n", "1234 ",
                     "x = f(y) ", "👍🏽 "]
        for _ in 0..<20_000 { text += Array(words[Int(rng.next() % UInt64(words.count))].utf8) }
        for _ in 0..<200 { text += randomText(&rng, pieces: 20) }
        return text
    }

    static func trained(vocabulary: Int = 600) throws -> Tokenizer {
        var trainer = try BPETrainer(vocabularySize: vocabulary)
        let text = corpus()
        // Feed in uneven pieces: the trainer must not depend on how the stream is cut.
        var i = 0
        while i < text.count {
            let n = min(text.count - i, 777)
            trainer.add(Array(text[i..<(i + n)]))
            i += n
        }
        trainer.endDocument()
        return try trainer.train()
    }

    func testEncodeThenDecodeReturnsAnyBytesIncludingInvalidUTF8() throws {
        let t = try Self.trained()
        var rng = SeededGenerator(seed: 2)
        for round in 0..<300 {
            var bytes = Self.randomText(&rng, pieces: 30)
            // Sprinkle raw bytes: lone continuation bytes, truncated sequences, 0xFF, NUL.
            for _ in 0..<(round % 6) {
                let at = Int(rng.next() % UInt64(bytes.count + 1))
                bytes.insert([0x80, 0xBF, 0xC3, 0xE2, 0x82, 0xF0, 0xFF, 0x00][Int(rng.next() % 8)], at: at)
            }
            let ids = t.encode(bytes)
            XCTAssertEqual(try t.decode(ids), bytes, "round \(round)")
            XCTAssertTrue(ids.allSatisfy { $0 >= 0 && Int($0) < t.vocabularySize })
        }
        XCTAssertThrowsError(try t.decode([Int32(t.vocabularySize)]))
    }

    func testPreTokenizationFollowsGPT2sPattern() {
        func pieces(_ s: String) -> [String] { PreTokenizer.pieces(Array(s.utf8)).map { String(decoding: $0, as: UTF8.self) } }
        XCTAssertEqual(pieces("Hello world"), ["Hello", " world"])
        XCTAssertEqual(pieces("it's they'll"), ["it", "'s", " they", "'ll"])
        XCTAssertEqual(pieces("a  b"), ["a", " ", " b"])
        XCTAssertEqual(pieces("x\n\ny"), ["x", "\n", "\n", "y"])  // \s+(?!\S) leaves the last newline
        XCTAssertEqual(pieces("end   "), ["end", "   "])
        XCTAssertEqual(pieces("abc123!?"), ["abc", "123", "!?"])
        XCTAssertEqual(pieces(" 42 ?!"), [" 42", " ?!"])
        XCTAssertEqual(PreTokenizer.pieces([0x61, 0xFF, 0xFE, 0x62]), [[0x61], [0xFF, 0xFE], [0x62]])
    }

    func testParallelEncodingEqualsSingleThreaded() throws {
        let t = try Self.trained()
        var rng = SeededGenerator(seed: 3)
        var text: [UInt8] = []
        for _ in 0..<4000 { text += Self.randomText(&rng, pieces: 12) + [0x0A] }
        XCTAssertGreaterThan(text.count, 1 << 16)
        let parallel = t.encodeParallel(text, threads: 4), single = t.encode(text)
        if let i = (0..<min(parallel.count, single.count)).first(where: { parallel[$0] != single[$0] }) ?? (parallel.count != single.count ? min(parallel.count, single.count) : nil) {
            let context = try t.decode(Array(single[max(0, i - 5)..<min(single.count, i + 5)]))
            XCTFail("parallel encoding differs at token \(i) of \(single.count): \(String(decoding: context, as: UTF8.self).debugDescription)")
        }
    }

    func testTrainingIsDeterministicAndHitsTheVocabularySize() throws {
        let a = try Self.trained(), b = try Self.trained()
        XCTAssertEqual(a.vocabularySize, 600)
        XCTAssertEqual(a.model.tokens, b.model.tokens)
        XCTAssertEqual(a.endOfTextID, 599)
        // Frequent words become single tokens.
        XCTAssertEqual(a.encode(" federated").count, 1)
    }

    func testBoundedMemoryTrainingStillLearnsFrequentWords() throws {
        var trainer = try BPETrainer(vocabularySize: 400, maxDistinctWords: 300)
        trainer.add(Self.corpus())
        trainer.endDocument()
        let t = try trainer.train()
        XCTAssertEqual(t.vocabularySize, 400)
        XCTAssertLessThanOrEqual(t.encode(" federated").count, 2)
    }

    func testBadVocabularySizeAndBadFilesAreRefused() throws {
        XCTAssertThrowsError(try BPETrainer(vocabularySize: 100)) { XCTAssertTrue("\($0)".contains("at least 257")) }
        let path = NSTemporaryDirectory() + "bad-tokenizer-\(getpid()).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try #"{"model": {"type": "WordPiece"}}"#.write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try TokenizerFile.load(path: path)) { XCTAssertTrue("\($0)".contains("BPE")) }
        try "not json".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try TokenizerFile.load(path: path)) { XCTAssertTrue("\($0)".contains(path)) }
    }

    func testSavedTokenizerReloadsIdentically() throws {
        let t = try Self.trained()
        let path = NSTemporaryDirectory() + "tokenizer-\(getpid()).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try TokenizerFile.write(t, to: path)
        let u = try TokenizerFile.load(path: path)
        XCTAssertEqual(u.model.tokens, t.model.tokens)
        XCTAssertEqual(u.specialTokens, t.specialTokens)
    }

    /// Hugging Face `tokenizers` loads the tokenizer.json and gives the same ids on hundreds of
    /// varied samples (invalid UTF-8 is compared after U+FFFD replacement, which is all a Python
    /// string can hold; the raw bytes themselves round-trip, tested above).
    func testHuggingFaceTokenizersProducesTheSameIds() throws {
        _ = try ReferencePython.interpreter()
        let t = try Self.trained()
        let dir = ReferencePython.temporaryDirectory("tok")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try TokenizerFile.write(t, to: dir + "/tokenizer.json")
        var rng = SeededGenerator(seed: 4)
        var samples: [[UInt8]] = []
        for i in 0..<500 {
            var s = Self.randomText(&rng, pieces: 1 + i % 40)
            if i % 10 == 0 { s.insert(0xFF, at: Int(rng.next() % UInt64(s.count + 1))) }
            samples.append(s)
        }
        let hex = samples.map { $0.map { String(format: "%02x", $0) }.joined() }
        try JSONSerialization.data(withJSONObject: hex).write(to: URL(fileURLWithPath: dir + "/samples.json"))
        print(try ReferencePython.run("tokenizer_reference.py", ["--tokenizer", dir + "/tokenizer.json",
                                                                "--samples", dir + "/samples.json", "--out", dir + "/ids.json"]))
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/ids.json"))) as! [[Int]]
        var mismatches = 0
        for (i, s) in samples.enumerated() {
            let replaced = Array(String(decoding: s, as: UTF8.self).utf8)  // U+FFFD for invalid bytes
            let ours = t.encode(replaced).map(Int.init)
            if ours != reference[i] {
                mismatches += 1
                if mismatches <= 3 { XCTFail("sample \(i) \(String(decoding: s, as: UTF8.self).debugDescription): ours \(ours), tokenizers \(reference[i])") }
            }
        }
        XCTAssertEqual(mismatches, 0, "samples whose ids differ from Hugging Face tokenizers")
    }
}
