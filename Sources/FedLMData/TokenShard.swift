import FedLMHashing
import Foundation

/// A file of token ids.
///
///     offset  size  field
///     0       8     magic "FEDLMTOK"
///     8       4     format version (1), little-endian UInt32
///     12      4     token width in bytes (2 or 4), little-endian UInt32
///     16      8     token count, little-endian UInt64
///     24      32    SHA-256 of the token bytes that follow the header
///     56      8     reserved (zero)
///     64      ...   the tokens, little-endian, `width` bytes each
///
/// 2-byte tokens serve vocabularies up to 65,536. Readers memory-map the file and verify size
/// and checksum before handing out a single token.
public enum TokenShard {
    public static let magic = Array("FEDLMTOK".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 64

    public static func width(forVocabulary v: Int) -> Int { v <= 65_536 ? 2 : 4 }

    /// Writes `tokens` atomically (temp file, fsync, rename); returns the payload's SHA-256.
    @discardableResult
    public static func write(_ tokens: [Int32], width: Int, to path: String) throws -> String {
        precondition(width == 2 || width == 4)
        var payload = [UInt8](repeating: 0, count: tokens.count * width)
        payload.withUnsafeMutableBytes { raw in
            if width == 2 {
                for (i, t) in tokens.enumerated() { raw.storeBytes(of: UInt16(truncatingIfNeeded: t).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            } else {
                for (i, t) in tokens.enumerated() { raw.storeBytes(of: UInt32(bitPattern: t).littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
        }
        let digest = Array(SHA256.hash(data: payload))
        var header = magic
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        append(version)
        append(UInt32(width))
        append(UInt64(tokens.count))
        header.append(contentsOf: digest)
        header.append(contentsOf: [UInt8](repeating: 0, count: headerSize - header.count))
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DataError.io(path: tmp, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        for chunk in [header, payload] {
            let ok = chunk.withUnsafeBytes { raw -> Bool in
                var offset = 0
                while offset < raw.count {
                    let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n <= 0 { return false }
                    offset += n
                }
                return true
            }
            guard ok else { unlink(tmp); throw DataError.io(path: tmp, reason: "write failed") }
        }
        fsync(fd)
        guard rename(tmp, path) == 0 else { unlink(tmp); throw DataError.io(path: path, reason: "rename failed") }
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}

/// A verified, memory-mapped token shard.
public final class TokenShardReader: Sendable {
    public let path: String
    public let count: Int
    public let width: Int
    public let sha256: String
    private let data: Data

    public init(path: String, expectedSHA256: String? = nil) throws {
        func bad(_ why: String) -> DataError { .corruptShard(path: path, reason: why) }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw DataError.io(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        guard data.count >= TokenShard.headerSize else { throw bad("shorter than the 64-byte header") }
        guard Array(data.prefix(8)) == TokenShard.magic else { throw bad("bad magic (not a FedLM token shard)") }
        let (version, width, count) = data.withUnsafeBytes { raw in
            (UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
             Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self))),
             Int(UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))))
        }
        guard version == TokenShard.version else { throw bad("format version \(version), this FedLM reads \(TokenShard.version)") }
        guard width == 2 || width == 4 else { throw bad("token width \(width) is neither 2 nor 4") }
        guard data.count == TokenShard.headerSize + count * width else {
            throw bad("header says \(count) tokens (\(TokenShard.headerSize + count * width) bytes) but the file has \(data.count) bytes")
        }
        let recorded = data.subdata(in: 24..<56).map { String(format: "%02x", $0) }.joined()
        let actual = SHA256.hash(data: data.subdata(in: TokenShard.headerSize..<data.count)).map { String(format: "%02x", $0) }.joined()
        guard recorded == actual else { throw bad("checksum mismatch: the tokens are corrupt") }
        if let expectedSHA256, expectedSHA256 != actual { throw bad("SHA-256 differs from the manifest's") }
        self.path = path
        self.count = count
        self.width = width
        self.sha256 = actual
        self.data = data
    }

    /// Copies tokens [start, start + n) into `out` as Int32.
    @inline(__always)
    public func read(_ start: Int, _ n: Int, into out: UnsafeMutablePointer<Int32>) {
        precondition(start >= 0 && start + n <= count, "read past the end of \(path)")
        data.withUnsafeBytes { raw in
            let base = raw.baseAddress! + TokenShard.headerSize
            if width == 2 {
                for i in 0..<n { out[i] = Int32(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * (start + i), as: UInt16.self))) }
            } else {
                for i in 0..<n { out[i] = Int32(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * (start + i), as: UInt32.self))) }
            }
        }
    }

    public func tokens(_ range: Range<Int>) -> [Int32] {
        var out = [Int32](repeating: 0, count: range.count)
        out.withUnsafeMutableBufferPointer { read(range.lowerBound, range.count, into: $0.baseAddress!) }
        return out
    }
}

public enum DataError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    case corruptShard(path: String, reason: String)
    case badInput(location: String, reason: String)
    case badManifest(path: String, reason: String)
    case unknownCluster(String, known: [String])
    case tooSmall(String)

    public var description: String {
        switch self {
        case .io(let path, let reason): return "\(path): \(reason)"
        case .corruptShard(let path, let reason): return "\(path): corrupt token shard: \(reason)"
        case .badInput(let location, let reason): return "\(location): \(reason)"
        case .badManifest(let path, let reason): return "\(path): \(reason)"
        case .unknownCluster(let name, let known): return "unknown cluster '\(name)' (known: \(known.joined(separator: ", ")))"
        case .tooSmall(let why): return why
        }
    }
}
