import FedLMModel
import FedLMTensor

/// FedAsync (Xie et al.): every update is mixed in on arrival,
/// w <- (1 - a_t) w + a_t w_client,  a_t = a * s(t - tau),  w_client = w_tau - delta
/// (a partial update mixes in the tensors it carries).
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
        parallelFor(ranges: c.ranges) { r in for i in r { w[i] = (1 - a) * w[i] + a * (b[i] - d[i]) } }
        return .applied
    }
}
