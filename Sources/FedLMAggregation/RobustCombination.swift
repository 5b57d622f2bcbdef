import FedLMModel
import FedLMTensor

/// How a buffer of K updates becomes one step, so that a broken or hostile trainer cannot
/// steer the model: the mean (FedBuff's own), or per coordinate the median or a trimmed mean,
/// which ignore the most extreme values a minority of trainers can produce.
public enum RobustCombination: Equatable, Sendable, Codable {
    case mean
    /// Per coordinate, the median of the K values.
    case median
    /// Per coordinate, the mean after dropping the `fraction` highest and lowest values
    /// (at least one each side when fraction > 0 and K >= 3).
    case trimmedMean(fraction: Double)

    /// How many values each side a trimmed mean of `k` values drops.
    public static func trimmed(_ fraction: Double, of k: Int) -> Int {
        guard k >= 3, fraction > 0 else { return 0 }
        return min((k - 1) / 2, max(1, Int((Double(k) * fraction).rounded(.down))))
    }

    /// Combines `deltas` coordinate by coordinate into `out` (parallel over the coordinates).
    func combine(_ deltas: [ParameterVector], into out: ParameterVector) {
        combine(deltas, range: 0..<out.count, into: out)
    }

    /// The same over the coordinates in `range` only (a tensor that only some updates carry).
    func combine(_ deltas: [ParameterVector], range whole: Range<Int>, into out: ParameterVector) {
        let k = deltas.count
        let sources = deltas.map { UnsafePointer($0.pointer) }
        let o = out.pointer
        let drop: Int
        switch self {
        case .mean: drop = 0
        case .median: drop = -1
        case .trimmedMean(let f): drop = Self.trimmed(f, of: k)
        }
        parallelFor(whole.count, granularity: 8192) { part in
            var values = [Float](repeating: 0, count: k)
            for i in (whole.lowerBound + part.lowerBound)..<(whole.lowerBound + part.upperBound) {
                for j in 0..<k { values[j] = sources[j][i] }
                // Insertion sort: K is a handful.
                for a in 1..<max(k, 1) {
                    let v = values[a]
                    var b = a - 1
                    while b >= 0, values[b] > v { values[b + 1] = values[b]; b -= 1 }
                    values[b + 1] = v
                }
                if drop < 0 {
                    o[i] = k % 2 == 1 ? values[k / 2] : 0.5 * (values[k / 2 - 1] + values[k / 2])
                } else {
                    var sum: Float = 0
                    for j in drop..<(k - drop) { sum += values[j] }
                    o[i] = sum / Float(k - 2 * drop)
                }
            }
        }
    }
}
