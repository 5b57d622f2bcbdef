import FedLMModel
import FedLMTensor

/// One head per data cluster (WorldLM's partial personalization): the trunk is shared by
/// everyone, the head parameters of each cluster are trained only by that cluster's updates.
///
/// The aggregator keeps the global model (trunk plus a global head that every update trains, the
/// starting point of a new cluster and the "one global model" to compare against) and, here,
/// each cluster's head with its own strategy (buffer, optimizer state) and version counter, so
/// a head update's staleness is counted in versions of that head. A cluster's release is the
/// global trunk with the cluster's head in place.
public final class PersonalizedHeads {
    public final class Head {
        public let weights: ParameterVector
        public let strategy: any AggregationStrategy
        /// Increases with each of its own cluster's updates (its staleness is counted in these).
        public internal(set) var version = 0
        /// Other clusters' updates shared into this head (`share`), so releases change with them.
        public internal(set) var shared = 0
        /// The head's own recent direction, with `share_conflicts = "project"`.
        public let direction: DirectionCorrection?
        init(weights: ParameterVector, strategy: any AggregationStrategy, direction: DirectionCorrection?) {
            self.weights = weights
            self.strategy = strategy
            self.direction = direction
        }
    }

    public let partition: ParameterPartition
    private let makeStrategy: () -> any AggregationStrategy
    private let initialNoise: Float
    /// The weight of other clusters' updates on a head (`ClusterConfig.share`).
    public let share: Float
    public private(set) var heads: [String: Head] = [:]
    /// The head part of the update being handled, reused.
    private let scratch: ParameterVector
    /// How the global model's head is formed (`ClusterConfig.global`).
    public let global: ClusterConfig.GlobalHead
    /// What a head takes in of another cluster's update (`ClusterConfig.shareConflicts`).
    public let shareConflicts: ClusterConfig.ShareConflicts
    private let directionDecay: Float

    /// Head strategies apply each of a cluster's updates as it arrives (few trainers share a
    /// cluster, so buffering across them would stall a head), through the clusters' own server
    /// optimizer if set, else the aggregation's; FedAsync's mixing becomes an SGD step of that rate.
    public init(partition: ParameterPartition, config: AggregationConfig) {
        self.partition = partition
        let optimizer: ServerOptimizerKind = config.clusters?.serverOptimizer
            ?? (config.mode == .fedasync ? .sgd(learningRate: Float(config.mixing)) : config.serverOptimizer)
        let layout = partition.head
        makeStrategy = {
            FedBuff(bufferSize: 1, weight: config.mode == .sync ? .constant : config.staleness, maxStaleness: config.maxStaleness,
                    optimizer: optimizer, layout: layout)
        }
        scratch = ParameterVector(layout: partition.head)
        initialNoise = Float(config.clusters?.initialNoise ?? 0)
        share = Float(config.clusters?.share ?? 0)
        global = config.clusters?.global ?? .consensus
        shareConflicts = config.clusters?.shareConflicts ?? .keep
        directionDecay = Float(config.clusters?.directionDecay ?? 0.9)
    }

    public var names: [String] { heads.keys.sorted() }

    /// Creates a cluster whose head starts as the head of `model` (the global model), plus the
    /// configured noise (seeded by the cluster's name, so a restart recreates it identically).
    public func add(_ name: String, from model: ParameterVector, noise: Bool = true) {
        precondition(heads[name] == nil, "cluster \(name) exists")
        let weights = ParameterVector(layout: partition.head)
        partition.gatherHead(from: model.pointer, into: weights)
        if noise, initialNoise > 0 {
            var rng = SeededGenerator(seed: 0, name: name)
            for i in 0..<weights.count { weights.pointer[i] += initialNoise * Float(rng.nextNormal()) }
        }
        let direction = shareConflicts == .project ? DirectionCorrection(decay: directionDecay, layout: partition.head) : nil
        heads[name] = Head(weights: weights, strategy: makeStrategy(), direction: direction)
    }

    /// Applies the head part of a whole-model pseudo-gradient to `cluster`'s head. A partial
    /// update (`carried`) moves only the head tensors it carries; one that carries none leaves
    /// every head as it is (`.refused`, which the caller may ignore).
    public func receive(delta: ParameterVector, carried: TensorSubset? = nil, cluster: String, staleness: Int, dataWeight: Double,
                        trainer: String) -> AggregationDecision {
        guard let head = heads[cluster] else { return .refused("no cluster named \(cluster)") }
        let headCarried = carried.map { c in TensorSubset(model: partition.head, indices: partition.head.entries.indices.filter { c.contains(partition.head.entries[$0].name) }) }
        if let headCarried, headCarried.modelIndices.isEmpty { return .refused("the update carries no head tensor") }
        partition.gatherHead(from: delta.pointer, into: scratch)
        if share > 0 { scale(scratch, by: ownWeight) }
        let decision = head.strategy.receive(Contribution(delta: scratch, carried: headCarried, staleness: staleness, dataWeight: dataWeight,
                                                          trainer: trainer),
                                             model: head.weights)
        if decision == .applied { head.version += 1 }
        if case .refused = decision { return decision }
        if share > 0 {
            for (name, other) in heads where name != cluster { shareInto(other) }
            head.direction?.record(scratch, scale: 1)
        }
        return decision
    }

    /// With `global = consensus`, writes the mean of the clusters' heads into the head part of the
    /// global model `model` (called at each new global version, so a release's version names one
    /// model):
    ///
    ///     w_global,head = (1/n) Σ_c w_c,head
    ///
    /// Under `share` s with SGD at rate 1 on the heads, an update Δ from any cluster moves this
    /// mean by exactly Δ / n (its own head takes Δ / (1 + (n-1) s), each of the n - 1 others
    /// s Δ / (1 + (n-1) s)): the consensus is FedAvg over everyone's updates at rate 1/n, a model
    /// every cluster contributed to in equal part (model soups, Wortsman et al. 2022; WorldLM's
    /// shared backbone). A cluster created later starts as a copy of it, so it barely moves the mean.
    public func writeConsensus(into model: ParameterVector) {
        guard global == .consensus, !heads.isEmpty else { return }
        let members = names.map { heads[$0]!.weights.pointer }
        let mean = scratch.pointer, k = 1 / Float(members.count)
        parallelFor(scratch.count, granularity: 4096) { r in
            for i in r {
                var sum: Float = 0
                for m in members { sum += m[i] }
                mean[i] = sum * k
            }
        }
        partition.scatterHead(scratch, into: model.pointer)
    }

    /// With n clusters, a round of one update per cluster moves each head by the weighted mean
    /// of the round's updates, weight 1 for its own and `share` for each other:
    /// own weight 1 / (1 + (n-1) s), the others' s / (1 + (n-1) s).
    var ownWeight: Float { 1 / (1 + Float(max(heads.count - 1, 0)) * share) }

    private func scale(_ v: ParameterVector, by k: Float) {
        let p = v.pointer
        parallelFor(v.count, granularity: 4096) { r in for i in r { p[i] *= k } }
    }

    /// w_other -= share * (the own-weighted head part of the update in `scratch`).
    ///
    /// With `share_conflicts = "project"`, each tensor t of the update first loses its component
    /// against the other head's own direction d (an exponential moving average of that head's own
    /// updates), as gradient surgery does between conflicting tasks (PCGrad, Yu et al. 2020), here
    /// between organisations whose data pull apart:
    ///
    ///     Δ_t <- Δ_t - (<Δ_t, d_t> / ||d_t||²) d_t     if <Δ_t, d_t> < 0,   else Δ_t
    ///
    /// What agrees with the head's own learning and what is new to it (orthogonal) come in with
    /// weight `share`; what would undo it does not.
    private func shareInto(_ other: Head) {
        let taken = other.direction?.correct(scratch, weight: 0) ?? scratch
        let w = other.weights.pointer, d = taken.pointer, s = share
        parallelFor(other.weights.count, granularity: 4096) { r in for i in r { w[i] -= s * d[i] } }
        other.shared += 1
    }

    /// Writes `cluster`'s release: the trunk of `model` with the cluster's head in place.
    public func release(_ cluster: String, model: ParameterVector, into out: UnsafeMutablePointer<Float>) {
        out.update(from: model.pointer, count: model.count)
        if let head = heads[cluster] { partition.scatterHead(head.weights, into: out) }
    }

    // MARK: State for checkpoints

    /// Every head's weights and strategy vectors, named "<cluster>/weights" and "<cluster>/<vector>".
    public var stateVectors: [(name: String, vector: ParameterVector)] {
        names.flatMap { c -> [(name: String, vector: ParameterVector)] in
            let head = heads[c]!
            var vectors: [(name: String, vector: ParameterVector)] = [(c + "/weights", head.weights)]
            if let direction = head.direction { vectors.append((c + "/direction", direction.direction)) }
            return vectors + head.strategy.stateVectors.map { (c + "/" + $0.name, $0.vector) }
        }
    }

    /// Versions and strategy scalars, named "<cluster>/version" and "<cluster>/<scalar>".
    public var stateScalars: [String: Double] {
        var s: [String: Double] = [:]
        for c in names {
            s[c + "/version"] = Double(heads[c]!.version)
            s[c + "/shared"] = Double(heads[c]!.shared)
            for (k, v) in heads[c]!.strategy.stateScalars { s[c + "/" + k] = v }
        }
        return s
    }

    /// Recreates clusters `names` (empty heads, for `stateVectors` to be filled) and restores
    /// their scalars.
    public func restore(names: [String], scalars: [String: Double], model: ParameterVector) {
        heads = [:]
        for c in names { add(c, from: model, noise: false) }
        for c in names {
            let prefix = c + "/"
            var own: [String: Double] = [:]
            for (k, v) in scalars where k.hasPrefix(prefix) { own[String(k.dropFirst(prefix.count))] = v }
            heads[c]!.version = Int(own["version"] ?? 0)
            heads[c]!.shared = Int(own["shared"] ?? 0)
            heads[c]!.strategy.restore(scalars: own)
        }
    }
}
