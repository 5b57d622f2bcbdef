/// Vectorised transcendental functions for the elementwise kernels (softmax, GELU).
///
/// libm's `expf` is scalar; these work on 8 lanes at a time. `exp` has a maximum relative error
/// of about 2 ulp over the range that matters (checked against libm in the tests).
public enum VectorMath {
    public typealias V = SIMD8<Float>

    /// e^x per lane; inputs below -87.3 give ~0, above 88.3 are clamped (e^88.3 ~ 2.2e38).
    ///
    /// Rounds x*log2(e) to an integer n by adding 1.5*2^23 (the integer lands in the low
    /// mantissa bits), so that neither a generic float-to-int SIMD conversion nor a rounding
    /// call appears: both compile to per-lane scalar code in Swift and cost 10x the rest.
    @inline(__always)
    public static func exp(_ x: V) -> V {
        let log2e: Float = 1.442_695_04
        let ln2Hi: Float = 0.693_359_375
        let ln2Lo: Float = -2.121_944_4e-4
        let magic: Float = 12_582_912  // 1.5 * 2^23
        var x = clamp(x, -87.33, 88.3)
        let t = x * log2e + magic
        let n = t - magic
        x = x - n * ln2Hi
        x = x - n * ln2Lo
        // Cephes' minimax polynomial for e^r on [-ln2/2, ln2/2].
        var p = V(repeating: 1.987_569_15e-4)
        p = p * x + 1.398_199_950_7e-3
        p = p * x + 8.333_451_907_3e-3
        p = p * x + 4.166_579_589_4e-2
        p = p * x + 1.666_666_545_9e-1
        p = p * x + 5.000_000_120_1e-1
        let r = p * (x * x) + x + 1
        // 2^n: n sits in the low bits of t's pattern (pattern of the magic is 0x4B40_0000).
        let nInt = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000
        let scale = unsafeBitCast((nInt &+ 127) &<< 23, to: V.self)
        return r * scale
    }

    /// Lane-wise clamp. Written as a lane loop because the standard library's generic
    /// `pointwiseMin`/`pointwiseMax` are not inlined and cost a call per vector; LLVM turns this
    /// loop into vector compare-and-select.
    @inline(__always)
    public static func clamp(_ v: V, _ lo: Float, _ hi: Float) -> V {
        var r = v
        for i in 0..<8 {
            let x = v[i]
            r[i] = x < lo ? lo : (x > hi ? hi : x)
        }
        return r
    }

    @inline(__always)
    public static func maximum(_ a: V, _ b: V) -> V {
        var r = a
        for i in 0..<8 where b[i] > a[i] { r[i] = b[i] }
        return r
    }

    @inline(__always)
    public static func exp(_ x: Float) -> Float { exp(V(repeating: x))[0] }

    /// tanh per lane via 1 - 2 / (e^(2x) + 1); absolute error ~1e-7.
    @inline(__always)
    public static func tanh(_ x: V) -> V {
        let e = exp(2 * clamp(x, -20, 20))
        return 1 - 2 / (e + 1)
    }

    @inline(__always)
    public static func tanh(_ x: Float) -> Float { tanh(V(repeating: x))[0] }

    /// Loads 8 floats (unaligned).
    @inline(__always)
    public static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }

    @inline(__always)
    public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
    }
}
