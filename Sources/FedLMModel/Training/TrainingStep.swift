import FedLMTensor

/// One optimizer step on a batch: forward, backward, global-norm clipping, scheduled learning
/// rate, optimizer update. The centralized trainer and the federated trainer both drive it.
public final class TrainingStep {
    public let model: GPT2Model
    public let optimizer: any Optimizer
    public let schedule: LearningRateSchedule
    public let gradientClip: Float

    public struct Report: Sendable {
        public var loss: Float
        public var gradientNorm: Float
        public var learningRate: Float
    }

    public init(model: GPT2Model, training: TrainingConfig) {
        self.model = model
        self.optimizer = makeOptimizer(training, layout: model.layout)
        self.schedule = LearningRateSchedule(training)
        self.gradientClip = training.gradientClip
    }

    public init(model: GPT2Model, optimizer: any Optimizer, schedule: LearningRateSchedule, gradientClip: Float) {
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.gradientClip = gradientClip
    }

    /// Steps taken (the optimizer's count, so it survives a checkpoint round trip).
    public var step: Int { optimizer.step }

    /// Runs one step. A non-finite loss or gradient leaves the parameters untouched and throws.
    @discardableResult
    public func run(_ batch: TokenBatch) throws -> Report {
        let loss = try model.lossAndGradients(batch)
        guard loss.isFinite else { throw ModelError.nonFiniteLoss(loss) }
        let norm = gradientClip > 0 ? GradientClipping.clip(model.gradients, maxNorm: gradientClip)
                                    : GradientClipping.norm(model.gradients)
        guard norm.isFinite else { throw ModelError.nonFiniteLoss(norm) }
        let lr = schedule.rate(at: optimizer.step)
        optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: lr)
        return Report(loss: loss, gradientNorm: norm, learningRate: lr)
    }
}
