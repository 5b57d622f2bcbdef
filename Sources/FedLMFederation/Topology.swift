import FedLMAggregation
import FedLMModel
import FedLMProtocol
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
///     staleness_scope = "tensor"            # fedbuff: tensor (steps that changed each tensor) | model (versions)
///     partial_weight = 0.25                 # fedbuff: a partial update's step against a whole one's, in (0, 1]
///     server_optimizer = "nesterov"         # sgd | nesterov | adam | delayed_nesterov
///     server_learning_rate = 0.7
///     server_momentum = 0.9
///     delayed_period = 4                    # delayed_nesterov
///     participants = 4                      # sync (fewer while fewer trainers are alive)
///     trainer_timeout = 60.0                # seconds of silence before a trainer is forgotten
///     checkpoint_every = 5
///     keep_checkpoints = 3                  # optional: delete older checkpoints (at least 2; default: keep all)
///     keep_best = true                      # optional: at each evaluation keep the best global model and each
///                                           #   cluster's best own model in <run_directory>/best/<name>
///     durability = "machine"                # machine (fsync before ack) | process (survives kill -9)
///     combination = "mean"                  # fedbuff, sync: mean | median | trimmed_mean (robust to a minority)
///     trim_fraction = 0.2                   # trimmed_mean: share dropped at each end
///     max_update_norm = 5.0                 # optional bound on every update's L2 norm
///     norm_policy = "clip"                  #   above it: clip (fedbuff) | refuse (any mode; recorded with its reason)
///     dp_clip = 1.0                         # optional: client-level differential privacy (fedbuff, mean):
///     dp_noise_multiplier = 1.0             #   clip each update to dp_clip, add N(0, (z dp_clip)^2) to each sum;
///     dp_delta = 1e-5                       #   epsilon reported per evaluation (metric dp_epsilon)
///     staleness_correction = "none"         # fedbuff: none | direction (a stale update's parts that conflict with
///     direction_decay = 0.9                 #   the server's recent steps shrink by its staleness weight; HeLoCo)
///     fair_share_window = 9                 # fedbuff, optional: a sender of more than its share of the last N updates
///                                           #   counts less (N / (senders x its count)): nobody dominates alone
///     trust = "none"                        # fedbuff, sync (mean): none | direction (an update against the server's
///     trust_decay = 0.9                     #   recent direction counts with weight 0; FLTrust with the server's own steps)
///     evaluate_every = 5
///
///     [[trainer]]
///     name = "t-en"
///     clusters = ["en"]                     # data clusters of `data` it trains on (default: all)
///     local_steps = 20                      # H (upper bound when time_budget is set)
///     time_budget = 5.0                     # optional seconds per update: H adapts to speed
///     tokens = 500000                       # optional token budget
///     join_at_tokens = 600000               # optional: `fedlm up` starts it once the federation accepted this many
///                                           #   tokens (with [clusters], its cluster may be new: created as it joins)
///     slowdown = 1.0                        # optional straggler factor
///     fresh_base_wait = 0.5                 # optional, asynchronous modes: after a buffered update wait up to
///                                           #   this fraction of the last round's time for the next version
///     ack_timeout = 30.0                    # optional: seconds before an unacknowledged update is resent
///     cluster = "en"                        # with [clusters]: the cluster it trains in, or "auto" (IFCA)
///     attack = "sign_flip"                  # robustness experiments only: sign_flip | noise | nan
///     attack_scale = 10.0                   #   (times the honest update, or noise of that many times its RMS)
///     claim_tokens = 1000000000000          # robustness experiments only: the tokens it claims for every update
///     memory_budget = "300MiB"              # optional: a partial trainer training the most of the model that fits
///     train = ["transformer.h.{last}.*", "transformer.ln_f.*"]   # or: exactly these tensors (globs)
///     micro_batch = 4                       # optional: sequences per pass (gradients accumulated over the batch)
///     broker = "tcp://relay.example:5555"   # optional: where this trainer reaches its broker (default: [broker] trainers)
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
///     max_restarts = 3                      # restarts of one process before the run stops (within restart_window)
///     restart_delay = 1.0                   # seconds before a restart, doubling with each further one (backoff)
///     max_restart_delay = 30.0              #   up to this
///     restart_window = 60.0                 # optional: max_restarts failures within this many seconds are a crash loop
///     trainer_silence = 15.0                # seconds without a word from the broker before a trainer says so
///
///     [wire]                                # optional: how updates and releases travel (default: F32, no overlap)
///     updates = "topk"                      # f32 | f16 | bf16 | int8 | topk (sparse, with error feedback)
///     releases = "bf16"                     # f32 | f16 | bf16 | int8
///     density = 0.01                        # topk: share of each chunk's entries sent
///     bits = 2                              # topk: bits per entry sent (2-8)
///     release_steps = "topk"                # optional: releases as compressed steps from the version a trainer holds
///     step_density = 0.05                   #   (f16 | bf16 | int8 | topk; no [clusters]; whole releases then travel in F32)
///     step_bits = 4
///     overlap = true                        # trainers start their next round while their update uploads
///     overlap_own = 1.0                     #   merge rule: a fresh release minus this share of the trainer's own latest update
///     fetch_window = 64                     # trainers fetch releases this many chunks (1 MiB each) at a time, resuming
///                                           #   after a loss (default 64; 0: the whole release at once)
///
///     [monitoring]                          # optional: metrics and the dashboard over HTTP (default: off)
///     aggregator = "127.0.0.1:9464"         #   /metrics (Prometheus), / (live dashboard), /api/status (JSON)
///     broker = "127.0.0.1:9465"             #   /metrics
///     allow = ["127.0.0.1", "10.1.0.0/16"]  #   clients that may read (default: loopback only)
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
///     global = "consensus"                  # the global model's head: the mean of the clusters' (consensus)
///                                           #   or every update aggregated into it (aggregate)
///     share_conflicts = "keep"              # of another cluster's update a head takes all (keep) or, tensor by
///                                           #   tensor, all but its component against the head's own direction (project)
///     direction_decay = 0.9                 #   with project: beta of each head's moving average of its own updates
///
///     [[region]]                            # optional: regional federations below this one (WorldLM)
///     name = "north"                        #   its aggregator is the trainer "region-north" up here
///     upstream_every = 4                    #   regional versions per update sent up
///     upstream_tokens = 40960               #   optional, instead of upstream_every: once the region accepted this many
///                                           #   tokens since its last update (every region's update then weighs alike)
///     upstream_seconds = 60.0               #   optional: or this many seconds (with at least one version)
///     cluster = "north"                     #   with [clusters] up here: its personalized model (default: its name)
///     ack_timeout = 30.0                    #   seconds before its unacknowledged update is resent
///     upstream = "tcp://relay.example:5555" #   optional: where it reaches the broker above (default: [broker] trainers)
///     run_directory = "runs/x/regions/north" #  default: <run_directory>/regions/<name>
///     [region.broker]                       #   its own broker (every endpoint distinct from every other level's)
///     trainers = "tcp://127.0.0.1:5655"
///     aggregator = "tcp://127.0.0.1:5656"
///     publish = "tcp://127.0.0.1:5657"
///     releases = "tcp://127.0.0.1:5658"
///     [region.aggregation]                  #   optional: default the [aggregation] above
///     [region.clusters]                     #   optional: personalized heads per data cluster within the region
///     [region.monitoring]                   #   optional: its aggregator's and broker's metrics (addresses of its own)
///     [[region.trainer]]                    #   its trainers, as [[trainer]] (names unique across all levels)
public struct Topology: Sendable {
    /// In a region: the level above, and how the regional aggregator reports to it.
    public struct Upstream: Sendable, Equatable {
        public var region: String
        /// The broker above.
        public var endpoints: BrokerEndpoints
        /// With [clusters] above: the region's personalized model there.
        public var cluster: String?
        /// Regional versions per update sent up, or tokens the region accepted (instead of
        /// versions), or `seconds` (with at least one version), whichever comes first.
        public var everyVersions: Int
        public var tokens: Int? = nil
        public var seconds: Double?
        public var ackTimeout: Double
        /// With [security]: the keys directory of the level above, where the region's own pair
        /// (`region-<name>`) and that level's broker key are.
        public var keysDirectory: String? = nil
        /// Its trainer id above.
        public var trainerID: String { "region-" + region }
    }

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
        /// For robustness experiments: the tokens it claims for every update, whatever it trained.
        public var claimTokens: Int?
        /// A partial trainer: tensor patterns it trains, or a memory budget (bytes) the part it
        /// trains must fit; and its micro-batch.
        public var train: [String]? = nil
        public var memoryBudget: Int? = nil
        public var microBatch: Int? = nil
        /// Where this trainer reaches its broker, if not at the level's `trainers` endpoint (a
        /// relay, a public address).
        public var broker: String? = nil
        /// `fedlm up` starts this trainer only once its level's ledger has accepted this many
        /// tokens: an organisation joining a federation under way. With clusters it may name a
        /// cluster that does not exist yet; it is created (from the global model) when it joins.
        public var joinAtTokens: Int? = nil
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
    /// `[wire]`: the encoding of updates and of releases, and whether trainers overlap
    /// communication with training.
    public var updateCompression = Compression.none
    public var releaseCompression = Compression.none
    /// Releases as compressed steps (`PublishedModel`), or nil.
    public var releaseSteps: Compression?
    public var overlap = false
    /// λ of overlap's merge rule (`TrainerOptions.overlapOwnWeight`).
    public var overlapOwnWeight = 1.0
    /// Chunks per window of a trainer's release fetch (`TrainerOptions.fetchWindow`; nil: whole).
    public var fetchWindow: Int? = TrainerOptions.defaultFetchWindow
    /// `[[region]]`: the regional federations below this level, each a topology of its own
    /// with `upstream` set (empty in a region).
    public var regions: [Topology] = []
    /// In a region: the level above.
    public var upstream: Upstream?
    /// `[monitoring]`: where this level's aggregator and broker serve metrics (nil: off).
    public var monitoring: MonitoringConfig?

    /// The level a process of `region` belongs to (nil: this one).
    public func level(region name: String?) throws -> Topology {
        guard let name else { return self }
        guard let r = regions.first(where: { $0.upstream?.region == name }) else {
            throw FederationError.badTopology("\(path): no region named '\(name)' (there are: \(regions.compactMap(\.upstream?.region).joined(separator: ", ")))")
        }
        return r
    }

    /// Where a region's keys live below its level's keys directory.
    public static func regionKeysDirectory(_ keys: String, region: String) -> String { keys + "/regions/" + region }

    /// The level trainer `name` belongs to.
    public func level(ofTrainer name: String) -> Topology? {
        ([self] + regions).first { $0.trainers.contains { $0.name == name } }
    }

    /// Every trainer at every level.
    public var allTrainers: [Trainer] { trainers + regions.flatMap(\.trainers) }
}
