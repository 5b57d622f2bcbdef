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
        let reader = TableReader(table: root, prefix: "")
        try reader.allowOnly(["model", "training"])
        guard let modelTable = root["model"]?.table else { throw ConfigError.missingKey(field: "model") }
        let m = TableReader(table: modelTable, prefix: "model.")
        try m.allowOnly(["n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "tie_word_embeddings",
                         "layer_norm_epsilon"])
        let model = GPT2Config(
            layers: try m.int("n_layer"), embedding: try m.int("n_embd"), heads: try m.int("n_head"),
            context: try m.int("n_positions"), vocabulary: try m.int("vocab_size"),
            tiedHead: try m.optionalBool("tie_word_embeddings") ?? true,
            layerNormEpsilon: Float(try m.optionalDouble("layer_norm_epsilon") ?? 1e-5))
        try model.validate()

        var training = TrainingConfig()
        if let table = root["training"] {
            guard let t = table.table else { throw ConfigError.wrongType(field: "training", expected: "a table") }
            let r = TableReader(table: t, prefix: "training.")
            try r.allowOnly(["batch_size", "sequence_length", "optimizer", "learning_rate", "min_learning_rate",
                             "warmup_steps", "max_steps", "weight_decay", "beta1", "beta2", "eps", "momentum",
                             "grad_clip", "seed"])
            if let v = try r.optionalInt("batch_size") { training.batchSize = v }
            if let v = try r.optionalInt("sequence_length") { training.sequenceLength = v }
            if let v = try r.optionalString("optimizer") {
                guard let kind = TrainingConfig.OptimizerKind(rawValue: v) else {
                    throw ConfigError.invalidValue(field: "training.optimizer",
                                                   reason: "'\(v)' is not one of adamw, sgd")
                }
                training.optimizer = kind
            }
            if let v = try r.optionalDouble("learning_rate") { training.learningRate = Float(v) }
            if let v = try r.optionalDouble("min_learning_rate") { training.minLearningRate = Float(v) }
            if let v = try r.optionalInt("warmup_steps") { training.warmupSteps = v }
            if let v = try r.optionalInt("max_steps") { training.maxSteps = v }
            if let v = try r.optionalDouble("weight_decay") { training.weightDecay = Float(v) }
            if let v = try r.optionalDouble("beta1") { training.beta1 = Float(v) }
            if let v = try r.optionalDouble("beta2") { training.beta2 = Float(v) }
            if let v = try r.optionalDouble("eps") { training.epsilon = Float(v) }
            if let v = try r.optionalDouble("momentum") { training.momentum = Float(v) }
            if let v = try r.optionalDouble("grad_clip") { training.gradientClip = Float(v) }
            if let v = try r.optionalInt("seed") {
                guard v >= 0 else { throw ConfigError.invalidValue(field: "training.seed", reason: "must be non-negative") }
                training.seed = UInt64(v)
            }
        }
        if training.sequenceLength == nil { training.sequenceLength = model.context }
        try training.validate(context: model.context)
        return ConfigFile(model: model, training: training)
    }
}

/// A `ConfigError` together with the file it was found in.
public struct ConfigFileError: Error, CustomStringConvertible {
    public let path: String
    public let underlying: ConfigError
    public var description: String { "\(path): \(underlying)" }
}

/// Typed, strict access to one TOML table; every error names the full field path.
struct TableReader {
    let table: TOMLTable
    let prefix: String

    func allowOnly(_ keys: [String]) throws {
        for key in table.keys where !keys.contains(key) {
            throw ConfigError.unknownKey(field: prefix + key, allowed: keys)
        }
    }

    func int(_ key: String) throws -> Int {
        guard let v = try optionalInt(key) else { throw ConfigError.missingKey(field: prefix + key) }
        return v
    }

    func optionalInt(_ key: String) throws -> Int? {
        guard let value = table[key] else { return nil }
        guard let v = value.int else { throw ConfigError.wrongType(field: prefix + key, expected: "an integer") }
        return v
    }

    func optionalDouble(_ key: String) throws -> Double? {
        guard let value = table[key] else { return nil }
        if let v = value.double { return v }
        if let v = value.int { return Double(v) }
        throw ConfigError.wrongType(field: prefix + key, expected: "a number")
    }

    func optionalBool(_ key: String) throws -> Bool? {
        guard let value = table[key] else { return nil }
        guard let v = value.bool else { throw ConfigError.wrongType(field: prefix + key, expected: "true or false") }
        return v
    }

    func optionalString(_ key: String) throws -> String? {
        guard let value = table[key] else { return nil }
        guard let v = value.string else { throw ConfigError.wrongType(field: prefix + key, expected: "a string") }
        return v
    }
}
