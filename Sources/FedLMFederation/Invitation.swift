import FedLMHashing
import FedLMZeroMQ
import Foundation

/// One file that holds everything a new member needs to join a federation (`fedlm invite`,
/// `fedlm trainer --join`): where the broker is and its public key, the member's own CURVE key
/// pair (its public key already in the broker's allow-list), the model and training config, the
/// tokenizer, and the recipe (local steps, token budget, cluster).
///
/// The file is JSON. Its `digest` is the SHA-256 of every other field, each written as
/// `<field>\t<length in UTF-8 bytes>\t<value>\n` in the order of `digestFields` (absent optional
/// values as empty strings), so any edit of the file or a cut-off copy is detected, by any reader
/// in any language. An invitation is refused when it is not one, was edited, has expired, or
/// disagrees with itself (a key pair that does not belong together, a tokenizer that is not the
/// one it names).
public struct Invitation: Codable, Equatable, Sendable {
    public static let currentFormat = "fedlm-invitation/1"

    public var format = Invitation.currentFormat
    /// The federation's name (its topology's).
    public var federation: String
    /// The member's name: its trainer id, bound to its key in the allow-list.
    public var member: String
    /// With personalized clusters: the cluster it trains in.
    public var cluster: String?
    /// Its token budget (nil: until stopped).
    public var tokens: Int?
    /// H: local steps per update.
    public var localSteps: Int
    /// The broker's address for trainers, as the member reaches it.
    public var broker: String
    public var brokerPublicKey: String
    public var publicKey: String
    public var secretKey: String
    /// The federation's model and local training config (TOML text).
    public var modelConfig: String
    /// The federation's tokenizer (tokenizer.json text) and its SHA-256.
    public var tokenizer: String
    public var tokenizerSHA256: String
    /// Seconds since 1970.
    public var issued: Int
    public var expires: Int
    public var digest = ""

    public init(federation: String, member: String, cluster: String?, tokens: Int?, localSteps: Int, broker: String, brokerPublicKey: String,
                keys: CurveKeyPair, modelConfig: String, tokenizer: String, issued: Int, expires: Int) {
        self.federation = federation
        self.member = member
        self.cluster = cluster
        self.tokens = tokens
        self.localSteps = localSteps
        self.broker = broker
        self.brokerPublicKey = brokerPublicKey
        publicKey = keys.publicKey
        secretKey = keys.secretKey
        self.modelConfig = modelConfig
        self.tokenizer = tokenizer
        tokenizerSHA256 = SHA256.hex(of: Data(tokenizer.utf8))
        self.issued = issued
        self.expires = expires
        digest = computedDigest
    }

    /// The fields the digest covers, in order, as text.
    var digestFields: [(String, String)] {
        [("format", format), ("federation", federation), ("member", member), ("cluster", cluster ?? ""), ("tokens", tokens.map(String.init) ?? ""),
         ("localSteps", String(localSteps)), ("broker", broker), ("brokerPublicKey", brokerPublicKey), ("publicKey", publicKey),
         ("secretKey", secretKey), ("modelConfig", modelConfig), ("tokenizer", tokenizer), ("tokenizerSHA256", tokenizerSHA256),
         ("issued", String(issued)), ("expires", String(expires))]
    }

    public var computedDigest: String {
        let hasher = SHA256()
        for (name, value) in digestFields { hasher.update(data: Data("\(name)\t\(value.utf8.count)\t\(value)\n".utf8)) }
        return hasher.finalize().hexadecimal
    }

    public var keys: CurveKeyPair { get throws { try CurveKeyPair(publicKey: publicKey, secretKey: secretKey) } }

    /// Writes the file, readable by its owner only (it holds a secret key), atomically.
    public func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let tmp = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: try encoder.encode(self), attributes: [.posixPermissions: 0o600]) else {
            throw InvitationError(.unreadable, path: path, "cannot write it")
        }
        guard rename(tmp, path) == 0 else {
            try? FileManager.default.removeItem(atPath: tmp)
            throw InvitationError(.unreadable, path: path, "cannot write it: \(String(cString: strerror(errno)))")
        }
    }

    /// Reads and checks an invitation; throws `InvitationError` saying what is wrong.
    public static func read(path: String, now: Date = Date()) throws -> Invitation {
        guard let data = FileManager.default.contents(atPath: path) else { throw InvitationError(.unreadable, path: path, "cannot read it") }
        let invitation: Invitation
        do { invitation = try JSONDecoder().decode(Invitation.self, from: data) } catch {
            throw InvitationError(.notAnInvitation, path: path, "not an invitation file (\(error))")
        }
        try invitation.check(path: path, now: now)
        return invitation
    }

    /// The checks `read` makes.
    public func check(path: String, now: Date = Date()) throws {
        guard format == Self.currentFormat else {
            throw InvitationError(.notAnInvitation, path: path, "format '\(format)', this fedlm reads '\(Self.currentFormat)'")
        }
        guard digest == computedDigest else {
            throw InvitationError(.tampered, path: path, "its contents do not match its digest: the file was edited or damaged; ask for a new one")
        }
        guard Double(expires) > now.timeIntervalSince1970 else {
            let date = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(expires)))
            throw InvitationError(.expired, path: path, "it expired at \(date); ask the federation for a new one")
        }
        guard CurveKeyPair.publicKey(ofSecret: secretKey) == publicKey, CurveKeyPair.isKey(brokerPublicKey) else {
            throw InvitationError(.mismatched, path: path, "its key pair does not belong together, or the broker's key is not a CURVE key")
        }
        guard SHA256.hex(of: Data(tokenizer.utf8)) == tokenizerSHA256 else {
            throw InvitationError(.mismatched, path: path, "its tokenizer is not the one whose SHA-256 it names")
        }
        guard localSteps >= 1, (tokens ?? 1) >= 1, !member.isEmpty, !member.contains("/") else {
            throw InvitationError(.mismatched, path: path, "local steps, tokens or the member's name are out of range")
        }
    }
}

/// What is wrong with an invitation file.
public struct InvitationError: Error, CustomStringConvertible, Equatable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let unreadable = Code(rawValue: "unreadable")
        public static let notAnInvitation = Code(rawValue: "notAnInvitation")
        public static let tampered = Code(rawValue: "tampered")
        public static let expired = Code(rawValue: "expired")
        public static let mismatched = Code(rawValue: "mismatched")
        public var description: String { rawValue }
    }

    public let code: Code
    public let path: String
    public let detail: String
    public init(_ code: Code, path: String, _ detail: String) {
        self.code = code
        self.path = path
        self.detail = detail
    }
    public var description: String { "invitation \(path) (\(code)): \(detail)" }
}
