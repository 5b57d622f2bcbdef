import FedLMTensor

/// One optimizer step on a batch: forward, backward, global-norm clipping, scheduled learning
/// rate, optimizer update. The centralized trainer and the federated trainer both drive it.
public final class TrainingStep {
    public let model: GPT2Model
    public let optimizer: any Optimizer
    public let schedule: LearningRateSchedule
    public let gradientClip: Float
    /// Sequences per forward/backward pass: a step over a larger batch accumulates the gradients
    /// of its micro-batches (the same step, less activation memory). nil: the whole batch at once.
    public var microBatch: Int?

    public struct Report: Sendable {
        public var loss: Float
        public var gradientNorm: Float
        public var learningRate: Float
    }

    public init(model: GPT2Model, training: TrainingConfig) {
        self.model = model
        self.optimizer = makeOptimizer(training, layout: model.gradients.layout)
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
        let loss = try lossAndGradients(batch)
        guard loss.isFinite else { throw ModelError.nonFiniteLoss(loss) }
        let norm = gradientClip > 0 ? GradientClipping.clip(model.gradients, maxNorm: gradientClip)
                                    : GradientClipping.norm(model.gradients)
        guard norm.isFinite else { throw ModelError.nonFiniteLoss(norm) }
        let lr = schedule.rate(at: optimizer.step)
        optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: lr)
        return Report(loss: loss, gradientNorm: norm, learningRate: lr)
    }

    /// The batch's mean loss and gradients, in micro-batches of equal size when `microBatch` asks
    /// for them: the mean of the micro-batches' mean gradients is the batch's.
    private func lossAndGradients(_ batch: TokenBatch) throws -> Float {
        guard let micro = microBatch, micro < batch.batch else { return try model.lossAndGradients(batch) }
        guard micro > 0, batch.batch % micro == 0 else {
            throw ModelError.badBatch("micro-batch \(micro) does not divide the batch of \(batch.batch) sequences")
        }
        let parts = batch.batch / micro
        var loss: Float = 0
        for k in 0..<parts {
            loss += try model.lossAndGradients(batch.sequences(k * micro..<(k + 1) * micro), accumulating: k > 0)
        }
        let scale = 1 / Float(parts), g = model.gradients.pointer
        parallelFor(model.gradients.count, granularity: 4096) { r in for i in r { g[i] *= scale } }
        return loss * scale
    }
}
