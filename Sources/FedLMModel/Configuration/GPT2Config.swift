/// The shape of a GPT-2 model, with Hugging Face `GPT2Config` semantics.
public struct GPT2Config: Equatable, Sendable, Codable {
    /// Transformer blocks (`n_layer`).
    public var layers: Int
    /// Model width (`n_embd`).
    public var embedding: Int
    /// Attention heads (`n_head`); must divide `embedding`.
    public var heads: Int
    /// Maximum sequence length (`n_positions`).
    public var context: Int
    /// Vocabulary size (`vocab_size`).
    public var vocabulary: Int
    /// Whether the LM head shares the token-embedding matrix (GPT-2's default).
    public var tiedHead: Bool
    /// LayerNorm epsilon (`layer_norm_epsilon`).
    public var layerNormEpsilon: Float

    public init(layers: Int, embedding: Int, heads: Int, context: Int, vocabulary: Int,
                tiedHead: Bool = true, layerNormEpsilon: Float = 1e-5) {
        self.layers = layers
        self.embedding = embedding
        self.heads = heads
        self.context = context
        self.vocabulary = vocabulary
        self.tiedHead = tiedHead
        self.layerNormEpsilon = layerNormEpsilon
    }

    public var headDimension: Int { embedding / heads }

    /// Throws `ConfigError` naming the first field that makes no sense.
    public func validate() throws {
        func positive(_ value: Int, _ field: String) throws {
            guard value > 0 else { throw ConfigError.invalidValue(field: field, reason: "must be positive, got \(value)") }
        }
        try positive(layers, "model.n_layer")
        try positive(embedding, "model.n_embd")
        try positive(heads, "model.n_head")
        try positive(context, "model.n_positions")
        try positive(vocabulary, "model.vocab_size")
        guard embedding % heads == 0 else {
            throw ConfigError.invalidValue(field: "model.n_head",
                                           reason: "\(heads) heads do not divide n_embd = \(embedding)")
        }
        guard layerNormEpsilon > 0, layerNormEpsilon.isFinite else {
            throw ConfigError.invalidValue(field: "model.layer_norm_epsilon", reason: "must be a positive number")
        }
        guard vocabulary <= Int(Int32.max), context <= 1 << 20 else {
            throw ConfigError.invalidValue(field: "model", reason: "vocabulary or context too large")
        }
    }

    /// Number of trainable scalars.
    public var parameterCount: Int { ParameterLayout(config: self).totalCount }
}

/// A configuration problem, always naming the field and file it concerns.
public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case invalidValue(field: String, reason: String)
    case unknownKey(field: String, allowed: [String])
    case missingKey(field: String)
    case wrongType(field: String, expected: String)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .invalidValue(let field, let reason): return "config field '\(field)': \(reason)"
        case .unknownKey(let field, let allowed):
            return "config field '\(field)' is unknown (allowed here: \(allowed.joined(separator: ", ")))"
        case .missingKey(let field): return "config field '\(field)' is required but missing"
        case .wrongType(let field, let expected): return "config field '\(field)' must be \(expected)"
        case .unreadable(let path, let reason): return "cannot read config \(path): \(reason)"
        }
    }
}
