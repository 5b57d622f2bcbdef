import Foundation

/// Learns byte-level BPE merges from text, streaming.
///
/// Text is fed in pieces of any size (`add`); only the counts of distinct pre-tokens are kept,
/// and when they exceed `maxDistinctWords`, the rarest are dropped, so memory is bounded by that
/// limit and the vocabulary, never by the corpus. Merges are then learned greedily: the most
/// frequent adjacent pair (ties: the smaller ids) becomes the next token, with pair counts
/// updated incrementally and a heap to find the best pair.
public struct BPETrainer {
    public let vocabularySize: Int
    public let maxDistinctWords: Int
    public private(set) var bytesSeen = 0
    private var counts: [[UInt8]: Int] = [:]
    private var carry: [UInt8] = []  // an unfinished line from the previous `add`
    private var pruneFloor = 1

    public init(vocabularySize: Int, maxDistinctWords: Int = 2_000_000) throws {
        guard vocabularySize >= 257 else {
            throw TokenizerError.badTraining("vocabulary size must be at least 257 (256 bytes + <|endoftext|>), got \(vocabularySize)")
        }
        self.vocabularySize = vocabularySize
        self.maxDistinctWords = maxDistinctWords
    }

    /// Feeds text; pieces may split anywhere (an unfinished last line is kept for the next call).
    public mutating func add(_ bytes: [UInt8]) {
        bytesSeen += bytes.count
        var buffer = carry
        buffer.append(contentsOf: bytes)
        guard let lastNewline = buffer.lastIndex(of: 0x0A) else {
            carry = buffer
            if carry.count > 1 << 20 { flush() }
            return
        }
        carry = Array(buffer[(lastNewline + 1)...])
        count(buffer, upTo: lastNewline + 1)
    }

    /// Ends a document: the carried partial line is counted.
    public mutating func endDocument() { flush() }

    private mutating func flush() {
        let rest = carry
        carry = []
        count(rest, upTo: rest.count)
    }

    private mutating func count(_ buffer: [UInt8], upTo end: Int) {
        buffer.withUnsafeBufferPointer { b in
            PreTokenizer.split(b, 0..<end) { piece in counts[Array(b[piece]), default: 0] += 1 }
        }
        if counts.count > maxDistinctWords { prune() }
    }

    private mutating func prune() {
        while counts.count > maxDistinctWords * 3 / 4 {
            counts = counts.filter { $0.value > pruneFloor }
            pruneFloor += 1
        }
    }

    /// Learns the merges; the last id is `<|endoftext|>`.
    public mutating func train() throws -> Tokenizer {
        flush()
        var words: [[Int32]] = []
        var frequency: [Int] = []
        for (w, c) in counts.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) where w.count > 1 {
            words.append(w.map { Int32($0) })
            frequency.append(c)
        }
        var model = BPEModel()
        var pairCount: [UInt64: Int] = [:]
        var pairWords: [UInt64: Set<Int32>] = [:]
        for (wi, w) in words.enumerated() {
            for i in 0..<(w.count - 1) {
                let k = BPEModel.key(w[i], w[i + 1])
                pairCount[k, default: 0] += frequency[wi]
                pairWords[k, default: []].insert(Int32(wi))
            }
        }
        var heap = PairHeap()
        for (k, c) in pairCount { heap.push(c, k) }
        let target = vocabularySize - 1  // room for <|endoftext|>
        while model.count < target, let (c, k) = heap.pop() {
            guard pairCount[k] == c, c > 0 else { continue }  // stale entry
            let left = Int32(truncatingIfNeeded: k >> 32), right = Int32(truncatingIfNeeded: k & 0xFFFF_FFFF)
            let merged = model.addMerge(left, right)
            var touched = Set<UInt64>()
            for wi in pairWords[k] ?? [] {
                let w = words[Int(wi)], f = frequency[Int(wi)]
                // Remove this word's old pairs, merge, add its new pairs.
                for i in 0..<(w.count - 1) {
                    let p = BPEModel.key(w[i], w[i + 1])
                    pairCount[p, default: 0] -= f
                    touched.insert(p)
                }
                var out: [Int32] = []
                out.reserveCapacity(w.count)
                var i = 0
                while i < w.count {
                    if i + 1 < w.count, w[i] == left, w[i + 1] == right {
                        out.append(merged)
                        i += 2
                    } else {
                        out.append(w[i])
                        i += 1
                    }
                }
                words[Int(wi)] = out
                if out.count > 1 {
                    for i in 0..<(out.count - 1) {
                        let p = BPEModel.key(out[i], out[i + 1])
                        pairCount[p, default: 0] += f
                        pairWords[p, default: []].insert(wi)
                        touched.insert(p)
                    }
                }
            }
            pairCount[k] = 0
            pairWords[k] = nil
            for p in touched where p != k {
                let c = pairCount[p] ?? 0
                if c > 0 { heap.push(c, p) } else { pairCount[p] = nil }
            }
        }
        let eot = model.addToken(Array(Tokenizer.endOfText.utf8))
        return Tokenizer(model: model, specialTokens: [Tokenizer.endOfText: eot])
    }
}

/// A max-heap of (count, pair); ties go to the smaller pair key, so training is deterministic.
struct PairHeap {
    private var items: [(Int, UInt64)] = []

    @inline(__always) private func above(_ a: (Int, UInt64), _ b: (Int, UInt64)) -> Bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    }

    mutating func push(_ count: Int, _ key: UInt64) {
        items.append((count, key))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if !above(items[i], items[parent]) { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (Int, UInt64)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count, above(items[l], items[best]) { best = l }
                if r < items.count, above(items[r], items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}
