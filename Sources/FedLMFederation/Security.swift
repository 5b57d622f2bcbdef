import FedLMZeroMQ
import Foundation
import TOMLKit

/// Who may connect to the broker, by role: CURVE public keys (Z85) in a TOML file
///
///     trainers = ["rq:4Y...", ...]      # may fetch and push
///     subscribers = ["..."]             # may receive releases and fetch snapshots, never push
///     aggregators = ["..."]
///
/// re-read whenever the file changes, so a key is revoked by deleting its line (connections
/// already made stay until they drop; every new handshake sees the new list).
public final class AllowList: @unchecked Sendable {
    public let path: String
    private let lock = NSLock()
    private var roles: [String: Set<String>] = [:]
    private var loadedStamp: Date?

    public static let roleNames = ["trainers": "trainer", "subscribers": "subscriber", "aggregators": "aggregator"]

    public init(path: String) throws {
        self.path = path
        try reloadIfChanged(force: true)
    }

    /// The role of `key` on the broker socket with ZAP `domain`, or nil to refuse: trainers and
    /// subscribers on "trainers" and "releases", aggregators on "aggregator" and "publish".
    public func decide(domain: String, key: String) -> String? {
        try? reloadIfChanged(force: false)
        lock.lock(); defer { lock.unlock() }
        let permitted: [String]
        switch domain {
        case "trainers", "releases": permitted = ["trainer", "subscriber"]
        case "aggregator", "publish": permitted = ["aggregator"]
        default: return nil
        }
        return permitted.first { roles[$0]?.contains(key) == true }
    }

    func reloadIfChanged(force: Bool) throws {
        let stamp = (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate]) as? Date
        lock.lock()
        let unchanged = !force && stamp == loadedStamp
        lock.unlock()
        if unchanged { return }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw FederationError.badTopology("cannot read the allowed keys \(path)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch { throw FederationError.badTopology("\(path): not valid TOML: \(error)") }
        var next: [String: Set<String>] = [:]
        for key in table.keys {
            guard let role = Self.roleNames[key] else {
                throw FederationError.badTopology("\(path): unknown key '\(key)' (allowed: trainers, subscribers, aggregators)")
            }
            guard let list = table[key]?.array, let keys = list.map({ $0.string }) as? [String] else {
                throw FederationError.badTopology("\(path): '\(key)' must be a list of Z85 public keys")
            }
            for k in keys where !CurveKeyPair.isKey(k) { throw FederationError.badTopology("\(path): '\(k)' in \(key) is not a CURVE public key") }
            next[role] = Set(keys)
        }
        lock.lock()
        roles = next
        loadedStamp = stamp
        lock.unlock()
    }
}

/// A client's CURVE settings: its key pair and the broker's public key.
public struct CurveClient: Sendable {
    public let brokerKey: String
    public let keys: CurveKeyPair
    public init(brokerKey: String, keys: CurveKeyPair) {
        self.brokerKey = brokerKey
        self.keys = keys
    }

    /// A key pair (`<prefix>.public`, `<prefix>.secret`) and the broker's public key file.
    public static func load(prefix: String, brokerKeyFile: String) throws -> CurveClient {
        CurveClient(brokerKey: try CurveKeyPair.readKey(brokerKeyFile), keys: try CurveKeyPair.load(prefix: prefix))
    }

    /// The keys of `name` in a keys directory (`<dir>/<name>.{public,secret}`, `<dir>/broker.public`).
    public static func load(directory: String, name: String) throws -> CurveClient {
        try load(prefix: directory + "/" + name, brokerKeyFile: directory + "/broker.public")
    }

    func apply(to socket: ZMQSocket) throws { try socket.makeCurveClient(serverKey: brokerKey, keys: keys) }
}

/// The broker's CURVE settings: its key pair and who may connect.
public struct BrokerSecurity: Sendable {
    public let keys: CurveKeyPair
    public let allowed: AllowList
    public init(keys: CurveKeyPair, allowed: AllowList) {
        self.keys = keys
        self.allowed = allowed
    }
}
