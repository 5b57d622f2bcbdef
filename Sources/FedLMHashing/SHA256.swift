import CCrypto
import Foundation

/// SHA-256 (FIPS 180-4) through the system's libcrypto (OpenSSL's EVP interface): the digests
/// that name token shards, prepared text and checkpoints. Fed in pieces with `update`, read once
/// with `finalize`.
public final class SHA256 {
    private let context: OpaquePointer
    private var finished = false

    public init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            fatalError("libcrypto cannot start a SHA-256 digest")
        }
        self.context = context
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(data: some ContiguousBytes) {
        data.withUnsafeBytes { update(bytes: $0) }
    }

    public func update(bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "SHA256.update after finalize")
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    /// The 32-byte digest of everything passed to `update`.
    public func finalize() -> [UInt8] {
        precondition(!finished, "SHA256.finalize called twice")
        finished = true
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return Array(digest.prefix(Int(length)))
    }

    /// The digest of `data`.
    public static func hash(data: some ContiguousBytes) -> [UInt8] {
        let hasher = SHA256()
        hasher.update(data: data)
        return hasher.finalize()
    }

    /// The digest of `data` in lowercase hexadecimal.
    public static func hex(of data: some ContiguousBytes) -> String { hash(data: data).hexadecimal }
}

extension Array where Element == UInt8 {
    /// Lowercase hexadecimal, two digits a byte.
    public var hexadecimal: String { map { String(format: "%02x", $0) }.joined() }
}
