import FedLMModel
import FedLMTensor

/// Synchronous FedAvg rounds, the baseline: each round waits for every selected trainer's
/// update on the round's version, then applies the data-weighted mean through the server
/// optimizer (each tensor's mean over the updates that carry it). Updates on another version
/// are refused.
///
/// With a robust combination (`median`, `trimmed_mean`) the round's updates are kept apart and
/// combined per coordinate instead, without data weights (a member's claimed tokens do not move
/// a median): one member's harmful update in a round of three is outvoted coordinate by
/// coordinate. Rounds then take whole updates only.
public final class SynchronousFedAvg: AggregationStrategy {
    public let optimizer: ServerOptimizer
    public private(set) var expected: Int
    public let combination: RobustCombination
    private let sum: ParameterVector
    /// The round's updates one by one (robust combinations only; one slot per participant).
    private let slots: [ParameterVector]
    /// Updates against the server's recent direction count with weight 0 (nil: off).
    public let trust: UpdateTrust?
    /// The trust weight of the last update received (1 without `trust`).
    public private(set) var lastTrust = 1.0
    private var received = 0
    private var totalWeight = 0.0
    /// For each tensor, the data weight of the round's updates that carry it (partial updates).
    private var tensorWeights: [Double]
    /// Trainers in the current round (kept in the checkpoint as `contributor.<id>` scalars, and
    /// rebuilt by replay after a restart), so nobody contributes twice to one round.
    private var contributors = Set<String>()
    public var maxStaleness: Int { 0 }
    public var name: String { "sync" }

    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("sum", sum)] + slots.enumerated().map { ("slot.\($0.offset)", $0.element) }
            + optimizer.stateVectors.map { ("optimizer.\($0.name)", $0.vector) }
            + (trust.map { [("trust.direction", $0.direction)] } ?? [])
    }
    public var stateScalars: [String: Double] {
        var scalars = ["received": Double(received), "totalWeight": totalWeight, "expected": Double(expected),
                       "optimizer.steps": Double(optimizer.steps)]
        for trainer in contributors { scalars["contributor." + trainer] = 1 }
        for (i, w) in tensorWeights.enumerated() where w != totalWeight { scalars["tensorWeight.\(i)"] = w }
        return scalars
    }
    public func restore(scalars: [String: Double]) {
        contributors = Set(scalars.keys.filter { $0.hasPrefix("contributor.") }.map { String($0.dropFirst("contributor.".count)) })
        received = Int(scalars["received"] ?? 0)
        totalWeight = scalars["totalWeight"] ?? 0
        tensorWeights = tensorWeights.indices.map { scalars["tensorWeight.\($0)"] ?? totalWeight }
        expected = Int(scalars["expected"] ?? Double(expected))
        optimizer.restore(steps: Int(scalars["optimizer.steps"] ?? 0))
    }

    public init(participants: Int, optimizer: ServerOptimizerKind, layout: ParameterLayout, combination: RobustCombination = .mean,
                trustDecay: Double? = nil) {
        precondition(participants >= 1)
        precondition(trustDecay == nil || combination == .mean, "trust weights the mean of the round")
        trust = trustDecay.map { UpdateTrust(decay: Float($0), layout: layout) }
        expected = participants
        self.optimizer = ServerOptimizer(optimizer, layout: layout)
        self.combination = combination
        sum = ParameterVector(layout: layout)
        slots = combination == .mean ? [] : (0..<participants).map { _ in ParameterVector(layout: layout) }
        tensorWeights = [Double](repeating: 0, count: layout.entries.count)
    }

    /// Changes how many updates rounds wait for (trainers joined, left or died). Growing takes
    /// effect from the next round; shrinking applies at once, and if the current round already
    /// has that many updates it completes now (returns `.applied`), so a dead participant never
    /// stalls the federation.
    @discardableResult
    public func setParticipants(_ n: Int, model: ParameterVector) -> AggregationDecision {
        precondition(n >= 1)
        if received == 0 || n < expected { expected = n }
        guard received > 0, received >= expected else { return .buffered(count: received, needed: expected) }
        completeRound(model)
        return .applied
    }

    /// The data-weighted mean, each tensor among the round's updates that carry it; or the
    /// robust combination of the round's updates.
    private func completeRound(_ model: ParameterVector) {
        defer { startNextRound() }
        if combination != .mean {
            combination.combine(Array(slots[0..<received]), into: sum)
            optimizer.apply(sum, scale: 1, to: model)
            return
        }
        // Every update of the round was distrusted: the model stays as it is.
        guard totalWeight > 0 else { return }
        let partial = tensorWeights.contains { $0 != totalWeight }
        if partial {
            for (e, w) in zip(sum.layout.entries, tensorWeights) where w > 0 && w != totalWeight {
                let factor = Float(totalWeight / w), p = sum.pointer
                parallelFor(ranges: [e.range]) { r in for i in r { p[i] *= factor } }
            }
        }
        let stepped = partial ? zip(sum.layout.entries, tensorWeights).filter { $0.1 > 0 }.map { $0.0.range } : nil
        optimizer.apply(sum, scale: Float(1 / totalWeight), to: model, over: stepped)
        trust?.record(sum, scale: Float(1 / totalWeight), over: stepped)
    }

    /// Empties the round: no updates, no weights, no contributors.
    private func startNextRound() {
        sum.zero()
        received = 0
        totalWeight = 0
        tensorWeights = tensorWeights.map { _ in 0 }
        contributors = []
    }

    public var waitingFor: Int { expected - received }

    public func receive(_ c: Contribution, model: ParameterVector) -> AggregationDecision {
        if c.delta.layout != model.layout { return .refused("the update's tensors do not match the model's names and shapes") }
        if c.staleness != 0 { return .refused("synchronous round expects the current version (staleness \(c.staleness))") }
        guard c.dataWeight > 0, c.dataWeight.isFinite else { return .refused("data weight must be positive") }
        guard !contributors.contains(c.trainer) else {
            return .refused("\(c.trainer) already contributed to this round; wait for the next version")
        }
        if let carried = c.carried, carried.model != model.layout { return .refused("the update's tensors do not match the model's names and shapes") }
        if combination != .mean {
            if c.carried != nil { return .refused("a synchronous round with a robust combination takes whole updates only") }
            guard received < slots.count else { return .refused("the round already has \(received) updates") }
            contributors.insert(c.trainer)
            slots[received].copy(from: c.delta)
            received += 1
            totalWeight += c.dataWeight
            guard received >= expected else { return .buffered(count: received, needed: expected) }
            completeRound(model)
            return .applied
        }
        contributors.insert(c.trainer)
        lastTrust = trust?.weight(c.delta, over: c.ranges) ?? 1
        let weight = c.dataWeight * lastTrust
        let w = Float(weight), s = sum.pointer, d = c.delta.pointer
        if weight > 0 { parallelFor(ranges: c.ranges) { r in for i in r { s[i] += w * d[i] } } }
        for i in tensorWeights.indices where c.carries(entry: i) { tensorWeights[i] += weight }
        received += 1
        totalWeight += weight
        guard received >= expected else { return .buffered(count: received, needed: expected) }
        completeRound(model)
        return .applied
    }
}
