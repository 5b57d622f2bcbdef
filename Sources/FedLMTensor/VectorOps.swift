/// Small vector primitives shared by the kernels. Reductions use 8 SIMD accumulators so they
/// vectorise (LLVM will not reorder a scalar float sum by itself) and give the same result on
/// every run.
public enum VectorOps {
    public typealias V = SIMD8<Float>

    @inline(__always)
    public static func sum(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V()
        var i = 0
        while i + 8 <= n { acc += VectorMath.load(a + i); i += 8 }
        var s = acc.sum()
        while i < n { s += a[i]; i += 1 }
        return s
    }

    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V()
        var i = 0
        while i + 8 <= n { acc += VectorMath.load(a + i) * VectorMath.load(b + i); i += 8 }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    @inline(__always)
    public static func max(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
        var m = -Float.infinity
        var i = 0
        if n >= 8 {
            var acc = V(repeating: -.infinity)
            while i + 8 <= n { acc = VectorMath.maximum(acc, VectorMath.load(a + i)); i += 8 }
            m = acc.max()
        }
        while i < n { m = Swift.max(m, a[i]); i += 1 }
        return m
    }

    /// y[i] += x[i]
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] += x[i] }
    }

    /// Sum of squares in double precision (for gradient norms over millions of values).
    public static func sumOfSquares(_ a: UnsafePointer<Float>, _ n: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < n {
            let end = Swift.min(n, i + 4096)
            var acc = V()
            var j = i
            while j + 8 <= end { let v = VectorMath.load(a + j); acc += v * v; j += 8 }
            var s = Double(acc.sum())
            while j < end { s += Double(a[j] * a[j]); j += 1 }
            total += s
            i = end
        }
        return total
    }

    /// db[c] += sum over rows of dy[r, c], split over threads by columns (deterministic).
    public static func addColumnSums(_ dy: UnsafePointer<Float>, rows: Int, columns: Int,
                                     into db: UnsafeMutablePointer<Float>) {
        parallelFor(columns, granularity: 64) { cols in
            for r in 0..<rows {
                let row = dy + r * columns
                for c in cols { db[c] += row[c] }
            }
        }
    }
}
