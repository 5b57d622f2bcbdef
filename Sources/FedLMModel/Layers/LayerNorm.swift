import FedLMTensor

/// LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * gamma + beta.
/// Forward saves each row's mean and 1/std for the backward pass.
public enum LayerNorm {
    public static func forward(
        x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
        mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
        rows: Int, dim: Int, epsilon: Float
    ) {
        parallelFor(rows) { range in
            for r in range {
                let xr = x + r * dim
                let m = VectorOps.sum(xr, dim) / Float(dim)
                var acc = SIMD8<Float>()
                var i = 0
                while i + 8 <= dim { let v = VectorMath.load(xr + i) - m; acc += v * v; i += 8 }
                var variance = acc.sum()
                while i < dim { let v = xr[i] - m; variance += v * v; i += 1 }
                variance /= Float(dim)
                let s = 1 / (variance + epsilon).squareRoot()
                mean[r] = m
                rstd[r] = s
                let yr = out + r * dim
                for i in 0..<dim { yr[i] = (xr[i] - m) * s * gamma[i] + beta[i] }
            }
        }
    }

    /// dx += LayerNorm'(dout); dgamma += sum(dout * xhat); dbeta += sum(dout).
    /// `scratch` holds 2 * dim floats per thread for the parameter-gradient partial sums.
    public static func backward(
        dout: UnsafePointer<Float>, x: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
        dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>?, dbeta: UnsafeMutablePointer<Float>?,
        rows: Int, dim: Int, scratch: UnsafeMutablePointer<Float>
    ) {
        let parts = min(ComputeThreads.count, rows)
        parallel(parts: parts) { part in
            let dg = scratch + part * 2 * dim
            let db = dg + dim
            dg.initialize(repeating: 0, count: 2 * dim)
            for r in chunk(part, of: parts, count: rows) {
                let xr = x + r * dim, gr = dout + r * dim, dxr = dx + r * dim
                let m = mean[r], s = rstd[r]
                // Means of g = dout * gamma and of g * xhat over the row.
                var sumG: Float = 0, sumGX: Float = 0
                for i in 0..<dim {
                    let xhat = (xr[i] - m) * s
                    let g = gr[i] * gamma[i]
                    sumG += g
                    sumGX += g * xhat
                    dg[i] += gr[i] * xhat
                    db[i] += gr[i]
                }
                let meanG = sumG / Float(dim), meanGX = sumGX / Float(dim)
                for i in 0..<dim {
                    let xhat = (xr[i] - m) * s
                    dxr[i] += s * (gr[i] * gamma[i] - meanG - xhat * meanGX)
                }
            }
        }
        // Fixed-order reduction of the per-thread partials keeps results reproducible.
        guard let dgamma, let dbeta else { return }  // a frozen LayerNorm
        for part in 0..<parts {
            let dg = scratch + part * 2 * dim
            for i in 0..<dim {
                dgamma[i] += dg[i]
                dbeta[i] += dg[dim + i]
            }
        }
    }
}
