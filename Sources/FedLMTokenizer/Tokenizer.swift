import FedLMTensor
import Foundation

/// A GPT-2-style byte-level BPE tokenizer: pre-tokenization, BPE, and special tokens.
///
/// Encoding then decoding returns the input bytes exactly, valid UTF-8 or not. Saved as a
/// Hugging Face `tokenizer.json`, which the Python `tokenizers` library loads and encodes with
/// the same ids.
public final class Tokenizer: Sendable {
    public static let endOfText = "<|endoftext|>"

    public let model: BPEModel
    /// Special tokens (matched literally in text before pre-tokenization) -> id.
    public let specialTokens: [String: Int32]
    private let specialBytes: [(bytes: [UInt8], id: Int32)]

    public init(model: BPEModel, specialTokens: [String: Int32]) {
        self.model = model
        self.specialTokens = specialTokens
        self.specialBytes = specialTokens.map { (Array($0.key.utf8), $0.value) }.sorted { $0.bytes.count > $1.bytes.count }
    }

    public var vocabularySize: Int { model.count }
    public var endOfTextID: Int32? { specialTokens[Self.endOfText] }

    /// Token ids of `bytes`.
    public func encode(_ bytes: [UInt8]) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(bytes.count / 3)
        var cache = WordCache()
        bytes.withUnsafeBufferPointer { encode($0, 0..<$0.count, into: &out, cache: &cache) }
        return out
    }

    public func encode(_ text: String) -> [Int32] { encode(Array(text.utf8)) }

    /// Encodes `bytes[range]`, appending to `out`; `cache` remembers words already encoded.
    public func encode(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into out: inout [Int32],
                       cache: inout WordCache) {
        var start = range.lowerBound
        // Special tokens split the text first, as in Hugging Face tokenizers.
        if !specialBytes.isEmpty {
            var i = start
            while i < range.upperBound {
                if bytes[i] == UInt8(ascii: "<"), let (length, id) = special(at: i, bytes, range.upperBound) {
                    encodeOrdinary(bytes, start..<i, into: &out, cache: &cache)
                    out.append(id)
                    i += length
                    start = i
                } else {
                    i += 1
                }
            }
        }
        encodeOrdinary(bytes, start..<range.upperBound, into: &out, cache: &cache)
    }

    private func special(at i: Int, _ bytes: UnsafeBufferPointer<UInt8>, _ end: Int) -> (Int, Int32)? {
        for s in specialBytes where i + s.bytes.count <= end {
            var match = true
            for k in 0..<s.bytes.count where bytes[i + k] != s.bytes[k] {
                match = false
                break
            }
            if match { return (s.bytes.count, s.id) }
        }
        return nil
    }

    private func encodeOrdinary(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into out: inout [Int32],
                                cache: inout WordCache) {
        PreTokenizer.split(bytes, range) { piece in
            let word = UnsafeBufferPointer(rebasing: bytes[piece])
            if word.count == 1 {
                out.append(Int32(word[0]))
            } else if let ids = cache.lookup(word) {
                out.append(contentsOf: ids)
            } else {
                let first = out.count
                model.encodeWord(word, into: &out)
                cache.store(word, Array(out[first...]))
            }
        }
    }

    /// The bytes of a token sequence (invalid ids are an error, not silently dropped).
    public func decode(_ ids: [Int32]) throws -> [UInt8] {
        var out: [UInt8] = []
        for id in ids {
            guard id >= 0, Int(id) < model.count else { throw TokenizerError.unknownID(id) }
            out.append(contentsOf: model.tokens[Int(id)])
        }
        return out
    }

    /// Encodes a large buffer on several threads, with ids identical to a single-threaded
    /// encoding. The text is cut only after a lone newline (an ASCII non-space before it, a
    /// non-space after it): that newline is a piece of its own however the text around it is
    /// cut, and a new piece starts right after it. (After a longer whitespace run, the end of a
    /// part would keep the run whole where the full text splits off its last character.)
    public func encodeParallel(_ bytes: [UInt8], threads: Int = ProcessInfo.processInfo.activeProcessorCount) -> [Int32] {
        let n = bytes.count
        if threads <= 1 || n < 1 << 16 { return encode(bytes) }
        var cuts = [0]
        for t in 1..<threads {
            var p = n * t / threads
            while p < n, !(p >= 2 && bytes[p - 1] == 0x0A && !isSpaceOrSpecialStart(bytes[p - 2])
                             && !isSpaceOrSpecialStart(bytes[p])) { p += 1 }
            if p > cuts.last! && p < n { cuts.append(p) }
        }
        cuts.append(n)
        let bounds = cuts
        var results = [[Int32]](repeating: [], count: bounds.count - 1)
        results.withUnsafeMutableBufferPointer { results in
            bytes.withUnsafeBufferPointer { b in
                parallel(parts: bounds.count - 1) { part in
                    let cuts = bounds
                    var out: [Int32] = []
                    out.reserveCapacity((cuts[part + 1] - cuts[part]) / 3)
                    var cache = WordCache()
                    encode(b, cuts[part]..<cuts[part + 1], into: &out, cache: &cache)
                    results[part] = out
                }
            }
        }
        return results.flatMap { $0 }
    }

    /// Whitespace, `<` (a special token may start there), or a non-ASCII byte (which could be
    /// part of Unicode whitespace).
    private func isSpaceOrSpecialStart(_ b: UInt8) -> Bool {
        b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0B || b == 0x0C || b == 0x0D || b == UInt8(ascii: "<") || b >= 0x80
    }
}

public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case unknownID(Int32)
    case badFile(path: String, reason: String)
    case badTraining(String)

    public var description: String {
        switch self {
        case .unknownID(let id): return "token id \(id) is not in the vocabulary"
        case .badFile(let path, let reason): return "\(path): not a FedLM-compatible tokenizer.json: \(reason)"
        case .badTraining(let why): return "tokenizer training: \(why)"
        }
    }
}

/// Remembers the ids of words already encoded (most words repeat), bounded in size.
public struct WordCache {
    private var table: [Int: [(word: [UInt8], ids: [Int32])]] = [:]
    private var entries = 0
    public static let capacity = 200_000

    public init() {}

    @inline(__always)
    mutating func lookup(_ word: UnsafeBufferPointer<UInt8>) -> [Int32]? {
        guard let bucket = table[Self.hash(word)] else { return nil }
        for e in bucket where e.word.count == word.count && e.word.elementsEqual(word) { return e.ids }
        return nil
    }

    @inline(__always)
    mutating func store(_ word: UnsafeBufferPointer<UInt8>, _ ids: [Int32]) {
        if entries >= Self.capacity {
            table.removeAll(keepingCapacity: true)
            entries = 0
        }
        table[Self.hash(word), default: []].append((Array(word), ids))
        entries += 1
    }

    @inline(__always)
    static func hash(_ word: UnsafeBufferPointer<UInt8>) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for b in word {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return Int(truncatingIfNeeded: h)
    }
}
