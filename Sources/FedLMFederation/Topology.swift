import FedLMAggregation
import FedLMModel
import Foundation
import TOMLKit

/// A deployment: which processes, where, with which data (`Topologies/*.toml`).
///
///     name = "demo"
///     run_directory = "runs/federation-demo"
///     model = "Config/demo.toml"            # [model] + [training] (the trainers' local AdamW)
///     data = "runs/demo-data/shards"        # prepared data (each trainer uses its clusters)
///
///     [broker]                              # optional: these are the defaults
///     trainers = "tcp://127.0.0.1:5555"
///     aggregator = "tcp://127.0.0.1:5556"
///     publish = "tcp://127.0.0.1:5557"
///     releases = "tcp://127.0.0.1:5558"
///
///     [aggregation]
///     mode = "fedbuff"                      # fedasync | fedbuff | sync
///     buffer_size = 2                       # fedbuff
///     mixing = 0.5                          # fedasync
///     staleness = "inverse_sqrt"            # constant | polynomial | hinge | inverse_sqrt
///     staleness_exponent = 0.5              # polynomial
///     hinge_slope = 0.5                     # hinge
///     hinge_cutoff = 2                      # hinge
///     max_staleness = 8
///     server_optimizer = "nesterov"         # sgd | nesterov | adam | delayed_nesterov
///     server_learning_rate = 0.7
///     server_momentum = 0.9
///     delayed_period = 4                    # delayed_nesterov
///     participants = 4                      # sync (fewer while fewer trainers are alive)
///     trainer_timeout = 60.0                # seconds of silence before a trainer is forgotten
///     checkpoint_every = 5
///     keep_checkpoints = 3                  # optional: delete older checkpoints (at least 2; default: keep all)
///     durability = "machine"                # machine (fsync before ack) | process (survives kill -9)
///     combination = "mean"                  # fedbuff: mean | median | trimmed_mean (robust to a minority)
///     trim_fraction = 0.2                   # trimmed_mean: share dropped at each end
///     max_update_norm = 5.0                 # optional bound on every update's L2 norm
///     norm_policy = "clip"                  #   above it: clip (fedbuff) | refuse (any mode; recorded with its reason)
///     dp_clip = 1.0                         # optional: client-level differential privacy (fedbuff, mean):
///     dp_noise_multiplier = 1.0             #   clip each update to dp_clip, add N(0, (z dp_clip)^2) to each sum;
///     dp_delta = 1e-5                       #   epsilon reported per evaluation (metric dp_epsilon)
///     evaluate_every = 5
///
///     [[trainer]]
///     name = "t-en"
///     clusters = ["en"]                     # data clusters of `data` it trains on (default: all)
///     local_steps = 20                      # H (upper bound when time_budget is set)
///     time_budget = 5.0                     # optional seconds per update: H adapts to speed
///     tokens = 500000                       # optional token budget
///     slowdown = 1.0                        # optional straggler factor
///     fresh_base_wait = 0.5                 # optional, asynchronous modes: after a buffered update wait up to
///                                           #   this fraction of the last round's time for the next version
///     ack_timeout = 30.0                    # optional: seconds before an unacknowledged update is resent
///     cluster = "en"                        # with [clusters]: the cluster it trains in, or "auto" (IFCA)
///     attack = "sign_flip"                  # robustness experiments only: sign_flip | noise | nan
///     attack_scale = 10.0                   #   (times the honest update, or noise of that many times its RMS)
///
///     [security]                            # optional: CURVE on every socket (default: plaintext)
///     keys = "keys"                         # key pairs: broker, aggregator, <trainer name>, ... (`fedlm keys generate`)
///     allowed = "keys/allowed.toml"         # each member's name and public key, by role (default: <keys>/allowed.toml)
///     membership = "closed"                 # closed: a key uses only its own names; open: also names no key is bound to
///     suspend_after = 100                   # refused messages within 10 s that suspend a member (0: never)
///     suspension = 60.0                     # seconds a suspended member's key is refused
///
///     [supervision]                         # optional: how `fedlm up` keeps the federation running
///     on_failure = "restart"                # a role process that dies is restarted (restart) or ends the run (stop)
///     max_restarts = 3                      # restarts of one process before the run stops
///     trainer_silence = 15.0                # seconds without a word from the broker before a trainer says so
///
///     [clusters]                            # optional: personalized heads per data cluster
///     names = ["en", "de", "code"]          # clusters from the start
///     head = ["transformer.h.{last}.*", "transformer.ln_f.*", "lm_head.*"]   # default
///     reassign_every = 10                   # automatic trainers re-check their cluster every N rounds
///     initial_noise = 0.0                   # noise on new heads (automatic assignment needs clusters that differ)
///     share = 0.0                           # weight of other clusters' updates on each head (0: none, 1: all);
///                                           #   with share > 0 the head may be every parameter (head = ["*"])
///     server_optimizer = "sgd"              # optional: the heads' own server optimizer (and server_learning_rate,
///     server_learning_rate = 1.0            #   server_momentum, ...); default: the [aggregation] one
public struct Topology: Sendable {
    public struct Trainer: Sendable, Equatable {
        public var name: String
        public var clusters: [String]?
        public var localSteps: Int
        public var timeBudget: Double?
        public var tokens: Int?
        public var slowdown: Double
        /// Asynchronous modes: fraction of its round time to wait for a fresh version (0: never).
        public var freshBaseWait: Double
        public var ackTimeout: Double
        /// With clusters: the cluster it trains in, or nil for automatic assignment.
        public var cluster: String?
        /// For robustness experiments: what this trainer does to its updates.
        public var attack: TrainerAttack?
    }

    public var path: String
    public var name: String
    public var runDirectory: String
    public var modelConfigPath: String
    public var dataDirectory: String
    public var endpoints: BrokerEndpoints
    public var aggregation: AggregationConfig
    public var evaluateEvery: Int
    public var trainers: [Trainer]
    /// Automatic cluster assignment is re-checked every this many rounds.
    public var reassignEvery = 10
    /// CURVE keys (`[security]`): a directory of key pairs (`broker`, `aggregator`, each trainer
    /// by name, subscribers by their own name) and the allow-list file (nil: plaintext).
    public var keysDirectory: String?
    public var allowedKeys: String?
    public var membership = BrokerSecurity.Membership.closed
    /// The broker's checks and budgets per member (suspension is set under `[security]`).
    public var gate = BrokerGate.Limits()
    /// How `fedlm up` supervises the processes it starts.
    public var supervision = SupervisionPolicy()

    public static func load(path: String) throws -> Topology {
        func bad(_ why: String) -> FederationError { .badTopology("\(path): \(why)") }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw bad("cannot read the file") }
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch { throw bad("not valid TOML: \(error)") }
        try allow(root, ["name", "run_directory", "model", "data", "broker", "aggregation", "trainer", "clusters", "security", "supervision"], "", bad)
        func string(_ t: TOMLTable, _ key: String, _ prefix: String) throws -> String? {
            guard let v = t[key] else { return nil }
            guard let s = v.string else { throw bad("'\(prefix)\(key)' must be a string") }
            return s
        }
        func int(_ t: TOMLTable, _ key: String, _ prefix: String) throws -> Int? {
            guard let v = t[key] else { return nil }
            guard let i = v.int else { throw bad("'\(prefix)\(key)' must be an integer") }
            return i
        }
        func double(_ t: TOMLTable, _ key: String, _ prefix: String) throws -> Double? {
            guard let v = t[key] else { return nil }
            if let d = v.double { return d }
            if let i = v.int { return Double(i) }
            throw bad("'\(prefix)\(key)' must be a number")
        }
        /// The server optimizer of a table (`server_optimizer`, `server_learning_rate`,
        /// `server_momentum`, `adam_beta1`, `adam_beta2`, `delayed_period`); nil when it names none
        /// of them. Unnamed settings come from `base`.
        func serverOptimizer(_ a: TOMLTable, _ p: String, default base: ServerOptimizerKind) throws -> ServerOptimizerKind? {
            let keys = ["server_optimizer", "server_learning_rate", "server_momentum", "adam_beta1", "adam_beta2", "delayed_period"]
            guard keys.contains(where: { a[$0] != nil }) else { return nil }
            let (baseName, baseLR, baseMu): (String, Float, Float) = switch base {
            case .sgd(let lr): ("sgd", lr, 0.9)
            case .nesterov(let lr, let mu): ("nesterov", lr, mu)
            case .adam(let lr, _, _, _): ("adam", lr, 0.9)
            case .delayedNesterov(let lr, let mu, _): ("delayed_nesterov", lr, mu)
            }
            let lr = Float(try double(a, "server_learning_rate", p) ?? Double(baseLR))
            let mu = Float(try double(a, "server_momentum", p) ?? Double(baseMu))
            guard lr > 0, mu >= 0, mu < 1 else { throw bad("'\(p)server_learning_rate' must be > 0 and \(p)server_momentum in [0, 1)") }
            switch try string(a, "server_optimizer", p) ?? baseName {
            case "sgd": return .sgd(learningRate: lr)
            case "nesterov": return .nesterov(learningRate: lr, momentum: mu)
            case "adam": return .adam(learningRate: lr, beta1: Float(try double(a, "adam_beta1", p) ?? 0.9),
                                      beta2: Float(try double(a, "adam_beta2", p) ?? 0.99), epsilon: 1e-8)
            case "delayed_nesterov":
                let period = try int(a, "delayed_period", p) ?? 4
                guard period >= 1 else { throw bad("'\(p)delayed_period' must be >= 1") }
                return .delayedNesterov(learningRate: lr, momentum: mu, period: period)
            case let other: throw bad("'\(p)server_optimizer' is '\(other)', not sgd, nesterov, adam or delayed_nesterov")
            }
        }
        let base = (path as NSString).deletingLastPathComponent
        // Relative paths are relative to the working directory (the repository root in the README).
        _ = base
        var t = Topology(path: path, name: try string(root, "name", "") ?? "federation",
                         runDirectory: try string(root, "run_directory", "") ?? "runs/federation",
                         modelConfigPath: try string(root, "model", "") ?? { throw bad("'model' (a config path) is required") }(),
                         dataDirectory: try string(root, "data", "") ?? { throw bad("'data' (a prepared data directory) is required") }(),
                         endpoints: BrokerEndpoints(), aggregation: AggregationConfig(), evaluateEvery: 5, trainers: [])
        if let b = root["broker"] {
            guard let b = b.table else { throw bad("[broker] must be a table") }
            try allow(b, ["trainers", "aggregator", "publish", "releases"], "broker.", bad)
            if let v = try string(b, "trainers", "broker.") { t.endpoints.trainers = v }
            if let v = try string(b, "aggregator", "broker.") { t.endpoints.aggregator = v }
            if let v = try string(b, "publish", "broker.") { t.endpoints.publish = v }
            if let v = try string(b, "releases", "broker.") { t.endpoints.releases = v }
        }
        if let a = root["aggregation"] {
            guard let a = a.table else { throw bad("[aggregation] must be a table") }
            let p = "aggregation."
            try allow(a, ["mode", "buffer_size", "mixing", "staleness", "staleness_exponent", "hinge_slope", "hinge_cutoff",
                          "max_staleness", "server_optimizer", "server_learning_rate", "server_momentum", "delayed_period",
                          "participants", "checkpoint_every", "keep_checkpoints", "evaluate_every", "adam_beta1", "adam_beta2", "durability",
                          "trainer_timeout", "combination", "trim_fraction", "max_update_norm", "norm_policy", "dp_clip", "dp_noise_multiplier",
                          "dp_delta"], p, bad)
            var c = AggregationConfig()
            if let m = try string(a, "mode", p) {
                guard let mode = AggregationConfig.Mode(rawValue: m) else { throw bad("'aggregation.mode' is '\(m)', not fedasync, fedbuff or sync") }
                c.mode = mode
            }
            if let v = try string(a, "durability", p) {
                guard let d = AggregationConfig.Durability(rawValue: v) else { throw bad("'aggregation.durability' is '\(v)', not machine or process") }
                c.durability = d
            }
            if let v = try double(a, "trainer_timeout", p) {
                guard v > 0 else { throw bad("'aggregation.trainer_timeout' must be positive") }
                c.trainerTimeout = v
            }
            if let v = try int(a, "buffer_size", p) { guard v >= 1 else { throw bad("'aggregation.buffer_size' must be >= 1") }; c.bufferSize = v }
            if let v = try double(a, "mixing", p) { guard v > 0, v <= 1 else { throw bad("'aggregation.mixing' must be in (0, 1]") }; c.mixing = v }
            if let v = try int(a, "max_staleness", p) { guard v >= 0 else { throw bad("'aggregation.max_staleness' must be >= 0") }; c.maxStaleness = v }
            if let v = try int(a, "participants", p) { guard v >= 1 else { throw bad("'aggregation.participants' must be >= 1") }; c.participants = v }
            if let v = try int(a, "checkpoint_every", p) { guard v >= 1 else { throw bad("'aggregation.checkpoint_every' must be >= 1") }; c.checkpointEvery = v }
            if let v = try int(a, "keep_checkpoints", p) {
                guard v >= 2 else { throw bad("'aggregation.keep_checkpoints' must be >= 2 (a damaged newest checkpoint falls back to the one before)") }
                c.keepCheckpoints = v
            }
            if let v = try int(a, "evaluate_every", p) { guard v >= 1 else { throw bad("'aggregation.evaluate_every' must be >= 1") }; t.evaluateEvery = v }
            switch try string(a, "combination", p) ?? "mean" {
            case "mean": c.combination = .mean
            case "median": c.combination = .median
            case "trimmed_mean":
                let f = try double(a, "trim_fraction", p) ?? 0.2
                guard f > 0, f < 0.5 else { throw bad("'aggregation.trim_fraction' must be in (0, 0.5)") }
                c.combination = .trimmedMean(fraction: f)
            case let other: throw bad("'aggregation.combination' is '\(other)', not mean, median or trimmed_mean")
            }
            if c.combination != .mean, c.mode != .fedbuff { throw bad("'aggregation.combination' applies to mode = \"fedbuff\"") }
            if let clip = try double(a, "dp_clip", p) {
                let z = try double(a, "dp_noise_multiplier", p) ?? 1.0
                let delta = try double(a, "dp_delta", p) ?? 1e-5
                guard clip > 0, z >= 0, delta > 0, delta < 1 else {
                    throw bad("'aggregation.dp_clip' must be > 0, 'dp_noise_multiplier' >= 0 and 'dp_delta' in (0, 1)")
                }
                guard c.mode == .fedbuff, c.combination == .mean else {
                    throw bad("differential privacy (dp_clip) applies to mode = \"fedbuff\" with combination = \"mean\"")
                }
                c.privacy = DifferentialPrivacy(clip: clip, noiseMultiplier: z, delta: delta)
            } else if try double(a, "dp_noise_multiplier", p) != nil {
                throw bad("'aggregation.dp_noise_multiplier' needs 'dp_clip'")
            }
            if let v = try double(a, "max_update_norm", p) {
                guard v > 0 else { throw bad("'aggregation.max_update_norm' must be > 0") }
                c.maxUpdateNorm = v
            }
            if let policy = try string(a, "norm_policy", p) {
                guard let v = AggregationConfig.NormPolicy(rawValue: policy) else {
                    throw bad("'aggregation.norm_policy' is '\(policy)', not clip or refuse")
                }
                guard c.maxUpdateNorm != nil else { throw bad("'aggregation.norm_policy' needs 'max_update_norm'") }
                guard v == .refuse || c.mode == .fedbuff else {
                    throw bad("'aggregation.norm_policy' = \"clip\" applies to mode = \"fedbuff\"; use \"refuse\" with \(c.mode.rawValue)")
                }
                c.normPolicy = v
            } else if c.maxUpdateNorm != nil, c.mode != .fedbuff {
                throw bad("'aggregation.max_update_norm' clips only in mode = \"fedbuff\"; add norm_policy = \"refuse\" for \(c.mode.rawValue)")
            }
            switch try string(a, "staleness", p) ?? "inverse_sqrt" {
            case "constant": c.staleness = .constant
            case "polynomial": c.staleness = .polynomial(exponent: try double(a, "staleness_exponent", p) ?? 0.5)
            case "hinge": c.staleness = .hinge(slope: try double(a, "hinge_slope", p) ?? 0.5, cutoff: try int(a, "hinge_cutoff", p) ?? 2)
            case "inverse_sqrt": c.staleness = .inverseSquareRoot
            case let other: throw bad("'aggregation.staleness' is '\(other)', not constant, polynomial, hinge or inverse_sqrt")
            }
            c.serverOptimizer = try serverOptimizer(a, p, default: .nesterov(learningRate: 0.7, momentum: 0.9)) ?? c.serverOptimizer
            t.aggregation = c
        }
        if let st = root["security"] {
            guard let st = st.table else { throw bad("[security] must be a table") }
            try allow(st, ["keys", "allowed", "membership", "suspend_after", "suspension"], "security.", bad)
            guard let keys = try string(st, "keys", "security.") else { throw bad("'security.keys' (the directory of key pairs) is required") }
            t.keysDirectory = keys
            t.allowedKeys = try string(st, "allowed", "security.") ?? keys + "/allowed.toml"
            if let m = try string(st, "membership", "security.") {
                guard let membership = BrokerSecurity.Membership(rawValue: m) else { throw bad("'security.membership' is '\(m)', not closed or open") }
                t.membership = membership
            }
            if let n = try int(st, "suspend_after", "security.") {
                guard n >= 0 else { throw bad("'security.suspend_after' must be >= 0 (0: never suspend)") }
                t.gate.suspendAfter = n == 0 ? .max : n
                if n == 0 { t.gate.suspendAfterStrays = .max }
            }
            if let d = try double(st, "suspension", "security.") {
                guard d > 0 else { throw bad("'security.suspension' must be > 0 (seconds)") }
                t.gate.suspension = d
            }
        }
        if let sv = root["supervision"] {
            guard let sv = sv.table else { throw bad("[supervision] must be a table") }
            try allow(sv, ["on_failure", "max_restarts", "trainer_silence"], "supervision.", bad)
            if let f = try string(sv, "on_failure", "supervision.") {
                guard let onFailure = SupervisionPolicy.OnFailure(rawValue: f) else { throw bad("'supervision.on_failure' is '\(f)', not restart or stop") }
                t.supervision.onFailure = onFailure
            }
            if let n = try int(sv, "max_restarts", "supervision.") {
                guard n >= 0 else { throw bad("'supervision.max_restarts' must be >= 0") }
                t.supervision.maxRestarts = n
            }
            if let s = try double(sv, "trainer_silence", "supervision.") {
                guard s > 0 else { throw bad("'supervision.trainer_silence' must be > 0 (seconds)") }
                t.supervision.trainerSilence = s
            }
        }
        if let ct = root["clusters"] {
            guard let ct = ct.table else { throw bad("[clusters] must be a table") }
            try allow(ct, ["names", "head", "reassign_every", "initial_noise", "share", "server_optimizer", "server_learning_rate",
                           "server_momentum", "adam_beta1", "adam_beta2", "delayed_period"], "clusters.", bad)
            guard let arr = ct["names"]?.array, let names = arr.map({ $0.string }) as? [String], !names.isEmpty else {
                throw bad("'clusters.names' must be a non-empty list of names")
            }
            for n in names where !ClusterConfig.isValidName(n) {
                throw bad("cluster name '\(n)': use letters, digits, '-', '_' and '.' (at most 64)")
            }
            guard Set(names).count == names.count else { throw bad("'clusters.names' has a name twice") }
            var head: [String]?
            if let h = ct["head"] {
                guard let arr = h.array, let patterns = arr.map({ $0.string }) as? [String], !patterns.isEmpty else {
                    throw bad("'clusters.head' must be a non-empty list of name patterns")
                }
                head = patterns
            }
            let noise = try double(ct, "initial_noise", "clusters.") ?? 0
            guard noise >= 0 else { throw bad("'clusters.initial_noise' must be >= 0") }
            let share = try double(ct, "share", "clusters.") ?? 0
            guard share >= 0, share <= 1 else { throw bad("'clusters.share' must be between 0 and 1") }
            t.aggregation.clusters = ClusterConfig(names: names, headPatterns: head, initialNoise: noise, share: share,
                                                   serverOptimizer: try serverOptimizer(ct, "clusters.", default: t.aggregation.serverOptimizer))
            if let r = try int(ct, "reassign_every", "clusters.") {
                guard r >= 1 else { throw bad("'clusters.reassign_every' must be >= 1") }
                t.reassignEvery = r
            }
        }
        guard let list = root["trainer"]?.array else { throw bad("at least one [[trainer]] is required") }
        for (i, item) in list.enumerated() {
            guard let tt = item.table else { throw bad("trainer \(i + 1) must be a table") }
            let p = "trainer[\(i + 1)]."
            try allow(tt, ["name", "clusters", "local_steps", "time_budget", "tokens", "slowdown", "ack_timeout", "cluster", "attack",
                           "attack_scale", "fresh_base_wait"], p, bad)
            var attack: TrainerAttack?
            if let kind = try string(tt, "attack", p) {
                let scale = try double(tt, "attack_scale", p) ?? 10
                guard scale > 0 else { throw bad("'\(p)attack_scale' must be > 0") }
                switch kind {
                case "sign_flip": attack = .signFlip(scale: scale)
                case "noise": attack = .noise(scale: scale)
                case "nan": attack = .nan
                case let other: throw bad("'\(p)attack' is '\(other)', not sign_flip, noise or nan")
                }
            }
            guard let name = try string(tt, "name", p), !name.isEmpty, !name.contains("/") else {
                throw bad("'\(p)name' is required (non-empty, no '/')")
            }
            var clusters: [String]?
            if let c = tt["clusters"] {
                guard let arr = c.array, let names = arr.map({ $0.string }) as? [String] else { throw bad("'\(p)clusters' must be a list of names") }
                clusters = names
            }
            let steps = try int(tt, "local_steps", p) ?? 20
            guard steps >= 1 else { throw bad("'\(p)local_steps' must be >= 1") }
            let slowdown = try double(tt, "slowdown", p) ?? 1
            guard slowdown >= 1 else { throw bad("'\(p)slowdown' must be >= 1") }
            let freshBaseWait = try double(tt, "fresh_base_wait", p) ?? 0
            guard freshBaseWait >= 0, freshBaseWait <= 10 else { throw bad("'\(p)fresh_base_wait' must be between 0 and 10") }
            let cluster = try string(tt, "cluster", p)
            if let names = t.aggregation.clusters?.names {
                guard let cluster else { throw bad("'\(p)cluster' is required with [clusters]: one of \(names.joined(separator: ", ")), or \"auto\"") }
                guard cluster == "auto" || names.contains(cluster) else {
                    throw bad("'\(p)cluster' is '\(cluster)', not one of \(names.joined(separator: ", ")) or \"auto\"")
                }
            } else if cluster != nil {
                throw bad("'\(p)cluster' needs a [clusters] table")
            }
            t.trainers.append(Trainer(name: name, clusters: clusters, localSteps: steps, timeBudget: try double(tt, "time_budget", p),
                                      tokens: try int(tt, "tokens", p), slowdown: slowdown, freshBaseWait: freshBaseWait,
                                      ackTimeout: try double(tt, "ack_timeout", p) ?? 30, cluster: cluster == "auto" ? nil : cluster,
                                      attack: attack))
        }
        guard Set(t.trainers.map(\.name)).count == t.trainers.count else { throw bad("trainer names must be unique") }
        if t.aggregation.mode == .sync, t.aggregation.participants > t.trainers.count {
            throw bad("'aggregation.participants' (\(t.aggregation.participants)) exceeds the \(t.trainers.count) trainers")
        }
        return t
    }

    static func allow(_ t: TOMLTable, _ keys: [String], _ prefix: String, _ bad: (String) -> FederationError) throws {
        for k in t.keys where !keys.contains(k) {
            throw bad("unknown key '\(prefix)\(k)' (allowed: \(keys.joined(separator: ", ")))")
        }
    }
}
