import FedLMModel
import FedLMTensor

/// The direction the server has been moving in: an exponential moving average of the steps it
/// applied (g: a mean update, before the server optimizer),
///
///     d <- beta d + (1 - beta) scale g
///
/// the reference of the direction-aware staleness correction, of update trust, and of each
/// personalized head's own recent direction.
public final class RecentDirection {
    /// beta: how slowly the recorded direction forgets older steps.
    public let decay: Float
    /// d, laid out like the model; saved in checkpoints.
    public let vector: ParameterVector

    public init(decay: Float, layout: ParameterLayout) {
        precondition(decay >= 0 && decay < 1, "direction decay must be in [0, 1)")
        self.decay = decay
        vector = ParameterVector(layout: layout)
    }

    /// Records a step: d <- beta d + (1 - beta) scale g, over `ranges` (nil: all).
    public func record(_ g: ParameterVector, scale: Float, over ranges: [Range<Int>]? = nil) {
        let d = vector.pointer, p = g.pointer, b = decay, k = (1 - decay) * scale
        parallelFor(ranges: ranges ?? [0..<vector.count]) { r in for i in r { d[i] = b * d[i] + k * p[i] } }
    }
}
