import FedLMModel
import FedLMTensor

/// What became of one update.
public enum AggregationDecision: Equatable, Sendable {
    /// The global model changed: a new version exists.
    case applied
    /// Kept for a later aggregate (`count` of `needed` so far).
    case buffered(count: Int, needed: Int)
    /// Not used; the model is unchanged. The reason goes back to the trainer.
    case refused(String)
}

/// One trainer's contribution, already validated (shapes, finite values) by the caller.
/// Vectors are held by reference, so their storage lives as long as the contribution.
public struct Contribution {
    /// The pseudo-gradient w_start - w_end, laid out like the model.
    public let delta: ParameterVector
    /// The weights the trainer started from (version tau), when the aggregator still has them;
    /// FedAsync needs them to form the trainer's model w_start - delta.
    public let base: ParameterVector?
    /// Current version minus the version the trainer started from.
    public let staleness: Int
    /// Data weight, e.g. tokens trained on (FedAvg weights by it).
    public let dataWeight: Double
    /// Who sent it (a synchronous round takes one update per trainer).
    public let trainer: String

    public init(delta: ParameterVector, base: ParameterVector? = nil, staleness: Int, dataWeight: Double = 1, trainer: String = "") {
        self.delta = delta
        self.base = base
        self.staleness = staleness
        self.dataWeight = dataWeight
        self.trainer = trainer
    }
}

/// Folds arriving updates into the global model. Implementations are plain state machines over
/// vectors: no sockets, no clocks, so they are tested on exact numbers.
public protocol AggregationStrategy: AnyObject {
    var name: String { get }
    /// Updates older than this many versions are refused.
    var maxStaleness: Int { get }
    func receive(_ c: Contribution, model: ParameterVector) -> AggregationDecision
    /// Everything needed to continue exactly after a restart: vectors (buffers, optimizer
    /// moments) and scalars (counts, steps). Saved with each checkpoint.
    var stateVectors: [(name: String, vector: ParameterVector)] { get }
    var stateScalars: [String: Double] { get }
    func restore(scalars: [String: Double])
}

extension AggregationStrategy {
    /// The refusal every strategy gives an update of the wrong shape or too stale.
    func refusal(_ c: Contribution, model: ParameterVector) -> AggregationDecision? {
        if c.delta.layout != model.layout || (c.base.map { $0.layout != model.layout } ?? false) {
            return .refused("the update's tensors do not match the model's names and shapes")
        }
        if c.staleness < 0 { return .refused("base version is newer than the current model (staleness \(c.staleness))") }
        if c.staleness > maxStaleness {
            return .refused("staleness \(c.staleness) exceeds the maximum of \(maxStaleness); fetch the latest release")
        }
        return nil
    }
}

/// FedAsync (Xie et al.): every update is mixed in on arrival,
/// w <- (1 - a_t) w + a_t w_client,  a_t = a * s(t - tau),  w_client = w_tau - delta.
public final class FedAsync: AggregationStrategy {
    public let mixing: Double
    public let weight: StalenessWeight
    public let maxStaleness: Int
    public var name: String { "fedasync" }

    public init(mixing: Double = 0.5, weight: StalenessWeight = .polynomial(exponent: 0.5), maxStaleness: Int = 16) {
        self.mixing = mixing
        self.weight = weight
        self.maxStaleness = maxStaleness
    }

    public var stateVectors: [(name: String, vector: ParameterVector)] { [] }
    public var stateScalars: [String: Double] { [:] }
    public func restore(scalars: [String: Double]) {}

    public func receive(_ c: Contribution, model: ParameterVector) -> AggregationDecision {
        if let refusal = refusal(c, model: model) { return refusal }
        guard let base = c.base else {
            return .refused("the weights of the base version are no longer held; fetch the latest release")
        }
        let a = Float(mixing * weight.weight(staleness: c.staleness))
        let w = model.pointer, b = base.pointer, d = c.delta.pointer
        parallelFor(model.count, granularity: 4096) { r in for i in r { w[i] = (1 - a) * w[i] + a * (b[i] - d[i]) } }
        return .applied
    }
}

/// FedBuff (Nguyen et al.): buffer K updates, each scaled by s(staleness), then apply their mean
/// through the server optimizer:  g = (1/K) sum_i s(tau_i) delta_i;  w <- opt(w, g).
/// With a robust combination the K scaled updates are kept apart and combined per coordinate by
/// median or trimmed mean instead; with `maxNorm`, each update is first clipped to that norm.
public final class FedBuff: AggregationStrategy {
    public let bufferSize: Int
    public let weight: StalenessWeight
    public let maxStaleness: Int
    public let optimizer: ServerOptimizer
    public let combination: RobustCombination
    /// Updates with a larger L2 norm are scaled down to it (nil: no clipping).
    public let maxNorm: Double?
    /// Clipping plus Gaussian noise on each aggregate (nil: none).
    public let privacy: DifferentialPrivacy?
    /// The noise's seed: secret to this aggregator, kept in its checkpoints so that a restart's
    /// replay adds exactly the noise the original run added.
    private var noiseSeed = UInt64.random(in: 0...UInt64.max)
    private var aggregates = 0
    private let buffer: ParameterVector
    /// The buffered updates one by one (robust combinations only).
    private let slots: [ParameterVector]
    public private(set) var buffered = 0
    public var name: String { "fedbuff" }

    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("buffer", buffer)] + slots.enumerated().map { ("slot\($0.offset)", $0.element) }
            + optimizer.stateVectors.map { ("optimizer.\($0.name)", $0.vector) }
    }
    public var stateScalars: [String: Double] {
        ["buffered": Double(buffered), "optimizer.steps": Double(optimizer.steps), "aggregates": Double(aggregates),
         "noise.seed.high": Double(noiseSeed >> 32), "noise.seed.low": Double(noiseSeed & 0xFFFF_FFFF)]
    }
    public func restore(scalars: [String: Double]) {
        buffered = Int(scalars["buffered"] ?? 0)
        optimizer.restore(steps: Int(scalars["optimizer.steps"] ?? 0))
        aggregates = Int(scalars["aggregates"] ?? 0)
        if let high = scalars["noise.seed.high"], let low = scalars["noise.seed.low"] { noiseSeed = UInt64(high) << 32 | UInt64(low) }
    }

    public init(bufferSize: Int, weight: StalenessWeight = .inverseSquareRoot, maxStaleness: Int = 16,
                optimizer: ServerOptimizerKind, layout: ParameterLayout, combination: RobustCombination = .mean, maxNorm: Double? = nil,
                privacy: DifferentialPrivacy? = nil) {
        precondition(privacy == nil || combination == .mean, "differential privacy adds noise to the mean of the buffer")
        self.privacy = privacy
        precondition(bufferSize >= 1)
        self.bufferSize = bufferSize
        self.weight = weight
        self.maxStaleness = maxStaleness
        self.optimizer = ServerOptimizer(optimizer, layout: layout)
        self.combination = combination
        self.maxNorm = maxNorm
        self.buffer = ParameterVector(layout: layout)
        self.slots = combination == .mean ? [] : (0..<bufferSize).map { _ in ParameterVector(layout: layout) }
    }

    public func receive(_ c: Contribution, model: ParameterVector) -> AggregationDecision {
        if let refusal = refusal(c, model: model) { return refusal }
        var s = Float(weight.weight(staleness: c.staleness))
        if let bound = privacy?.clip ?? maxNorm {
            let norm = Double(GradientClipping.norm(c.delta))
            if norm > bound { s *= Float(bound / norm) }
        }
        let inv = 1 / Float(bufferSize)
        if combination != .mean {
            let slot = slots[buffered].pointer, d = c.delta.pointer
            parallelFor(buffer.count, granularity: 4096) { r in for i in r { slot[i] = s * d[i] } }
            buffered += 1
            guard buffered == bufferSize else { return .buffered(count: buffered, needed: bufferSize) }
            combination.combine(slots, into: buffer)
            optimizer.apply(buffer, scale: 1, to: model)
            buffer.zero()
            buffered = 0
            return .applied
        }
        if bufferSize == 1, privacy == nil {
            // Nothing to buffer: step with s * delta directly (one pass instead of three).
            optimizer.apply(c.delta, scale: s, to: model)
            return .applied
        }
        let b = buffer.pointer, d = c.delta.pointer
        parallelFor(buffer.count, granularity: 4096) { r in for i in r { b[i] += s * d[i] } }
        buffered += 1
        guard buffered == bufferSize else { return .buffered(count: buffered, needed: bufferSize) }
        if let privacy {
            // Gaussian noise on the sum, from a stream only this aggregator knows, one per aggregate.
            var rng = SeededGenerator(seed: noiseSeed &+ UInt64(aggregates) &* 0x9E37_79B9_7F4A_7C15)
            let sigma = Float(privacy.noiseMultiplier * privacy.clip)
            for i in 0..<buffer.count { b[i] += sigma * Float(rng.nextNormal()) }
        }
        aggregates += 1
        optimizer.apply(buffer, scale: inv, to: model)
        buffer.zero()
        buffered = 0
        return .applied
    }
}

/// Synchronous FedAvg rounds, the baseline: each round waits for every selected trainer's
/// update on the round's version, then applies the data-weighted mean through the server
/// optimizer. Updates on another version are refused.
public final class SynchronousFedAvg: AggregationStrategy {
    public let optimizer: ServerOptimizer
    public private(set) var expected: Int
    private let sum: ParameterVector
    private var received = 0
    private var totalWeight = 0.0
    /// Trainers in the current round (kept in the checkpoint as `contributor.<id>` scalars, and
    /// rebuilt by replay after a restart), so nobody contributes twice to one round.
    private var contributors = Set<String>()
    public var maxStaleness: Int { 0 }
    public var name: String { "sync" }

    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("sum", sum)] + optimizer.stateVectors.map { ("optimizer.\($0.name)", $0.vector) }
    }
    public var stateScalars: [String: Double] {
        var scalars = ["received": Double(received), "totalWeight": totalWeight, "expected": Double(expected),
                       "optimizer.steps": Double(optimizer.steps)]
        for trainer in contributors { scalars["contributor." + trainer] = 1 }
        return scalars
    }
    public func restore(scalars: [String: Double]) {
        contributors = Set(scalars.keys.filter { $0.hasPrefix("contributor.") }.map { String($0.dropFirst("contributor.".count)) })
        received = Int(scalars["received"] ?? 0)
        totalWeight = scalars["totalWeight"] ?? 0
        expected = Int(scalars["expected"] ?? Double(expected))
        optimizer.restore(steps: Int(scalars["optimizer.steps"] ?? 0))
    }

    public init(participants: Int, optimizer: ServerOptimizerKind, layout: ParameterLayout) {
        precondition(participants >= 1)
        expected = participants
        self.optimizer = ServerOptimizer(optimizer, layout: layout)
        sum = ParameterVector(layout: layout)
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

    private func completeRound(_ model: ParameterVector) {
        optimizer.apply(sum, scale: Float(1 / totalWeight), to: model)
        sum.zero()
        received = 0
        totalWeight = 0
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
        contributors.insert(c.trainer)
        let w = Float(c.dataWeight), s = sum.pointer, d = c.delta.pointer
        parallelFor(sum.count, granularity: 4096) { r in for i in r { s[i] += w * d[i] } }
        received += 1
        totalWeight += c.dataWeight
        guard received >= expected else { return .buffered(count: received, needed: expected) }
        completeRound(model)
        return .applied
    }
}
