import FedLMModel

extension AggregationConfig {
    /// `[aggregation]` of a topology, every key checked and named in its errors (`aggregation.mode`).
    /// `evaluate_every` (how often the aggregator evaluates the releases) comes back beside the
    /// config, which does not hold it.
    public static func parse(_ a: TOMLReader) throws -> (config: AggregationConfig, evaluateEvery: Int?) {
        var evaluateEvery: Int?
        try a.allowOnly(["mode", "buffer_size", "mixing", "staleness", "staleness_exponent", "hinge_slope", "hinge_cutoff",
                      "max_staleness", "staleness_scope", "server_optimizer", "server_learning_rate", "server_momentum", "delayed_period",
                      "participants", "checkpoint_every", "keep_checkpoints", "keep_best", "evaluate_every", "adam_beta1", "adam_beta2", "durability",
                      "trainer_timeout", "combination", "trim_fraction", "max_update_norm", "norm_policy", "dp_clip", "dp_noise_multiplier",
                      "dp_delta", "staleness_correction", "direction_decay", "fair_share_window", "trust", "trust_decay",
                      "partial_weight"])
        var c = AggregationConfig()
        if let m = try a.string("mode") {
            guard let mode = AggregationConfig.Mode(rawValue: m) else { throw a.fail("'aggregation.mode' is '\(m)', not fedasync, fedbuff or sync") }
            c.mode = mode
        }
        if let v = try a.string("durability") {
            guard let d = AggregationConfig.Durability(rawValue: v) else { throw a.fail("'aggregation.durability' is '\(v)', not machine or process") }
            c.durability = d
        }
        if let v = try a.double("trainer_timeout") {
            guard v > 0 else { throw a.fail("'aggregation.trainer_timeout' must be positive") }
            c.trainerTimeout = v
        }
        if let v = try a.int("buffer_size") { guard v >= 1 else { throw a.fail("'aggregation.buffer_size' must be >= 1") }; c.bufferSize = v }
        if let v = try a.double("mixing") { guard v > 0, v <= 1 else { throw a.fail("'aggregation.mixing' must be in (0, 1]") }; c.mixing = v }
        if let v = try a.int("max_staleness") { guard v >= 0 else { throw a.fail("'aggregation.max_staleness' must be >= 0") }; c.maxStaleness = v }
        if let v = try a.int("participants") { guard v >= 1 else { throw a.fail("'aggregation.participants' must be >= 1") }; c.participants = v }
        if let v = try a.int("checkpoint_every") { guard v >= 1 else { throw a.fail("'aggregation.checkpoint_every' must be >= 1") }; c.checkpointEvery = v }
        if let v = try a.bool("keep_best") { c.keepBest = v }
        if let v = try a.int("keep_checkpoints") {
            guard v >= 2 else { throw a.fail("'aggregation.keep_checkpoints' must be >= 2 (a damaged newest checkpoint falls back to the one before)") }
            c.keepCheckpoints = v
        }
        if let v = try a.int("evaluate_every") { guard v >= 1 else { throw a.fail("'aggregation.evaluate_every' must be >= 1") }; evaluateEvery = v }
        switch try a.string("combination") ?? "mean" {
        case "mean": c.combination = .mean
        case "median": c.combination = .median
        case "trimmed_mean":
            let f = try a.double("trim_fraction") ?? 0.2
            guard f > 0, f < 0.5 else { throw a.fail("'aggregation.trim_fraction' must be in (0, 0.5)") }
            c.combination = .trimmedMean(fraction: f)
        case let other: throw a.fail("'aggregation.combination' is '\(other)', not mean, median or trimmed_mean")
        }
        if c.combination != .mean, c.mode == .fedasync { throw a.fail("'aggregation.combination' applies to mode = \"fedbuff\" or \"sync\"") }
        if let clip = try a.double("dp_clip") {
            let z = try a.double("dp_noise_multiplier") ?? 1.0
            let delta = try a.double("dp_delta") ?? 1e-5
            guard clip > 0, z >= 0, delta > 0, delta < 1 else {
                throw a.fail("'aggregation.dp_clip' must be > 0, 'dp_noise_multiplier' >= 0 and 'dp_delta' in (0, 1)")
            }
            guard c.mode == .fedbuff, c.combination == .mean else {
                throw a.fail("differential privacy (dp_clip) applies to mode = \"fedbuff\" with combination = \"mean\"")
            }
            c.privacy = DifferentialPrivacy(clip: clip, noiseMultiplier: z, delta: delta)
        } else if try a.double("dp_noise_multiplier") != nil {
            throw a.fail("'aggregation.dp_noise_multiplier' needs 'dp_clip'")
        }
        if let v = try a.double("max_update_norm") {
            guard v > 0 else { throw a.fail("'aggregation.max_update_norm' must be > 0") }
            c.maxUpdateNorm = v
        }
        if let policy = try a.string("norm_policy") {
            guard let v = AggregationConfig.NormPolicy(rawValue: policy) else {
                throw a.fail("'aggregation.norm_policy' is '\(policy)', not clip or refuse")
            }
            guard c.maxUpdateNorm != nil else { throw a.fail("'aggregation.norm_policy' needs 'max_update_norm'") }
            guard v == .refuse || c.mode == .fedbuff else {
                throw a.fail("'aggregation.norm_policy' = \"clip\" applies to mode = \"fedbuff\"; use \"refuse\" with \(c.mode.rawValue)")
            }
            c.normPolicy = v
        } else if c.maxUpdateNorm != nil, c.mode != .fedbuff {
            throw a.fail("'aggregation.max_update_norm' clips only in mode = \"fedbuff\"; add norm_policy = \"refuse\" for \(c.mode.rawValue)")
        }
        switch try a.string("staleness") ?? "inverse_sqrt" {
        case "constant": c.staleness = .constant
        case "polynomial": c.staleness = .polynomial(exponent: try a.double("staleness_exponent") ?? 0.5)
        case "hinge": c.staleness = .hinge(slope: try a.double("hinge_slope") ?? 0.5, cutoff: try a.int("hinge_cutoff") ?? 2)
        case "inverse_sqrt": c.staleness = .inverseSquareRoot
        case let other: throw a.fail("'aggregation.staleness' is '\(other)', not constant, polynomial, hinge or inverse_sqrt")
        }
        if let scope = try a.string("staleness_scope") {
            guard let v = AggregationConfig.StalenessScope(rawValue: scope) else {
                throw a.fail("'aggregation.staleness_scope' is '\(scope)', not tensor or model")
            }
            c.stalenessScope = v
        }
        /// The decay of a moving average of the server's steps (`RecentDirection`): in [0, 1), default 0.9.
        func decay(_ key: String) throws -> Double {
            let value = try a.double(key) ?? 0.9
            guard value >= 0, value < 1 else { throw a.fail("'aggregation.\(key)' must be in [0, 1)") }
            return value
        }
        switch try a.string("staleness_correction") ?? "none" {
        case "none":
            if try a.double("direction_decay") != nil { throw a.fail("'aggregation.direction_decay' needs staleness_correction = \"direction\"") }
        case "direction":
            guard c.mode == .fedbuff, c.combination == .mean else {
                throw a.fail("'aggregation.staleness_correction' = \"direction\" applies to mode = \"fedbuff\" with combination = \"mean\"")
            }
            c.directionDecay = try decay("direction_decay")
        case let other: throw a.fail("'aggregation.staleness_correction' is '\(other)', not none or direction")
        }
        if let w = try a.double("partial_weight") {
            guard w > 0, w <= 1 else { throw a.fail("'aggregation.partial_weight' is \(w), not in (0, 1]") }
            guard c.mode == .fedbuff else { throw a.fail("'aggregation.partial_weight' applies to mode = \"fedbuff\"") }
            c.partialWeight = w
        }
        if let w = try a.int("fair_share_window") {
            guard w >= 1 else { throw a.fail("'aggregation.fair_share_window' must be >= 1 (recent updates counted)") }
            guard c.mode == .fedbuff else { throw a.fail("'aggregation.fair_share_window' applies to mode = \"fedbuff\"") }
            c.fairShareWindow = w
        }
        switch try a.string("trust") ?? "none" {
        case "none":
            if try a.double("trust_decay") != nil { throw a.fail("'aggregation.trust_decay' needs trust = \"direction\"") }
        case "direction":
            guard c.mode != .fedasync, c.combination == .mean else {
                throw a.fail("'aggregation.trust' = \"direction\" applies to mode = \"fedbuff\" or \"sync\" with combination = \"mean\"")
            }
            c.trustDecay = try decay("trust_decay")
        case let other: throw a.fail("'aggregation.trust' is '\(other)', not none or direction")
        }
        c.serverOptimizer = try ServerOptimizerKind.parse(a, default: .nesterov(learningRate: 0.7, momentum: 0.9)) ?? c.serverOptimizer
        return (c, evaluateEvery)
    }
}

extension ServerOptimizerKind {
    /// The server optimizer of a table (`server_optimizer`, `server_learning_rate`,
    /// `server_momentum`, `adam_beta1`, `adam_beta2`, `delayed_period`); nil when it names none
    /// of them. Unnamed settings come from `base`.
    public static func parse(_ a: TOMLReader, default base: ServerOptimizerKind) throws -> ServerOptimizerKind? {
        let p = a.prefix
        let keys = ["server_optimizer", "server_learning_rate", "server_momentum", "adam_beta1", "adam_beta2", "delayed_period"]
        guard keys.contains(where: a.has) else { return nil }
        let (baseName, baseLR, baseMu): (String, Float, Float) = switch base {
        case .sgd(let lr): ("sgd", lr, 0.9)
        case .nesterov(let lr, let mu): ("nesterov", lr, mu)
        case .adam(let lr, _, _, _): ("adam", lr, 0.9)
        case .delayedNesterov(let lr, let mu, _): ("delayed_nesterov", lr, mu)
        }
        let lr = Float(try a.double("server_learning_rate") ?? Double(baseLR))
        let mu = Float(try a.double("server_momentum") ?? Double(baseMu))
        guard lr > 0, mu >= 0, mu < 1 else { throw a.fail("'\(p)server_learning_rate' must be > 0 and \(p)server_momentum in [0, 1)") }
        switch try a.string("server_optimizer") ?? baseName {
        case "sgd": return .sgd(learningRate: lr)
        case "nesterov": return .nesterov(learningRate: lr, momentum: mu)
        case "adam": return .adam(learningRate: lr, beta1: Float(try a.double("adam_beta1") ?? 0.9),
                                  beta2: Float(try a.double("adam_beta2") ?? 0.99), epsilon: 1e-8)
        case "delayed_nesterov":
            let period = try a.int("delayed_period") ?? 4
            guard period >= 1 else { throw a.fail("'\(p)delayed_period' must be >= 1") }
            return .delayedNesterov(learningRate: lr, momentum: mu, period: period)
        case let other: throw a.fail("'\(p)server_optimizer' is '\(other)', not sgd, nesterov, adam or delayed_nesterov")
        }
    }
}
