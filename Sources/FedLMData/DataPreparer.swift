import FedLMHashing
import FedLMTokenizer
import Foundation

/// Turns text into token shards per data cluster: streaming (one document piece in memory at a
/// time), deterministic, and resumable.
///
/// Documents are whole plain files, or the `text` field of each JSONL line. Each document is
/// cut into pieces of at most `pieceBytes` (at newlines where tokenization is unaffected) and
/// ends with `<|endoftext|>`. A piece goes to validation when a hash of its bytes falls below
/// `validationFraction`, so the split depends on content only, not on input order.
/// Progress is recorded after every source file; a rerun skips finished sources and deletes
/// shards an interrupted run left behind.
public struct DataPreparer {
    public enum OnError: String, Sendable { case skip, fail }

    public let tokenizer: Tokenizer
    public let tokenizerPath: String
    public let directory: String
    public var validationFraction = 0.05
    public var shardTokens = 4_000_000
    public var pieceBytes = 4 * 1024
    public var onError: OnError = .fail

    public init(tokenizer: Tokenizer, tokenizerPath: String, directory: String) {
        self.tokenizer = tokenizer
        self.tokenizerPath = tokenizerPath
        self.directory = directory
    }

    static let progressFile = "progress.json"

    /// Prepares every cluster; `log` receives one line per source and per skipped input.
    @discardableResult
    public func run(clusters: [(name: String, inputs: [String])], log: (String) -> Void) throws -> DataManifest {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        guard let tokenizerData = fm.contents(atPath: tokenizerPath) else {
            throw DataError.io(path: tokenizerPath, reason: "cannot read the tokenizer")
        }
        let tokenizerSHA = SHA256.hash(data: tokenizerData).map { String(format: "%02x", $0) }.joined()
        guard let eot = tokenizer.endOfTextID else { throw DataError.badInput(location: tokenizerPath, reason: "no <|endoftext|> token") }
        let names = clusters.map(\.name)
        guard Set(names).count == names.count else { throw DataError.badInput(location: "clusters", reason: "a cluster name appears twice") }
        for name in names where name.isEmpty || name.contains("/") || name.hasPrefix(".") {
            throw DataError.badInput(location: "cluster '\(name)'", reason: "names must be non-empty, without '/' and not start with '.'")
        }

        // Resume: the progress of an earlier run with the same tokenizer, if any.
        let progressPath = directory + "/" + Self.progressFile
        var manifest = DataManifest(tokenizerSHA256: tokenizerSHA, vocabularySize: tokenizer.vocabularySize,
                                    validationFraction: validationFraction, clusters: [])
        if let data = fm.contents(atPath: progressPath), let earlier = try? JSONDecoder().decode(DataManifest.self, from: data) {
            guard earlier.tokenizerSHA256 == tokenizerSHA, earlier.validationFraction == validationFraction else {
                throw DataError.badManifest(path: progressPath, reason: "an interrupted run used another tokenizer or split; remove \(directory) or choose another --out")
            }
            manifest = earlier
            log("resuming: \(earlier.clusters.flatMap(\.sources).count) sources already done")
        } else if fm.fileExists(atPath: directory + "/" + DataManifest.fileName) {
            throw DataError.badManifest(path: directory, reason: "already holds prepared data; remove it or choose another --out")
        }
        try tokenizerData.write(to: URL(fileURLWithPath: directory + "/tokenizer.json"))
        let width = TokenShard.width(forVocabulary: tokenizer.vocabularySize)

        for (name, inputs) in clusters {
            let clusterDir = directory + "/" + name
            try fm.createDirectory(atPath: clusterDir, withIntermediateDirectories: true)
            if !manifest.clusters.contains(where: { $0.name == name }) { manifest.clusters.append(.init(name: name, sources: [])) }
            let ci = manifest.clusters.firstIndex { $0.name == name }!
            // Shards not recorded in the progress are leftovers of an interrupted run.
            let recorded = Set(manifest.clusters[ci].train.map(\.file) + manifest.clusters[ci].validation.map(\.file))
            for file in (try? fm.contentsOfDirectory(atPath: clusterDir)) ?? [] where !recorded.contains(name + "/" + file) {
                try? fm.removeItem(atPath: clusterDir + "/" + file)
            }
            let files: [String]
            do { files = try TextInputs.files(inputs) } catch {
                if onError == .fail { throw error }
                log("skipped: \(error)")
                continue
            }
            for file in files where !manifest.clusters[ci].sources.contains(where: { $0.path == file }) {
                var writer = SplitWriter(directory: directory, cluster: name, width: width, shardTokens: shardTokens,
                                         trainIndex: manifest.clusters[ci].train.count,
                                         validationIndex: manifest.clusters[ci].validation.count)
                var skipped: [String] = []
                var documents = 0
                let hasher = FileHasher()
                let bytes = try TextInputs.forEachDocument(file, hasher: hasher, onBadLine: { location, reason in
                    let line = "\(location): \(reason)"
                    if onError == .fail { throw DataError.badInput(location: location, reason: reason) }
                    skipped.append(line)
                    log("skipped \(line)")
                }) { document in
                    documents += 1
                    let pieces = Self.pieces(document, maxBytes: pieceBytes)
                    for (i, piece) in pieces.enumerated() {
                        var ids = tokenizer.encode(Array(document[piece]))
                        if i == pieces.count - 1 { ids.append(eot) }
                        let validation = Self.isValidation(document[piece], fraction: validationFraction)
                        try writer.append(ids, validation: validation)
                    }
                }
                try writer.finish()
                manifest.clusters[ci].sources.append(.init(path: file, bytes: bytes, sha256: hasher.hex, documents: documents,
                                                           skipped: skipped, train: writer.train, validation: writer.validation))
                try manifest.write(to: progressPath)
                log(String(format: "%@: %@ %d documents, %.1f MB -> %d train + %d validation tokens", name, file, documents,
                           Double(bytes) / 1e6, writer.train.reduce(0) { $0 + $1.tokens },
                           writer.validation.reduce(0) { $0 + $1.tokens }))
            }
        }
        manifest.clusters = names.compactMap { n in manifest.clusters.first { $0.name == n } }
        for c in manifest.clusters where c.validationTokens == 0 {
            log("WARNING: cluster \(c.name) has no validation tokens (too little text for a \(validationFraction) split)")
        }
        try manifest.write(to: directory + "/" + DataManifest.fileName)
        try? fm.removeItem(atPath: progressPath)
        return manifest
    }

    /// Cuts a document into pieces of at most `maxBytes`, preferring a lone newline (as the
    /// parallel encoder does) so pieces tokenize as the whole would; pieces end at a UTF-8
    /// boundary otherwise.
    static func pieces(_ doc: [UInt8], maxBytes: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var start = 0
        while doc.count - start > maxBytes {
            var cut = start + maxBytes
            var p = cut
            while p > start + maxBytes / 2, !(doc[p - 1] == 0x0A && p >= 2 && doc[p - 2] > 0x20 && doc[p - 2] < 0x80 && doc[p] > 0x20 && doc[p] < 0x80 && doc[p] != UInt8(ascii: "<")) {
                p -= 1
            }
            if p > start + maxBytes / 2 {
                cut = p
            } else {
                while cut > start + 1, doc[cut] & 0xC0 == 0x80 { cut -= 1 }  // not inside a UTF-8 sequence
            }
            out.append(start..<cut)
            start = cut
        }
        out.append(start..<doc.count)
        return out
    }

    static func isValidation(_ bytes: ArraySlice<UInt8>, fraction: Double) -> Bool {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        return Double(h % 1_000_000) < fraction * 1_000_000
    }
}

/// Accumulates a source's tokens into train and validation shards.
struct SplitWriter {
    let directory: String, cluster: String, width: Int, shardTokens: Int
    var trainIndex: Int, validationIndex: Int
    var trainBuffer: [Int32] = [], validationBuffer: [Int32] = []
    var train: [DataManifest.Shard] = [], validation: [DataManifest.Shard] = []

    init(directory: String, cluster: String, width: Int, shardTokens: Int, trainIndex: Int, validationIndex: Int) {
        self.directory = directory
        self.cluster = cluster
        self.width = width
        self.shardTokens = shardTokens
        self.trainIndex = trainIndex
        self.validationIndex = validationIndex
    }

    mutating func append(_ ids: [Int32], validation isValidation: Bool) throws {
        if isValidation {
            validationBuffer += ids
            if validationBuffer.count >= shardTokens { try flush(validation: true) }
        } else {
            trainBuffer += ids
            if trainBuffer.count >= shardTokens { try flush(validation: false) }
        }
    }

    mutating func finish() throws {
        try flush(validation: false)
        try flush(validation: true)
    }

    private mutating func flush(validation isValidation: Bool) throws {
        let buffer = isValidation ? validationBuffer : trainBuffer
        if buffer.isEmpty { return }
        let index = isValidation ? validationIndex : trainIndex
        let file = String(format: "%@/%@-%05d.tokens", cluster, isValidation ? "validation" : "train", index)
        let sha = try TokenShard.write(buffer, width: width, to: directory + "/" + file)
        let shard = DataManifest.Shard(file: file, tokens: buffer.count, sha256: sha)
        if isValidation {
            validation.append(shard)
            validationIndex += 1
            validationBuffer = []
        } else {
            train.append(shard)
            trainIndex += 1
            trainBuffer = []
        }
    }
}

/// SHA-256 of a source as it is read.
public final class FileHasher {
    private let hasher = SHA256()
    public init() {}
    public func update(_ data: Data) { hasher.update(data: data) }
    public var hex: String { hasher.finalize().map { String(format: "%02x", $0) }.joined() }
}
