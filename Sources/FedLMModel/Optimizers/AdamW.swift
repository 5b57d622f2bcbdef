import FedLMTensor
import Foundation

/// AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW`: decoupled weight decay
/// p -= lr * wd * p, bias-corrected moments, p -= lr * m_hat / (sqrt(v_hat) + eps).
/// Weight decay applies only to the tensors the layout marks as decaying (linear-layer matrices).
/// The moments are laid out like the gradients: the trained tensors only, for a partial model.
public final class AdamW: Optimizer {
    public let beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float
    public private(set) var step = 0
    public let firstMoment: ParameterVector
    public let secondMoment: ParameterVector
    let layout: ParameterLayout

    public init(layout: ParameterLayout, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
                weightDecay: Float = 0.01) {
        self.layout = layout
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        firstMoment = ParameterVector(layout: layout)
        secondMoment = ParameterVector(layout: layout)
    }

    public func update(parameters: ParameterVector, gradients: ParameterVector, learningRate lr: Float) {
        step += 1
        let b1 = beta1, b2 = beta2, eps = epsilon
        let correction1 = 1 - Float(Foundation.pow(Double(b1), Double(step)))
        let correction2 = 1 - Float(Foundation.pow(Double(b2), Double(step)))
        let stepSize = lr / correction1
        let invSqrtCorrection2 = 1 / correction2.squareRoot()
        let p = parameters.pointer, g = gradients.pointer, m = firstMoment.pointer, v = secondMoment.pointer
        let decay = 1 - lr * weightDecay
        forEachParameterRange(layout, parameters: parameters.layout) { range, shift, decays in
            let shrink: Float = decays ? decay : 1
            let p = p + shift
            for i in range {
                let gi = g[i]
                let mi = b1 * m[i] + (1 - b1) * gi
                let vi = b2 * v[i] + (1 - b2) * gi * gi
                m[i] = mi
                v[i] = vi
                p[i] = p[i] * shrink - stepSize * mi / (vi.squareRoot() * invSqrtCorrection2 + eps)
            }
        }
    }

    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("exp_avg", firstMoment), ("exp_avg_sq", secondMoment)]
    }

    public func restore(step: Int) { self.step = step }
}
