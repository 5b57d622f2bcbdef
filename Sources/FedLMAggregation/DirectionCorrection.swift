import FedLMModel
import FedLMTensor

/// Direction-aware staleness correction (after HeLoCo, 2026: correct a stale update block by
/// block against the outer optimizer's direction instead of only discounting it).
///
/// The server keeps its recent direction d, an exponential moving average of the steps it
/// applied (g: the mean of an aggregate, before the server optimizer):
///
///     d <- beta d + (1 - beta) g
///
/// An update Δ of staleness τ was computed before the server moved along d. Tensor by tensor it
/// is split into the part along d and the rest, c = <Δ_t, d_t>, and only a *conflicting* part
/// (c < 0: it would undo what the federation learned meanwhile) is shrunk by the staleness weight
/// w = s(τ):
///
///     Δ_t <- Δ_t - (1 - w) (c / ||d_t||²) d_t     if c < 0
///     Δ_t <- Δ_t                                   otherwise
///
/// A fresh update (w = 1) and every agreeing part pass unchanged; the orthogonal part (what the
/// update adds that the others did not) is always kept. The aggregation's own staleness weight
/// still scales the result (choose `staleness = "constant"` for the correction alone).
public final class DirectionCorrection {
    /// d and its decay.
    public let recent: RecentDirection
    /// d, laid out like the model; saved in checkpoints.
    public var direction: ParameterVector { recent.vector }
    /// The corrected update, reused.
    let corrected: ParameterVector

    public init(decay: Float, layout: ParameterLayout) {
        recent = RecentDirection(decay: decay, layout: layout)
        corrected = ParameterVector(layout: layout)
    }

    /// The update with its conflicting parts shrunk (`corrected`, or `delta` itself when nothing
    /// changes: staleness weight 1). Only the tensors it `carries` (by layout entry) are corrected.
    public func correct(_ delta: ParameterVector, weight w: Float, carries: (Int) -> Bool = { _ in true }) -> ParameterVector {
        guard w < 1 else { return delta }
        corrected.copy(from: delta)
        let d = direction.pointer, x = corrected.pointer
        for (i, e) in delta.layout.entries.enumerated() where carries(i) {
            var dot: Double = 0, norm: Double = 0
            for j in e.range {
                dot += Double(x[j]) * Double(d[j])
                norm += Double(d[j]) * Double(d[j])
            }
            guard dot < 0, norm > 0 else { continue }
            let k = Float((1 - Double(w)) * dot / norm)
            for j in e.range { x[j] -= k * d[j] }
        }
        return corrected
    }

    /// Records a step the server applied (`RecentDirection.record`).
    public func record(_ g: ParameterVector, scale: Float, over ranges: [Range<Int>]? = nil) { recent.record(g, scale: scale, over: ranges) }
}
