/// A batch of token sequences and their next-token targets, row-major [batch, sequence].
public struct TokenBatch: Sendable, Equatable {
    public let batch: Int
    public let sequence: Int
    public var inputs: [Int32]
    /// Next-token targets; a negative target is ignored by the loss.
    public var targets: [Int32]

    public init(batch: Int, sequence: Int, inputs: [Int32], targets: [Int32]) {
        self.batch = batch
        self.sequence = sequence
        self.inputs = inputs
        self.targets = targets
    }

    /// The sequences in `range`, as a batch of their own.
    public func sequences(_ range: Range<Int>) -> TokenBatch {
        let span = (range.lowerBound * sequence)..<(range.upperBound * sequence)
        return TokenBatch(batch: range.count, sequence: sequence, inputs: Array(inputs[span]), targets: Array(targets[span]))
    }

    /// Checks the batch against a model: shapes agree and every token is in the vocabulary.
    public func validate(for config: GPT2Config) throws {
        guard batch > 0, sequence > 0 else { throw ModelError.badBatch("batch and sequence must be positive") }
        guard sequence <= config.context else {
            throw ModelError.badBatch("sequence length \(sequence) exceeds n_positions \(config.context)")
        }
        guard inputs.count == batch * sequence, targets.count == batch * sequence else {
            throw ModelError.badBatch("expected \(batch * sequence) inputs and targets, got \(inputs.count) and \(targets.count)")
        }
        let v = Int32(config.vocabulary)
        if let bad = inputs.firstIndex(where: { $0 < 0 || $0 >= v }) {
            throw ModelError.badBatch("input token \(inputs[bad]) at position \(bad) is outside the vocabulary 0..<\(v)")
        }
        if let bad = targets.firstIndex(where: { $0 >= v }) {
            throw ModelError.badBatch("target token \(targets[bad]) at position \(bad) is outside the vocabulary 0..<\(v)")
        }
    }
}

public enum ModelError: Error, CustomStringConvertible, Equatable {
    case badBatch(String)
    case nonFiniteLoss(Float)

    public var description: String {
        switch self {
        case .badBatch(let why): return "bad batch: \(why)"
        case .nonFiniteLoss(let loss): return "loss is not finite (\(loss)): training diverged"
        }
    }
}
