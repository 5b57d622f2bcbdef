/// How to train: optimizer, schedule, batch. Lives in the `[training]` table of a config file.
public struct TrainingConfig: Equatable, Sendable, Codable {
    public enum OptimizerKind: String, Sendable, Codable, CaseIterable { case adamw, sgd }

    public var batchSize: Int = 16
    /// Sequence length per example; defaults to the model's context.
    public var sequenceLength: Int? = nil
    public var optimizer: OptimizerKind = .adamw
    public var learningRate: Float = 6e-4
    public var minLearningRate: Float = 6e-5
    public var warmupSteps: Int = 100
    public var maxSteps: Int = 2000
    public var weightDecay: Float = 0.1
    public var beta1: Float = 0.9
    public var beta2: Float = 0.95
    public var epsilon: Float = 1e-8
    /// SGD momentum (ignored by AdamW).
    public var momentum: Float = 0
    /// Global gradient-norm clip; 0 disables.
    public var gradientClip: Float = 1.0
    public var seed: UInt64 = 1234

    public init() {}

    public func validate(context: Int) throws {
        func check(_ ok: Bool, _ field: String, _ reason: String) throws {
            if !ok { throw ConfigError.invalidValue(field: "training.\(field)", reason: reason) }
        }
        try check(batchSize > 0, "batch_size", "must be positive, got \(batchSize)")
        if let t = sequenceLength {
            try check(t > 0 && t <= context, "sequence_length", "must be in 1...\(context) (n_positions), got \(t)")
        }
        try check(learningRate.isFinite && learningRate >= 0, "learning_rate", "must be a non-negative number")
        try check(minLearningRate.isFinite && minLearningRate >= 0 && minLearningRate <= learningRate,
                  "min_learning_rate", "must be between 0 and learning_rate")
        try check(warmupSteps >= 0, "warmup_steps", "must be non-negative")
        try check(maxSteps > 0, "max_steps", "must be positive")
        try check(weightDecay.isFinite && weightDecay >= 0, "weight_decay", "must be non-negative")
        try check(beta1 >= 0 && beta1 < 1, "beta1", "must be in [0, 1)")
        try check(beta2 >= 0 && beta2 < 1, "beta2", "must be in [0, 1)")
        try check(epsilon > 0, "eps", "must be positive")
        try check(momentum >= 0 && momentum < 1, "momentum", "must be in [0, 1)")
        try check(gradientClip >= 0 && gradientClip.isFinite, "grad_clip", "must be non-negative (0 disables)")
    }
}
