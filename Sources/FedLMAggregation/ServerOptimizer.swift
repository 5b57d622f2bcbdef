import FedLMModel
import FedLMTensor

/// The outer optimizer: applies an aggregated pseudo-gradient (the mean of w_start - w_end over
/// the contributing trainers) to the global model.
public enum ServerOptimizerKind: Equatable, Sendable, Codable {
    /// w -= lr * g
    case sgd(learningRate: Float)
    /// PyTorch SGD with Nesterov momentum, as DiLoCo and Photon (lr 0.7, momentum 0.9):
    /// m = mu m + g;  w -= lr (g + mu m)
    case nesterov(learningRate: Float, momentum: Float)
    /// Adam on the pseudo-gradient, with bias correction.
    case adam(learningRate: Float, beta1: Float, beta2: Float, epsilon: Float)
    /// Delayed Nesterov (for asynchronous arrivals): the momentum buffer is updated only once
    /// every `period` steps, with the mean pseudo-gradient of those steps; in between, each
    /// step applies lr * g without momentum, and the momentum step applies lr * mu * m.
    case delayedNesterov(learningRate: Float, momentum: Float, period: Int)
}

/// State and update rule of a server optimizer over flat parameter vectors.
public final class ServerOptimizer {
    public let kind: ServerOptimizerKind
    public private(set) var steps = 0
    let momentum: ParameterVector?
    let second: ParameterVector?
    let pending: ParameterVector?

    public init(_ kind: ServerOptimizerKind, layout: ParameterLayout) {
        self.kind = kind
        switch kind {
        case .sgd: momentum = nil; second = nil; pending = nil
        case .nesterov: momentum = ParameterVector(layout: layout); second = nil; pending = nil
        case .adam: momentum = ParameterVector(layout: layout); second = ParameterVector(layout: layout); pending = nil
        case .delayedNesterov:
            momentum = ParameterVector(layout: layout); second = nil; pending = ParameterVector(layout: layout)
        }
    }

    /// Named state for checkpoints (laid out like the parameters).
    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("momentum", momentum), ("second_moment", second), ("pending", pending)].compactMap { n, v in v.map { (n, $0) } }
    }

    public func restore(steps: Int) { self.steps = steps }

    /// w <- step(w, scale * g), in one pass over memory split across the compute threads; with
    /// `ranges`, only those coordinates step (the tensors partial updates carried: the others'
    /// weights and optimizer state stay as they are).
    public func apply(_ gradient: ParameterVector, scale: Float = 1, to model: ParameterVector, over ranges: [Range<Int>]? = nil) {
        precondition(gradient.layout == model.layout, "server optimizer: gradient and model layouts differ")
        let g = gradient.pointer, w = model.pointer
        steps += 1
        let step = steps
        let span = ranges ?? [0..<model.count]
        switch kind {
        case .sgd(let lr):
            let k = lr * scale
            parallelFor(ranges: span) { r in for i in r { w[i] -= k * g[i] } }
        case .nesterov(let lr, let mu):
            let m = momentum!.pointer
            parallelFor(ranges: span) { r in
                for i in r {
                    let gi = scale * g[i]
                    m[i] = mu * m[i] + gi
                    w[i] -= lr * (gi + mu * m[i])
                }
            }
        case .adam(let lr, let b1, let b2, let eps):
            let m = momentum!.pointer, v = second!.pointer
            let c1 = 1 - Float(pow(Double(b1), Double(step))), c2 = 1 - Float(pow(Double(b2), Double(step)))
            parallelFor(ranges: span) { r in
                for i in r {
                    let gi = scale * g[i]
                    m[i] = b1 * m[i] + (1 - b1) * gi
                    v[i] = b2 * v[i] + (1 - b2) * gi * gi
                    w[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
                }
            }
        case .delayedNesterov(let lr, let mu, let period):
            precondition(period >= 1, "delayed Nesterov period must be at least 1")
            let m = momentum!.pointer, p = pending!.pointer
            let flush = step % period == 0
            let inv = 1 / Float(period)
            parallelFor(ranges: span) { r in
                for i in r {
                    let gi = scale * g[i]
                    p[i] += gi
                    w[i] -= lr * gi
                    if flush {
                        m[i] = mu * m[i] + p[i] * inv
                        w[i] -= lr * mu * m[i]
                        p[i] = 0
                    }
                }
            }
        }
    }
}

import Foundation
