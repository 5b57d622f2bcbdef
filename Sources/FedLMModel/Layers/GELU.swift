import FedLMTensor

/// GELU with GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
public enum GELU {
    static let c: Float = 0.797_884_560_802_865_4  // sqrt(2 / pi)
    static let k: Float = 0.044_715

    public static func forward(_ x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, granularity: 256) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let v = VectorMath.load(x + i)
                let inner: SIMD8<Float> = c * (v + k * (v * v * v))
                let t = VectorMath.tanh(inner)
                let y: SIMD8<Float> = 0.5 * v * (1 + t)
                VectorMath.store(y, out + i)
                i += 8
            }
            while i < range.upperBound {
                let v = x[i]
                out[i] = 0.5 * v * (1 + VectorMath.tanh(c * (v + k * v * v * v)))
                i += 1
            }
        }
    }

    /// grad[i] = grad[i] * GELU'(x[i]), in place.
    public static func backward(_ x: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, granularity: 256) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let v = VectorMath.load(x + i)
                let v2: SIMD8<Float> = v * v
                let inner: SIMD8<Float> = c * (v + k * (v2 * v))
                let t = VectorMath.tanh(inner)
                let left: SIMD8<Float> = 0.5 * (1 + t)
                let slope: SIMD8<Float> = c * (1 + (3 * k) * v2)
                let right: SIMD8<Float> = (0.5 * v) * (1 - t * t) * slope
                VectorMath.store(VectorMath.load(grad + i) * (left + right), grad + i)
                i += 8
            }
            while i < range.upperBound {
                let v = x[i]
                let t = VectorMath.tanh(c * (v + k * v * v * v))
                let slope: Float = c * (1 + 3 * k * v * v)
                grad[i] *= 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * slope
                i += 1
            }
        }
    }
}
