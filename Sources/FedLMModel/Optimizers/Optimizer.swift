import FedLMTensor

/// Updates parameters in place from their gradients.
///
/// State (moments, step count) is exposed as named vectors so checkpoints can save and restore
/// it exactly.
public protocol Optimizer: AnyObject {
    /// Steps taken so far.
    var step: Int { get }
    /// One update with the given learning rate.
    func update(parameters: ParameterVector, gradients: ParameterVector, learningRate: Float)
    /// Named state vectors (each laid out like the parameters) for checkpoints.
    var stateVectors: [(name: String, vector: ParameterVector)] { get }
    /// Restores the step count after the state vectors have been loaded.
    func restore(step: Int)
}

/// Builds the optimizer a training config asks for.
public func makeOptimizer(_ t: TrainingConfig, layout: ParameterLayout) -> any Optimizer {
    switch t.optimizer {
    case .adamw:
        return AdamW(layout: layout, beta1: t.beta1, beta2: t.beta2, epsilon: t.epsilon, weightDecay: t.weightDecay)
    case .sgd:
        return SGD(layout: layout, momentum: t.momentum, weightDecay: t.weightDecay)
    }
}

/// Runs `body(range, shift, decays)` over the gradient vector laid out by `layout` in chunks
/// split across threads: `range` indexes the gradients (and the optimizer's state, laid out
/// alike), `range + shift` the same tensor's values in the parameters (laid out by `parameters`:
/// a model training only some tensors has gradients for those only), and `decays` says whether
/// weight decay applies.
func forEachParameterRange(_ layout: ParameterLayout, parameters: ParameterLayout, _ body: (Range<Int>, Int, Bool) -> Void) {
    let entries = layout.entries
    let shifts = layout == parameters ? [Int](repeating: 0, count: entries.count)
        : entries.map { e in
            guard let p = parameters.entry(e.name) else { preconditionFailure("the parameters have no tensor \(e.name)") }
            return p.offset - e.offset
        }
    parallel { part in
        let parts = ComputeThreads.count
        for (e, shift) in zip(entries, shifts) {
            let r = chunk(part, of: parts, count: e.count, granularity: 64)
            if !r.isEmpty { body((e.offset + r.lowerBound)..<(e.offset + r.upperBound), shift, e.decays) }
        }
    }
}
