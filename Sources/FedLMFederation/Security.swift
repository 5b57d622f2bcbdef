import FedLMModel
import FedLMZeroMQ
import Foundation
import Synchronization
import TOMLKit

/// A member of a federation as its key identifies it: its role and the names (trainer ids,
/// routing ids) the key may use.
public struct Member: Equatable, Sendable {
    public enum Role: String, Sendable { case trainer, subscriber, aggregator }
    public var role: Role
    public var names: Set<String>
    public var key: String
    public init(role: Role, names: Set<String>, key: String) {
        self.role = role
        self.names = names
        self.key = key
    }
}

/// Who may connect to the broker and as whom: for each role, each member's name and its CURVE
/// public key (Z85), in a TOML file
///
///     [trainers]
///     en = "rq:4Y..."                 # trainer `en` connects with this key
///     es-it = ["TV$G...", "x9..."]    # two keys (e.g. while rotating) for one name
///     [subscribers]
///     subscriber = "..."              # may receive releases and fetch snapshots, never push
///     [aggregators]
///     aggregator = "..."
///
/// A key listed under several names may use any of them. The file is re-read when it changes
/// (checked at most once a second), so a key is revoked by deleting its line: new handshakes
/// are refused at once, and so is every later message on a connection it already made.
public final class AllowList: Sendable {
    public let path: String
    /// The members by key, the file's stamp they were parsed from, and when it was last looked at.
    private struct Loaded {
        var members: [String: Member] = [:]
        var stamp: FileStamp?
        var checkedAt = 0.0
    }
    private let loaded = Mutex(Loaded())

    public static let roleNames: [String: Member.Role] = ["trainers": .trainer, "subscribers": .subscriber, "aggregators": .aggregator]

    public init(path: String) throws {
        self.path = path
        try reloadIfChanged(force: true)
    }

    /// Whether `key` may connect to the broker socket with ZAP `domain`: trainers and subscribers
    /// on "trainers" and "releases", aggregators on "aggregator" and "publish".
    public func decide(domain: String, key: String) -> Bool {
        guard let member = member(key: key) else { return false }
        switch domain {
        case "trainers", "releases": return member.role == .trainer || member.role == .subscriber
        case "aggregator", "publish": return member.role == .aggregator
        default: return false
        }
    }

    /// The member `key` belongs to now (nil: not, or no longer, allowed). A key not in the list
    /// makes the file be looked at again at once (a stat; parsed only if it changed), so a member
    /// added a moment ago (`fedlm invite`) is let in at its first handshake.
    public func member(key: String) -> Member? {
        try? reloadIfChanged(force: false)
        if let found = lookUp(key) { return found }
        try? reloadIfChanged(force: false, now: true)
        return lookUp(key)
    }

    private func lookUp(_ key: String) -> Member? {
        loaded.withLock { $0.members[key] }
    }

    /// Every name some key is bound to.
    public var boundNames: Set<String> {
        try? reloadIfChanged(force: false)
        return loaded.withLock { $0.members.values.reduce(into: Set<String>()) { $0.formUnion($1.names) } }
    }

    /// Parses the file again if it changed; looks at most once a second unless `now`.
    func reloadIfChanged(force: Bool, now checkNow: Bool = false) throws {
        let now = Date().timeIntervalSince1970
        let recent = loaded.withLock { state in
            let recent = !force && !checkNow && now - state.checkedAt < 1
            if !recent { state.checkedAt = now }
            return recent
        }
        if recent { return }
        let stamp = FileStamp(path: path)
        if !force, loaded.withLock({ $0.stamp == stamp }) { return }
        let next = try Self.parse(path: path)
        loaded.withLock { $0 = Loaded(members: next, stamp: stamp, checkedAt: $0.checkedAt) }
    }

    /// The members of an allow-list file, by key.
    static func parse(path: String) throws -> [String: Member] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw FederationError.badTopology("cannot read the allowed keys \(path)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch { throw FederationError.badTopology("\(path): not valid TOML: \(error)") }
        func reader(_ table: TOMLTable, prefix: String = "") -> TOMLReader {
            TOMLReader(table, prefix: prefix) { FederationError.badTopology("\(path): \($0)") }
        }
        let root = reader(table)
        let sections = roleNames.keys.sorted()
        try root.allowOnly(sections)
        var members: [String: Member] = [:]
        for section in sections where root.has(section) {
            let role = roleNames[section]!
            guard let names = root.table[section]?.table.map({ reader($0, prefix: section + ".") }) else {
                throw root.fail("'\(section)' must be a table of name = \"key\" (regenerate the file with `fedlm keys generate --topology TOPOLOGY`: existing key pairs are kept)")
            }
            for name in names.table.keys.sorted() {
                // One key, or a list of them.
                let keys = try names.table[name]?.string.map { [$0] } ?? names.strings(name, "a Z85 public key or a list of them", nonEmpty: true) ?? []
                for key in keys {
                    guard CurveKeyPair.isKey(key) else { throw root.fail("'\(key)' (\(section).\(name)) is not a CURVE public key") }
                    if let other = members[key], other.role != role {
                        throw root.fail("key \(key) is listed both as \(other.role.rawValue) and as \(role.rawValue)")
                    }
                    members[key, default: Member(role: role, names: [], key: key)].names.insert(name)
                }
            }
        }
        return members
    }

    /// Adds `name` = `key` to the trainers of the allow-list file at `path` (rewritten atomically;
    /// the broker picks the change up within a second). Refused if the name or the key is taken.
    public static func addTrainer(_ name: String, key: String, toFile path: String) throws {
        var members = try parse(path: path)
        if let holder = members.values.first(where: { $0.names.contains(name) }) {
            throw FederationError.local("\(path): the name '\(name)' is already bound to a key (\(holder.role.rawValue))")
        }
        guard members[key] == nil else { throw FederationError.local("\(path): that key is already listed") }
        members[key] = Member(role: .trainer, names: [name], key: key)
        try text(members: Array(members.values)).write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// Removes every key bound to `name` from the allow-list file at `path` (atomically): its
    /// handshakes are refused from the broker's next look at the file. Returns the keys removed.
    @discardableResult
    public static func revoke(_ name: String, inFile path: String) throws -> [String] {
        var members = try parse(path: path)
        let revoked = members.values.filter { $0.names.contains(name) }.map(\.key)
        guard !revoked.isEmpty else { throw FederationError.local("\(path): no key is bound to '\(name)'") }
        for key in revoked {
            members[key]!.names.remove(name)
            if members[key]!.names.isEmpty { members[key] = nil }
        }
        try text(members: Array(members.values)).write(toFile: path, atomically: true, encoding: .utf8)
        return revoked
    }

    /// The text of an allow-list holding `members` (a name bound to several keys: a list).
    static func text(members: [Member]) -> String {
        func entries(_ role: Member.Role) -> [String] {
            var keysByName: [String: [String]] = [:]
            for m in members where m.role == role { for n in m.names { keysByName[n, default: []].append(m.key) } }
            return keysByName.keys.sorted().map { name in
                let keys = keysByName[name]!.sorted()
                return "\"\(name)\" = " + (keys.count == 1 ? "\"\(keys[0])\"" : "[" + keys.map { "\"\($0)\"" }.joined(separator: ", ") + "]")
            }
        }
        var text = "# Who may connect to the broker, by role: name = \"public key\". A key may use only its own names.\n"
        text += "# Delete a line to revoke a key (the broker re-reads this file).\n"
        for (section, role) in [("trainers", Member.Role.trainer), ("subscribers", .subscriber), ("aggregators", .aggregator)] {
            text += "\n[\(section)]\n" + entries(role).map { $0 + "\n" }.joined()
        }
        return text
    }

    /// The text of an allow-list naming each member's key, by role.
    public static func text(trainers: [(String, String)], subscribers: [(String, String)], aggregators: [(String, String)]) -> String {
        let byRole: [(Member.Role, [(String, String)])] = [(.trainer, trainers), (.subscriber, subscribers), (.aggregator, aggregators)]
        return text(members: byRole.flatMap { role, entries in entries.map { Member(role: role, names: [$0.0], key: $0.1) } })
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

    public func apply(to socket: ZMQSocket) throws { try socket.makeCurveClient(serverKey: brokerKey, keys: keys) }
}

/// The broker's CURVE settings: its key pair, who may connect, and whether names no key is
/// bound to may join.
public struct BrokerSecurity: Sendable {
    /// Closed: a key uses only the names the allow-list binds to it. Open: also any name no key
    /// is bound to (volunteers join under names of their own), never another key's name.
    public enum Membership: String, Sendable, CaseIterable { case closed, open }

    public let keys: CurveKeyPair
    public let allowed: AllowList
    public let membership: Membership
    /// Keys the broker suspended for misbehaving: refused at the handshake until then.
    public let suspensions = Suspensions()
    public init(keys: CurveKeyPair, allowed: AllowList, membership: Membership = .closed) {
        self.keys = keys
        self.allowed = allowed
        self.membership = membership
    }

    /// Whether `member` may speak as `name` (its routing id, or the trainer id in a HELLO or
    /// UPDATE). A subscriber never pushes, so it may use any name but another key's.
    public func may(_ member: Member, use name: String) -> Bool {
        if member.names.contains(name) { return true }
        guard member.role == .subscriber || membership == .open else { return false }
        return !allowed.boundNames.contains(name)
    }
}

/// Keys suspended until a time, shared by the broker's loop (which suspends) and its ZAP
/// handler's thread (which refuses their handshakes).
public final class Suspensions: Sendable {
    private let until = Mutex<[String: Double]>([:])

    public init() {}

    public func suspend(_ key: String, until time: Double) {
        until.withLock { $0[key] = time }
    }

    public func isSuspended(_ key: String, now: Double = Date().timeIntervalSince1970) -> Bool {
        until.withLock { until in
            guard let t = until[key] else { return false }
            if t <= now { until[key] = nil }
            return t > now
        }
    }
}

/// What tells a file changed: its inode (an atomic rewrite makes a new one), size and
/// modification time to the nanosecond (a second's resolution would miss two writes in one second).
struct FileStamp: Equatable, Sendable {
    let inode: UInt64, size: Int64, seconds: Int, nanoseconds: Int
    init?(path: String) {
        var s = stat()
        guard stat(path, &s) == 0 else { return nil }
        inode = UInt64(s.st_ino)
        size = Int64(s.st_size)
        seconds = Int(s.st_mtim.tv_sec)
        nanoseconds = Int(s.st_mtim.tv_nsec)
    }
}
