import FedLMAggregation
import FedLMCheckpoint
import FedLMLedger
import FedLMModel
import FedLMProtocol
import FedLMTensor
import Foundation

/// The aggregator's protocol logic and durable state, without sockets.
///
/// For every UPDATE: dedupe by id (ledger), validate (trainer known, names and shapes, staleness),
/// write the pseudo-gradient to an fsynced file, let the strategy fold it in, record the outcome
/// in the ledger, and only then acknowledge. Every `checkpointEvery` versions the model and the
/// strategy's state are checkpointed and the ledger forgets the delta files the checkpoint covers.
/// `open` restores: newest checkpoint whose hash verifies, then replay of the updates recorded
/// after it, so nothing acknowledged is lost and nothing is applied twice.
public final class AggregatorCore {
    public let runDirectory: String
    public let config: AggregationConfig
    public let ledger: Ledger
    public private(set) var model: GPT2Model
    public private(set) var version: Int
    public private(set) var strategy: any AggregationStrategy
    /// Personalized heads per data cluster (nil: one global model).
    public private(set) var heads: PersonalizedHeads?
    public let specs: [TensorSpec]
    var lastCheckpointedVersion: Int
    /// Weights of recent versions (FedAsync mixes with the trainer's starting weights).
    private var recentVersions: [Int: ParameterVector] = [:]
    var knownTrainers: [String: String?] = [:]
    /// When each known trainer was last heard from.
    private var lastSeen: [String: Double] = [:]
    public var log: (String) -> Void = { _ in }
    /// How releases travel (lossy encodings: trainers start from the decoded weights and their
    /// pseudo-gradients are taken from there, so nothing accumulates).
    public var releaseCompression = Compression.none
    /// Releases as compressed steps from a version the trainer holds (`PublishedModel`; global
    /// model only): nil for whole releases.
    public var releaseSteps: Compression? {
        didSet { published = nil }
    }
    var published: PublishedModel?
    /// Bounds on the tokens an update is credited with (nil: every claim credited whole).
    public var tokenClaims: TokenClaimLimits?
    /// Tokens credited to each sender so far (for its budget), read from the ledger once.
    lazy var credited: [String: Int] = (try? ledger.creditedTokens()) ?? [:]
    /// The pseudo-gradient being handled, reused from update to update (no strategy keeps it),
    /// so a 40 MB update does not fault in 40 MB of fresh pages each time.
    private lazy var deltaScratch = ParameterVector(layout: model.layout)

    static let traceTiming = ProcessInfo.processInfo.environment["FEDLM_TRACE_TIMING"] == "1"

    var checkpointsDirectory: String { runDirectory + "/checkpoints" }
    /// The accepted updates' pseudo-gradients, kept for replay until a checkpoint covers them.
    private let deltas: DeltaFiles
    /// Writes checkpoints and records them in the ledger.
    private let checkpoints: AggregatorCheckpoints

    /// Opens a run directory: restores it if it has a ledger with versions, else starts from
    /// `initialModel` as version 0 (checkpointed at once).
    public init(runDirectory: String, config: AggregationConfig, initialModel: @autoclosure () throws -> GPT2Model,
                log: @escaping (String) -> Void = { _ in }) throws {
        self.runDirectory = runDirectory
        self.config = config
        self.log = log
        let fm = FileManager.default
        try fm.createDirectory(atPath: runDirectory + "/checkpoints", withIntermediateDirectories: true)
        // Spares for about one checkpoint interval's updates: what each checkpoint retires.
        let perVersion = config.mode == .fedbuff ? config.bufferSize : (config.mode == .sync ? config.participants : 1)
        deltas = try DeltaFiles(directory: runDirectory + "/deltas",
                                maximumSpares: min(64, max(4, perVersion * Self.checkpointInterval(config))))
        ledger = try Ledger(path: runDirectory + "/ledger.sqlite", durable: config.durability == .machine)
        checkpoints = AggregatorCheckpoints(runDirectory: runDirectory, ledger: ledger, deltas: deltas, keep: config.keepCheckpoints)
        // Newest checkpoint first; if it (or the replay after it) fails, the one before.
        var restored: AggregatorRestore?
        var fellBack = false
        for v in try ledger.versions() {
            do {
                restored = try AggregatorRestore.restore(v, config: config, ledger: ledger)
                break
            } catch {
                log("cannot restore from v\(v.number) (\(error)); trying the previous checkpoint")
                fellBack = true
            }
        }
        if let r = restored {
            model = r.model
            version = r.version
            strategy = r.strategy
            heads = r.heads
            specs = r.model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
            lastCheckpointedVersion = r.checkpoint.number
            log("restored v\(r.checkpoint.number) from \(r.checkpoint.checkpointPath), replayed \(r.replayed) updates -> version \(version)")
        } else {
            let fresh = try initialModel()
            model = fresh
            version = 0
            strategy = config.makeStrategy(layout: fresh.layout)
            heads = try config.clusters.map { try Self.makeHeads($0, config: config, model: fresh) }
            specs = fresh.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
            lastCheckpointedVersion = -1
        }
        if let clusters = config.clusters {
            for name in clusters.names where heads?.heads[name] == nil { try addCluster(name, origin: "config", checkpointNow: false) }
            try adoptNewClusters(checkpointNow: false)
        }
        let restoredClusters = Set(restored?.heads?.names ?? [])
        // A fresh start, new clusters, or a fallback past a bad checkpoint: checkpoint now, so the
        // bad one is replaced and the next fallback has a good checkpoint to land on.
        if restored == nil || fellBack || (heads.map { Set($0.names) != restoredClusters } ?? false) { try checkpoint() }
        rememberVersion()
        // Files the ledger no longer refers to (spares, or retired or half-written when the
        // process died) become spares.
        try deltas.sweep(keeping: ledger.referencedDeltaPaths())
    }

    static func makeHeads(_ clusters: ClusterConfig, config: AggregationConfig, model: GPT2Model) throws -> PersonalizedHeads {
        PersonalizedHeads(partition: try ParameterPartition(model: model.layout, layers: model.config.layers, patterns: clusters.headPatterns,
                                                            allowingEverything: clusters.share > 0),
                          config: config)
    }

    // MARK: Clusters

    /// Creates a cluster whose head starts from the global model's head, registers it in the
    /// ledger, and checkpoints (so a restart never has to replay an update into a cluster the
    /// checkpoint does not know).
    public func addCluster(_ name: String, origin: String, checkpointNow: Bool = true) throws {
        guard let heads else { throw FederationError.peer("this federation has no clusters (add a [clusters] table)") }
        guard ClusterConfig.isValidName(name) else {
            throw FederationError.peer("cluster name '\(name)': use letters, digits, '-', '_' and '.' (at most 64)")
        }
        guard heads.heads[name] == nil else { return }
        heads.add(name, from: model.parameters)
        try ledger.addCluster(name, origin: origin)
        log("cluster \(name) created (\(origin)), head from the global model at version \(version)")
        if checkpointNow { try checkpoint() }
    }

    /// Creates clusters registered in the ledger by someone else (`fedlm cluster create`).
    public func adoptNewClusters(checkpointNow: Bool = true) throws {
        guard let heads else { return }
        for name in try ledger.clusters() where heads.heads[name] == nil { try addCluster(name, origin: "ledger", checkpointNow: checkpointNow) }
    }

    // MARK: Messages

    public func handle(_ message: Message, from peer: String, now: Double = Date().timeIntervalSince1970) throws -> [AggregatorCore.Action] {
        if knownTrainers[peer] != nil { lastSeen[peer] = now }
        switch message {
        case .hello(let h):
            if let c = h.cluster {
                guard let heads else {
                    return [.reply(to: peer, .error(ErrorReply(code: .unknownCluster, detail: "this federation has no clusters; leave the cluster out")))]
                }
                guard heads.heads[c] != nil else {
                    return [.reply(to: peer, .error(ErrorReply(code: .unknownCluster,
                                                               detail: "no cluster named '\(c)' (there are: \(heads.names.joined(separator: ", ")))")))]
                }
                try ledger.recordAssignment(trainer: h.trainerID, cluster: c, how: h.assignment ?? "declared", at: now)
            }
            try ledger.touchTrainer(h.trainerID, cluster: h.cluster, at: now)
            knownTrainers[h.trainerID] = h.cluster
            lastSeen[h.trainerID] = now
            try adjustParticipants(growOnly: true)
            return [.reply(to: peer, .welcome(Welcome(trainerID: h.trainerID, cluster: h.cluster, heartbeatMilliseconds: 1000,
                                                      maxStaleness: config.maxStaleness, latestVersion: version,
                                                      mode: config.mode.rawValue, clusters: heads?.names)))]
        case .fetch(let f):
            if let c = f.cluster, heads?.heads[c] == nil {
                return [.reply(to: peer, .error(ErrorReply(code: .unknownCluster, detail: "no cluster named '\(c)'")))]
            }
            if let have = f.haveVersion, have == version { return [.reply(to: peer, .heartbeat)] }
            if f.cluster == nil, let held = f.holds, publishedModel()?.steps(from: held) != nil {
                return [.sendReleaseSteps(to: peer, from: held)]
            }
            return [.sendRelease(to: peer, cluster: f.cluster, window: f.window, resume: f.resume)]
        case .update(let info, let payload):
            return [.reply(to: peer, try handleUpdate(info, payload, now: now))]
        case .heartbeat:
            return [.reply(to: peer, .heartbeat)]
        case .bye:
            return []
        case .welcome, .release, .ack, .error:
            return [.reply(to: peer, .error(ErrorReply(code: .malformed, detail: "\(message.type) is not sent to the aggregator")))]
        }
    }

    /// Where an UPDATE of `count` values streaming in is assembled (`StreamAssembler.destinations`):
    /// a buffer applied without copies, whose chunks are written to a delta file as they arrive;
    /// for a large model under FedBuff's plain mean, folded into the buffer chunk by chunk as
    /// they arrive (`FoldingDelta`: the update is never held whole). nil for any other size than
    /// the model's (the update is refused once it is in).
    public func incomingUpdate(_ info: UpdateInfo, count: Int) -> PayloadDestination? {
        guard count == model.parameters.count else { return nil }
        if let fold = foldingDestination(info, count: count) { return fold }
        return deltas.incoming(count: count)
    }

    /// Updates of this many bytes (F32) or more are folded in as they stream, where the strategy
    /// allows it.
    public var foldingBytes = 64 << 20

    /// The whole update being folded into the buffer as it streams in (one at a time; gone with
    /// its transfer).
    private weak var activeFold: FoldingDelta?

    /// A folding destination for `info` if streaming application applies: FedBuff's plain mean,
    /// no personalized heads, a large model, no other fold under way, and nothing that would
    /// refuse the update already known from its header.
    private func foldingDestination(_ info: UpdateInfo, count: Int) -> FoldingDelta? {
        guard let fedbuff = strategy as? FedBuff, fedbuff.foldsWhileStreaming, heads == nil, count * 4 >= foldingBytes, activeFold == nil,
              knownTrainers[info.trainerID] != nil, info.cluster == nil, fedbuff.refusal(staleness: version - info.baseVersion) == nil,
              version - info.baseVersion <= config.maxStaleness, (try? ledger.update(id: info.updateID)) == nil else { return nil }
        let fold = deltas.folding(info, count: count, into: fedbuff, staleness: version - info.baseVersion)
        activeFold = fold
        return fold
    }

    /// Runs `change` (which may step the model or save the buffer) with the half-arrived update
    /// taken out of the buffer, and folds it back in with the staleness after it.
    private func withoutActiveFold<T>(_ change: () throws -> T) rethrows -> T {
        guard let fold = activeFold, fold.foldedStaleness != nil else { return try change() }
        fold.unfold()
        defer { fold.refold(staleness: version - fold.info.baseVersion) }
        return try change()
    }

    private func handleUpdate(_ info: UpdateInfo, _ payload: TensorPayload, now: Double) throws -> Message {
        if let fold = payload.destination as? FoldingDelta { return try handleFolded(info, fold, payload, now: now) }
        if let answer = try answerBeforeChecks(info) { return answer }
        let credit = credit(info), dataWeight = Double(max(credit.tokens, 1))
        func refuse(_ e: ProtocolError, staleness: Int = 0, norm: Double = 0) throws -> Message {
            try self.refuse(info, e, staleness: staleness, norm: norm, now: now)
        }
        // A partial update carries some of the model's tensors (a trainer that trains part of it).
        let carried: TensorSubset?
        do {
            carried = try payload.carried(of: specs).map { TensorSubset(model: model.layout, indices: $0) }
        } catch let e as ProtocolError { return try refuse(e) }
        let staleness = version - info.baseVersion
        if staleness < 0 { return try refuse(ProtocolError(.malformed, "base version \(info.baseVersion) is newer than \(version)")) }
        if let e = stalenessRefusal(staleness) { return try refuse(e, staleness: staleness) }
        let headStaleness: Int?
        switch headStalenessOf(info) {
        case .success(let hs): headStaleness = hs
        case .failure(let e): return try refuse(e, staleness: e.code == .tooStale ? staleness : 0)
        }
        var marks: [(String, Double)] = [("start", Date().timeIntervalSince1970)]
        func mark(_ name: String) { marks.append((name, Date().timeIntervalSince1970)) }
        defer {
            if Self.traceTiming {
                log("timing update: " + zip(marks.dropFirst(), marks).map { String(format: "%@ %.1fms", $0.0, ($0.1 - $1.1) * 1000) }.joined(separator: ", "))
            }
        }
        let (delta, incoming) = deltaOf(payload, carried: carried)
        mark("copy")
        // Recorded in the ledger; neither the strategy nor the heads change the delta.
        // Added up as the chunks arrived when the update was streamed.
        let norm = Double(payload.sumOfSquares.map { Float($0.squareRoot()) } ?? GradientClipping.norm(delta))
        mark("norm")
        if let e = normRefusal(norm) { return try refuse(e, staleness: staleness, norm: norm) }
        let deltaPath = try keep(delta, incoming: incoming, carried: carried, updateID: info.updateID)
        mark("write delta")
        let decision = withoutActiveFold {
            let d = strategy.receive(Contribution(delta: delta, carried: carried, base: recentVersions[info.baseVersion], staleness: staleness,
                                                  dataWeight: dataWeight, trainer: info.trainerID),
                                     model: model.parameters)
            if d == .applied { version += 1 }
            return d
        }
        if case .refused(let why) = decision {
            deltas.retire([deltaPath])
            return try refuse(ProtocolError(.tooStale, why), staleness: staleness)
        }
        var headVersionAfter: Int?
        if let heads, let c = info.cluster, let hs = headStaleness {
            _ = heads.receive(delta: delta, carried: carried, cluster: c, staleness: hs, dataWeight: dataWeight, trainer: info.trainerID)
            headVersionAfter = heads.heads[c]!.version
            if decision == .applied { heads.writeConsensus(into: model.parameters) }
        }
        mark("strategy")
        defer { mark("ledger and version") }
        return try accept(info, credit: credit, decision: decision, staleness: staleness, norm: norm, deltaPath: deltaPath, now: now,
                          headStaleness: headStaleness, headVersionAfter: headVersionAfter)
    }

    /// With clusters, the update's head part goes to its cluster's head: it must name one, and
    /// its head must not be too stale either. The head's staleness (nil without clusters), or why
    /// the update is refused.
    private func headStalenessOf(_ info: UpdateInfo) -> Result<Int?, ProtocolError> {
        guard let heads else {
            guard let c = info.cluster else { return .success(nil) }
            return .failure(ProtocolError(.unknownCluster, "this federation has no clusters (the update names '\(c)')"))
        }
        guard let c = info.cluster, let head = heads.heads[c] else {
            return .failure(ProtocolError(.unknownCluster, info.cluster.map { "no cluster named '\($0)'" } ?? "an update must name its cluster"))
        }
        let hs = head.version - (info.baseHeadVersion ?? head.version)
        guard hs >= 0 else { return .failure(ProtocolError(.malformed, "base head version \(info.baseHeadVersion!) is newer than \(head.version)")) }
        guard hs <= config.maxStaleness else {
            return .failure(ProtocolError(.tooStale, "cluster \(c)'s head staleness \(hs) exceeds \(config.maxStaleness)"))
        }
        return .success(hs)
    }

    /// The update's pseudo-gradient as a model-shaped vector. A streamed update is already in its
    /// buffer (`IncomingDelta`, returned too): used from there, without copies.
    private func deltaOf(_ payload: TensorPayload, carried: TensorSubset?) -> (ParameterVector, IncomingDelta?) {
        let incoming = (payload.destination as? IncomingDelta).flatMap { $0.storage.count == model.parameters.count ? $0 : nil }
        if let incoming { return (ParameterVector(layout: model.layout, storage: incoming.storage), incoming) }
        let delta = deltaScratch
        if let carried {
            delta.zero()
            payload.withValues { carried.scatter($0.baseAddress!, into: delta.pointer) }
        } else {
            payload.withValues { delta.pointer.update(from: $0.baseAddress!, count: delta.count) }
        }
        return (delta, nil)
    }

    /// Durable first: the pseudo-gradient goes to a file (fsynced unless durability = process)
    /// before anything changes; a streamed update's file is already written and is committed.
    private func keep(_ delta: ParameterVector, incoming: IncomingDelta?, carried: TensorSubset?, updateID: String) throws -> String {
        let sync = config.durability == .machine
        if let incoming { return try deltas.commit(incoming, updateID: updateID, sync: sync) }
        if let carried { return try deltas.write(delta, carried: carried, updateID: updateID, sync: sync) }
        return try deltas.write(UnsafeBufferPointer(start: delta.pointer, count: delta.count), updateID: updateID, sync: sync)
    }

    // MARK: The level above

    /// Moves the model in place (`move` gets the weights): a regional aggregator adopting a
    /// release of version `above` from the level above, with what its region learned since
    /// carried over (`RegionalRounds`). A new version no update explains, so it is checkpointed
    /// at once and no replay ever crosses it.
    public func adopt(from above: Int, _ move: (UnsafeMutablePointer<Float>) -> Void) throws {
        withoutActiveFold {
            move(model.parameters.pointer)
            (strategy as? FedBuff)?.recordOutsideStep()
            version += 1
        }
        try ledger.recordMetric("adopted_from_above", Double(above), version: version)
        rememberVersion()
        try checkpoint()
        log("adopted version \(above) from above -> version \(version)")
    }

    /// A whole update that was folded into the buffer as it arrived (`FoldingDelta`): the same
    /// checks as any update, its fold taken out again if it is refused; else its file committed
    /// and it counts as received.
    private func handleFolded(_ info: UpdateInfo, _ fold: FoldingDelta, _ payload: TensorPayload, now: Double) throws -> Message {
        fold.settled = true
        if activeFold === fold { activeFold = nil }
        func refuse(_ e: ProtocolError, staleness: Int = 0, norm: Double = 0) throws -> Message {
            fold.unfold()
            return try self.refuse(info, e, staleness: staleness, norm: norm, now: now)
        }
        if let answer = try answerBeforeChecks(info) {
            fold.unfold()
            return answer
        }
        if fold.poisoned { return try refuse(ProtocolError(.nonFinite, "the update holds values that are not finite")) }
        let staleness = version - info.baseVersion
        precondition(fold.foldedStaleness == staleness, "a fold's weight follows every version change")
        guard let fedbuff = strategy as? FedBuff else { return try refuse(ProtocolError(.malformed, "folded update without FedBuff")) }
        if let e = stalenessRefusal(staleness, strategyRefusal: fedbuff.refusal(staleness: staleness)) { return try refuse(e, staleness: staleness) }
        let norm = (payload.sumOfSquares ?? 0).squareRoot()
        if let e = normRefusal(norm) { return try refuse(e, staleness: staleness, norm: norm) }
        let deltaPath: String
        do { deltaPath = try deltas.commit(fold, updateID: info.updateID, sync: config.durability == .machine) } catch {
            // Not the update's fault: the trainer sends it again.
            fold.unfold()
            log("cannot keep update \(info.updateID): \(error)")
            return .error(ErrorReply(code: .unavailable, detail: "the aggregator could not store the update; send it again", refersTo: info.updateID))
        }
        let decision = fedbuff.completeFolded(model: model.parameters)
        if decision == .applied { version += 1 }
        return try accept(info, credit: credit(info), decision: decision, staleness: staleness, norm: norm, deltaPath: deltaPath, now: now)
    }

    /// Forgets trainers silent for longer than the timeout (they re-register with HELLO) and
    /// lets a synchronous round stop waiting for them. Returns the trainers forgotten.
    @discardableResult
    public func expireSilentTrainers(now: Double = Date().timeIntervalSince1970) throws -> [String] {
        let silent = lastSeen.filter { now - $0.value > config.trainerTimeout }.map(\.key).sorted()
        for t in silent {
            knownTrainers[t] = nil
            lastSeen[t] = nil
            log("trainer \(t) silent for over \(Int(config.trainerTimeout)) s: forgotten")
        }
        if !silent.isEmpty { try adjustParticipants(growOnly: false) }
        return silent
    }

    /// Sync rounds wait for min(participants, trainers alive), at least one. A HELLO only grows
    /// a round back (after trainers died); trainers not yet joined are still waited for.
    private func adjustParticipants(growOnly: Bool) throws {
        guard let sync = strategy as? SynchronousFedAvg else { return }
        let target = max(1, min(config.participants, knownTrainers.count))
        if growOnly, target <= sync.expected { return }
        if sync.setParticipants(target, model: model.parameters) == .applied {
            version += 1
            try ledger.recordMetric("round_closed_early", 1, version: version)
            rememberVersion()
            // A version no update record explains: checkpoint it, so a restart never has to replay across it.
            try checkpoint()
        }
    }

    /// FedAsync mixes with the trainer's starting weights, which a restart no longer holds, so it
    /// checkpoints every version (nothing is ever left to replay); the others every `checkpointEvery`.
    var checkpointInterval: Int { Self.checkpointInterval(config) }
    static func checkpointInterval(_ config: AggregationConfig) -> Int { config.mode == .fedasync ? 1 : max(1, config.checkpointEvery) }

    // MARK: Checkpoints

    /// Checkpoints the model and the strategy's state as version `version`, then records it.
    public func checkpoint() throws {
        let start = Date().timeIntervalSince1970
        try withoutActiveFold { try writeCheckpoint() }
        metrics.checkpointed(seconds: Date().timeIntervalSince1970 - start)
    }

    /// Where checkpoint durations go (`[monitoring]`), and the service's other metrics.
    public var metrics = AggregatorMetrics.none

    /// Trainers heard from within the trainer timeout.
    public var connectedTrainers: Int { knownTrainers.count }

    private func writeCheckpoint() throws {
        try checkpoints.write(version: version, model: model, strategy: strategy, heads: heads)
        lastCheckpointedVersion = version
    }

    func rememberVersion() {
        guard config.mode == .fedasync else { return }
        let copy = ParameterVector(layout: model.layout)
        copy.copy(from: model.parameters)
        recentVersions[version] = copy
        for v in recentVersions.keys where v < version - config.maxStaleness { recentVersions[v] = nil }
    }
}

/// The staleness weight the config applies (for the ledger's record of each update).
struct StalenessWeightOf {
    let config: AggregationConfig
    init(_ c: AggregationConfig) { config = c }
    func weight(_ s: Int) -> Double { config.mode == .sync ? 1 : config.staleness.weight(staleness: s) }
}
