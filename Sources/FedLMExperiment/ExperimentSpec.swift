import FedLMModel
import Foundation
import TOMLKit

/// An experiment: named variants trained on the same data, with the same token budget and seed,
/// one after another on this machine (`fedlm experiment <spec.toml>`).
///
///     name = "stragglers"
///     run_directory = "runs/experiments/stragglers"
///     model = "Config/demo.toml"         # model and local training settings (its seed is replaced)
///     data = "runs/demo-data/shards"
///     tokens = 600000                    # every variant stops after this many training tokens
///     seed = 1234
///     evaluate_every = 4                 # versions between the aggregator's validations
///     time_limit = 1200                  # seconds per variant, a safety stop
///     reference = "sync"                 # optional: time for each variant to reach this one's final loss
///
///     [[variant]]
///     name = "centralized"
///     centralized = true                 # `fedlm train` on all the data ("pooled")
///
///     [[variant]]
///     name = "alone"
///     local = true                       # each trainer of the topology trains alone on its own
///     topology = "Topologies/experiments/five-trainers.toml"   #   clusters with its share of the tokens
///
///     [[variant]]
///     name = "fedbuff"
///     topology = "Topologies/experiments/five-trainers.toml"   # trainers, their data, clusters
///     model = "Config/experiments/demo-quarter-batch.toml"   # optional: this variant's own model/training config
///     local_steps = 5                    # optional: every trainer's H
///     [variant.aggregation]              # optional: replaces keys of the topology's [aggregation]
///     mode = "fedbuff"
///     [variant.clusters]                 # optional: replaces keys of the topology's [clusters]
///     [variant.wire]                     # optional: replaces keys of the topology's [wire] (encodings, overlap)
///     share = 0.25
public struct ExperimentSpec: Sendable {
    public struct Variant: Sendable {
        public var name: String
        public var centralized: Bool
        /// Every trainer of `topology` trains alone (`fedlm train` on its own clusters) with its
        /// share of the token budget: what each organisation gets without joining.
        public var local: Bool
        public var topology: String?
        /// The `[variant.aggregation]` overrides as TOML text (applied to the topology's table).
        public var aggregationOverrides: String?
        /// The `[variant.wire]` settings as TOML text (replace keys of the topology's `[wire]`).
        public var wireOverrides: String?
        /// The `[variant.clusters]` overrides as TOML text (applied to the topology's `[clusters]`).
        public var clusterOverrides: String?
        /// Every trainer's local steps H instead of the topology's.
        public var localSteps: Int?
        /// A short description for the results table.
        public var label: String?
        /// This variant's model and local training config instead of the spec's (same seed).
        public var model: String?
    }

    public var path: String
    public var name: String
    public var runDirectory: String
    public var model: String
    public var data: String
    public var tokens: Int
    public var seed: Int
    public var evaluateEvery: Int
    public var timeLimit: Double
    public var reference: String?
    public var basePort: Int
    public var variants: [Variant]

    public static func load(path: String) throws -> ExperimentSpec {
        func bad(_ why: String) -> ExperimentError { ExperimentError("\(path): \(why)") }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch { throw bad("cannot read: \(error.localizedDescription)") }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch { throw bad("not valid TOML: \(error)") }
        let root = TOMLReader(table, fail: bad)
        try root.allowOnly(["name", "run_directory", "model", "data", "tokens", "seed", "evaluate_every", "time_limit", "reference",
                            "base_port", "variant"])
        guard let name = try root.string("name") else { throw bad("'name' is required") }
        guard let model = try root.string("model") else { throw bad("'model' (a config path) is required") }
        guard let data = try root.string("data") else { throw bad("'data' (a prepared data directory) is required") }
        guard let tokens = try root.int("tokens"), tokens > 0 else { throw bad("'tokens' (a positive token budget per variant) is required") }
        var spec = ExperimentSpec(path: path, name: name, runDirectory: try root.string("run_directory") ?? "runs/experiments/\(name)",
                                  model: model, data: data, tokens: tokens, seed: try root.int("seed") ?? 1234,
                                  evaluateEvery: try root.int("evaluate_every") ?? 4,
                                  timeLimit: Double(try root.int("time_limit") ?? 1800), reference: try root.string("reference"),
                                  basePort: try root.int("base_port") ?? 5700, variants: [])
        guard spec.evaluateEvery >= 1 else { throw bad("'evaluate_every' must be >= 1") }
        guard let list = try root.tables("variant", "a list of [[variant]] tables"), !list.isEmpty else { throw bad("at least one [[variant]] is required") }
        for v in list {
            let p = v.prefix
            try v.allowOnly(["name", "centralized", "local", "topology", "aggregation", "clusters", "wire", "local_steps", "label", "model"])
            guard let vname = try v.string("name"), ExperimentSpec.isValidName(vname) else {
                throw bad("'\(p)name' is required: letters, digits, '-', '_'")
            }
            let centralized = try v.bool("centralized") ?? false, local = try v.bool("local") ?? false
            let topology = try v.string("topology")
            guard centralized != (topology != nil) else { throw bad("'\(p)': give either centralized = true or a topology") }
            guard !local || topology != nil else { throw bad("'\(p)local': needs the topology whose trainers train alone") }
            func overrides(_ key: String) throws -> String? {
                guard v.has(key) else { return nil }
                guard !local, !centralized else { throw bad("'\(p)\(key)': only a federated variant has \(key) settings") }
                guard let table = v.table[key]?.table else { throw bad("'\(p)\(key)' must be a table") }
                return table.convert(to: .toml)
            }
            let localSteps = try v.int("local_steps")
            if let h = localSteps, h < 1 { throw bad("'\(p)local_steps' must be >= 1") }
            var variant = Variant(name: vname, centralized: centralized, local: local, topology: topology,
                                  aggregationOverrides: try overrides("aggregation"), clusterOverrides: try overrides("clusters"), localSteps: localSteps,
                                  label: try v.string("label"), model: try v.string("model"))
            variant.wireOverrides = try overrides("wire")
            spec.variants.append(variant)
        }
        guard Set(spec.variants.map(\.name)).count == spec.variants.count else { throw bad("variant names must be unique") }
        if let r = spec.reference, !spec.variants.contains(where: { $0.name == r }) { throw bad("'reference' names no variant: \(r)") }
        return spec
    }

    /// The spec with another seed or prepared data directory (`fedlm experiment --seed --data`,
    /// to confirm a result on a second seed or corpus without a copy of the spec): the run
    /// directory gains "-seed<N>" and "-<the data's folder>" (its parent when it is `shards`), so
    /// such runs sit beside the spec's own.
    public func overriding(seed: Int?, data: String?) -> ExperimentSpec {
        var s = self
        if let seed, seed != self.seed {
            s.seed = seed
            s.runDirectory += "-seed\(seed)"
        }
        if let data, data != self.data {
            s.data = data
            let folder = URL(fileURLWithPath: data).standardized
            s.runDirectory += "-" + (folder.lastPathComponent == "shards" ? folder.deletingLastPathComponent() : folder).lastPathComponent
        }
        return s
    }

    static func isValidName(_ s: String) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy { ($0.isASCII && CharacterSet.alphanumerics.contains($0)) || $0 == "-" || $0 == "_" }
    }
}

public struct ExperimentError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
