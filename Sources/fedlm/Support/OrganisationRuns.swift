import FedLMCheckpoint
import FedLMData
import FedLMFederation
import FedLMLedger
import FedLMModel
import Foundation

/// What the per-organisation comparison needs from runs on disk: a model trained alone (or on
/// everything pooled) by `fedlm train`, the model a federation serves each trainer, and an
/// organisation's held-out loss. Shared by `fedlm experiment` and `fedlm compare`.
enum OrganisationRuns {
    /// This fedlm binary, to start its subcommands.
    static var executable: String { URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path }

    static func spawn(_ arguments: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)!
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        return p
    }

    /// `fedlm train` into `out` on `clusters` (nil: all, pooled) for `tokens`; returns the model
    /// from `out/checkpoint`. Its learning-rate schedule spans `tokens`, as a trainer's spans its budget.
    static func train(modelPath: String, data: String, clusters: [String]?, tokens: Int, out: String) throws -> GPT2Model {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let file = try ConfigResolution.load(modelPath)
        let steps = max(1, tokens / (file.training.batchSize * (file.training.sequenceLength ?? file.model.context)))
        var arguments = ["train", "--config", modelPath, "--data", data, "--tokens", "\(tokens)", "--out", out,
                         "--validate-every", "\(max(1, steps / 12))", "--validation-batches", "2", "--checkpoint-every", "0", "--sample-bytes", "0"]
        if let clusters { arguments += ["--clusters", clusters.joined(separator: ",")] }
        let p = try spawn(arguments, log: out + "/train.log")
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw RunFailure("fedlm train failed (see \(out)/train.log)") }
        return try Checkpoint.load(from: out + "/checkpoint").model
    }

    /// Held-out loss of `model` on each of an organisation's clusters (nil: every cluster).
    static func clusterLosses(_ model: GPT2Model, clusters: [String]?, validation: [(name: String, batches: [TokenBatch])]) throws -> [String: Double] {
        let sets = validation.filter { clusters?.contains($0.name) ?? true }
        guard !sets.isEmpty else { throw RunFailure("no validation data for clusters \((clusters ?? []).joined(separator: ", "))") }
        return Dictionary(uniqueKeysWithValues: try sets.map { ($0.name, Double(try meanLoss(model, $0.batches))) })
    }

    /// Mean held-out loss of `model` over an organisation's clusters (nil: every cluster).
    static func loss(_ model: GPT2Model, clusters: [String]?, validation: [(name: String, batches: [TokenBatch])]) throws -> Double {
        let losses = try clusterLosses(model, clusters: clusters, validation: validation)
        return losses.values.reduce(0, +) / Double(losses.count)
    }

    /// The validation batches every comparison scores on: 4 batches of 8 windows per cluster.
    static func validation(_ data: TokenDataset, modelPath: String) throws -> [(name: String, batches: [TokenBatch])] {
        let file = try ConfigResolution.load(modelPath)
        return try PreparedData(dataset: data).validationSets(batch: 8, sequence: file.training.sequenceLength ?? file.model.context, maxBatches: 4)
    }

    /// Each trainer's final cluster in the ledger (the last assignment it got).
    static func finalClusters(_ ledger: Ledger) throws -> [String: String] {
        var cluster: [String: String] = [:]
        for a in try ledger.assignments() { cluster[a.trainer] = a.cluster }
        return cluster
    }

    /// The federation's model for each trainer of `topology`: its final cluster's (global trunk,
    /// the cluster's head), or `global` where it has no cluster.
    static func federatedModels(_ topology: Topology, models: ClusterModels, clusters: [String: String], global: GPT2Model) throws -> [String: GPT2Model] {
        var out: [String: GPT2Model] = [:]
        for t in topology.trainers { out[t.name] = try clusters[t.name].map { try models.model(of: $0) } ?? global }
        return out
    }

    /// Each trainer's (organisation's) loss on its own clusters with the federation's model for it.
    static func federatedLosses(_ topology: Topology, models: ClusterModels, clusters: [String: String], global: GPT2Model,
                                validation: [(name: String, batches: [TokenBatch])]) throws -> [String: Double] {
        let served = try federatedModels(topology, models: models, clusters: clusters, global: global)
        var losses: [String: Double] = [:]
        for t in topology.trainers { losses[t.name] = try loss(served[t.name]!, clusters: t.clusters, validation: validation) }
        return losses
    }
}
