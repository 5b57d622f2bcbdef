import ArgumentParser
import FedLMCheckpoint
import FedLMData
import FedLMExperiment
import FedLMFederation
import FedLMLedger
import FedLMModel
import Foundation
import TOMLKit

/// Runs the variants of an experiment spec one after another on the same data, token budget and
/// seed, and writes the run directory: the exact configs used, results.md / results.csv, and
/// SVG plots of validation loss per data cluster against tokens and wall time.
struct ExperimentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "experiment",
        abstract: "Run an experiment spec's variants (centralized, federated modes, personalized heads) and tabulate and plot them.")

    @Argument(help: "Experiment spec, e.g. Topologies/experiments/stragglers.toml.") var spec: String
    @Option(help: "Run only these variants (comma-separated); the report covers every variant with results on disk.") var only: String?
    @Option(help: "Train with this seed instead of the spec's (results in <run_directory>-seed<N>).") var seed: Int?
    @Option(help: "Train on this prepared data directory instead of the spec's, e.g. runs/confirm-data/shards (results in <run_directory>-confirm-data).")
    var data: String?

    struct Outcome {
        var variant: ExperimentSpec.Variant
        var curve: LearningCurve
        var final: [String: Double]
        var seconds: Double
        var tokens: Int
        var assignments: [String] = []
        /// Trainers' data (clusters joined by "+") -> final cluster -> how many trainers.
        var matrix: [String: [String: Int]] = [:]
        /// Trainer (organisation) -> mean held-out loss on its own data clusters with the model
        /// that serves it: its own (local), its cluster's or the global model (federated).
        var organisations: [String: Double] = [:]
        /// With personalized clusters: the global model's final loss on every data cluster (the
        /// model a cluster created later starts from).
        var global: [String: Double] = [:]
        /// Federated variants: what the trainers sent and received for the tokens they trained.
        var traffic: Traffic?
    }

    /// The trainers' bytes on the wire against their trained tokens, and data-parallel training's
    /// for comparison: every worker all-reducing F32 gradients each step (a ring: 4N bytes sent
    /// and 4N received per worker per step of `batchTokens` tokens, N parameters).
    struct Traffic: Equatable {
        var sent: Int
        var received: Int
        var tokens: Int
        var dataParallelBytesPerToken: Double

        var sentPerToken: Double { Double(sent) / Double(max(tokens, 1)) }
        var receivedPerToken: Double { Double(received) / Double(max(tokens, 1)) }
        /// How many times fewer bytes per trained token than data-parallel training.
        var fewerThanDataParallel: Double { dataParallelBytesPerToken / max(sentPerToken + receivedPerToken, 1e-9) }

        /// Sums the `stats.json` of every trainer under `trainers` (a run directory's `trainers/`).
        static func read(trainers: String, parameters: Int, batchTokens: Int) -> Traffic? {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: trainers)) ?? []
            let stats = names.compactMap { name -> TrainerStats? in
                guard let data = FileManager.default.contents(atPath: trainers + "/" + name + "/" + TrainerStats.file) else { return nil }
                return try? JSONDecoder().decode(TrainerStats.self, from: data)
            }
            guard !stats.isEmpty else { return nil }
            return Traffic(sent: stats.reduce(0) { $0 + $1.bytesSent }, received: stats.reduce(0) { $0 + $1.bytesReceived },
                           tokens: stats.reduce(0) { $0 + $1.tokens }, dataParallelBytesPerToken: 8 * Double(parameters) / Double(batchTokens))
        }
    }

    func validate() throws {
        if let data, !FileManager.default.fileExists(atPath: data + "/manifest.json") {
            throw ValidationError("--data \(data): no manifest.json (prepare it with `fedlm data prepare`)")
        }
    }

    func run() throws {
        Runtime.announce()
        let spec = try ExperimentSpec.load(path: self.spec).overriding(seed: seed, data: data)
        let chosen = only.map { Set($0.split(separator: ",").map(String.init)) }
        if let unknown = chosen?.subtracting(spec.variants.map(\.name)).sorted(), !unknown.isEmpty {
            throw ValidationError("--only: \(self.spec) has no variant \(unknown.joined(separator: ", ")) (it has \(spec.variants.map(\.name).joined(separator: ", ")))")
        }
        let fm = FileManager.default
        try fm.createDirectory(atPath: spec.runDirectory, withIntermediateDirectories: true)
        try String(contentsOfFile: self.spec, encoding: .utf8).write(toFile: spec.runDirectory + "/spec.toml", atomically: true, encoding: .utf8)
        // Model configs with the experiment's seed: every variant trains from the same start.
        func seeded(_ config: String, as name: String) throws -> String {
            let table = try TOMLTable(string: String(contentsOfFile: config, encoding: .utf8))
            let training = table["training"]?.table ?? TOMLTable()
            training["seed"] = spec.seed
            table["training"] = training
            let path = spec.runDirectory + "/" + name
            try table.convert(to: .toml).write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let modelPath = try seeded(spec.model, as: "model.toml")
        let file = try ConfigResolution.load(modelPath)
        let sequence = file.training.sequenceLength ?? file.model.context
        let data = PreparedData(dataset: try TokenDataset(directory: spec.data))
        let validation = try OrganisationRuns.validation(data.dataset, modelPath: modelPath)
        for (i, v) in spec.variants.enumerated() where chosen?.contains(v.name) ?? true {
            print("=== \(spec.name): \(v.name) ===")
            let ownModel = try v.model.map { try seeded($0, as: v.name + ".model.toml") } ?? modelPath
            let own = try ConfigResolution.load(ownModel)
            guard own.model == file.model else { throw RunFailure("\(v.name): its model shape differs from the spec's (only training settings may)") }
            let outcome = try run(v, index: i, spec: spec, modelPath: ownModel, batchTokens: own.training.batchSize * sequence,
                                  validation: validation)
            try Self.save(outcome, to: spec.runDirectory + "/" + v.name + "/outcome.json")
            print(String(format: "%@: mean validation loss %.4f after %d tokens, %.0f s", v.name, Self.mean(outcome.final), outcome.tokens, outcome.seconds))
        }
        var outcomes: [Outcome] = []
        for v in spec.variants {
            if let o = try? Self.load(spec.runDirectory + "/" + v.name + "/outcome.json", variant: v) { outcomes.append(o) }
        }
        try ExperimentReport(spec: spec, outcomes: outcomes, clusters: data.dataset.clusters).write()
        print(try String(contentsOfFile: spec.runDirectory + "/results.md", encoding: .utf8))
    }

    static func mean(_ losses: [String: Double]) -> Double { losses.values.reduce(0, +) / Double(max(losses.count, 1)) }

    /// Trains one variant to the token budget and evaluates its final model(s) on the shared
    /// validation batches.
    func run(_ v: ExperimentSpec.Variant, index: Int, spec: ExperimentSpec, modelPath: String, batchTokens: Int,
             validation: [(name: String, batches: [TokenBatch])]) throws -> Outcome {
        let dir = spec.runDirectory + "/" + v.name
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let start = Date().timeIntervalSince1970
        func evaluate(_ model: GPT2Model, _ cluster: String) throws -> Double {
            Double(try meanLoss(model, validation.first { $0.name == cluster }!.batches))
        }
        if v.centralized {
            let steps = max(1, spec.tokens / batchTokens)
            let model = try OrganisationRuns.train(modelPath: modelPath, data: spec.data, clusters: nil, tokens: spec.tokens, out: dir)
            var final: [String: Double] = [:]
            for set in validation { final[set.name] = try evaluate(model, set.name) }
            return Outcome(variant: v, curve: try LearningCurve.fromTrainingCSV(dir + "/validation.csv"), final: final,
                           seconds: Date().timeIntervalSince1970 - start, tokens: steps * batchTokens)
        }
        if v.local { return try runAlone(v, spec: spec, modelPath: modelPath, batchTokens: batchTokens, validation: validation, in: dir) }
        // A federated variant: the topology with this experiment's model, data, ports, evaluation
        // cadence and overrides, run by `fedlm up` until the ledger has the budget.
        let topologyPath = dir + "/topology.toml"
        try Self.writeTopology(v, spec: spec, port: spec.basePort + 10 * index, runDirectory: dir + "/federation", modelPath: modelPath,
                               batchTokens: batchTokens, to: topologyPath)
        let topology = try Topology.load(path: topologyPath)
        let up = try OrganisationRuns.spawn(["up", topologyPath, "--fresh"], log: dir + "/up.log")
        let ledgerPath = dir + "/federation/ledger.sqlite"
        var tokens = 0
        while up.isRunning {
            Thread.sleep(forTimeInterval: 0.25)
            if FileManager.default.fileExists(atPath: ledgerPath), let t = try? Ledger.reading(path: ledgerPath).acceptedTokens() { tokens = t }
            if tokens >= spec.tokens || Date().timeIntervalSince1970 - start > spec.timeLimit { break }
        }
        let seconds = Date().timeIntervalSince1970 - start
        if up.isRunning { up.interrupt() }  // Ctrl-C: everything stops cleanly, the aggregator checkpoints
        let deadline = Date().addingTimeInterval(120)
        while up.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        if up.isRunning { up.terminate() }
        up.waitUntilExit()
        if seconds > spec.timeLimit { print("\(v.name): stopped at \(tokens) tokens (time limit \(Int(spec.timeLimit)) s)") }
        let ledger = try Ledger(path: ledgerPath)
        // Updates in flight when the stop came are applied too: count what the final model saw.
        tokens = try ledger.acceptedTokens()
        let models = try ClusterModels(ledger: ledger)
        let global = try models.global()
        // Which cluster serves each data cluster: the final cluster of the trainers holding it.
        let current = try OrganisationRuns.finalClusters(ledger)
        var assignments: [String] = []
        var matrix: [String: [String: Int]] = [:]
        let allAssignments = try ledger.assignments()
        for t in topology.trainers {
            let moves = allAssignments.filter { $0.trainer == t.name }
            if let last = moves.last {
                matrix[(t.clusters ?? ["all"]).joined(separator: "+"), default: [:]][last.cluster, default: 0] += 1
                assignments.append("\(t.name) (data \((t.clusters ?? ["all"]).joined(separator: "+"))) -> \(last.cluster) [\(last.how)\(moves.count > 1 ? ", \(moves.count - 1) moves: \(moves.map(\.cluster).joined(separator: " -> "))" : "")]")
            }
        }
        // With clusters, the global model on every data cluster (reported beside the clusters' models).
        var globalLosses: [String: Double] = [:]
        if topology.aggregation.clusters != nil {
            for set in validation { globalLosses[set.name] = try evaluate(global, set.name) }
            print(String(format: "%@: the global model's mean validation loss %.4f", v.name, Self.mean(globalLosses)))
        }
        var final: [String: Double] = [:]
        for set in validation {
            let serving = Set(topology.trainers.filter { $0.clusters?.contains(set.name) ?? false }.compactMap { current[$0.name] })
            if serving.count == 1, let c = serving.first {
                final[set.name] = try evaluate(try models.model(of: c), set.name)
            } else {
                final[set.name] = try globalLosses[set.name] ?? evaluate(global, set.name)
            }
        }
        // Each organisation (trainer) is served by its final cluster's model, or the global one.
        let organisations = try OrganisationRuns.federatedLosses(topology, models: models, clusters: current, global: global, validation: validation)
        let traffic = Traffic.read(trainers: dir + "/federation/trainers", parameters: global.config.parameterCount, batchTokens: batchTokens)
        return Outcome(variant: v, curve: try LearningCurve.fromLedger(ledgerPath, start: start, personalized: topology.aggregation.clusters != nil),
                       final: final, seconds: seconds, tokens: tokens, assignments: assignments, matrix: matrix, organisations: organisations,
                       global: globalLosses, traffic: traffic)
    }

    /// The local variant: every trainer of the topology trains alone (`fedlm train --clusters`)
    /// on its own data with its share of the token budget (the share it gets in a federation),
    /// one after another; each is scored on its own clusters with its own model.
    func runAlone(_ v: ExperimentSpec.Variant, spec: ExperimentSpec, modelPath: String, batchTokens: Int,
                  validation: [(name: String, batches: [TokenBatch])], in dir: String) throws -> Outcome {
        let start = Date().timeIntervalSince1970
        let topology = try Topology.load(path: v.topology!)
        let shares = Self.shares(topology, spec: spec, batchTokens: batchTokens)
        var organisations: [String: Double] = [:]
        var perCluster: [String: [Double]] = [:]
        for t in topology.trainers {
            let out = dir + "/" + t.name
            let model = try OrganisationRuns.train(modelPath: modelPath, data: spec.data, clusters: t.clusters, tokens: shares[t.name]!, out: out)
            let losses = try OrganisationRuns.clusterLosses(model, clusters: t.clusters, validation: validation)
            organisations[t.name] = losses.values.reduce(0, +) / Double(losses.count)
            for (cluster, loss) in losses { perCluster[cluster, default: []].append(loss) }
            print(String(format: "%@ alone on %@: %.4f", t.name, (t.clusters ?? ["all"]).joined(separator: "+"), organisations[t.name]!))
        }
        return Outcome(variant: v, curve: LearningCurve(points: []), final: perCluster.mapValues { $0.reduce(0, +) / Double($0.count) },
                       seconds: Date().timeIntervalSince1970 - start, tokens: shares.values.reduce(0, +), organisations: organisations)
    }

    /// Each trainer's share of the experiment's budget, in proportion to its speed.
    static func shares(_ topology: Topology, spec: ExperimentSpec, batchTokens: Int) -> [String: Int] {
        TokenShares.split(spec.tokens, among: topology.trainers.map { ($0.name, $0.slowdown) }, batchTokens: batchTokens)
    }

    /// The variant's topology with this experiment's model, data, ports, run directory,
    /// evaluation cadence and aggregation overrides, and each trainer's share of the token budget
    /// as its own budget (so its learning-rate schedule spans its share, as the local runs' do).
    static func writeTopology(_ v: ExperimentSpec.Variant, spec: ExperimentSpec, port: Int, runDirectory: String, modelPath: String,
                              batchTokens: Int, to path: String) throws {
        let root = try TOMLTable(string: String(contentsOfFile: v.topology!, encoding: .utf8))
        if let trainers = root["trainer"]?.array, trainers.contains(where: { $0.table?["tokens"] != nil }) {
            throw RunFailure("\(v.topology!): experiment topologies leave out trainers' 'tokens' (the harness gives each its share of the budget)")
        }
        let shares = Self.shares(try Topology.load(path: v.topology!), spec: spec, batchTokens: batchTokens)
        if let trainers = root["trainer"]?.array {
            for i in 0..<trainers.count {
                guard let t = trainers[i]?.table, let name = t["name"]?.string else { continue }
                t["tokens"] = shares[name]
                if let h = v.localSteps { t["local_steps"] = h }
            }
        }
        if let overrides = v.clusterOverrides {
            guard let clusters = root["clusters"]?.table else { throw RunFailure("\(v.name): [variant.clusters] needs a topology with [clusters]") }
            let o = try TOMLTable(string: overrides)
            for key in o.keys { clusters[key] = o[key] }
        }
        if let overrides = v.wireOverrides {
            let wire = root["wire"]?.table ?? TOMLTable()
            let o = try TOMLTable(string: overrides)
            for key in o.keys { wire[key] = o[key] }
            root["wire"] = wire
        }
        root["name"] = spec.name + "-" + v.name
        root["run_directory"] = runDirectory
        root["model"] = modelPath
        root["data"] = spec.data
        let broker = TOMLTable()
        for (i, key) in ["trainers", "aggregator", "publish", "releases"].enumerated() { broker[key] = "tcp://127.0.0.1:\(port + i)" }
        root["broker"] = broker
        let aggregation = TOMLTable()
        if let original = root["aggregation"]?.table { for key in original.keys { aggregation[key] = original[key] } }
        if let overrides = v.aggregationOverrides {
            let o = try TOMLTable(string: overrides)
            for key in o.keys { aggregation[key] = o[key] }
        }
        aggregation["evaluate_every"] = spec.evaluateEvery
        if aggregation["durability"] == nil { aggregation["durability"] = "process" }
        root["aggregation"] = aggregation
        try root.convert(to: .toml).write(toFile: path, atomically: true, encoding: .utf8)
    }

    // MARK: Outcomes on disk (so a report can combine variants run separately)

    static func save(_ o: Outcome, to path: String) throws {
        let points = o.curve.points.map { ["tokens": Double($0.tokens), "seconds": $0.seconds].merging($0.losses.mapKeys { "loss/" + $0 }) { a, _ in a } }
        let json: [String: Any] = ["final": o.final, "seconds": o.seconds, "tokens": o.tokens, "assignments": o.assignments, "matrix": o.matrix,
                                   "organisations": o.organisations, "global": o.global, "curve": points,
                                   "traffic": o.traffic.map { ["sent": Double($0.sent), "received": Double($0.received), "tokens": Double($0.tokens),
                                                               "dataParallelBytesPerToken": $0.dataParallelBytesPerToken] } ?? [:]]
        try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: path))
    }

    static func load(_ path: String, variant: ExperimentSpec.Variant) throws -> Outcome {
        let any = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))
        guard let json = any as? [String: Any], let final = json["final"] as? [String: Double], let seconds = json["seconds"] as? Double,
              let tokens = json["tokens"] as? Int, let curve = json["curve"] as? [[String: Double]] else { throw RunFailure("\(path): not an outcome") }
        let points = curve.map { p in
            LearningCurve.Point(tokens: Int(p["tokens"] ?? 0), seconds: p["seconds"] ?? 0,
                                losses: Dictionary(uniqueKeysWithValues: p.filter { $0.key.hasPrefix("loss/") }.map { (String($0.key.dropFirst(5)), $0.value) }))
        }
        return Outcome(variant: variant, curve: LearningCurve(points: points), final: final, seconds: seconds, tokens: tokens,
                       assignments: json["assignments"] as? [String] ?? [], matrix: json["matrix"] as? [String: [String: Int]] ?? [:],
                       organisations: json["organisations"] as? [String: Double] ?? [:], global: json["global"] as? [String: Double] ?? [:],
                       traffic: (json["traffic"] as? [String: Double]).flatMap { t in
                           guard let sent = t["sent"], let received = t["received"], let tokens = t["tokens"], let dp = t["dataParallelBytesPerToken"] else { return nil }
                           return Traffic(sent: Int(sent), received: Int(received), tokens: Int(tokens), dataParallelBytesPerToken: dp)
                       })
    }
}

extension Dictionary {
    func mapKeys<K: Hashable>(_ f: (Key) -> K) -> [K: Value] { Dictionary<K, Value>(uniqueKeysWithValues: map { (f($0.key), $0.value) }) }
}
