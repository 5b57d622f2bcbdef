import Foundation

/// What a trainer holds in memory while it trains, and the part of the model that fits a budget.
///
/// Training needs the weights, the gradients and two AdamW moments of what it trains, and the
/// activations of every block the backward pass goes through (`ActivationPlan`); at `small`'s
/// shape the activations are most of it. A partial trainer therefore trains the top blocks of the
/// model (plus the final LayerNorm and an untied head): frozen blocks below the lowest trained
/// one need neither gradients, optimizer state nor stored activations. Micro-batches (gradient
/// accumulation) shrink the activations further, at little speed.
public enum TrainingMemory {
    /// A part of the model to train and how, with its estimated peak.
    public struct Plan: Equatable, Sendable, CustomStringConvertible {
        public let trained: TensorSubset
        /// Sequences per forward/backward pass.
        public let microBatch: Int
        public let estimatedBytes: Int
        /// Transformer blocks trained (counted from the top).
        public let blocks: Int

        public var description: String {
            let what = trained.isWhole ? "the whole model" : "the top \(blocks) block\(blocks == 1 ? "" : "s") and ln_f"
            return "\(what) (\(trained.count) of \(trained.model.totalCount) parameters), micro-batch \(microBatch), estimated peak \(mebibytes(estimatedBytes))"
        }
    }

    /// The process itself: runtime, libraries, OpenBLAS's buffers, ZeroMQ, the data index, and
    /// the allocator's slack (measured: trainers of the `tiny` shape peak about 60 MiB above
    /// their tensors; 20 MiB more for margin).
    public static let runtimeBytes = 80 << 20
    /// Copies of the whole model a trainer holds at its peak: the weights, the release it holds,
    /// a release being received, and one for freed copies the allocator has not returned yet
    /// (measured: a `small` partial trainer peaked 30 MB higher in a busy federation than alone).
    public static let modelCopies = 4
    /// Copies of the trained tensors: gradients, two AdamW moments, the round's start weights, the
    /// pseudo-gradient, its encoded frames and the pending-update file's buffer.
    public static let trainedCopies = 7

    /// The estimated peak resident bytes of a trainer training `trained` in micro-batches of
    /// `microBatch` sequences of `sequence` tokens.
    public static func estimate(config: GPT2Config, trained: TensorSubset, microBatch: Int, sequence: Int) -> Int {
        runtimeBytes + 4 * (modelCopies * trained.model.totalCount + trainedCopies * trained.count)
            + GPT2Model.plannedActivationBytes(config: config, trained: trained, batch: microBatch, sequence: sequence)
    }

    /// The top `blocks` transformer blocks, ln_f and an untied head; every tensor when `blocks`
    /// is more than the model has.
    public static func topBlocks(_ blocks: Int, config: GPT2Config) -> TensorSubset {
        let layout = ParameterLayout(config: config)
        if blocks > config.layers { return .whole(layout) }
        let lowest = config.layers - blocks
        return TensorSubset(model: layout, indices: layout.entries.indices.filter { i in
            let name = layout.entries[i].name
            if let block = TensorSubset.block(of: name) { return block >= lowest }
            return name.hasPrefix("transformer.ln_f.") || name.hasPrefix("lm_head.")
        })
    }

    /// The most of the model that fits `budget` bytes: the whole model, else the most top blocks
    /// (at least one), each with the largest micro-batch that fits (micro-batches cost little
    /// speed; frozen blocks cost what they would have learned). A given `microBatch` is used as
    /// it is.
    public static func plan(config: GPT2Config, batch: Int, sequence: Int, budget: Int, microBatch: Int? = nil) throws -> Plan {
        let micros = microBatch.map { [$0] } ?? (1...batch).filter { batch % $0 == 0 }.sorted(by: >)
        for blocks in stride(from: config.layers + 1, through: 1, by: -1) {
            let trained = topBlocks(blocks, config: config)
            for micro in micros {
                let bytes = estimate(config: config, trained: trained, microBatch: micro, sequence: sequence)
                if bytes <= budget { return Plan(trained: trained, microBatch: micro, estimatedBytes: bytes, blocks: min(blocks, config.layers)) }
            }
        }
        let smallest = estimate(config: config, trained: topBlocks(1, config: config), microBatch: micros.last!, sequence: sequence)
        throw SubsetError("a memory budget of \(mebibytes(budget)) is too small to train any part of this model: the least (its top block, micro-batch \(micros.last!)) needs about \(mebibytes(smallest))")
    }

    /// Parses a size such as `300MiB`, `1.5GiB`, `800MB` or a plain number of bytes.
    public static func parseBytes(_ text: String) throws -> Int {
        let units: [(String, Double)] = [("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("B", 1)]
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
            if let n = Double(trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), n > 0 { return Int(n * scale) }
        }
        if let n = Int(trimmed), n > 0 { return n }
        throw SubsetError("'\(text)' is not a memory size (examples: 300MiB, 1.5GiB, 800MB)")
    }

    public static func mebibytes(_ bytes: Int) -> String { "\(bytes >> 20) MiB" }
}
