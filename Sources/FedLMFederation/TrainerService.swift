import FedLMCheckpoint
import FedLMData
import FedLMModel
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation
import Logging

/// What one trainer does and on which data.
public struct TrainerOptions: Sendable {
    public var id: String
    /// Declared data cluster (sent in HELLO).
    public var cluster: String?
    /// The prepared data directory and the clusters of it this trainer owns.
    public var dataDirectory: String
    public var dataClusters: [String]?
    public var training: TrainingConfig
    public var modelConfig: GPT2Config
    /// H: local AdamW steps per update (an upper bound when `timeBudget` is set).
    public var maxLocalSteps = 20
    /// Seconds of local training per update; H adapts to the measured step time.
    public var timeBudget: Double?
    /// Stop after training this many tokens (nil: until stopped).
    public var tokenBudget: Int?
    /// Artificial slowness (1 = none, 5 = five times slower), for straggler experiments.
    public var slowdown = 1.0
    /// Where the unacknowledged update is kept across restarts.
    public var stateDirectory: String
    /// Seconds to wait for an acknowledgement before sending the update again.
    public var ackTimeout = 30.0
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

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let o = options
        try FileManager.default.createDirectory(atPath: o.stateDirectory, withIntermediateDirectories: true)
        let data = try TokenDataset(directory: o.dataDirectory)
        for c in o.dataClusters ?? [] { try data.checkCluster(c) }
        let model = try GPT2Model(config: o.modelConfig)
        let step = TrainingStep(model: model, training: o.training)
        var rng = SeededGenerator(seed: o.training.seed &+ UInt64(abs(o.id.hashValue % 1_000_000)))
        let sequence = o.training.sequenceLength ?? o.modelConfig.context

        let context = ZMQContext()
        let socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array(o.id.utf8))
        try limits.apply(to: socket)
        try socket.connect(BrokerEndpoints.connectable(endpoints.trainers))
        defer { socket.close() }

        var assembler = StreamAssembler(codec: codec)
        /// Sends `frames` and waits for a reply that `accept` takes; resends every `retry` seconds
        /// (a release still streaming in counts as an answer in progress).
        func request(_ frames: [[UInt8]], retry: Double = 5, accept: (Message) throws -> Bool) throws -> Bool {
            try socket.sendStreamed(frames)
            var sentAt = Date().timeIntervalSince1970
            while !stopFlag.isSet {
                let now = Date().timeIntervalSince1970
                if let reply = try socket.receive(timeout: 100) {
                    let message: Message?
                    do { message = try assembler.accept(reply) } catch {
                        logger.warning("\(o.id): undecodable reply: \(error)")
                        continue
                    }
                    guard let message else {
                        sentAt = now
                        continue
                    }
                    if case .error(let e) = message, e.code == .unavailable {
                        // The broker answers every message of a stream; resend at most twice a second.
                        if now - sentAt > 0.5 {
                            try socket.sendStreamed(frames)
                            sentAt = now
                        }
                        continue
                    }
                    if try accept(message) { return true }
                } else if now - sentAt > retry {
                    try socket.sendStreamed(frames)  // lost or the aggregator restarted: same message again
                    sentAt = now
                }
            }
            return false
        }

        var mode = "fedbuff"
        func hello() throws -> Bool {
            try request(codec.encode(.hello(Hello(trainerID: o.id, cluster: o.cluster)))) {
                if case .welcome(let w) = $0 { mode = w.mode; return true }
                return false
            }
        }

        /// Sends an update until acknowledged (or refused); true if the aggregator took it.
        var lastBuffered = false
        func deliver(_ frames: [[UInt8]], id: String) throws -> Bool {
            var taken = false
            lastBuffered = false
            _ = try request(frames, retry: o.ackTimeout) { reply in
                switch reply {
                case .ack(let a) where a.updateID == id:
                    logger.info("\(o.id): update \(id) acknowledged (\(a.outcome.rawValue), version \(a.version))")
                    lastBuffered = a.outcome == .buffered
                    taken = true
                    return true
                case .error(let e) where e.refersTo == id:
                    if e.code == .unknownTrainer { _ = try hello(); try socket.sendStreamed(frames); return false }
                    logger.info("\(o.id): update \(id) refused: \(e.code.rawValue): \(e.detail)")
                    return true
                default: return false
                }
            }
            if !stopFlag.isSet { try? FileManager.default.removeItem(atPath: pendingPath) }
            return taken
        }

        guard try hello() else { return }
        logger.info("\(o.id): registered (data: \((o.dataClusters ?? data.clusters).joined(separator: ", ")))")
        // An update finished before a restart goes first.
        if let pending = try? PendingUpdate.load(pendingPath) {
            logger.info("\(o.id): resending unacknowledged update \(pending.id)")
            if try deliver(pending.frames, id: pending.id) { updatesAcknowledged += 1 }
        }
        let start = ParameterVector(layout: model.layout)
        var stepSeconds = 0.0
        var round = 0
        var lastBase: Int?
        while !stopFlag.isSet, tokensTrained < (o.tokenBudget ?? .max) {
            var release: (ReleaseInfo, TensorPayload)?
            // In a synchronous round, after a buffered update: wait for the round's next version
            // (the aggregator answers a FETCH for the version we have with a heartbeat).
            let have = (mode == "sync" && lastBuffered) ? lastBase : nil
            guard try request(codec.encode(.fetch(Fetch(cluster: o.cluster, haveVersion: have))), accept: {
                if case .release(let info, let payload) = $0 { release = (info, payload); return true }
                if case .heartbeat = $0, have != nil {
                    Thread.sleep(forTimeInterval: 0.1)
                    try socket.sendStreamed(codec.encode(.fetch(Fetch(cluster: o.cluster, haveVersion: have))))
                }
                return false
            }), let (info, payload) = release else { break }
            lastBase = info.version
            try payload.check(against: model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) })
            payload.values.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
            start.copy(from: model.parameters)
            // Dynamic local updates: as many steps as the time budget allows at the measured speed.
            var h = o.maxLocalSteps
            if let budget = o.timeBudget, stepSeconds > 0 { h = max(1, min(o.maxLocalSteps, Int(budget / stepSeconds))) }
            if let total = o.tokenBudget { h = max(1, min(h, (total - tokensTrained) / (o.training.batchSize * sequence))) }
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
            stepSeconds = (Date().timeIntervalSince1970 - t0) / Double(h)
            // Pseudo-gradient: start weights minus end weights.
            var delta = [Float](repeating: 0, count: model.parameters.count)
            for i in 0..<delta.count { delta[i] = start.pointer[i] - model.parameters.pointer[i] }
            round += 1
            let id = "\(o.id)-\(info.version)-\(round)-\(UInt32.random(in: 0...UInt32.max))"
            let frames = codec.encode(.update(UpdateInfo(updateID: id, trainerID: o.id, baseVersion: info.version, cluster: o.cluster,
                                                         tokens: h * o.training.batchSize * sequence, localSteps: h),
                                              TensorPayload(specs: payload.specs, values: delta)))
            try PendingUpdate(id: id, frames: frames).save(pendingPath)
            if try deliver(frames, id: id) { updatesAcknowledged += 1 }
            logger.info("\(o.id): round \(round) on v\(info.version): \(h) steps, loss \(String(format: "%.4f", lastLoss)), \(tokensTrained) tokens")
        }
        if !stopFlag.isSet { _ = try? socket.send(codec.encode(.bye("done"))) }
        logger.info("\(o.id): stopped after \(tokensTrained) tokens, \(updatesAcknowledged) updates acknowledged")
    }
}

/// An encoded update kept on disk until acknowledged (one file, written atomically).
struct PendingUpdate {
    let id: String
    let frames: [[UInt8]]

    func save(_ path: String) throws {
        var blob: [UInt8] = []
        func append64(_ v: Int) { withUnsafeBytes(of: UInt64(v).littleEndian) { blob.append(contentsOf: $0) } }
        append64(frames.count)
        for f in frames { append64(f.count) }
        for f in frames { blob += f }
        try AtomicFile.write(Data(Array(id.utf8) + [0] + blob), to: path)
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
        return PendingUpdate(id: id, frames: frames)
    }
}
