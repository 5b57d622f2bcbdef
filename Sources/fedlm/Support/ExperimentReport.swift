import FedLMExperiment
import FedLMFederation
import Foundation

/// The results of an experiment's variants: results.md and results.csv (final validation loss per
/// data cluster on the same held-out batches, perplexity, tokens, wall time; against the
/// reference variant: perplexity ratio and time to reach its final loss), SVG plots per data
/// cluster against tokens and against wall time, and the cluster assignments.
struct ExperimentReport {
    let spec: ExperimentSpec
    let outcomes: [ExperimentCommand.Outcome]
    /// The data's clusters (an organisation without `clusters` trains on all of them).
    let dataClusters: [String]

    init(spec: ExperimentSpec, outcomes: [ExperimentCommand.Outcome], clusters: [String]) {
        self.spec = spec
        self.outcomes = outcomes
        self.dataClusters = clusters
    }

    var clusters: [String] { Array(Set(outcomes.flatMap { $0.final.keys })).sorted() }
    var reference: ExperimentCommand.Outcome? { outcomes.first { $0.variant.name == spec.reference } }

    /// Mean over data clusters of exp(reference loss) / exp(variant loss): how many times lower
    /// the variant's perplexity is.
    func perplexityRatio(_ o: ExperimentCommand.Outcome) -> Double? {
        guard let r = reference else { return nil }
        let ratios = clusters.compactMap { c in r.final[c].flatMap { rl in o.final[c].map { exp(rl) / exp($0) } } }
        return ratios.isEmpty ? nil : ratios.reduce(0, +) / Double(ratios.count)
    }

    /// Seconds until the variant's validation curve first reaches the reference curve's final mean loss.
    func secondsToReference(_ o: ExperimentCommand.Outcome) -> Double? {
        guard let target = reference?.curve.points.last?.mean else { return nil }
        return o.curve.secondsToReach(target)
    }

    /// The local variants that ran (each organisation's "alone" is its best among them).
    var localOutcomes: [ExperimentCommand.Outcome] { outcomes.filter { $0.variant.local } }

    /// The per-organisation comparison, when a local variant ran: the first one's topology's
    /// trainers are the organisations, and each one's loss alone is the lowest it reached in any
    /// local variant (the strictest baseline); every federated variant and the first centralized
    /// one (pooled) are compared with it.
    func worthJoining() throws -> WorthJoining? {
        guard let first = localOutcomes.first, let path = first.variant.topology else { return nil }
        var alone: [String: Double] = [:]
        for o in localOutcomes { for (name, loss) in o.organisations { alone[name] = min(alone[name] ?? .infinity, loss) } }
        let organisations = try Topology.load(path: path).trainers.map {
            WorthJoining.Organisation(name: $0.name, clusters: $0.clusters ?? dataClusters)
        }
        let pooled = outcomes.first { $0.variant.centralized }.map { o in
            Dictionary(uniqueKeysWithValues: organisations.compactMap { org -> (String, Double)? in
                let losses = org.clusters.compactMap { o.final[$0] }
                return losses.count == org.clusters.count ? (org.name, losses.reduce(0, +) / Double(losses.count)) : nil
            })
        }
        let federated = outcomes.filter { !$0.variant.local && !$0.variant.centralized && !$0.organisations.isEmpty }
            .map { (variant: $0.variant.name, losses: $0.organisations) }
        return WorthJoining(organisations: organisations, alone: alone, federated: federated, pooled: pooled)
    }

    /// Bytes per trained token of the federated variants, both ways and against data-parallel
    /// training, beside their held-out loss: every trade-off of the wire in one table.
    func trafficTable() -> String {
        let measured = outcomes.compactMap { o in o.traffic.map { (o, $0) } }
        guard let first = measured.first else { return "" }
        var md = "\n## Bytes per trained token\n\nEverything the trainers sent and received (every frame, resends and the first release "
        md += "included; their `stats.json`) over the tokens they trained, against data-parallel training of the same model "
        md += String(format: "(every worker all-reducing F32 gradients each step: %.0f bytes per trained token).\n\n", first.1.dataParallelBytesPerToken)
        md += "| variant | sent per token | received per token | fewer bytes than data-parallel | mean loss |\n|---|---|---|---|---|\n"
        for (o, t) in measured {
            md += String(format: "| %@ | %.1f | %.1f | %.1fx | %.4f |\n", o.variant.name, t.sentPerToken, t.receivedPerToken,
                         t.fewerThanDataParallel, ExperimentCommand.mean(o.final))
        }
        return md
    }

    func write() throws {
        let dir = spec.runDirectory
        try FileManager.default.createDirectory(atPath: dir + "/plots", withIntermediateDirectories: true)
        func f(_ v: Double?, _ format: String = "%.3f") -> String { v.map { String(format: format, $0) } ?? "-" }
        let ref = spec.reference
        var csv = (["variant", "tokens", "seconds"] + clusters + ["mean", "mean_perplexity"]
                   + (ref.map { ["perplexity_ratio_vs_\($0)", "seconds_to_\($0)_final"] } ?? [])).joined(separator: ",") + "\n"
        var md = "# \(spec.name)\n\nSpec: `\(spec.path)` (copied to spec.toml here); model and seed: model.toml; each variant's topology: <variant>/topology.toml.\n"
        md += "Every variant trains on \(spec.tokens) tokens of `\(spec.data)`; final losses are on the same held-out batches (4 x 8 windows per cluster).\n\n"
        md += "| variant | tokens | wall time | " + clusters.joined(separator: " | ") + " | mean | mean ppl"
        md += (ref.map { " | ppl vs \($0) | time to \($0)'s final loss" } ?? "") + " |\n"
        md += "|---|---|---|" + clusters.map { _ in "---|" }.joined() + "---|---|" + (ref == nil ? "" : "---|---|") + "\n"
        for o in outcomes {
            let mean = ExperimentCommand.mean(o.final)
            let ppl = clusters.compactMap { o.final[$0].map(exp) }.reduce(0, +) / Double(max(clusters.count, 1))
            var row = ["\(o.variant.name)", "\(o.tokens)", f(o.seconds, "%.0f")] + clusters.map { f(o.final[$0]) } + [f(mean), f(ppl, "%.1f")]
            var mdRow = ["\(o.variant.name)\(o.variant.label.map { " (\($0))" } ?? "")", "\(o.tokens)", f(o.seconds, "%.0f s")]
                + clusters.map { f(o.final[$0]) } + [f(mean), f(ppl, "%.1f")]
            if ref != nil {
                let ratio = perplexityRatio(o), t = secondsToReference(o)
                row += [f(ratio), f(t, "%.0f")]
                mdRow += [ratio.map { String(format: "%.2fx", $0) } ?? "-", t.map { String(format: "%.0f s", $0) } ?? "not reached"]
            }
            csv += row.joined(separator: ",") + "\n"
            md += "| " + mdRow.joined(separator: " | ") + " |\n"
        }
        md += trafficTable()
        let withGlobal = outcomes.filter { !$0.global.isEmpty }
        if !withGlobal.isEmpty {
            md += "\n## The global model of personalized variants\n\nThe global model (what a cluster created later starts from) on every data cluster"
            md += reference.map { " against \($0.variant.name)" } ?? ""
            md += ".\n\n| variant | " + clusters.joined(separator: " | ") + " | mean |" + (reference == nil ? "" : " vs \(ref!) |") + "\n"
            md += "|---|" + clusters.map { _ in "---|" }.joined() + "---|" + (reference == nil ? "" : "---|") + "\n"
            for o in withGlobal {
                let mean = ExperimentCommand.mean(o.global)
                let gap = reference.map { String(format: " %+.1f%% |", 100 * (mean / ExperimentCommand.mean($0.final) - 1)) } ?? ""
                md += "| \(o.variant.name) | " + clusters.map { f(o.global[$0]) }.joined(separator: " | ") + " | \(f(mean)) |" + gap + "\n"
            }
        }
        if let worth = try worthJoining() {
            md += "\n## Worth joining: each organisation alone, in each federation, and pooled\n\n"
            md += "Held-out loss on each organisation's own data (the mean over its clusters): alone is the model it trains on its own data "
            md += "with its share of the tokens\(localOutcomes.count > 1 ? " (the lower of \(localOutcomes.map(\.variant.name).joined(separator: ", ")))" : ""); "
            md += "a federation's is its cluster's release (or the global model); pooled is one model trained "
            md += "on all the text (the privacy-free ideal).\n\n"
            md += worth.markdown()
        }
        let assigned = outcomes.filter { !$0.assignments.isEmpty }
        if !assigned.isEmpty {
            md += "\n## Cluster assignments (final cluster of each trainer, how, and moves)\n\n"
            for o in assigned {
                md += "- \(o.variant.name):\n" + o.assignments.map { "  - \($0)\n" }.joined()
                // The matrix: trainers by their data (rows) against the cluster they ended in (columns).
                let columns = Array(Set(o.matrix.values.flatMap(\.keys))).sorted()
                guard !columns.isEmpty else { continue }
                md += "\n  | trainers' data \\ cluster | " + columns.joined(separator: " | ") + " |\n  |---|" + columns.map { _ in "---|" }.joined() + "\n"
                for row in o.matrix.keys.sorted() {
                    md += "  | \(row) | " + columns.map { "\(o.matrix[row]?[$0] ?? 0)" }.joined(separator: " | ") + " |\n"
                }
                md += "\n"
            }
        }
        md += "\n## Validation curves\n\nLoss per data cluster (personalized variants: each cluster's own model) against training tokens and wall time.\n\n"
        for cluster in clusters + ["mean"] {
            for (axis, x) in [("tokens", { (p: LearningCurve.Point) in Double(p.tokens) }), ("time", { (p: LearningCurve.Point) in p.seconds })] {
                let series = outcomes.map { o in
                    SVGPlot.Series(name: o.variant.name, points: o.curve.points.compactMap { p in
                        (cluster == "mean" ? Optional(p.mean) : p.losses[cluster]).map { (x(p), $0) }
                    })
                }
                let plot = SVGPlot(title: "\(spec.name): validation loss, \(cluster)", xLabel: axis == "tokens" ? "training tokens" : "wall time (s)",
                                   yLabel: "validation loss", series: series)
                let name = "plots/\(cluster)-\(axis).svg"
                try plot.render().write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
                md += "![\(cluster) vs \(axis)](\(name)) "
            }
            md += "\n"
        }
        try csv.write(toFile: dir + "/results.csv", atomically: true, encoding: .utf8)
        try md.write(toFile: dir + "/results.md", atomically: true, encoding: .utf8)
    }
}
