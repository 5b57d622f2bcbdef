import FedLMTensor

/// GPT-2's linear layer (`transformers.Conv1D`): y = x W + b with W stored [in, out].
public enum Conv1D {
    /// y = x W + b, or with `residual`, y = residual + x W + b (the block's skip connection,
    /// fused so the sum costs no extra pass).
    public static func forward(
        x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        out: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>? = nil,
        rows: Int, inputs: Int, outputs: Int
    ) {
        parallelFor(rows) { range in
            for r in range {
                let yr = out + r * outputs
                if let residual {
                    let rr = residual + r * outputs
                    for c in 0..<outputs { yr[c] = rr[c] + bias[c] }
                } else {
                    yr.update(from: bias, count: outputs)
                }
            }
        }
        Gemm.multiply(m: rows, n: outputs, k: inputs, a: x, lda: inputs, b: weight, ldb: outputs,
                      beta: 1, c: out, ldc: outputs)
    }

    /// dx = dy W^T (overwritten); dW += x^T dy; db += column sums of dy. A frozen weight or
    /// bias (nil) gets no gradient, and costs nothing.
    public static func backward(
        dout: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
        rows: Int, inputs: Int, outputs: Int
    ) {
        Gemm.multiply(transposeB: true, m: rows, n: inputs, k: outputs, a: dout, lda: outputs,
                      b: weight, ldb: outputs, beta: 0, c: dx, ldc: inputs)
        if let dweight {
            Gemm.multiply(transposeA: true, m: inputs, n: outputs, k: rows, a: x, lda: inputs,
                          b: dout, ldb: outputs, beta: 1, c: dweight, ldc: outputs)
        }
        if let dbias { VectorOps.addColumnSums(dout, rows: rows, columns: outputs, into: dbias) }
    }
}
