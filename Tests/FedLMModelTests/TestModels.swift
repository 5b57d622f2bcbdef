import FedLMModel
import FedLMTensor

/// Small shapes that exercise every code path (several heads, several attention blocks when
/// the sequence exceeds the block size, untied heads) while staying fast in debug builds.
enum TestModels {
    static func config(layers: Int = 2, embedding: Int = 16, heads: Int = 2, context: Int = 8,
                       vocabulary: Int = 37, tied: Bool = true) -> GPT2Config {
        GPT2Config(layers: layers, embedding: embedding, heads: heads, context: context, vocabulary: vocabulary,
                   tiedHead: tied)
    }

    /// A random batch whose targets are the inputs shifted by one, like language-model data.
    static func batch(_ c: GPT2Config, batch: Int, sequence: Int, seed: UInt64) -> TokenBatch {
        var rng = SeededGenerator(seed: seed)
        let stream = (0...(batch * sequence)).map { _ in Int32(rng.next() % UInt64(c.vocabulary)) }
        var inputs: [Int32] = [], targets: [Int32] = []
        for b in 0..<batch {
            for t in 0..<sequence {
                inputs.append(stream[b * sequence + t])
                targets.append(stream[b * sequence + t + 1])
            }
        }
        return TokenBatch(batch: batch, sequence: sequence, inputs: inputs, targets: targets)
    }

    /// Perturbs every parameter slightly so LayerNorm gains and biases are not at their special
    /// initial values (1 and 0), where a wrong gradient term could vanish.
    static func perturb(_ model: GPT2Model, seed: UInt64, scale: Double = 0.1) {
        var rng = SeededGenerator(seed: seed)
        let p = model.parameters.pointer
        for i in 0..<model.parameters.count { p[i] += Float(rng.nextNormal() * scale) }
    }
}
