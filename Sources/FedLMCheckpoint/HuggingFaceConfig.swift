import FedLMModel
import Foundation

/// The `config.json` that `transformers.GPT2Config` reads, so `GPT2LMHeadModel.from_pretrained`
/// loads a FedLM checkpoint directory as it is. Dropout is 0: FedLM trains without it.
public struct HuggingFaceConfig: Codable, Equatable {
    public var architectures = ["GPT2LMHeadModel"]
    public var model_type = "gpt2"
    public var vocab_size: Int
    public var n_positions: Int
    public var n_ctx: Int
    public var n_embd: Int
    public var n_layer: Int
    public var n_head: Int
    public var n_inner: Int?
    public var activation_function = "gelu_new"
    public var resid_pdrop = 0.0
    public var embd_pdrop = 0.0
    public var attn_pdrop = 0.0
    public var layer_norm_epsilon: Double
    public var initializer_range = 0.02
    public var scale_attn_weights = true
    public var tie_word_embeddings: Bool
    public var use_cache = true
    public var torch_dtype = "float32"
    /// Written as null unless a tokenizer defines them: transformers otherwise assumes GPT-2's
    /// 50256, which lies outside smaller vocabularies.
    public var bos_token_id: Int?
    public var eos_token_id: Int?

    public init(_ c: GPT2Config) {
        vocab_size = c.vocabulary
        n_positions = c.context
        n_ctx = c.context
        n_embd = c.embedding
        n_layer = c.layers
        n_head = c.heads
        n_inner = nil
        layer_norm_epsilon = Double(c.layerNormEpsilon)
        tie_word_embeddings = c.tiedHead
    }

    /// The FedLM model this config describes; refuses features FedLM does not implement.
    public func gpt2Config(path: String) throws -> GPT2Config {
        func refuse(_ why: String) -> CheckpointError { .configMismatch(path: path, reason: why) }
        guard model_type == "gpt2" else { throw refuse("model_type is '\(model_type)', FedLM reads only 'gpt2'") }
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(activation_function) else {
            throw refuse("activation_function '\(activation_function)' is not GPT-2's tanh GELU")
        }
        if let inner = n_inner, inner != 4 * n_embd { throw refuse("n_inner \(inner) is not 4 * n_embd") }
        guard scale_attn_weights else { throw refuse("scale_attn_weights = false is not supported") }
        let c = GPT2Config(layers: n_layer, embedding: n_embd, heads: n_head, context: n_positions,
                           vocabulary: vocab_size, tiedHead: tie_word_embeddings,
                           layerNormEpsilon: Float(layer_norm_epsilon))
        do { try c.validate() } catch { throw refuse("\(error)") }
        return c
    }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    public static func load(path: String) throws -> HuggingFaceConfig {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw CheckpointError.io(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        do { return try JSONDecoder().decode(HuggingFaceConfig.self, from: data) } catch {
            throw CheckpointError.configMismatch(path: path, reason: "not a GPT-2 config.json: \(error)")
        }
    }

    // Hugging Face writes many more fields; decode tolerates their absence and presence alike.
    enum CodingKeys: String, CodingKey {
        case architectures, model_type, vocab_size, n_positions, n_ctx, n_embd, n_layer, n_head, n_inner,
             activation_function, resid_pdrop, embd_pdrop, attn_pdrop, layer_norm_epsilon, initializer_range,
             scale_attn_weights, tie_word_embeddings, use_cache, torch_dtype, bos_token_id, eos_token_id
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(architectures, forKey: .architectures)
        try c.encode(model_type, forKey: .model_type)
        try c.encode(vocab_size, forKey: .vocab_size)
        try c.encode(n_positions, forKey: .n_positions)
        try c.encode(n_ctx, forKey: .n_ctx)
        try c.encode(n_embd, forKey: .n_embd)
        try c.encode(n_layer, forKey: .n_layer)
        try c.encode(n_head, forKey: .n_head)
        try c.encode(n_inner, forKey: .n_inner)  // null: 4 * n_embd
        try c.encode(activation_function, forKey: .activation_function)
        try c.encode(resid_pdrop, forKey: .resid_pdrop)
        try c.encode(embd_pdrop, forKey: .embd_pdrop)
        try c.encode(attn_pdrop, forKey: .attn_pdrop)
        try c.encode(layer_norm_epsilon, forKey: .layer_norm_epsilon)
        try c.encode(initializer_range, forKey: .initializer_range)
        try c.encode(scale_attn_weights, forKey: .scale_attn_weights)
        try c.encode(tie_word_embeddings, forKey: .tie_word_embeddings)
        try c.encode(use_cache, forKey: .use_cache)
        try c.encode(torch_dtype, forKey: .torch_dtype)
        try c.encode(bos_token_id, forKey: .bos_token_id)
        try c.encode(eos_token_id, forKey: .eos_token_id)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures) ?? ["GPT2LMHeadModel"]
        model_type = try c.decodeIfPresent(String.self, forKey: .model_type) ?? "gpt2"
        vocab_size = try c.decode(Int.self, forKey: .vocab_size)
        n_positions = try c.decode(Int.self, forKey: .n_positions)
        n_ctx = try c.decodeIfPresent(Int.self, forKey: .n_ctx) ?? n_positions
        n_embd = try c.decode(Int.self, forKey: .n_embd)
        n_layer = try c.decode(Int.self, forKey: .n_layer)
        n_head = try c.decode(Int.self, forKey: .n_head)
        n_inner = try c.decodeIfPresent(Int.self, forKey: .n_inner)
        activation_function = try c.decodeIfPresent(String.self, forKey: .activation_function) ?? "gelu_new"
        resid_pdrop = try c.decodeIfPresent(Double.self, forKey: .resid_pdrop) ?? 0.1
        embd_pdrop = try c.decodeIfPresent(Double.self, forKey: .embd_pdrop) ?? 0.1
        attn_pdrop = try c.decodeIfPresent(Double.self, forKey: .attn_pdrop) ?? 0.1
        layer_norm_epsilon = try c.decodeIfPresent(Double.self, forKey: .layer_norm_epsilon) ?? 1e-5
        initializer_range = try c.decodeIfPresent(Double.self, forKey: .initializer_range) ?? 0.02
        scale_attn_weights = try c.decodeIfPresent(Bool.self, forKey: .scale_attn_weights) ?? true
        tie_word_embeddings = try c.decodeIfPresent(Bool.self, forKey: .tie_word_embeddings) ?? true
        use_cache = try c.decodeIfPresent(Bool.self, forKey: .use_cache) ?? true
        torch_dtype = try c.decodeIfPresent(String.self, forKey: .torch_dtype) ?? "float32"
        bos_token_id = try c.decodeIfPresent(Int.self, forKey: .bos_token_id)
        eos_token_id = try c.decodeIfPresent(Int.self, forKey: .eos_token_id)
    }
}
