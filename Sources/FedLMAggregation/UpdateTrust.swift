import FedLMModel
import FedLMTensor

/// Trust in an update by its direction, after FLTrust (Cao et al., NDSS 2021), with the server's
/// own recent direction as the trusted reference instead of a root dataset.
///
/// The server keeps d, an exponential moving average of the mean steps it applied
/// (d <- beta d + (1 - beta) g). An update Δ that points against it,
///
///     cos(Δ, d) = <Δ, d> / (||Δ|| ||d||) < 0,
///
/// would undo what the federation has been learning: it counts with weight 0. In a synchronous
/// round it still completes its sender's part of the round (the round does not wait for it
/// again); in FedBuff it takes no buffer slot (the buffer waits for K trusted updates). While d is
/// zero (before the first step) every update is trusted. A sign-flipped honest update has the
/// opposite cosine of the honest one and is left out; an honest update, which moves the model
/// with the others, is kept whole. On data whose clusters pull apart, an honest organisation's
/// update can point against the mean of the others': use it where members are not trusted and
/// their data are alike.
public final class UpdateTrust {
    /// d and its decay.
    public let recent: RecentDirection
    /// d, laid out like the model; saved in checkpoints.
    public var direction: ParameterVector { recent.vector }

    public init(decay: Float, layout: ParameterLayout) {
        recent = RecentDirection(decay: decay, layout: layout)
    }

    /// The cosine of `delta` with d over `ranges` (the tensors the update carries); nil while d is zero there.
    public func cosine(_ delta: ParameterVector, over ranges: [Range<Int>]) -> Double? {
        let d = direction.pointer, x = delta.pointer
        var dot = 0.0, dd = 0.0, xx = 0.0
        for r in ranges {
            for i in r {
                dot += Double(x[i]) * Double(d[i])
                dd += Double(d[i]) * Double(d[i])
                xx += Double(x[i]) * Double(x[i])
            }
        }
        guard dd > 0, xx > 0 else { return nil }
        return dot / (dd.squareRoot() * xx.squareRoot())
    }

    /// 1 for an update that does not point against d (or while d is zero), else 0.
    public func weight(_ delta: ParameterVector, over ranges: [Range<Int>]) -> Double {
        guard let c = cosine(delta, over: ranges) else { return 1 }
        return c < 0 ? 0 : 1
    }

    /// Records a step the server applied (`RecentDirection.record`).
    public func record(_ g: ParameterVector, scale: Float, over ranges: [Range<Int>]? = nil) { recent.record(g, scale: scale, over: ranges) }
}
