import FedLMTensor

/// Softmax cross-entropy over the vocabulary, mean over the targets that count.
///
/// A negative target (for example -100, Hugging Face's `ignore_index`) is ignored. With
/// `writeGradient`, the logits are overwritten in place by d(mean loss)/d(logits), which saves
/// a second [tokens, vocabulary] buffer. The logits are consumed either way.
public enum CrossEntropy {
    public struct Result: Sendable {
        public var lossSum: Double
        public var counted: Int
        public var mean: Float { counted == 0 ? 0 : Float(lossSum / Double(counted)) }
    }

    public static func forward(logits: UnsafeMutablePointer<Float>, targets: UnsafePointer<Int32>,
                               rows: Int, vocabulary: Int, writeGradient: Bool) -> Result {
        var counted = 0
        for r in 0..<rows where targets[r] >= 0 { counted += 1 }
        let invCount: Float = counted == 0 ? 0 : 1 / Float(counted)
        let parts = min(ComputeThreads.count, max(rows, 1))
        var partial = [Double](repeating: 0, count: parts)
        partial.withUnsafeMutableBufferPointer { partial in
            parallel(parts: parts) { part in
                var lossSum = 0.0
                for r in chunk(part, of: parts, count: rows) {
                    let z = logits + r * vocabulary
                    let target = Int(targets[r])
                    if target < 0 {
                        if writeGradient { z.initialize(repeating: 0, count: vocabulary) }
                        continue
                    }
                    let m = VectorOps.max(z, vocabulary)
                    let targetLogit = z[target]
                    // One exp pass, kept in place; the gradient is then a scaling of it.
                    var acc = SIMD8<Float>()
                    var j = 0
                    while j + 8 <= vocabulary {
                        let e = VectorMath.exp(VectorMath.load(z + j) - m)
                        VectorMath.store(e, z + j)
                        acc += e
                        j += 8
                    }
                    var sum = acc.sum()
                    while j < vocabulary { let e = VectorMath.exp(z[j] - m); z[j] = e; sum += e; j += 1 }
                    lossSum += Double(m + log(sum) - targetLogit)
                    if writeGradient {
                        // softmax / count, minus 1 / count at the target.
                        let scale = invCount / sum
                        for j in 0..<vocabulary { z[j] *= scale }
                        z[target] -= invCount
                    }
                }
                partial[part] = lossSum
            }
        }
        return Result(lossSum: partial.reduce(0, +), counted: counted)
    }
}

import Foundation
