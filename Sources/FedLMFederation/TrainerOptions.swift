import FedLMModel
import FedLMProtocol

/// A deliberately broken trainer, for robustness experiments: what it does to each update.
public enum TrainerAttack: Equatable, Sendable {
    /// Sends -scale times its honest update.
    case signFlip(scale: Double)
    /// Sends Gaussian noise with `scale` times the honest update's RMS.
    case noise(scale: Double)
    /// Puts a NaN into every update (the aggregator must refuse it).
    case nan
}

/// What one trainer does and on which data.
public struct TrainerOptions: Sendable {
    public var id: String
    /// Declared data cluster (sent in HELLO); ignored with `automaticCluster`.
    public var cluster: String?
    /// Choose the cluster automatically (IFCA): evaluate every cluster's release on a sample of
    /// this trainer's data, join the one with the lowest loss, and check again every
    /// `reassignEvery` rounds.
    public var automaticCluster = false
    public var reassignEvery = 10
    /// Batches of local data each cluster's model is evaluated on when choosing.
    public var assignmentBatches = 2
    /// The prepared data directory and the clusters of it this trainer owns.
    public var dataDirectory: String
    public var dataClusters: [String]?
    public var training: TrainingConfig
    public var modelConfig: GPT2Config
    /// H: local AdamW steps per update (an upper bound when `timeBudget` is set).
    public var maxLocalSteps = 20
    /// Seconds of local training per update; H adapts to the measured step time.
    public var timeBudget: Double?
    /// Stop after training this many tokens (nil: until stopped). The learning-rate schedule
    /// (warmup, then cosine decay to `min_learning_rate`) spans the budget, as it spans
    /// `fedlm train --tokens`, so a trainer anneals by the end of its budget; without a budget
    /// it spans the config's `max_steps`.
    public var tokenBudget: Int?
    /// Artificial slowness (1 = none, 5 = five times slower), for straggler experiments.
    public var slowdown = 1.0
    /// Asynchronous modes: after an update the aggregator only buffered (no new version yet),
    /// wait up to this fraction of the trainer's own last round time for the next version before
    /// training on the one it already has (0: never wait). Equal-speed trainers then start from
    /// fresh models instead of repeating work on the same base; a straggler never holds anyone
    /// up by more than this bound.
    public var freshBaseWait = 0.0
    /// The values `freshBaseWait` may take (a fraction of the last round's time), checked by the
    /// topology and the command line alike.
    public static let freshBaseWaitRange = 0.0...10.0
    /// How updates travel; a lossy encoding keeps what it left out and adds it to the next
    /// update (error feedback).
    public var compression = Compression.none
    /// The aggregator sends releases as steps from the version the trainer holds: say which in
    /// every FETCH.
    public var asksForReleaseSteps = false
    /// Fetch releases this many chunks at a time (`Fetch.window`): the next window is asked for
    /// while the current one arrives, and a stream that stalls or loses a chunk resumes from the
    /// first chunk missing, so a release of any size arrives through bounded socket queues.
    /// nil: the whole release in one answer.
    public var fetchWindow: Int? = defaultFetchWindow
    /// 64 chunks (64 MiB at the default chunk size): two windows in flight stay well under the
    /// broker's and the trainer's socket queues (1,000 messages each).
    public static let defaultFetchWindow: Int? = 64
    /// Start the next round while the update uploads (see `TrainerCore`'s overlap rule).
    public var overlap = false
    /// λ in overlap's merge rule S = R − λ·Δ_own: how much of its own latest update a trainer
    /// adds to a fresh release that cannot hold it yet (about the weight the aggregator gives
    /// one update: server rate × staleness weight / buffer size).
    public var overlapOwnWeight = 1.0
    /// A partial trainer: the tensors it trains and its updates carry (nil: all of them). Chosen
    /// by `--train` patterns or by `TrainingMemory.plan` for a memory budget.
    public var trained: TensorSubset?
    /// Sequences per forward/backward pass (gradients accumulated over the batch; nil: the
    /// whole batch at once).
    public var microBatch: Int?
    /// Robustness experiments only: corrupt every update this way.
    public var attack: TrainerAttack?
    /// For robustness experiments: the tokens claimed for every update, whatever was trained.
    public var claimTokens: Int?
    /// Where the unacknowledged update is kept across restarts.
    public var stateDirectory: String
    /// Seconds to wait for an acknowledgement before sending the update again.
    public var ackTimeout = 30.0
    /// Seconds without any word from the broker, while waiting for one, before the trainer says
    /// so in its log and in `<stateDirectory>/silent-since` (it keeps retrying all along).
    public var silenceWarning = 15.0
    /// `training` with `maxSteps` set to the steps of the token budget, when there is one.
    public var scheduledTraining: TrainingConfig {
        var t = training
        if let tokenBudget { t.maxSteps = max(1, tokenBudget / (t.batchSize * (t.sequenceLength ?? modelConfig.context))) }
        return t
    }

    public init(id: String, dataDirectory: String, training: TrainingConfig, modelConfig: GPT2Config, stateDirectory: String) {
        self.id = id
        self.dataDirectory = dataDirectory
        self.training = training
        self.modelConfig = modelConfig
        self.stateDirectory = stateDirectory
    }
}

extension TrainerOptions {
    /// Sets the part of the model to train: the tensors matching `patterns`, or the most that
    /// fits `memoryBudget` (bytes); `microBatch` as given, or as the plan chooses. Returns the
    /// memory plan, for the log.
    @discardableResult
    public mutating func choosePart(patterns: [String]?, memoryBudget: Int?, microBatch: Int?) throws -> TrainingMemory.Plan? {
        let batch = training.batchSize, sequence = training.sequenceLength ?? modelConfig.context
        if let microBatch {
            guard microBatch >= 1, batch % microBatch == 0 else {
                throw SubsetError("micro-batch \(microBatch) must divide the batch size \(batch)")
            }
        }
        self.microBatch = microBatch
        if let patterns {
            guard memoryBudget == nil else { throw SubsetError("give either tensor patterns to train or a memory budget, not both") }
            trained = try TensorSubset(model: ParameterLayout(config: modelConfig), patterns: patterns, layers: modelConfig.layers)
            return nil
        }
        guard let memoryBudget else { return nil }
        let plan = try TrainingMemory.plan(config: modelConfig, batch: batch, sequence: sequence, budget: memoryBudget, microBatch: microBatch)
        trained = plan.trained.isWhole ? nil : plan.trained
        self.microBatch = plan.microBatch < batch ? plan.microBatch : nil
        return plan
    }
}

extension TrainerOptions {
    /// A trainer's options from its entry in a topology, at the level it belongs to: every setting
    /// the topology gives a trainer, taken in this one place (the command line may then override).
    public init(entry: Topology.Trainer, level t: Topology, training: TrainingConfig, modelConfig: GPT2Config, stateDirectory: String? = nil) {
        self.init(id: entry.name, dataDirectory: t.dataDirectory, training: training, modelConfig: modelConfig,
                  stateDirectory: stateDirectory ?? t.runDirectory + "/trainers/" + entry.name)
        dataClusters = entry.clusters
        if t.aggregation.clusters != nil {
            cluster = entry.cluster
            automaticCluster = entry.cluster == nil
            reassignEvery = t.reassignEvery
        }
        maxLocalSteps = entry.localSteps
        timeBudget = entry.timeBudget
        tokenBudget = entry.tokens
        slowdown = entry.slowdown
        freshBaseWait = entry.freshBaseWait
        ackTimeout = entry.ackTimeout
        silenceWarning = t.supervision.trainerSilence
        attack = entry.attack
        claimTokens = entry.claimTokens
        levelSettings(t)
    }

    /// The options of a regional aggregator's link to the level above (`t` is the region's level).
    public init(uplinkOf t: Topology, upstream up: Topology.Upstream, training: TrainingConfig, modelConfig: GPT2Config) {
        self.init(id: up.trainerID, dataDirectory: t.dataDirectory, training: training, modelConfig: modelConfig,
                  stateDirectory: t.runDirectory + "/uplink")
        cluster = up.cluster
        maxLocalSteps = up.everyVersions
        ackTimeout = up.ackTimeout
        silenceWarning = t.supervision.trainerSilence
        compression = t.updateCompression
        fetchWindow = t.fetchWindow
    }

    /// What every trainer of a level shares: how updates travel and whether rounds overlap.
    private mutating func levelSettings(_ t: Topology) {
        compression = t.updateCompression
        overlap = t.overlap
        overlapOwnWeight = t.overlapOwnWeight
        asksForReleaseSteps = t.releaseSteps != nil
        fetchWindow = t.fetchWindow
    }
}
