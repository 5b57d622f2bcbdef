import FedLMTensor

/// SGD with optional momentum and L2 weight decay on the decaying tensors, as `torch.optim.SGD`:
/// g' = g + wd * p; b = mu * b + g'; p -= lr * b.
public final class SGD: Optimizer {
    public let momentum: Float, weightDecay: Float
    public private(set) var step = 0
    public let velocity: ParameterVector
    let layout: ParameterLayout

    public init(layout: ParameterLayout, momentum: Float = 0, weightDecay: Float = 0) {
        self.layout = layout
        self.momentum = momentum
        self.weightDecay = weightDecay
        velocity = ParameterVector(layout: layout)
    }

    public func update(parameters: ParameterVector, gradients: ParameterVector, learningRate lr: Float) {
        let first = step == 0
        step += 1
        let p = parameters.pointer, g = gradients.pointer, b = velocity.pointer
        let mu = momentum, wd = weightDecay
        forEachParameterRange(layout, parameters: parameters.layout) { range, shift, decays in
            let l2: Float = decays ? wd : 0
            let p = p + shift
            for i in range {
                let gi = g[i] + l2 * p[i]
                if mu == 0 {
                    p[i] -= lr * gi
                } else {
                    let bi = first ? gi : mu * b[i] + gi
                    b[i] = bi
                    p[i] -= lr * bi
                }
            }
        }
    }

    public var stateVectors: [(name: String, vector: ParameterVector)] { [("momentum_buffer", velocity)] }

    public func restore(step: Int) { self.step = step }
}
