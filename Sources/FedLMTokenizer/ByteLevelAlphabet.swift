/// GPT-2's reversible byte-to-character map: every byte becomes a printable Unicode character,
/// so byte-level tokens can be written as strings in a `tokenizer.json` (the space byte becomes
/// "Ġ", newline "Ċ").
public enum ByteLevelAlphabet {
    /// character for each byte value
    public static let characters: [Character] = {
        var printable = Array(UInt32(33)...126) + Array(UInt32(161)...172) + Array(UInt32(174)...255)
        var mapped = printable
        var next: UInt32 = 0
        for b in UInt32(0)...255 where !printable.contains(b) {
            printable.append(b)
            mapped.append(256 + next)
            next += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(printable, mapped) { table[Int(b)] = Character(Unicode.Scalar(c)!) }
        return table
    }()

    static let byteForScalar: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, c) in characters.enumerated() { map[c.unicodeScalars.first!.value] = UInt8(b) }
        return map
    }()

    /// The token string for a byte sequence.
    public static func encode(_ bytes: [UInt8]) -> String {
        var s = ""
        for b in bytes { s.append(characters[Int(b)]) }
        return s
    }

    /// The bytes of a token string, or nil if it has a character outside the alphabet.
    public static func decode(_ token: String) -> [UInt8]? {
        var out: [UInt8] = []
        for scalar in token.unicodeScalars {
            guard let b = byteForScalar[scalar.value] else { return nil }
            out.append(b)
        }
        return out
    }
}
