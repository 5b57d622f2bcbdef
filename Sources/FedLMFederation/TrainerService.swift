import FedLMCheckpoint
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation
import Logging

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
    public private(set) var tokensTrained = 0
    public private(set) var updatesAcknowledged = 0

    /// What each round does: local training on the trainer's data, unless told otherwise (a
    /// regional aggregator's uplink, whose rounds are its region's progress).
    let makeWork: (TrainerOptions) throws -> any RoundWork

    public convenience init(options: TrainerOptions, endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(),
                            logger: Logger = Logger(label: "fedlm.trainer")) {
        self.init(options: options, endpoints: endpoints, limits: limits, logger: logger) { try LocalTraining(options: $0) }
    }

    init(options: TrainerOptions, endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(), logger: Logger,
         work: @escaping (TrainerOptions) throws -> any RoundWork) {
        self.options = options
        self.endpoints = endpoints
        self.limits = limits
        self.logger = logger
        makeWork = work
    }

    public func stop() { stopFlag.set() }

    var pendingPath: String { options.stateDirectory + "/pending-update.safetensors" }
    /// Present, holding the Unix time the silence began, while the trainer hears nothing from
    /// the broker (`fedlm up` shows it on its progress line).
    public static let silenceFile = "silent-since"
    var silencePath: String { options.stateDirectory + "/" + Self.silenceFile }

    /// The service loop on the calling thread, until `stop()` or the token budget is spent: the
    /// driver of a `TrainerCore`, performing its actions and feeding it what the socket says.
    public func runBlocking() throws {
        try FileManager.default.createDirectory(atPath: options.stateDirectory, withIntermediateDirectories: true)
        let session = try TrainerSession(service: self)
        defer { session.close() }
        try session.run()
    }

    fileprivate func count(tokens: Int) { tokensTrained += tokens }
    fileprivate func countAcknowledged() { updatesAcknowledged += 1 }
    fileprivate var isStopped: Bool { stopFlag.isSet }
}

/// One run of a trainer: its socket, its local training and its core.
private final class TrainerSession {
    let service: TrainerService
    let options: TrainerOptions
    let logger: Logger
    let socket: ZMQSocket
    let context = ZMQContext()
    var codec = WireCodec()
    let local: any RoundWork
    var core: TrainerCore
    var assembler: StreamAssembler
    /// Release fetches in windows (nil: whole releases).
    var windows: WindowedFetch?
    var silence: SilenceWatch
    /// The request `resend` sends again; the trained updates not yet settled, by id; and the
    /// one kept on disk (the update in flight).
    var lastRequest: SharedFrames?
    var updates: [String: SharedFrames] = [:]
    var persisted: String?
    /// Bytes sent and received (every frame, resends included), for the bytes per token.
    var bytesSent = 0, bytesReceived = 0
    var joiningBytes: Int?

    init(service: TrainerService) throws {
        self.service = service
        options = service.options
        logger = service.logger
        codec.maxValues = max(codec.maxValues, options.modelConfig.parameterCount)
        local = try service.makeWork(options)
        core = TrainerCore(options: options, tokensPerStep: local.tokensPerStep)
        assembler = StreamAssembler(codec: codec)
        windows = options.fetchWindow.map { WindowedFetch(window: $0) }
        assembler.resumesReleases = windows != nil
        silence = SilenceWatch(warnAfter: options.silenceWarning, now: Self.now)
        socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array(options.id.utf8))
        try service.limits.apply(to: socket)
        try service.curve?.apply(to: socket)
        try socket.connect(BrokerEndpoints.connectable(service.endpoints.trainers))
        try? FileManager.default.removeItem(atPath: service.silencePath)
    }

    static var now: Double { Date().timeIntervalSince1970 }

    func close() { socket.close() }

    func run() throws {
        let o = options
        if let attack = o.attack { logger.warning("\(o.id): ATTACKING: every update is corrupted (\(attack)); for robustness experiments only") }
        let pending = (try? PendingUpdate.load(service.pendingPath)) ?? local.restoredUpdate(codec: codec)
        if let pending {
            updates[pending.id] = pending.frames
            persisted = pending.id
            note(.resendingPendingUpdate(pending.id))
        }
        try perform(core.start(now: Self.now, pendingUpdate: pending?.id))
        let started = Self.now
        defer { writeStats(started: started) }
        while !service.isStopped, !core.isFinished {
            var reply = try socket.receiveInPlace(timeout: 0)
            if reply == nil {
                try perform(core.drained(now: Self.now))
                reply = try socket.receiveInPlace(timeout: 100)
            }
            watchSilence(heard: reply != nil)
            guard let reply else {
                try perform(core.quiet(now: Self.now))
                continue
            }
            let message: Message?
            do { message = try assembler.accept(buffers: reply.frames) } catch {
                logger.warning("\(o.id): undecodable reply: \(error)")
                continue
            }
            bytesReceived += reply.frames.reduce(0) { $0 + $1.count }
            guard let message else {
                core.streaming(now: Self.now)
                try askForMoreOfTheRelease()
                continue
            }
            try perform(core.received(message, now: Self.now))
        }
    }

    /// The trainer's figures, in `<state>/stats.json` (however the run ended).
    private func writeStats(started: Double) {
        let o = options
        let stats = TrainerStats(tokens: service.tokensTrained, updatesAcknowledged: service.updatesAcknowledged,
                                 trainingSeconds: local.trainingSeconds, wallSeconds: Self.now - started,
                                 bytesSent: bytesSent, bytesReceived: bytesReceived, joiningBytes: joiningBytes ?? bytesSent + bytesReceived,
                                 peakResidentBytes: ProcessMemory.peakResidentBytes)
        try? stats.write(to: options.stateDirectory + "/" + TrainerStats.file)
        logger.info("\(o.id): stopped after \(service.tokensTrained) tokens, \(service.updatesAcknowledged) updates acknowledged; \(stats.summary)")
    }

    /// Performs the core's actions in order, and those its reports lead to.
    func perform(_ actions: [TrainerCore.Action]) throws {
        var queue = actions[...]
        while let action = queue.popFirst(), !service.isStopped {
            queue.append(contentsOf: try perform(action))
        }
    }

    private func perform(_ action: TrainerCore.Action) throws -> [TrainerCore.Action] {
        switch action {
        case .send(.fetch(let fetch)) where windows != nil:
            try send(SharedFrames(.fetch(windows!.outgoing(fetch)), codec: codec))
        case .send(let message):
            try send(SharedFrames(message, codec: codec))
        case .sendAfter(let seconds, let message):
            Thread.sleep(forTimeInterval: seconds)
            try send(SharedFrames(message, codec: codec))
        case .resend:
            if let more = windows?.stalled(assembler), let p = assembler.releaseProgress {
                logger.info("\(options.id): the release stream stalled at chunk \(p.received) of \(p.count); resuming from there")
                try transmit(SharedFrames(.fetch(more), codec: codec))
            } else if let lastRequest {
                try transmit(lastRequest)
            }
        case .sendUpdate(let id):
            guard let frames = updates[id] else { break }
            if persisted != id {
                try PendingUpdate(id: id, frames: frames).save(service.pendingPath)
                persisted = id
            }
            try send(frames)
        case .hold(let info, let payload):
            try local.hold(info, payload)
        case .evaluate(let cluster, _, let payload):
            return core.evaluated(cluster: cluster, loss: try local.evaluate(payload), now: Self.now)
        case .train(let round):
            return try train(round)
        case .settled(let id, let settlement):
            settle(id, settlement)
        case .note(let n):
            note(n)
        case .finish:
            _ = try? socket.send(codec.encode(.bye("done")))
        case .fail(let reason):
            throw FederationError.peer(reason)
        }
        return []
    }

    private func send(_ frames: SharedFrames) throws {
        lastRequest = frames
        silence.waiting(since: Self.now)
        try transmit(frames)
    }

    /// Windowed fetches: asks for the release stream's next window when half of the last is in,
    /// or again from the first chunk missing after a gap.
    private func askForMoreOfTheRelease() throws {
        guard let (more, afterGap) = windows?.more(after: assembler) else { return }
        if afterGap, let p = assembler.releaseProgress {
            logger.info("\(options.id): release chunk \(p.received) of \(p.count) lost; asking again from there")
        }
        try transmit(SharedFrames(.fetch(more), codec: codec))
    }

    private func transmit(_ frames: SharedFrames) throws {
        try socket.sendStreamed(frames)
        bytesSent += (0..<frames.count).reduce(0) { $0 + frames[$1].count }
    }

    /// Trains the round, keeps the update on disk, and reports it to the core.
    private func train(_ round: TrainerCore.Round) throws -> [TrainerCore.Action] {
        if joiningBytes == nil { joiningBytes = bytesSent + bytesReceived }
        let info = round.release
        let id = "\(options.id)-\(info.version)-\(round.number)-\(UInt32.random(in: 0...UInt32.max))"
        let result = try local.train(round, updateID: id) {
            // Alive during long local training (the core discounts as many HEARTBEAT answers).
            if (try? socket.send(codec.encode(.heartbeat), wait: false)) == true { core.sentAlive() }
        }
        updates[id] = SharedFrames(.update(UpdateInfo(updateID: id, trainerID: options.id, baseVersion: info.version, cluster: round.cluster,
                                                      baseHeadVersion: info.headVersion, tokens: options.claimTokens ?? result.tokens,
                                                      localSteps: round.steps),
                                           local.payload(of: result.delta)), codec: codec)
        service.count(tokens: result.tokens)
        logger.info("\(options.id): round \(round.number) on v\(info.version): \(round.steps) steps\(result.lastLoss.map { String(format: ", loss %.4f", $0) } ?? ""), \(service.tokensTrained) tokens")
        return core.trained(updateID: id, tokens: result.tokens, steps: round.steps, seconds: result.seconds, now: Self.now)
    }

    private func settle(_ id: String, _ settlement: TrainerCore.Settlement) {
        local.settled(id, settlement)
        switch settlement {
        case .acknowledged(let a):
            logger.info("\(options.id): update \(id) acknowledged (\(a.outcome.rawValue), version \(a.version))")
            service.countAcknowledged()
        case .refused(let e):
            logger.info("\(options.id): update \(id) refused: \(e.code.rawValue): \(e.detail)")
        }
        updates[id] = nil
        if persisted == id {
            try? FileManager.default.removeItem(atPath: service.pendingPath)
            persisted = nil
        }
    }

    private func note(_ note: TrainerCore.Note) {
        let id = options.id
        switch note {
        case .registered(let cluster):
            logger.info("\(id): registered\(cluster.map { " in cluster \($0)" } ?? "") (data: \(local.dataClusters.joined(separator: ", ")))")
        case .clusterLosses(let names, let losses, let chosen):
            logger.info("\(id): cluster losses \(zip(names, losses).map { "\($0) \(String(format: "%.3f", $1))" }.joined(separator: ", ")) -> \(chosen)")
        case .movedCluster(let from, let to):
            logger.info("\(id): moving from cluster \(from) to \(to)")
        case .noFreshVersion(let after):
            logger.info("\(id): no version after v\(after) within the fresh-base wait; training on it again")
        case .resendingPendingUpdate(let update):
            logger.info("\(id): resending unacknowledged update \(update)")
        }
    }

    /// Logs a silence from the broker that lasted `silenceWarning`, and its end, and keeps the
    /// `silent-since` file while it lasts.
    private func watchSilence(heard: Bool) {
        switch heard ? silence.heard(now: Self.now) : silence.quiet(now: Self.now) {
        case .began(let since):
            logger.warning("\(options.id): no word from the broker at \(service.endpoints.trainers) for \(Int(Self.now - since)) s; still retrying")
            try? String(since).write(toFile: service.silencePath, atomically: true, encoding: .utf8)
        case .ended(let seconds):
            logger.info("\(options.id): the broker answers again after \(Int(seconds)) s of silence")
            try? FileManager.default.removeItem(atPath: service.silencePath)
        case nil:
            break
        }
    }
}
