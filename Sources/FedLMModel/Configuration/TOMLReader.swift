import TOMLKit

/// Typed, strict access to one table of a TOML file, shared by every file FedLM reads (model
/// configs, topologies, experiment specs). Every error names the key with its table's prefix
/// (`aggregation.buffer_size`) and goes out through the caller's own error type, which adds the
/// file's path: as a sentence (`fail:`) or as a typed `Problem` (`problem:`).
public struct TOMLReader {
    public let table: TOMLTable
    /// "" for the top level, "aggregation." for `[aggregation]`, "trainer[2]." for the second `[[trainer]]`.
    public let prefix: String
    private let failure: (Problem) -> Error

    /// What is wrong with a key.
    public enum Problem: CustomStringConvertible {
        case unknownKey(String, allowed: [String])
        case wrongType(String, expected: String)
        /// Anything else, said by the caller.
        case other(String)

        public var description: String {
            switch self {
            case .unknownKey(let key, let allowed): "unknown key '\(key)' (allowed: \(allowed.joined(separator: ", ")))"
            case .wrongType(let key, let expected): "'\(key)' must be \(expected)"
            case .other(let why): why
            }
        }
    }

    public init(_ table: TOMLTable, prefix: String = "", fail: @escaping (String) -> Error) {
        self.init(table, prefix: prefix, problem: { fail($0.description) })
    }

    public init(_ table: TOMLTable, prefix: String = "", problem: @escaping (Problem) -> Error) {
        self.table = table
        self.prefix = prefix
        failure = problem
    }

    /// An error saying `why`, in the caller's error type.
    public func fail(_ why: String) -> Error { failure(.other(why)) }

    private func wrongType(_ key: String, _ expected: String) -> Error { failure(.wrongType(prefix + key, expected: expected)) }

    /// Refuses any key not in `keys`, naming it and the keys allowed.
    public func allowOnly(_ keys: [String]) throws {
        for k in table.keys where !keys.contains(k) { throw failure(.unknownKey(prefix + k, allowed: keys)) }
    }

    public func has(_ key: String) -> Bool { table[key] != nil }

    public func string(_ key: String) throws -> String? {
        guard let v = table[key] else { return nil }
        guard let s = v.string else { throw wrongType(key, "a string") }
        return s
    }

    public func int(_ key: String) throws -> Int? {
        guard let v = table[key] else { return nil }
        guard let i = v.int else { throw wrongType(key, "an integer") }
        return i
    }

    /// A number: a float, or an integer read as one.
    public func double(_ key: String) throws -> Double? {
        guard let v = table[key] else { return nil }
        if let d = v.double { return d }
        if let i = v.int { return Double(i) }
        throw wrongType(key, "a number")
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let v = table[key] else { return nil }
        guard let b = v.bool else { throw wrongType(key, "true or false") }
        return b
    }

    /// A list of strings; `what` says what they are in the error ("a non-empty list of names").
    public func strings(_ key: String, _ what: String = "a list of strings", nonEmpty: Bool = false) throws -> [String]? {
        guard let v = table[key] else { return nil }
        guard let list = v.array, let items = list.map({ $0.string }) as? [String], !(nonEmpty && items.isEmpty) else {
            throw wrongType(key, what)
        }
        return items
    }

    /// The table `[key]` (nil when absent).
    public func table(_ key: String) throws -> TOMLReader? {
        guard let v = table[key] else { return nil }
        guard let t = v.table else { throw wrongType(key, "a table") }
        return TOMLReader(t, prefix: prefix + key + ".", problem: failure)
    }

    /// The tables of `[[key]]`, each with its prefix `key[i].` (nil when absent).
    public func tables(_ key: String, _ what: String) throws -> [TOMLReader]? {
        guard let v = table[key] else { return nil }
        guard let list = v.array else { throw wrongType(key, what) }
        return try list.enumerated().map { i, item in
            guard let t = item.table else { throw fail("\(key) \(i + 1) must be a table") }
            return TOMLReader(t, prefix: "\(prefix)\(key)[\(i + 1)].", problem: failure)
        }
    }
}
