import Foundation

/// Would each organisation do better training alone? The per-organisation comparison of an
/// experiment: each organisation's held-out loss on its own data with the model it trains alone
/// (its own data, its own share of the tokens), with its model from each federation (its
/// cluster's release, or the global model), and with one model trained on all the text pooled
/// (the privacy-free ideal).
///
/// The gain from joining is the perplexity ratio alone / federated, exp(L_alone - L_federated):
/// above 1 the organisation gains, below 1 it would be better off alone. Over organisations the
/// ratios are summarised by their geometric mean, exp(mean(L_alone - L_federated)).
public struct WorthJoining: Sendable {
    public struct Organisation: Sendable, Equatable {
        public var name: String
        /// Its data clusters; its loss is the mean of its held-out losses on them.
        public var clusters: [String]
        public init(name: String, clusters: [String]) {
            self.name = name
            self.clusters = clusters
        }
    }

    public var organisations: [Organisation]
    /// Organisation -> loss of the model it trains alone.
    public var alone: [String: Double]
    /// Each federated variant: organisation -> loss of the model that serves it.
    public var federated: [(variant: String, losses: [String: Double])]
    /// Organisation -> loss of the pooled centralized model (nil: not run).
    public var pooled: [String: Double]?

    public init(organisations: [Organisation], alone: [String: Double], federated: [(variant: String, losses: [String: Double])],
                pooled: [String: Double]?) {
        self.organisations = organisations
        self.alone = alone
        self.federated = federated
        self.pooled = pooled
    }

    /// exp(alone) / exp(joined): how many times lower the perplexity is for having joined.
    public static func ratio(alone: Double, joined: Double) -> Double { exp(alone - joined) }

    /// The organisations' ratios against `losses` (those with both losses).
    public func ratios(_ losses: [String: Double]) -> [String: Double] {
        var r: [String: Double] = [:]
        for o in organisations { if let a = alone[o.name], let j = losses[o.name] { r[o.name] = Self.ratio(alone: a, joined: j) } }
        return r
    }

    /// Geometric mean of the ratios (nil: none).
    public func geometricMean(_ losses: [String: Double]) -> Double? {
        let r = ratios(losses).values
        return r.isEmpty ? nil : exp(r.map { log($0) }.reduce(0, +) / Double(r.count))
    }

    /// Organisations whose perplexity is higher with `losses` than alone, in table order.
    public func betterOffAlone(_ losses: [String: Double]) -> [String] {
        let r = ratios(losses)
        return organisations.map(\.name).filter { (r[$0] ?? .infinity) < 1 }
    }

    /// Mean over organisations of `losses` (nil if one is missing).
    public func mean(_ losses: [String: Double]) -> Double? {
        let values = organisations.compactMap { losses[$0.name] }
        return values.count == organisations.count && !values.isEmpty ? values.reduce(0, +) / Double(values.count) : nil
    }

    /// A Markdown table: one row per organisation (its data, alone, each federation with its
    /// ratio, pooled), a row of means and geometric-mean ratios, and one plain sentence per
    /// federation saying who gains and who would be better off alone.
    public func markdown() -> String {
        func f(_ v: Double?) -> String { v.map { String(format: "%.3f", $0) } ?? "-" }
        func x(_ v: Double?) -> String { v.map { String(format: "%.2fx", $0) } ?? "-" }
        var header = ["organisation", "data", "alone"]
        for v in federated { header += [v.variant, "alone / \(v.variant)"] }
        if pooled != nil { header.append("pooled") }
        var md = "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---|" }.joined() + "\n"
        for o in organisations {
            var row = [o.name, o.clusters.joined(separator: "+"), f(alone[o.name])]
            for v in federated {
                row += [f(v.losses[o.name]), x(ratios(v.losses)[o.name])]
            }
            if let pooled { row.append(f(pooled[o.name])) }
            md += "| " + row.joined(separator: " | ") + " |\n"
        }
        var summary = ["mean loss; geometric mean of the ratios", "", f(mean(alone))]
        for v in federated { summary += [f(mean(v.losses)), x(geometricMean(v.losses))] }
        if let pooled { summary.append(f(mean(pooled))) }
        md += "| " + summary.joined(separator: " | ") + " |\n\n"
        md += "Ratio: perplexity alone / perplexity with the federation's model (above 1x the organisation gains by joining).\n\n"
        for v in federated {
            let worse = betterOffAlone(v.losses)
            if worse.isEmpty {
                md += "- \(v.variant): every organisation does better than alone"
                if let g = geometricMean(v.losses) { md += String(format: " (geometric mean %.2fx)", g) }
                md += ".\n"
            } else {
                md += "- \(v.variant): better off alone: \(worse.joined(separator: ", ")).\n"
            }
        }
        return md
    }
}

/// Splits a token budget among trainers in proportion to their speed (1 / slowdown), in whole
/// batches: each trainer's share of the compute, used both for its budget in a federation and
/// for the run it makes alone.
public enum TokenShares {
    public static func split(_ total: Int, among trainers: [(name: String, slowdown: Double)], batchTokens: Int) -> [String: Int] {
        let speed = trainers.map { 1 / max($0.slowdown, 1) }
        let sum = speed.reduce(0, +)
        var shares: [String: Int] = [:]
        for (t, s) in zip(trainers, speed) {
            let batches = max(1, Int((Double(total) * s / sum) / Double(batchTokens)))
            shares[t.name] = batches * batchTokens
        }
        return shares
    }
}
