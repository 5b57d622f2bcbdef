import Foundation
import TOMLKit

/// A FedLM config file: a `[model]` table and an optional `[training]` table.
///
///     [model]
///     n_layer = 6
///     n_embd = 256
///     n_head = 8
///     n_positions = 256
///     vocab_size = 4096
///     tie_word_embeddings = true
///
///     [training]
///     batch_size = 16
///     learning_rate = 6e-4
///
/// Unknown keys are errors (a typo must not silently fall back to a default).
public struct ConfigFile: Equatable, Sendable {
    public var model: GPT2Config
    public var training: TrainingConfig

    public init(model: GPT2Config, training: TrainingConfig = TrainingConfig()) {
        self.model = model
        self.training = training
    }

    public static func load(path: String) throws -> ConfigFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError.unreadable(path: path, reason: error.localizedDescription)
        }
        do { return try parse(text) } catch let error as ConfigError {
            throw ConfigFileError(path: path, underlying: error)
        }
    }

    public static func parse(_ text: String) throws -> ConfigFile {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch {
            throw ConfigError.unreadable(path: "<toml>", reason: "not valid TOML: \(error)")
        }
        let reader = TOMLReader(root, problem: configError)
        try reader.allowOnly(["model", "training"])
        guard let m = try reader.table("model") else { throw ConfigError.missingKey(field: "model") }
        try m.allowOnly(["n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "tie_word_embeddings",
                         "layer_norm_epsilon"])
        let model = GPT2Config(
            layers: try required(m, "n_layer"), embedding: try required(m, "n_embd"), heads: try required(m, "n_head"),
            context: try required(m, "n_positions"), vocabulary: try required(m, "vocab_size"),
            tiedHead: try m.bool("tie_word_embeddings") ?? true,
            layerNormEpsilon: Float(try m.double("layer_norm_epsilon") ?? 1e-5))
        try model.validate()

        var training = TrainingConfig()
        if let r = try reader.table("training") {
            try r.allowOnly(["batch_size", "sequence_length", "optimizer", "learning_rate", "min_learning_rate",
                             "warmup_steps", "max_steps", "weight_decay", "beta1", "beta2", "eps", "momentum",
                             "grad_clip", "seed"])
            if let v = try r.int("batch_size") { training.batchSize = v }
            if let v = try r.int("sequence_length") { training.sequenceLength = v }
            if let v = try r.string("optimizer") {
                guard let kind = TrainingConfig.OptimizerKind(rawValue: v) else {
                    throw ConfigError.invalidValue(field: "training.optimizer",
                                                   reason: "'\(v)' is not one of adamw, sgd")
                }
                training.optimizer = kind
            }
            if let v = try r.double("learning_rate") { training.learningRate = Float(v) }
            if let v = try r.double("min_learning_rate") { training.minLearningRate = Float(v) }
            if let v = try r.int("warmup_steps") { training.warmupSteps = v }
            if let v = try r.int("max_steps") { training.maxSteps = v }
            if let v = try r.double("weight_decay") { training.weightDecay = Float(v) }
            if let v = try r.double("beta1") { training.beta1 = Float(v) }
            if let v = try r.double("beta2") { training.beta2 = Float(v) }
            if let v = try r.double("eps") { training.epsilon = Float(v) }
            if let v = try r.double("momentum") { training.momentum = Float(v) }
            if let v = try r.double("grad_clip") { training.gradientClip = Float(v) }
            if let v = try r.int("seed") {
                guard v >= 0 else { throw ConfigError.invalidValue(field: "training.seed", reason: "must be non-negative") }
                training.seed = UInt64(v)
            }
        }
        if training.sequenceLength == nil { training.sequenceLength = model.context }
        try training.validate(context: model.context)
        return ConfigFile(model: model, training: training)
    }

    private static func configError(_ problem: TOMLReader.Problem) -> Error {
        switch problem {
        case .unknownKey(let key, let allowed): ConfigError.unknownKey(field: key, allowed: allowed)
        case .wrongType(let key, let expected): ConfigError.wrongType(field: key, expected: expected)
        case .other(let why): ConfigError.invalidValue(field: "", reason: why)
        }
    }

    private static func required(_ table: TOMLReader, _ key: String) throws -> Int {
        guard let v = try table.int(key) else { throw ConfigError.missingKey(field: table.prefix + key) }
        return v
    }
}

/// A `ConfigError` together with the file it was found in.
public struct ConfigFileError: Error, CustomStringConvertible {
    public let path: String
    public let underlying: ConfigError
    public var description: String { "\(path): \(underlying)" }
}
