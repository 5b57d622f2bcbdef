import FedLMTensor

/// Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
public enum GradientClipping {
    /// The L2 norm of the whole vector (double-precision accumulation, fixed order).
    public static func norm(_ v: ParameterVector) -> Float {
        let parts = ComputeThreads.count
        var partial = [Double](repeating: 0, count: parts)
        let p = v.pointer, n = v.count
        partial.withUnsafeMutableBufferPointer { out in
            parallel(parts: parts) { part in
                let r = chunk(part, of: parts, count: n, granularity: 4096)
                out[part] = VectorOps.sumOfSquares(p + r.lowerBound, r.count)
            }
        }
        return Float(partial.reduce(0, +).squareRoot())
    }

    /// Scales the gradients so their global norm is at most `maxNorm`; returns the norm before
    /// clipping (the value worth logging).
    @discardableResult
    public static func clip(_ gradients: ParameterVector, maxNorm: Float) -> Float {
        let total = norm(gradients)
        guard maxNorm > 0, total > maxNorm else { return total }
        let scale = maxNorm / (total + 1e-6)
        let p = gradients.pointer
        parallelFor(gradients.count, granularity: 4096) { r in
            for i in r { p[i] *= scale }
        }
        return total
    }
}
