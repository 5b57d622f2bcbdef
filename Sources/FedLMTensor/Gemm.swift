import COpenBLAS

/// Row-major single-precision GEMM, `C = alpha * op(A) * op(B) + beta * C`, split across
/// `ComputeThreads.count` threads that each call single-threaded OpenBLAS.
///
/// Shapes: op(A) is m x k, op(B) is k x n, C is m x n. `lda`, `ldb`, `ldc` are the row strides
/// of the matrices as stored (so a column slice of a wider matrix is a pointer plus a stride).
public enum Gemm {
    @inline(__always)
    public static func multiply(
        transposeA: Bool = false, transposeB: Bool = false,
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        threads: Int = ComputeThreads.count
    ) {
        if m == 0 || n == 0 { return }
        // Split along the larger output dimension, in multiples of 16 so every part keeps
        // whole micro-kernel tiles.
        let parts = min(threads, max(1, max(m, n) / 64))
        if parts <= 1 {
            single(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
            return
        }
        if m >= n {
            parallel(parts: parts) { part in
                let rows = chunk(part, of: parts, count: m, granularity: 16)
                let aPart = transposeA ? a + rows.lowerBound : a + rows.lowerBound * lda
                single(transposeA, transposeB, rows.count, n, k, alpha, aPart, lda, b, ldb, beta,
                       c + rows.lowerBound * ldc, ldc)
            }
        } else {
            parallel(parts: parts) { part in
                let cols = chunk(part, of: parts, count: n, granularity: 16)
                let bPart = transposeB ? b + cols.lowerBound * ldb : b + cols.lowerBound
                single(transposeA, transposeB, m, cols.count, k, alpha, a, lda, bPart, ldb, beta,
                       c + cols.lowerBound, ldc)
            }
        }
    }

    /// One single-threaded OpenBLAS call.
    @inline(__always)
    public static func single(
        _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
