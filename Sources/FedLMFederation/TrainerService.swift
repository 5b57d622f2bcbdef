import FedLMCheckpoint
import FedLMData
import FedLMModel
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation
import Logging

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
    /// Robustness experiments only: corrupt every update this way.
    public var attack: TrainerAttack?
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

/// A trainer: registers, fetches the latest release, trains H local AdamW steps on its own data,
/// sends the pseudo-gradient (start minus end weights) tagged with its base version, and repeats.
/// An update is written to disk before it is sent and deleted only when acknowledged, so a
/// trainer restarted after any crash resends it (the aggregator dedupes by id).
public final class TrainerService: BlockingService, @unchecked Sendable {
    public let options: TrainerOptions
    public let endpoints: BrokerEndpoints
    public let limits: TransportLimits
    /// CURVE keys when the broker requires them.
    public var curve: CurveClient?
    let logger: Logger
    private let stopFlag = StopFlag()
    private let codec = WireCodec()
    public private(set) var tokensTrained = 0
    public private(set) var updatesAcknowledged = 0

    public init(options: TrainerOptions, endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(),
                logger: Logger = Logger(label: "fedlm.trainer")) {
        self.options = options
        self.endpoints = endpoints
        self.limits = limits
        self.logger = logger
    }

    public func stop() { stopFlag.set() }

    var pendingPath: String { options.stateDirectory + "/pending-update.safetensors" }
    /// Present, holding the Unix time the silence began, while the trainer hears nothing from
    /// the broker (`fedlm up` shows it on its progress line).
    public static let silenceFile = "silent-since"
    var silencePath: String { options.stateDirectory + "/" + Self.silenceFile }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let o = options
        try FileManager.default.createDirectory(atPath: o.stateDirectory, withIntermediateDirectories: true)
        let data = try TokenDataset(directory: o.dataDirectory)
        for c in o.dataClusters ?? [] { try data.checkCluster(c) }
        let model = try GPT2Model(config: o.modelConfig)
        let sequence = o.training.sequenceLength ?? o.modelConfig.context
        let step = TrainingStep(model: model, training: o.scheduledTraining)
        let core = TrainerCore(options: o, tokensPerStep: o.training.batchSize * sequence)
        var rng = SeededGenerator(seed: o.training.seed, name: o.id)

        let context = ZMQContext()
        let socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array(o.id.utf8))
        try limits.apply(to: socket)
        try curve?.apply(to: socket)
        try socket.connect(BrokerEndpoints.connectable(endpoints.trainers))
        defer { socket.close() }

        var assembler = StreamAssembler(codec: codec)
        try? FileManager.default.removeItem(atPath: silencePath)
        var lastHeard = Date().timeIntervalSince1970
        var silentSince: Double?
        /// Notes a silence from the broker that lasted `silenceWarning` while waiting since
        /// `waiting`, and its end.
        func watchSilence(heard: Bool, waiting: Double, now: Double) {
            if heard {
                lastHeard = now
                if let since = silentSince {
                    logger.info("\(o.id): the broker answers again after \(Int(now - since)) s of silence")
                    try? FileManager.default.removeItem(atPath: silencePath)
                    silentSince = nil
                }
            } else if silentSince == nil, now - max(lastHeard, waiting) > o.silenceWarning {
                let since = max(lastHeard, waiting)
                silentSince = since
                logger.warning("\(o.id): no word from the broker at \(endpoints.trainers) for \(Int(now - since)) s; still retrying")
                try? String(since).write(toFile: silencePath, atomically: true, encoding: .utf8)
            }
        }
        /// Sends `frames` and waits for a reply that `accept` takes; resends every `retry` seconds
        /// (a release still streaming in counts as an answer in progress).
        func request(_ message: Message, retry: Double = 5, accept: (Message) throws -> Bool) throws -> Bool {
            try request(SharedFrames(message, codec: codec), retry: retry, accept: accept)
        }
        /// The same for a message already encoded: held once and sent without copying its
        /// chunks, however often it is resent.
        func request(_ frames: SharedFrames, retry: Double = 5, accept: (Message) throws -> Bool) throws -> Bool {
            try socket.sendStreamed(frames)
            let waiting = Date().timeIntervalSince1970
            var pending = TrainerCore.Request(sentAt: waiting, retry: retry)
            while !stopFlag.isSet {
                let now = Date().timeIntervalSince1970
                let reply = try socket.receiveInPlace(timeout: 100)
                watchSilence(heard: reply != nil, waiting: waiting, now: now)
                if let reply {
                    let message: Message?
                    do { message = try assembler.accept(buffers: reply.frames) } catch {
                        logger.warning("\(o.id): undecodable reply: \(error)")
                        continue
                    }
                    guard let message else {
                        pending.streaming(now: now)
                        continue
                    }
                    if case .error(let e) = message, e.code == .unavailable {
                        // The broker answers every message of a stream; resend at most twice a second.
                        if pending.unavailable(now: now) { try socket.sendStreamed(frames) }
                        continue
                    }
                    if try accept(message) { return true }
                } else if pending.silence(now: now) {
                    try socket.sendStreamed(frames)  // lost or the aggregator restarted: same message again
                }
            }
            return false
        }

        var mode = "fedbuff"
        var cluster = o.automaticCluster ? nil : o.cluster
        var clusters: [String] = []
        var refusal: ErrorReply?
        func hello() throws -> Bool {
            refusal = nil
            let said = Hello(trainerID: o.id, cluster: cluster, assignment: cluster == nil ? nil : (o.automaticCluster ? "automatic" : "declared"))
            let answered = try request(.hello(said)) {
                if case .welcome(let w) = $0 { mode = w.mode; clusters = w.clusters ?? []; return true }
                if case .error(let e) = $0, e.code == .unknownCluster { refusal = e; return true }
                return false
            }
            if let refusal { throw FederationError.peer("\(o.id): \(refusal.detail)") }
            return answered
        }

        /// IFCA: the cluster whose current release has the lowest loss on a fixed sample of this
        /// trainer's data (the same sample every time, so choices are comparable).
        func chooseCluster() throws -> Bool {
            guard !clusters.isEmpty else { throw FederationError.peer("\(o.id): automatic cluster choice, but the federation has no clusters") }
            var sampleRNG = SeededGenerator(seed: o.training.seed &+ 77)
            let sample = try (0..<o.assignmentBatches).map { _ in
                try data.batch(.train, clusters: o.dataClusters, batch: o.training.batchSize, sequence: sequence, rng: &sampleRNG)
            }
            var losses: [(String, Float)] = []
            for c in clusters {
                var release: TensorPayload?
                guard try request(.fetch(Fetch(cluster: c)), accept: {
                    if case .release(let info, let payload) = $0, info.cluster == c { release = payload; return true }
                    return false
                }), let release else { return false }
                try release.check(against: model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) })
                release.values.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
                let loss = try sample.map { try model.loss($0) }.reduce(0, +) / Float(sample.count)
                losses.append((c, loss))
            }
            let best = losses.min { $0.1 < $1.1 }!.0
            logger.info("\(o.id): cluster losses \(losses.map { "\($0.0) \(String(format: "%.3f", $0.1))" }.joined(separator: ", ")) -> \(best)")
            if best != cluster {
                if let cluster { logger.info("\(o.id): moving from cluster \(cluster) to \(best)") }
                cluster = best
                return try hello()
            }
            return true
        }

        /// Sends an update until acknowledged (or refused); true if the aggregator took it.
        var lastBuffered = false
        func deliver(_ frames: SharedFrames, id: String) throws -> Bool {
            var taken = false
            lastBuffered = false
            _ = try request(frames, retry: o.ackTimeout) { reply in
                switch core.delivery(of: id, reply: reply) {
                case .acknowledged(let a):
                    logger.info("\(o.id): update \(id) acknowledged (\(a.outcome.rawValue), version \(a.version))")
                    lastBuffered = a.outcome == .buffered
                    taken = true
                    return true
                case .registerAgain:
                    _ = try hello()
                    try socket.sendStreamed(frames)
                    return false
                case .refused(let e):
                    logger.info("\(o.id): update \(id) refused: \(e.code.rawValue): \(e.detail)")
                    return true
                case .other: return false
                }
            }
            if !stopFlag.isSet { try? FileManager.default.removeItem(atPath: pendingPath) }
            return taken
        }

        if let attack = o.attack { logger.warning("\(o.id): ATTACKING: every update is corrupted (\(attack)); for robustness experiments only") }
        guard try hello() else { return }
        if o.automaticCluster { guard try chooseCluster() else { return } }
        logger.info("\(o.id): registered\(cluster.map { " in cluster \($0)" } ?? "") (data: \((o.dataClusters ?? data.clusters).joined(separator: ", ")))")
        // An update finished before a restart goes first.
        if let pending = try? PendingUpdate.load(pendingPath) {
            logger.info("\(o.id): resending unacknowledged update \(pending.id)")
            if try deliver(pending.frames, id: pending.id) { updatesAcknowledged += 1 }
        }
        let start = ParameterVector(layout: model.layout)
        var stepSeconds = 0.0
        var lastRoundSeconds = 0.0
        var round = 0
        var lastBase: Int?
        while !stopFlag.isSet, tokensTrained < (o.tokenBudget ?? .max) {
            var release: (ReleaseInfo, TensorPayload)?
            // After a buffered update: in a synchronous round wait for the round's next version;
            // in an asynchronous mode with `freshBaseWait`, wait for it only that long (the
            // aggregator answers a FETCH for the version we have with a heartbeat).
            let plan = core.fetchPlan(lastBuffered: lastBuffered, mode: mode, lastBase: lastBase, lastRoundSeconds: lastRoundSeconds,
                                      now: Date().timeIntervalSince1970)
            var have = plan.haveVersion
            if core.choosesClusterAgain(round: round) { guard try chooseCluster() else { break } }
            guard try request(.fetch(Fetch(cluster: cluster, haveVersion: have)), accept: {
                if case .release(let info, let payload) = $0 { release = (info, payload); return true }
                if case .heartbeat = $0, let waitingFor = have {
                    have = core.askAgain(plan, now: Date().timeIntervalSince1970)
                    if have == nil {
                        logger.info("\(o.id): no version after v\(waitingFor) within \(String(format: "%.2f", o.freshBaseWait * lastRoundSeconds)) s; training on it again")
                    } else {
                        Thread.sleep(forTimeInterval: 0.02)
                    }
                    try socket.sendStreamed(codec.encode(.fetch(Fetch(cluster: cluster, haveVersion: have))))
                }
                return false
            }), let (info, payload) = release else { break }
            lastBase = info.version
            try payload.check(against: model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) })
            payload.values.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
            start.copy(from: model.parameters)
            // Dynamic local updates: as many steps as the time budget allows at the measured speed.
            let h = core.localSteps(stepSeconds: stepSeconds, tokensTrained: tokensTrained)
            let t0 = Date().timeIntervalSince1970
            var lastLoss: Float = 0
            var lastHeartbeat = t0
            for _ in 0..<h {
                let batch = try data.batch(.train, clusters: o.dataClusters, batch: o.training.batchSize, sequence: sequence, rng: &rng)
                lastLoss = try step.run(batch).loss
                tokensTrained += batch.inputs.count
                // Say we are alive during long local training (replies are ignored by `request`).
                if Date().timeIntervalSince1970 - lastHeartbeat > 1 {
                    _ = try? socket.send(codec.encode(.heartbeat), wait: false)
                    lastHeartbeat = Date().timeIntervalSince1970
                }
            }
            let elapsed = Date().timeIntervalSince1970 - t0
            if o.slowdown > 1 { Thread.sleep(forTimeInterval: elapsed * (o.slowdown - 1)) }
            lastRoundSeconds = Date().timeIntervalSince1970 - t0
            stepSeconds = lastRoundSeconds / Double(h)
            // Pseudo-gradient: start weights minus end weights.
            let before = start.pointer, after = model.parameters.pointer
            var delta = [Float](unsafeUninitializedCapacity: model.parameters.count) { out, initialized in
                for i in 0..<out.count { out[i] = before[i] - after[i] }
                initialized = out.count
            }
            if let attack = o.attack { Self.corrupt(&delta, attack, rng: &rng) }
            round += 1
            let id = "\(o.id)-\(info.version)-\(round)-\(UInt32.random(in: 0...UInt32.max))"
            let frames = SharedFrames(.update(UpdateInfo(updateID: id, trainerID: o.id, baseVersion: info.version, cluster: cluster,
                                                         baseHeadVersion: info.headVersion,
                                                         tokens: h * o.training.batchSize * sequence, localSteps: h),
                                              TensorPayload(specs: payload.specs, values: delta)), codec: codec)
            try PendingUpdate(id: id, frames: frames).save(pendingPath)
            if try deliver(frames, id: id) { updatesAcknowledged += 1 }
            logger.info("\(o.id): round \(round) on v\(info.version): \(h) steps, loss \(String(format: "%.4f", lastLoss)), \(tokensTrained) tokens")
        }
        if !stopFlag.isSet { _ = try? socket.send(codec.encode(.bye("done"))) }
        logger.info("\(o.id): stopped after \(tokensTrained) tokens, \(updatesAcknowledged) updates acknowledged")
    }
}

extension TrainerService {
    static func corrupt(_ delta: inout [Float], _ attack: TrainerAttack, rng: inout SeededGenerator) {
        switch attack {
        case .signFlip(let scale):
            for i in delta.indices { delta[i] *= -Float(scale) }
        case .noise(let scale):
            let rms = (delta.reduce(0) { $0 + Double($1) * Double($1) } / Double(max(delta.count, 1))).squareRoot()
            for i in delta.indices { delta[i] = Float(scale * rms * rng.nextNormal()) }
        case .nan:
            delta[Int(rng.next() % UInt64(delta.count))] = .nan
        }
    }
}

/// An encoded update kept on disk until acknowledged (one file, written atomically).
struct PendingUpdate {
    let id: String
    let frames: SharedFrames

    /// Writes the id, a zero byte, the frame count and sizes (little-endian UInt64s), then the
    /// frames, straight from where they lie (atomically, fsynced).
    func save(_ path: String) throws {
        try AtomicFile.write(to: path) { sink in
            func write64(_ v: Int) throws { try withUnsafeBytes(of: UInt64(v).littleEndian) { try sink.write($0) } }
            try sink.write(Array(id.utf8) + [0])
            try write64(frames.count)
            for i in 0..<frames.count { try write64(frames[i].count) }
            for i in 0..<frames.count { try sink.write(frames[i]) }
        }
    }

    static func load(_ path: String) throws -> PendingUpdate {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let bytes = [UInt8](data)
        guard let zero = bytes.firstIndex(of: 0) else { throw FederationError.peer("\(path): corrupt pending update") }
        let id = String(decoding: bytes[..<zero], as: UTF8.self)
        var offset = zero + 1
        func read64() throws -> Int {
            guard offset + 8 <= bytes.count else { throw FederationError.peer("\(path): truncated pending update") }
            let v = bytes[offset..<(offset + 8)].withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
            offset += 8
            return v
        }
        let count = try read64()
        guard count >= 3, count < 1 << 20 else { throw FederationError.peer("\(path): corrupt pending update") }
        let sizes = try (0..<count).map { _ in try read64() }
        var frames: [[UInt8]] = []
        for s in sizes {
            guard s >= 0, offset + s <= bytes.count else { throw FederationError.peer("\(path): truncated pending update") }
            frames.append(Array(bytes[offset..<(offset + s)]))
            offset += s
        }
        return PendingUpdate(id: id, frames: SharedFrames(frames))
    }
}
