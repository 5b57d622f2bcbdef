import FedLMTensor

/// Multi-head causal self-attention on GPT-2's fused q,k,v projection.
///
/// `qkv` is [batch*T, 3d] as `c_attn` produces it; head h's query, key and value are columns
/// h*hd, d + h*hd and 2d + h*hd of it, read in place through BLAS strides (no transposes).
/// Queries are processed in blocks of `blockSize` rows; a block only multiplies against the
/// keys at or before its last row, so the upper triangle of the score matrix is never computed.
/// The probabilities are kept for the backward pass ([batch, heads, T, T], lower triangle).
public enum CausalSelfAttention {
    public static let blockSize = 64

    public struct Shape {
        public let batch: Int, sequence: Int, heads: Int, headDimension: Int
        public var width: Int { heads * headDimension }
        public init(batch: Int, sequence: Int, heads: Int, headDimension: Int) {
            self.batch = batch
            self.sequence = sequence
            self.heads = heads
            self.headDimension = headDimension
        }
        var scale: Float { 1 / Float(headDimension).squareRoot() }
        var tasks: Int { batch * heads }
    }

    public static func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                               probabilities: UnsafeMutablePointer<Float>, shape s: Shape) {
        let T = s.sequence, d = s.width, hd = s.headDimension, ld = 3 * d
        let parts = min(ComputeThreads.count, s.tasks)
        parallel(parts: parts) { part in
            for task in chunk(part, of: parts, count: s.tasks) {
                let b = task / s.heads, h = task % s.heads
                let q = qkv + b * T * ld + h * hd, k = q + d, v = q + 2 * d
                let p = probabilities + task * T * T
                let y = out + b * T * d + h * hd
                var q0 = 0
                while q0 < T {
                    let rows = min(blockSize, T - q0), keys = q0 + rows
                    let scores = p + q0 * T
                    Gemm.single(false, true, rows, keys, hd, s.scale, q + q0 * ld, ld, k, ld, 0, scores, T)
                    for i in 0..<rows { softmaxCausalRow(scores + i * T, valid: q0 + i + 1, width: keys) }
                    Gemm.single(false, false, rows, hd, keys, 1, scores, T, v, ld, 0, y + q0 * d, d)
                    q0 += rows
                }
            }
        }
    }

    /// Softmax over the first `valid` entries; entries valid..<width (future keys) become 0.
    @inline(__always)
    static func softmaxCausalRow(_ row: UnsafeMutablePointer<Float>, valid: Int, width: Int) {
        let m = VectorOps.max(row, valid)
        var sum: Float = 0
        var j = 0
        var acc = SIMD8<Float>()
        while j + 8 <= valid {
            let e = VectorMath.exp(VectorMath.load(row + j) - m)
            VectorMath.store(e, row + j)
            acc += e
            j += 8
        }
        sum = acc.sum()
        while j < valid { let e = VectorMath.exp(row[j] - m); row[j] = e; sum += e; j += 1 }
        let inv = 1 / sum
        for j in 0..<valid { row[j] *= inv }
        for j in valid..<width { row[j] = 0 }
    }

    /// dqkv = attention'(dout). `scratch` holds blockSize * T floats per thread.
    public static func backward(dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>,
                                probabilities: UnsafePointer<Float>, dqkv: UnsafeMutablePointer<Float>,
                                scratch: UnsafeMutablePointer<Float>, shape s: Shape) {
        let T = s.sequence, d = s.width, hd = s.headDimension, ld = 3 * d
        let parts = min(ComputeThreads.count, s.tasks)
        parallel(parts: parts) { part in
            let dScores = scratch + part * blockSize * T
            for task in chunk(part, of: parts, count: s.tasks) {
                let b = task / s.heads, h = task % s.heads
                let q = qkv + b * T * ld + h * hd, k = q + d, v = q + 2 * d
                let dq = dqkv + b * T * ld + h * hd, dk = dq + d, dv = dq + 2 * d
                let p = probabilities + task * T * T
                let dy = dout + b * T * d + h * hd
                for t in 0..<T {
                    (dk + t * ld).initialize(repeating: 0, count: hd)
                    (dv + t * ld).initialize(repeating: 0, count: hd)
                }
                var q0 = 0
                while q0 < T {
                    let rows = min(blockSize, T - q0), keys = q0 + rows
                    let pBlock = p + q0 * T
                    // dP = dY V^T, then dS = P * (dP - rowsum(P * dP)) * scale.
                    Gemm.single(false, true, rows, keys, hd, 1, dy + q0 * d, d, v, ld, 0, dScores, T)
                    for i in 0..<rows {
                        let valid = q0 + i + 1
                        let pr = pBlock + i * T, gr = dScores + i * T
                        let dotPG = VectorOps.dot(pr, gr, valid)
                        for j in 0..<valid { gr[j] = pr[j] * (gr[j] - dotPG) * s.scale }
                        for j in valid..<keys { gr[j] = 0 }
                    }
                    Gemm.single(false, false, rows, hd, keys, 1, dScores, T, k, ld, 0, dq + q0 * ld, ld)
                    Gemm.single(true, false, keys, hd, rows, 1, dScores, T, q + q0 * ld, ld, 1, dk, ld)
                    Gemm.single(true, false, keys, hd, rows, 1, pBlock, T, dy + q0 * d, d, 1, dv, ld)
                    q0 += rows
                }
            }
        }
    }
}
