import Foundation
import FedLMModel

/// How the aggregator folds updates in; the `[aggregation]` table of a topology.
public struct AggregationConfig: Equatable, Sendable, Codable {
    public enum Mode: String, Sendable, Codable, CaseIterable { case fedasync, fedbuff, sync }

    public var mode: Mode = .fedbuff
    /// FedBuff: updates per aggregate.
    public var bufferSize = 4
    /// FedAsync: the base mixing rate a.
    public var mixing = 0.5
    public var staleness: StalenessWeight = .inverseSquareRoot
    public var maxStaleness = 8
    /// FedBuff: what staleness counts. `tensor`: for each tensor, the server's steps since the
    /// update's base that changed it (`TensorStaleness`; the same as `model` unless partial
    /// updates step only some tensors). `model`: versions since the base, for every tensor.
    public enum StalenessScope: String, Sendable, Codable, CaseIterable { case tensor, model }
    public var stalenessScope: StalenessScope = .tensor
    /// FedBuff: the weight of a partial update (one carrying only some tensors) against a whole
    /// one's, on the tensors it carries: its step is scaled by this (1: alike). A partial trainer
    /// trains its blocks against the others frozen at its base, so its steps are worth less than
    /// a full trainer's: at 1 three top-block trainers cost two full ones 0.7-2.3% in held-out loss,
    /// at 0.25 they were neutral to +0.7% (docs/joining.md).
    public var partialWeight = 0.25
    public var serverOptimizer: ServerOptimizerKind = .nesterov(learningRate: 0.7, momentum: 0.9)
    /// Sync: trainers per round (fewer while fewer are alive).
    public var participants = 2
    /// A trainer silent this long (seconds) is forgotten: it must say HELLO again, and sync
    /// rounds stop waiting for it. Trainers send heartbeats while they train.
    public var trainerTimeout = 60.0
    /// Write a checkpoint every this many versions.
    public var checkpointEvery = 1
    /// Keep only the newest this many checkpoints (at least 2: a restart falls back to the one
    /// before the newest if the newest is damaged); nil keeps every checkpoint.
    public var keepCheckpoints: Int?
    /// Keep the best model found at each evaluation: the global model with the lowest mean
    /// validation loss in `<run>/best/global`, each cluster's own model with the lowest loss on
    /// its cluster in `<run>/best/<cluster>` (checkpoints `fedlm sample` and `transformers` load).
    public var keepBest = false

    /// What an acknowledgement guarantees. `machine`: the update is on disk (fsync) before the
    /// ack, so it survives a power cut. `process`: written through the OS cache, atomically, so it
    /// survives the aggregator process being killed at any moment, but not a power cut; faster.
    public enum Durability: String, Sendable, Codable, CaseIterable { case machine, process }
    public var durability: Durability = .machine

    /// FedBuff: how the K buffered updates are combined (mean, or robust median / trimmed mean).
    public var combination: RobustCombination = .mean
    /// Bound on every update's L2 norm (nil: no bound); what happens above it is `normPolicy`.
    public var maxUpdateNorm: Double?
    /// Above `maxUpdateNorm`: scale the update down to the bound (FedBuff), or refuse it with
    /// its reason (any mode; recorded in the ledger, the model unchanged).
    public enum NormPolicy: String, Sendable, Codable, CaseIterable { case clip, refuse }
    public var normPolicy: NormPolicy = .clip
    /// FedBuff: client-level differential privacy (clipping and noise on each aggregate).
    public var privacy: DifferentialPrivacy?

    /// FedBuff: stale updates' conflicting parts shrunk against the server's recent direction,
    /// an average of its steps with this decay (`DirectionCorrection`; nil: off).
    public var directionDecay: Double?
    /// FedBuff: equal shares among senders over this many recent updates (`FairShare`; nil: off).
    public var fairShareWindow: Int?
    /// FedBuff and sync rounds (mean): updates that point against the server's recent direction,
    /// an average of its steps with this decay, count with weight 0 (`UpdateTrust`; nil: off).
    public var trustDecay: Double?

    /// Personalized heads per data cluster (nil: one global model).
    public var clusters: ClusterConfig?

    public init() {}

    public func makeStrategy(layout: ParameterLayout) -> any AggregationStrategy {
        switch mode {
        case .fedasync: return FedAsync(mixing: mixing, weight: staleness, maxStaleness: maxStaleness)
        case .fedbuff:
            return FedBuff(bufferSize: bufferSize, weight: staleness, maxStaleness: maxStaleness, optimizer: serverOptimizer, layout: layout,
                           combination: combination, maxNorm: normPolicy == .clip ? maxUpdateNorm : nil, privacy: privacy,
                           directionDecay: directionDecay, fairShareWindow: fairShareWindow, trustDecay: trustDecay,
                           stalenessPerTensor: stalenessScope == .tensor, partialWeight: partialWeight)
        case .sync: return SynchronousFedAvg(participants: participants, optimizer: serverOptimizer, layout: layout, combination: combination,
                                             trustDecay: trustDecay)
        }
    }
}

/// The `[clusters]` table of a topology: personalized heads per data cluster.
public struct ClusterConfig: Equatable, Sendable, Codable {
    /// Clusters that exist from the start (more can be created while running).
    public var names: [String]
    /// Which parameters make up a cluster's head (nil: `ParameterPartition.defaultPatterns`).
    public var headPatterns: [String]?
    /// Standard deviation of noise added to a new cluster's head (0: an exact copy of the global
    /// head). Automatic assignment (IFCA) needs clusters that differ from the start, or every
    /// trainer picks the same one.
    public var initialNoise = 0.0
    /// How much each cluster's head learns from the other clusters: each head aggregates the
    /// updates as a weighted mean, its own cluster's with weight 1 and every other cluster's with
    /// weight `share`. 0: heads learn only from their own cluster; 1: every head takes the plain
    /// mean. See `PersonalizedHeads`.
    public var share = 0.0
    /// The server optimizer that applies a cluster's own updates to its head (nil: the
    /// aggregation's). SGD at rate 1 makes a head follow its trainers' local training exactly,
    /// while the shared trunk can take a larger outer step or momentum.
    public var serverOptimizer: ServerOptimizerKind?
    /// How the global model's head part is formed: the clusters' consensus or every update aggregated.
    public var global: GlobalHead = .consensus
    /// What of another cluster's update a head takes in: all of it, or only what does not conflict
    /// with the head's own recent direction (`ShareConflicts`).
    public var shareConflicts: ShareConflicts = .keep
    /// beta of each head's own direction (an exponential moving average of its own updates), with
    /// `shareConflicts = .project`.
    public var directionDecay = 0.9
    public init(names: [String], headPatterns: [String]? = nil, initialNoise: Double = 0, share: Double = 0,
                serverOptimizer: ServerOptimizerKind? = nil, global: GlobalHead = .consensus,
                shareConflicts: ShareConflicts = .keep, directionDecay: Double = 0.9) {
        self.names = names
        self.headPatterns = headPatterns
        self.initialNoise = initialNoise
        self.share = share
        self.serverOptimizer = serverOptimizer
        self.global = global
        self.shareConflicts = shareConflicts
        self.directionDecay = directionDecay
    }

    /// What a head takes in of another cluster's update (`[clusters] share_conflicts`).
    public enum ShareConflicts: String, Equatable, Sendable, Codable, CaseIterable {
        /// All of it, with weight `share`.
        case keep
        /// Tensor by tensor, the update without its component against the head's own recent
        /// direction (gradient surgery, PCGrad): what would undo the head's own learning is left out.
        case project
    }

    /// The global model's head with personalized clusters (`[clusters] global`).
    public enum GlobalHead: String, Equatable, Sendable, Codable, CaseIterable {
        /// The mean of the clusters' heads, taken at each global version: a model every cluster
        /// contributed to in equal part, and what a new cluster starts from.
        case consensus
        /// Every update applied to the global head by the aggregation strategy, as to the trunk.
        /// The updates were computed on the clusters' models, not on the global one: with a head of
        /// every parameter the global model then drifts away from all of them.
        case aggregate
    }

    /// Cluster names become file names and pub/sub topics: letters, digits, '-', '_' and '.'.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) && $0.isASCII || "-_.".unicodeScalars.contains($0)
        } && name != "." && name != ".."
    }
}
