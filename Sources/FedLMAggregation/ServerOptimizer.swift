import FedLMModel

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

    /// w <- step(w, g).
    public func apply(_ gradient: ParameterVector, to model: ParameterVector) {
        precondition(gradient.layout == model.layout, "server optimizer: gradient and model layouts differ")
        let g = gradient.pointer, w = model.pointer, count = model.count
        steps += 1
        switch kind {
        case .sgd(let lr):
            for i in 0..<count { w[i] -= lr * g[i] }
        case .nesterov(let lr, let mu):
            let m = momentum!.pointer
            for i in 0..<count {
                m[i] = mu * m[i] + g[i]
                w[i] -= lr * (g[i] + mu * m[i])
            }
        case .adam(let lr, let b1, let b2, let eps):
            let m = momentum!.pointer, v = second!.pointer
            let c1 = 1 - Float(pow(Double(b1), Double(steps))), c2 = 1 - Float(pow(Double(b2), Double(steps)))
            for i in 0..<count {
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                w[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
            }
        case .delayedNesterov(let lr, let mu, let period):
            precondition(period >= 1, "delayed Nesterov period must be at least 1")
            let m = momentum!.pointer, p = pending!.pointer
            for i in 0..<count {
                p[i] += g[i]
                w[i] -= lr * g[i]
            }
            if steps % period == 0 {
                let inv = 1 / Float(period)
                for i in 0..<count {
                    m[i] = mu * m[i] + p[i] * inv
                    w[i] -= lr * mu * m[i]
                    p[i] = 0
                }
            }
        }
    }
}

import Foundation
