import FedLMModel
import FedLMTensor
import Foundation

/// A prepared data directory, memory-mapped and verified (every shard's size and SHA-256
/// against its header and the manifest) before use.
public final class TokenDataset: Sendable {
    public enum Split: String, Sendable { case train, validation }

    public let directory: String
    public let manifest: DataManifest
    private let shards: [String: [Split: [TokenShardReader]]]

    public init(directory: String) throws {
        self.directory = directory
        manifest = try DataManifest.load(directory: directory)
        var shards: [String: [Split: [TokenShardReader]]] = [:]
        for cluster in manifest.clusters {
            var bySplit: [Split: [TokenShardReader]] = [:]
            for (split, list) in [(Split.train, cluster.train), (.validation, cluster.validation)] {
                bySplit[split] = try list.map { shard in
                    let reader = try TokenShardReader(path: directory + "/" + shard.file, expectedSHA256: shard.sha256)
                    guard reader.count == shard.tokens else {
                        throw DataError.corruptShard(path: reader.path, reason: "\(reader.count) tokens, the manifest says \(shard.tokens)")
                    }
                    return reader
                }
            }
            shards[cluster.name] = bySplit
        }
        self.shards = shards
    }

    public var clusters: [String] { manifest.clusters.map(\.name) }
    public var vocabularySize: Int { manifest.vocabularySize }
    public var tokenizerPath: String { directory + "/tokenizer.json" }

    public func tokens(_ cluster: String, _ split: Split) -> Int {
        (shards[cluster]?[split] ?? []).reduce(0) { $0 + $1.count }
    }

    public func checkCluster(_ name: String) throws {
        guard shards[name] != nil else { throw DataError.unknownCluster(name, known: clusters) }
    }

    /// A batch of random windows (inputs and next-token targets) from the given clusters' split,
    /// clusters and shards weighted by their token counts.
    public func batch(_ split: Split, clusters names: [String]? = nil, batch: Int, sequence: Int,
                      rng: inout SeededGenerator) throws -> TokenBatch {
        let candidates = try (names ?? clusters).flatMap { name -> [TokenShardReader] in
            try checkCluster(name)
            return (shards[name]?[split] ?? []).filter { $0.count > sequence + 1 }
        }
        guard !candidates.isEmpty else {
            throw DataError.tooSmall("no \(split.rawValue) shard of \((names ?? clusters).joined(separator: ", ")) holds more than \(sequence + 1) tokens")
        }
        let total = candidates.reduce(0) { $0 + $1.count - sequence - 1 }
        var inputs = [Int32](repeating: 0, count: batch * sequence)
        var targets = [Int32](repeating: 0, count: batch * sequence)
        var window = [Int32](repeating: 0, count: sequence + 1)
        for b in 0..<batch {
            var pick = Int(rng.next() % UInt64(total))
            var chosen = candidates[0]
            for shard in candidates {
                let span = shard.count - sequence - 1
                if pick < span { chosen = shard; break }
                pick -= span
            }
            window.withUnsafeMutableBufferPointer { chosen.read(pick, sequence + 1, into: $0.baseAddress!) }
            for t in 0..<sequence {
                inputs[b * sequence + t] = window[t]
                targets[b * sequence + t] = window[t + 1]
            }
        }
        return TokenBatch(batch: batch, sequence: sequence, inputs: inputs, targets: targets)
    }

    /// Consecutive, non-overlapping windows over a cluster's validation tokens (the same every
    /// time), grouped into batches; at most `maxBatches`.
    public func validationBatches(_ cluster: String, batch: Int, sequence: Int, maxBatches: Int) throws -> [TokenBatch] {
        try checkCluster(cluster)
        var windows: [[Int32]] = []
        outer: for shard in shards[cluster]?[.validation] ?? [] {
            var start = 0
            while start + sequence + 1 <= shard.count {
                windows.append(shard.tokens(start..<(start + sequence + 1)))
                start += sequence
                if windows.count >= batch * maxBatches { break outer }
            }
        }
        var out: [TokenBatch] = []
        var i = 0
        while i < windows.count {
            let group = windows[i..<min(windows.count, i + batch)]
            out.append(TokenBatch(batch: group.count, sequence: sequence,
                                  inputs: group.flatMap { $0.prefix(sequence) }, targets: group.flatMap { $0.dropFirst() }))
            i += batch
        }
        return out
    }
}
