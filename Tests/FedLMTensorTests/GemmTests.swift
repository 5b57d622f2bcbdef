import FedLMTensor
import XCTest

/// The thread-splitting GEMM against a naive triple loop, in every transpose combination, for
/// shapes that split by rows, by columns, unevenly, and through strided sub-matrices.
final class GemmTests: XCTestCase {
    func naive(_ ta: Bool, _ tb: Bool, _ m: Int, _ n: Int, _ k: Int, _ a: [Float], _ lda: Int, _ b: [Float], _ ldb: Int,
               _ alpha: Float, _ beta: Float, _ c: [Float], _ ldc: Int) -> [Float] {
        var out = c
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0
                for p in 0..<k {
                    let av = ta ? a[p * lda + i] : a[i * lda + p]
                    let bv = tb ? b[j * ldb + p] : b[p * ldb + j]
                    s += Double(av) * Double(bv)
                }
                out[i * ldc + j] = alpha * Float(s) + beta * c[i * ldc + j]
            }
        }
        return out
    }

    func testSplitGemmMatchesNaiveForAllTransposesAndShapes() {
        var rng = SeededGenerator(seed: 1)
        for (m, n, k) in [(200, 30, 17), (30, 200, 9), (129, 131, 64), (1, 500, 3), (300, 1, 5)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5
                    let a = (0..<((ta ? k : m) * lda)).map { _ in Float(rng.nextNormal()) }
                    let b = (0..<((tb ? n : k) * ldb)).map { _ in Float(rng.nextNormal()) }
                    let c0 = (0..<(m * ldc)).map { _ in Float(rng.nextNormal()) }
                    let expected = naive(ta, tb, m, n, k, a, lda, b, ldb, 0.5, 0.25, c0, ldc)
                    var c = c0
                    for threads in [1, 2, 3] {
                        c = c0
                        c.withUnsafeMutableBufferPointer { cp in
                            Gemm.multiply(transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda,
                                          b: b, ldb: ldb, beta: 0.25, c: cp.baseAddress!, ldc: ldc, threads: threads)
                        }
                        for i in 0..<m {
                            for j in 0..<n {
                                XCTAssertEqual(c[i * ldc + j], expected[i * ldc + j], accuracy: 1e-4,
                                               "m\(m) n\(n) k\(k) ta\(ta) tb\(tb) threads\(threads) at \(i),\(j)")
                            }
                        }
                        // Padding between rows is never written.
                        for i in 0..<m { for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j]) } }
                    }
                }
            }
        }
    }
}
