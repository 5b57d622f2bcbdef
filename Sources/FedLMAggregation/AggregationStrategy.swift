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
///
/// A partial update (from a trainer that trained only some tensors) names the tensors it
/// `carried`; its delta is zero elsewhere. Every strategy merges tensor by tensor: a tensor is
/// averaged among the updates that carry it and left alone by the others.
public struct Contribution {
    /// The pseudo-gradient w_start - w_end, laid out like the model.
    public let delta: ParameterVector
    /// The tensors the update carries (nil: all of them).
    public let carried: TensorSubset?
    /// The weights the trainer started from (version tau), when the aggregator still has them;
    /// FedAsync needs them to form the trainer's model w_start - delta.
    public let base: ParameterVector?
    /// Current version minus the version the trainer started from.
    public let staleness: Int
    /// Data weight, e.g. tokens trained on (FedAvg weights by it).
    public let dataWeight: Double
    /// Who sent it (a synchronous round takes one update per trainer).
    public let trainer: String

    public init(delta: ParameterVector, carried: TensorSubset? = nil, base: ParameterVector? = nil, staleness: Int,
                dataWeight: Double = 1, trainer: String = "") {
        self.delta = delta
        self.carried = carried.flatMap { $0.isWhole ? nil : $0 }
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
    /// The trust weight of the last update received: 0 for one left out by `UpdateTrust`.
    var lastTrust: Double { get }
}

extension AggregationStrategy {
    public var lastTrust: Double { 1 }
}

extension Contribution {
    /// Where the carried tensors live in the model's vector.
    var ranges: [Range<Int>] { carried?.modelRanges ?? [0..<delta.count] }

    /// Whether the update carries entry `i` of the model's layout.
    func carries(entry i: Int) -> Bool { carried.map { $0.modelIndices.contains(i) } ?? true }
}

/// Runs `body` over `ranges` of a vector, split across the compute threads.
func parallelFor(ranges: [Range<Int>], _ body: (Range<Int>) -> Void) {
    for range in ranges {
        parallelFor(range.count, granularity: 4096) { r in body((range.lowerBound + r.lowerBound)..<(range.lowerBound + r.upperBound)) }
    }
}

extension AggregationStrategy {
    /// The refusal every strategy gives an update of the wrong shape or too stale.
    func refusal(_ c: Contribution, model: ParameterVector) -> AggregationDecision? {
        if c.delta.layout != model.layout || (c.base.map { $0.layout != model.layout } ?? false)
            || (c.carried.map { $0.model != model.layout } ?? false) {
            return .refused("the update's tensors do not match the model's names and shapes")
        }
        if c.staleness < 0 { return .refused("base version is newer than the current model (staleness \(c.staleness))") }
        if c.staleness > maxStaleness {
            return .refused("staleness \(c.staleness) exceeds the maximum of \(maxStaleness); fetch the latest release")
        }
        return nil
    }
}
