/// GPT-2's pre-tokenization, the regex
///
///     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
///
/// written out as a scanner over raw bytes (a regex engine would be several times slower, and
/// would not accept invalid UTF-8). Bytes that are not valid UTF-8 are units of their own in the
/// "other" class, exactly where Hugging Face's tokenizer would see U+FFFD after lossy decoding,
/// so every input, valid or not, splits into pieces that concatenate back to it.
public enum PreTokenizer {
    enum Class: UInt8 { case letter, number, space, other }

    /// Calls `body` with the byte range of each pre-token of `bytes[range]`, in order.
    @inline(__always)
    public static func split(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let (c0, len0) = unit(bytes, i, end)
            // 's 't 're 've 'm 'll 'd
            if bytes[i] == 0x27, let n = contraction(bytes, i + 1, end) {
                body(i..<(i + 1 + n))
                i += 1 + n
                continue
            }
            var j = i
            var cls = c0
            var len = len0
            if bytes[i] == 0x20, i + 1 < end {
                let (c1, len1) = unit(bytes, i + 1, end)
                if c1 != .space {
                    j = i + 1
                    cls = c1
                    len = len1
                }
            }
            if cls == .space {
                // \s+(?!\S) then \s+: a run of whitespace, minus its last unit when a
                // non-space follows (that unit then prefixes the next token or stands alone).
                var k = i
                var last = i
                while k < end {
                    let (c, l) = unit(bytes, k, end)
                    if c != .space { break }
                    last = k
                    k += l
                }
                if k < end, last > i { k = last }
                body(i..<k)
                i = k
                continue
            }
            var k = j + len
            while k < end {
                let (c, l) = unit(bytes, k, end)
                if c != cls { break }
                k += l
            }
            body(i..<k)
            i = k
        }
    }

    @inline(__always)
    static func contraction(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int? {
        guard i < end else { return nil }
        switch b[i] {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"): return 1
        case UInt8(ascii: "r"), UInt8(ascii: "v"):
            return i + 1 < end && b[i + 1] == UInt8(ascii: "e") ? 2 : nil
        case UInt8(ascii: "l"):
            return i + 1 < end && b[i + 1] == UInt8(ascii: "l") ? 2 : nil
        default: return nil
        }
    }

    static let asciiClass: [Class] = (0..<128).map { b -> Class in
        let s = Unicode.Scalar(UInt8(b))
        if s.properties.isWhitespace { return .space }
        if (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b) { return .letter }
        if (0x30...0x39).contains(b) { return .number }
        return .other
    }

    /// The class and byte length of the unit starting at `i`: one UTF-8 scalar, or one byte if
    /// the bytes there are not valid UTF-8.
    @inline(__always)
    static func unit(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> (Class, Int) {
        let b0 = b[i]
        if b0 < 0x80 { return (asciiClass[Int(b0)], 1) }
        guard let (scalar, length) = decodeScalar(b, i, end) else { return (.other, 1) }
        return (classify(scalar), length)
    }

    static func classify(_ s: Unicode.Scalar) -> Class {
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Strict UTF-8 decoding of one scalar (no overlongs, no surrogates, nothing above U+10FFFF).
    @inline(__always)
    static func decodeScalar(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> (Unicode.Scalar, Int)? {
        let b0 = UInt32(b[i])
        func cont(_ k: Int) -> UInt32? {
            guard i + k < end else { return nil }
            let c = UInt32(b[i + k])
            return c & 0xC0 == 0x80 ? c & 0x3F : nil
        }
        if b0 >= 0xC2, b0 <= 0xDF, let c1 = cont(1) {
            return Unicode.Scalar(((b0 & 0x1F) << 6) | c1).map { ($0, 2) }
        }
        if b0 >= 0xE0, b0 <= 0xEF, let c1 = cont(1), let c2 = cont(2) {
            let v = ((b0 & 0x0F) << 12) | (c1 << 6) | c2
            guard v >= 0x800, !(0xD800...0xDFFF).contains(v) else { return nil }
            return Unicode.Scalar(v).map { ($0, 3) }
        }
        if b0 >= 0xF0, b0 <= 0xF4, let c1 = cont(1), let c2 = cont(2), let c3 = cont(3) {
            let v = ((b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3
            guard v >= 0x10000, v <= 0x10FFFF else { return nil }
            return Unicode.Scalar(v).map { ($0, 4) }
        }
        return nil
    }

    /// Convenience for tests: the pre-tokens of a byte array.
    public static func pieces(_ bytes: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        bytes.withUnsafeBufferPointer { b in split(b, 0..<b.count) { out.append(Array(b[$0])) } }
        return out
    }
}
