import CZeroMQ
import Foundation

/// A CURVE key pair (Curve25519), each key in Z85 text (40 characters), as libzmq takes them.
public struct CurveKeyPair: Equatable, Sendable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) throws {
        guard CurveKeyPair.isKey(publicKey), CurveKeyPair.isKey(secretKey) else {
            throw CurveKeyError(description: "a CURVE key is 40 characters of Z85 text")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A new random key pair.
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError.last("curve keypair (is libzmq built with CURVE?)") }
        return try CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// The public key that belongs to `secretKey` (nil: not a key).
    public static func publicKey(ofSecret secretKey: String) -> String? {
        guard isKey(secretKey) else { return nil }
        var pub = [CChar](repeating: 0, count: 41)
        guard secretKey.withCString({ zmq_curve_public(&pub, $0) }) == 0 else { return nil }
        return String(cString: pub)
    }

    /// Is this 40 characters of Z85 that decode to 32 bytes?
    public static func isKey(_ z85: String) -> Bool {
        guard z85.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return z85.withCString { zmq_z85_decode(&out, $0) } != nil
    }

    /// Z85 text of 32 raw key bytes (as a ZAP request carries them).
    public static func z85(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        return raw.withUnsafeBufferPointer { zmq_z85_encode(&out, $0.baseAddress, 32) } == nil ? nil : String(cString: out)
    }

    /// Writes `<prefix>.public` and `<prefix>.secret` (readable by the owner only).
    public func save(prefix: String) throws {
        try (publicKey + "\n").write(toFile: prefix + ".public", atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: prefix + ".secret", contents: Data((secretKey + "\n").utf8), attributes: [.posixPermissions: 0o600])
    }

    /// Reads `<prefix>.public` and `<prefix>.secret`.
    public static func load(prefix: String) throws -> CurveKeyPair {
        try CurveKeyPair(publicKey: try readKey(prefix + ".public"), secretKey: try readKey(prefix + ".secret"))
    }

    /// One key from a file (surrounding whitespace ignored), checked.
    public static func readKey(_ path: String) throws -> String {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CurveKeyError(description: "cannot read the key file \(path)")
        }
        let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard isKey(key) else { throw CurveKeyError(description: "\(path) does not hold a 40-character Z85 CURVE key") }
        return key
    }
}

extension ZMQSocket {
    /// Makes this (binding) socket a CURVE server: peers must encrypt and authenticate, and the
    /// ZAP handler decides who may connect, by `domain`.
    public func makeCurveServer(secretKey: String, domain: String) throws {
        try set(ZMQ_CURVE_SERVER, 1)
        try set(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8))
        try set(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8))
        // Fail closed even without a handler where libzmq offers it (a draft option in 4.3);
        // FedLM also never binds a CURVE socket before its handler is in place.
        _ = try? set(93 /* ZMQ_ZAP_ENFORCE_DOMAIN */, 1)
    }

    /// Makes this (connecting) socket a CURVE client of the server with `serverKey`.
    public func makeCurveClient(serverKey: String, keys: CurveKeyPair) throws {
        try set(ZMQ_CURVE_SERVERKEY, bytes: Array(serverKey.utf8))
        try set(ZMQ_CURVE_PUBLICKEY, bytes: Array(keys.publicKey.utf8))
        try set(ZMQ_CURVE_SECRETKEY, bytes: Array(keys.secretKey.utf8))
    }
}

/// A key file or key text that is not a usable CURVE key.
public struct CurveKeyError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
