import FedLMCheckpoint
import FedLMModel
import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Logging

/// Runs an `AggregatorCore` behind the broker: receives [peer, frames...] on a DEALER,
/// decodes and validates, lets the core decide, sends replies, publishes a release after each
/// new version, and sends heartbeats so the broker knows it is there.
public final class AggregatorService: BlockingService, @unchecked Sendable {
    public let core: AggregatorCore
    public let endpoints: BrokerEndpoints
    public let limits: TransportLimits
    /// CURVE keys when the broker requires them.
    public var curve: CurveClient?
    /// Validation loss of a model on one data cluster's held-out data (nil: no evaluation).
    public var evaluate: ((GPT2Model, String) throws -> Float)?
    /// The data clusters to evaluate on.
    public var validationClusters: [String] = []
    public var evaluateEvery = 5
    let logger: Logger
    private let stopFlag = StopFlag()
    private var codec = WireCodec()
    /// FEDLM_TRACE_TIMING=1 logs where each message's time goes.
    private let traceTiming = ProcessInfo.processInfo.environment["FEDLM_TRACE_TIMING"] == "1"

    public init(core: AggregatorCore, endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(),
                logger: Logger = Logger(label: "fedlm.aggregator")) {
        self.core = core
        self.endpoints = endpoints
        self.limits = limits
        self.logger = logger
        codec.maxValues = max(codec.maxValues, core.model.parameters.count)
    }

    public func stop() { stopFlag.set() }

    /// The core is the service loop's, and the uplink's (a regional aggregator's link to the
    /// level above, on its own thread) while it holds this lock.
    private let coreLock = NSLock()
    func withCore<T>(_ body: (AggregatorCore) throws -> T) rethrows -> T {
        coreLock.lock()
        defer { coreLock.unlock() }
        return try body(core)
    }

    /// Sends this aggregator's metrics to `metrics` from now on (safe while it runs).
    public func useMetrics(_ metrics: AggregatorMetrics) { withCore { $0.metrics = metrics } }

    /// A regional aggregator's link to the level above: one trainer there (`RegionalRounds`).
    private var uplink: TrainerService?
    private var uplinkFailure: Error?

    /// Makes this aggregator a region of the federation at `upstream`: to that broker it is the
    /// trainer `options.id`, whose rounds are `options.maxLocalSteps` regional versions (or
    /// `tokens` accepted, or `seconds`). Its state lives in `options.stateDirectory`.
    public func attachUplink(options: TrainerOptions, endpoints upstream: BrokerEndpoints, tokens: Int? = nil, seconds: Double?,
                             curve: CurveClient? = nil) {
        let cadence = RegionalRounds.Cadence(tokens: tokens, seconds: seconds)
        let service = TrainerService(options: options, endpoints: upstream, logger: Logger(label: "fedlm.uplink")) { [unowned self] options in
            try RegionalRounds(region: self, options: options, cadence: cadence, isStopped: { [unowned self] in stopFlag.isSet })
        }
        service.curve = curve
        uplink = service
    }

    /// Runs the uplink on its own thread; a failure stops the whole aggregator (and is rethrown).
    private func startUplink() -> DispatchSemaphore? {
        guard let uplink else { return nil }
        let done = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            do { try uplink.runBlocking() } catch is UplinkStopped {} catch {
                if !stopFlag.isSet {
                    logger.error("uplink to \(uplink.endpoints.trainers) failed: \(error)")
                    uplinkFailure = error
                    stop()
                }
            }
            done.signal()
        }
        thread.name = "uplink"
        thread.start()
        return done
    }

    private var cachedReleases: [String: (key: String, frames: SharedFrames)] = [:]

    /// A release (the global model, or a cluster's), encoded once per version and sent to each
    /// fetcher, and published, without further copies.
    func releaseFrames(cluster: String? = nil) -> SharedFrames {
        let key = core.releaseKey(cluster: cluster)
        if let c = cachedReleases[cluster ?? ""], c.key == key { return c.frames }
        let frames = SharedFrames(core.release(cluster: cluster), codec: codec)
        cachedReleases[cluster ?? ""] = (key, frames)
        return frames
    }

    /// Messages (chunks of about 1 MiB) queued in the aggregator's socket.
    static let queuedChunks: Int32 = 64

    /// Models of this many bytes (F32) or more release the global model live from its memory
    /// (`LiveRelease`), without a cached copy.
    public var liveReleaseBytes = LiveRelease.defaultThreshold

    /// The global model's release is sent live: a large model in F32, without release steps.
    var releasesLive: Bool {
        core.model.parameters.count * 4 >= liveReleaseBytes && core.releaseCompression.encoding == .f32 && core.releaseSteps == nil
    }

    private var cachedLiveRelease: (key: String, release: LiveRelease)?

    /// The global model's live release, its checksums computed once per version (the model does
    /// not change within one).
    func liveRelease() -> LiveRelease {
        let key = core.releaseKey(cluster: nil)
        if let c = cachedLiveRelease, c.key == key { return c.release }
        let release = LiveRelease(model: core.model.parameters, version: core.version, specs: core.specs, codec: codec)
        cachedLiveRelease = (key, release)
        return release
    }

    /// Sends the current release of `cluster` to one peer, streamed: all of it, or one window.
    func sendRelease(_ cluster: String?, to peer: [UInt8], on dealer: ZMQSocket, window: ReleaseWindow? = nil) throws {
        if cluster == nil, releasesLive {
            let release = liveRelease()
            let chunks = window?.chunks(head: release.head[2], count: release.chunks.count) ?? release.chunks.indices
            core.metrics.sent(bytes: try release.send(on: dealer, prefix: [peer], chunks: chunks))
        } else {
            let frames = releaseFrames(cluster: cluster)
            core.metrics.sent(bytes: try dealer.sendStreamed(frames, prefix: [peer], chunks: frames.chunks(in: window)))
        }
    }

    /// Publishes the current release of `cluster` on its topic.
    func publishRelease(_ cluster: String?, on publisher: ZMQSocket) throws {
        if cluster == nil, releasesLive {
            let release = liveRelease()
            try release.publish(on: publisher, topic: Self.topic(cluster: nil))
            core.metrics.sent(bytes: release.byteCount)
        } else {
            let frames = releaseFrames(cluster: cluster)
            try publisher.publish(frames, topic: Self.topic(cluster: cluster))
            core.metrics.sent(bytes: frames.byteCount)
        }
    }

    /// Sends a reply (small: ACK, ERROR, WELCOME) to one peer.
    func sendReply(_ reply: Message, to peer: [UInt8], on dealer: ZMQSocket) throws {
        let frames = [peer] + codec.encode(reply)
        try dealer.send(frames)
        core.metrics.sent(bytes: frames.reduce(0) { $0 + $1.count })
    }

    /// An update's answer in the metrics: its outcome (or refusal code), staleness, size and
    /// the time from its first chunk to the answer.
    func recordAnswer(_ reply: Message, staleness: Int?, transfer: (bytes: Int, started: Double)) {
        let seconds = Date().timeIntervalSince1970 - transfer.started
        switch reply {
        case .ack(let a):
            // A resent update's staleness says nothing of the model it met (that was counted once).
            core.metrics.updateAnswered(outcome: a.outcome.rawValue, staleness: a.outcome == .duplicate ? nil : staleness,
                                        bytes: transfer.bytes, seconds: seconds)
        case .error(let e): core.metrics.updateAnswered(outcome: "refused", reason: e.code.rawValue, staleness: staleness, bytes: transfer.bytes, seconds: seconds)
        default: break
        }
    }

    /// The gauges that follow the model: versions (global and per cluster) and connected trainers.
    func recordVersions() {
        core.metrics.version(core.version)
        if let heads = core.heads { for (name, head) in heads.heads { core.metrics.version(head.version, cluster: name) } }
        core.metrics.trainersConnected(core.connectedTrainers)
    }

    /// The release steps from version `held` (their chunks are already encoded: this only adds heads).
    func stepFrames(from held: Int) -> [SharedFrames] {
        core.releaseSteps(from: held).map { SharedFrames($0, codec: codec) }
    }

    /// The pub/sub topic of a release: "global/" or "cluster/<name>/" (the trailing slash keeps
    /// one cluster's subscription from matching another whose name it prefixes).
    public static func topic(cluster: String?) -> [UInt8] { Array((cluster.map { "cluster/\($0)/" } ?? "global/").utf8) }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let context = ZMQContext()
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setRoutingID(Array("aggregator".utf8))
        try limits.apply(to: dealer)
        // At most `queuedChunks` 1 MiB chunks wait in this process for the loop (the broker, which
        // blocks rather than drop messages for the aggregator, holds the rest back); releases sent
        // live from the model queue no more than that either.
        try dealer.setHighWaterMarks(send: releasesLive ? Self.queuedChunks : limits.highWaterMark, receive: Self.queuedChunks)
        try curve?.apply(to: dealer)
        try dealer.connect(BrokerEndpoints.connectable(endpoints.aggregator))
        let publisher = try ZMQSocket(context, .pub)
        try publisher.setHighWaterMarks(send: 4, receive: 4)
        try curve?.apply(to: publisher)
        try publisher.connect(BrokerEndpoints.connectable(endpoints.publish))
        defer {
            dealer.close()
            publisher.close()
        }
        logger.info("aggregator (\(core.config.mode.rawValue)) at version \(core.version), connected to \(endpoints.aggregator)")
        var loop = LoopState(codec: codec)
        // Updates stream straight into their delta files (this loop is the only caller).
        loop.transfers.destinations = { [self] info, count in core.incomingUpdate(info, count: count) }
        recordVersions()
        let uplinkDone = startUplink()
        var uplinkRunning = uplinkDone != nil
        // Stopping, the uplink first sends what the region learned since its last update, and
        // waits a while for the level above to acknowledge it (else it is resent after a restart).
        func stopUplink() {
            guard uplinkRunning, let uplink, let uplinkDone else { return }
            stopFlag.set()
            if uplinkDone.wait(timeout: .now() + min(60, max(10, uplink.options.ackTimeout))) == .timedOut {
                logger.warning("the level above did not acknowledge the region's last update in time; it is resent after a restart")
                uplink.stop()
                uplinkDone.wait()
            }
            uplinkRunning = false
        }
        defer { stopUplink() }
        while !stopFlag.isSet {
            try tick(now: Date().timeIntervalSince1970, dealer: dealer, loop: &loop)
            let tPoll = Date().timeIntervalSince1970
            guard try dealer.poll(timeout: 100) else { continue }
            coreLock.lock()
            defer { coreLock.unlock() }
            try receiveOne(dealer: dealer, publisher: publisher, polledAt: tPoll, loop: &loop)
        }
        stopUplink()
        try withCore { try $0.checkpoint() }
        logger.info("aggregator stopped at version \(core.version) (checkpointed)")
        if let uplinkFailure { throw uplinkFailure }
    }
}

extension AggregatorService {
    /// Records the global model's validation loss on every data cluster ("validation_loss/<c>"
    /// and their mean), and each personalized model's on the data cluster of its name
    /// ("personalized_loss/<c>").
    func evaluateReleases(_ evaluate: (GPT2Model, String) throws -> Float) throws {
        let losses = try validationClusters.map { ($0, try evaluate(core.model, $0)) }
        for (cluster, loss) in losses {
            try core.ledger.recordMetric("validation_loss/\(cluster)", Double(loss), version: core.version)
            core.metrics.validationLoss(Double(loss), cluster: cluster)
        }
        let mean = losses.map(\.1).reduce(0, +) / Float(max(losses.count, 1))
        if !losses.isEmpty { try keepIfBest(core.model, name: "global", metric: "validation_loss", loss: mean) }
        try core.ledger.recordMetric("validation_loss", Double(mean), version: core.version)
        var line = "version \(core.version): validation loss \(String(format: "%.4f", mean))"
        if let heads = core.heads {
            let personal = try GPT2Model(config: core.model.config)
            var own: [Float] = []
            for c in heads.names where validationClusters.contains(c) {
                heads.release(c, model: core.model.parameters, into: personal.parameters.pointer)
                let loss = try evaluate(personal, c)
                try keepIfBest(personal, name: c, metric: "personalized_loss/\(c)", loss: loss)
                try core.ledger.recordMetric("personalized_loss/\(c)", Double(loss), version: core.version)
                core.metrics.personalizedLoss(Double(loss), cluster: c)
                own.append(loss)
            }
            if !own.isEmpty { line += String(format: ", personalized %.4f", own.reduce(0, +) / Float(own.count)) }
        }
        if let dp = core.config.privacy {
            // The trainer with the most aggregated updates bounds everyone's privacy loss.
            let most = try core.ledger.mostAcceptedUpdatesByOneTrainer()
            let epsilon = dp.epsilon(contributions: most)
            try core.ledger.recordMetric("dp_epsilon", epsilon, version: core.version)
            core.metrics.privacy(epsilon: epsilon)
            line += String(format: ", privacy epsilon %.2f at delta %g (noise multiplier %.2f, clip %g, %d updates from the busiest trainer)",
                           epsilon, dp.delta, dp.noiseMultiplier, dp.clip, most)
        }
        logger.info("\(line)")
    }
}

extension AggregatorService {
    /// With `keep_best`: saves `model` as `<run>/best/<name>` when `loss` is lower than every
    /// earlier value of `metric` (before it is recorded). The checkpoint's state names the version.
    func keepIfBest(_ model: GPT2Model, name: String, metric: String, loss: Float) throws {
        guard core.config.keepBest, loss.isFinite, try core.ledger.lowestMetric(metric).map({ Double(loss) < $0 }) ?? true else { return }
        try Checkpoint.save(model: model, state: .init(step: core.version, optimizer: "none", tokensSeen: 0,
                                                       extra: ["best_by": metric, "loss": String(format: "%.4f", loss)]),
                            to: core.runDirectory + "/best/" + name)
    }
}

private func ms(_ seconds: Double) -> String { String(format: "%.1fms", seconds * 1000) }

/// What the service loop keeps between messages.
struct LoopState {
    var transfers: IncomingTransfers
    var lastHeartbeat = 0.0
    /// Per peer, the message under way: when its first part arrived and its bytes so far.
    var streamStarted: [String: Double] = [:]
    var streamBytes: [String: Int] = [:]
    /// The release key last published per cluster ("" for the global model).
    var published: [String: String] = [:]
    /// The version last evaluated.
    var evaluated = -1

    init(codec: WireCodec) { transfers = IncomingTransfers(codec: codec) }

    /// Counts a part of `peer`'s message; returns the message's bytes so far and when it started.
    mutating func arrived(_ peer: String, bytes: Int, at time: Double) -> (bytes: Int, started: Double) {
        if streamStarted[peer] == nil { streamStarted[peer] = time }
        streamBytes[peer, default: 0] += bytes
        return (streamBytes[peer] ?? 0, streamStarted[peer] ?? time)
    }

    /// `peer`'s message is complete, refused or dropped.
    mutating func ended(_ peer: String) {
        streamStarted[peer] = nil
        streamBytes[peer] = nil
    }
}

extension AggregatorService {
    /// Twice a second: a heartbeat to the broker, silent trainers forgotten, clusters created by
    /// others adopted, transfers gone silent dropped.
    func tick(now: Double, dealer: ZMQSocket, loop: inout LoopState) throws {
        guard now - loop.lastHeartbeat > 0.5 else { return }
        try dealer.send([[]] + codec.encode(.heartbeat))
        loop.lastHeartbeat = now
        // Under the lock: a dropped transfer may take its folded values out of the buffer.
        try withCore { core in
            try core.expireSilentTrainers(now: now)
            try core.adoptNewClusters()
            for peer in loop.transfers.expire(now: now) {
                logger.warning("dropped the unfinished transfer from \(peer) after silence")
                loop.ended(peer)
            }
            core.metrics.trainersConnected(core.connectedTrainers)
        }
    }

    /// Receives one message part (under the core's lock); once a message is complete, hands it to
    /// the core, performs what it decides, publishes changed releases and evaluates when due.
    func receiveOne(dealer: ZMQSocket, publisher: ZMQSocket, polledAt tPoll: Double, loop: inout LoopState) throws {
        let tReady = Date().timeIntervalSince1970
        // Frames stay in libzmq's buffers: a tensor chunk is checked and copied into place from there.
        guard let message = try dealer.receiveInPlace(timeout: 0), message.count >= 2 else { return }
        let tReceived = Date().timeIntervalSince1970
        let peer = Array(message.frame(0))
        let peerName = String(decoding: peer, as: UTF8.self)
        let bytes = message.frameSizes.reduce(0, +)
        core.metrics.received(bytes: bytes)
        let transfer = loop.arrived(peerName, bytes: bytes, at: tReady)
        let decoded: Message
        do {
            guard let complete = try loop.transfers.accept(buffers: Array(message.frames.dropFirst()), from: peerName, now: tReceived) else { return }
            decoded = complete
        } catch let e as ProtocolError {
            logger.warning("refused a message from \(peerName): \(e)")
            loop.ended(peerName)
            // A refusal of an update's content is final: recorded under its id and answered
            // so the trainer knows which update it was. A broken transfer is not (no id: the
            // trainer resends the same update).
            let reply = if let info = e.update, e.refusesContent { try core.refuseUndecodable(info, e) } else { Message.error(ErrorReply(e)) }
            if let info = e.update { recordAnswer(reply, staleness: core.version - info.baseVersion, transfer: transfer) }
            try sendReply(reply, to: peer, on: dealer)
            return
        }
        loop.ended(peerName)
        let staleness: Int? = if case .update(let info, _) = decoded { core.version - info.baseVersion } else { nil }
        let tDecoded = Date().timeIntervalSince1970
        let actions = try core.handle(decoded, from: peerName)
        let tHandled = Date().timeIntervalSince1970
        try perform(actions, dealer: dealer) { to, reply in
            if staleness != nil, to == peerName { recordAnswer(reply, staleness: staleness, transfer: transfer) }
        }
        if traceTiming {
            let tSent = Date().timeIntervalSince1970
            let streamed = transfer.started < tReady ? "streamed in over \(ms(tReady - transfer.started)), " : ""
            logger.info("timing \(decoded.type): \(streamed)wait \(ms(tReady - tPoll)) receive \(ms(tReceived - tReady)) decode \(ms(tDecoded - tReceived)) handle \(ms(tHandled - tDecoded)) reply \(ms(tSent - tHandled))")
        }
        if case .update(let info, _) = decoded {
            logger.info("update \(info.updateID) from \(info.trainerID) on v\(info.baseVersion) -> version \(core.version)")
            recordVersions()
        }
        publishChangedReleases(on: publisher, published: &loop.published)
        if let evaluate, core.version >= loop.evaluated + evaluateEvery {
            try evaluateReleases(evaluate)
            loop.evaluated = core.version
        }
    }

    /// Does what the core decided; `replied` sees each reply before it is sent.
    private func perform(_ actions: [AggregatorCore.Action], dealer: ZMQSocket, replied: (String, Message) -> Void) throws {
        for action in actions {
            switch action {
            case .reply(let to, let reply):
                replied(to, reply)
                try sendReply(reply, to: Array(to.utf8), on: dealer)
            // Release frames are encoded once per version (shared with the publication) and streamed.
            case .sendRelease(let to, let cluster, let window, let resume):
                try sendRelease(cluster, to: Array(to.utf8), on: dealer, window: window.map { ReleaseWindow(size: $0, resume: resume) })
            case .sendReleaseSteps(let to, let held):
                for frames in stepFrames(from: held) {
                    try dealer.sendStreamed(frames, prefix: [Array(to.utf8)])
                    core.metrics.sent(bytes: frames.byteCount)
                }
            }
        }
    }

    /// Every release that changed since it was last published goes out on its topic.
    private func publishChangedReleases(on publisher: ZMQSocket, published: inout [String: String]) {
        for cluster in [nil] + (core.heads?.names ?? []) as [String?] {
            let key = core.releaseKey(cluster: cluster)
            guard published[cluster ?? ""] != key else { continue }
            try? publishRelease(cluster, on: publisher)
            published[cluster ?? ""] = key
        }
    }
}
