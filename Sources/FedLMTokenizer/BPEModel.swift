/// Byte-level BPE: a vocabulary of byte sequences and an ordered list of merges.
///
/// Token ids 0...255 are the single bytes (id = byte value); each merge adds one token made of
/// two existing ones. A word is encoded by starting from its bytes and repeatedly merging the
/// adjacent pair whose merge ranks first, as GPT-2 does.
public struct BPEModel: Sendable {
    /// The bytes of every token, by id.
    public private(set) var tokens: [[UInt8]]
    /// Merges in rank order: (left id, right id) -> merged id.
    public private(set) var merges: [(left: Int32, right: Int32, merged: Int32)]
    private var rank: [UInt64: (rank: Int32, merged: Int32)]

    public init() {
        tokens = (0..<256).map { [UInt8($0)] }
        merges = []
        rank = [:]
    }

    public var count: Int { tokens.count }

    @inline(__always) static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    /// Appends the merge of `left` and `right`; returns the new token's id.
    @discardableResult
    public mutating func addMerge(_ left: Int32, _ right: Int32) -> Int32 {
        let id = Int32(tokens.count)
        tokens.append(tokens[Int(left)] + tokens[Int(right)])
        rank[Self.key(left, right)] = (Int32(merges.count), id)
        merges.append((left, right, id))
        return id
    }

    /// Adds a token that no merge produces (special tokens); returns its id.
    public mutating func addToken(_ bytes: [UInt8]) -> Int32 {
        tokens.append(bytes)
        return Int32(tokens.count - 1)
    }

    /// Encodes one pre-token, appending its ids to `out`.
    @inline(__always)
    public func encodeWord(_ word: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) {
        if word.count == 1 {
            out.append(Int32(word[0]))
            return
        }
        var symbols = word.map { Int32($0) }
        while symbols.count > 1 {
            var best: (rank: Int32, merged: Int32) = (Int32.max, -1)
            var bestPair: UInt64 = 0
            for i in 0..<(symbols.count - 1) {
                let k = Self.key(symbols[i], symbols[i + 1])
                if let r = rank[k], r.rank < best.rank {
                    best = r
                    bestPair = k
                }
            }
            if best.merged < 0 { break }
            // Merge every occurrence of the best pair, left to right, without overlaps.
            var merged: [Int32] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count, Self.key(symbols[i], symbols[i + 1]) == bestPair {
                    merged.append(best.merged)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        out.append(contentsOf: symbols)
    }
}
