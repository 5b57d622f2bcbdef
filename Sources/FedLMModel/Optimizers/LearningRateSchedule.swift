import Foundation

/// Linear warmup from 0 to the peak rate, then cosine decay to the minimum at `maxSteps`
/// (held there after). `step` counts from 0.
public struct LearningRateSchedule: Equatable, Sendable {
    public var peak: Float
    public var minimum: Float
    public var warmupSteps: Int
    public var maxSteps: Int

    public init(peak: Float, minimum: Float, warmupSteps: Int, maxSteps: Int) {
        self.peak = peak
        self.minimum = minimum
        self.warmupSteps = warmupSteps
        self.maxSteps = maxSteps
    }

    public init(_ t: TrainingConfig) {
        self.init(peak: t.learningRate, minimum: t.minLearningRate, warmupSteps: t.warmupSteps, maxSteps: t.maxSteps)
    }

    public func rate(at step: Int) -> Float {
        if step < warmupSteps { return peak * Float(step + 1) / Float(warmupSteps) }
        if step >= maxSteps { return minimum }
        let progress = Double(step - warmupSteps) / Double(max(1, maxSteps - warmupSteps))
        let cosine = 0.5 * (1 + cos(Double.pi * progress))
        return minimum + Float(cosine) * (peak - minimum)
    }
}
