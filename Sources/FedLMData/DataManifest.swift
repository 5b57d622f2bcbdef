import Foundation

/// `manifest.json` of a prepared data directory: the tokenizer, and per cluster its sources and
/// its train and validation shards with token counts and SHA-256s.
///
///     DIR/manifest.json
///     DIR/tokenizer.json                 the tokenizer the shards were made with
///     DIR/<cluster>/train-00000.tokens   TokenShard files
///     DIR/<cluster>/validation-00000.tokens
public struct DataManifest: Codable, Equatable, Sendable {
    public struct Shard: Codable, Equatable, Sendable {
        public var file: String  // relative to the data directory
        public var tokens: Int
        public var sha256: String
    }

    public struct Source: Codable, Equatable, Sendable {
        public var path: String
        public var bytes: Int
        public var sha256: String
        public var documents: Int
        public var skipped: [String]  // "path:line: reason" of every input skipped by --on-error skip
        public var train: [Shard]
        public var validation: [Shard]
    }

    public struct Cluster: Codable, Equatable, Sendable {
        public var name: String
        public var sources: [Source]
        public var train: [Shard] { sources.flatMap(\.train) }
        public var validation: [Shard] { sources.flatMap(\.validation) }
        public var trainTokens: Int { train.reduce(0) { $0 + $1.tokens } }
        public var validationTokens: Int { validation.reduce(0) { $0 + $1.tokens } }
    }

    public var formatVersion = 1
    public var tokenizerSHA256: String
    public var vocabularySize: Int
    public var validationFraction: Double
    public var clusters: [Cluster]

    public static let fileName = "manifest.json"

    public static func load(directory: String) throws -> DataManifest {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DataError.badManifest(path: path, reason: "missing: prepare the data with `fedlm data prepare` first")
        }
        do { return try JSONDecoder().decode(DataManifest.self, from: data) } catch {
            throw DataError.badManifest(path: path, reason: "unreadable manifest: \(error)")
        }
    }

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let tmp = path + ".tmp-\(getpid())"
        try encoder.encode(self).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw DataError.io(path: path, reason: "rename failed") }
    }
}
