import FedLMTensor
import Foundation

/// Autoregressive sampling with temperature and top-k (no KV cache: each new token reruns the
/// forward pass over the last `context` tokens, fine for demos).
public enum Sampler {
    public static func generate(model: GPT2Model, prompt: [Int32], tokens: Int, temperature: Float = 0.8,
                                topK: Int = 40, seed: UInt64 = 0) throws -> [Int32] {
        var rng = SeededGenerator(seed: seed)
        var sequence = prompt.isEmpty ? [Int32(0)] : prompt
        let v = model.config.vocabulary
        for _ in 0..<tokens {
            let window = Array(sequence.suffix(model.config.context))
            let logits = try model.lastLogits(TokenBatch(batch: 1, sequence: window.count, inputs: window,
                                                         targets: [Int32](repeating: -1, count: window.count)))
            sequence.append(Int32(pick(logits: Array(logits[0..<v]), temperature: temperature, topK: topK, rng: &rng)))
        }
        return Array(sequence.dropFirst(prompt.isEmpty ? 1 : prompt.count))
    }

    static func pick(logits: [Float], temperature: Float, topK: Int, rng: inout SeededGenerator) -> Int {
        if temperature <= 0 { return logits.indices.max { logits[$0] < logits[$1] }! }
        var order = Array(logits.indices).sorted { logits[$0] > logits[$1] }
        if topK > 0 { order = Array(order.prefix(topK)) }
        let m = logits[order[0]]
        let weights = order.map { Foundation.exp(Double((logits[$0] - m) / temperature)) }
        var r = rng.nextUniform() * weights.reduce(0, +)
        for (i, w) in zip(order, weights) {
            r -= w
            if r <= 0 { return i }
        }
        return order.last!
    }
}
