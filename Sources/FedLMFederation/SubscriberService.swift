import FedLMCheckpoint
import FedLMModel
import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Logging

/// Receives model releases: subscribes first, then fetches a snapshot of the latest release,
/// then takes the stream, dropping what the snapshot already covers, so it neither misses nor
/// double-counts a version. Each new version is written to `<out>/v<N>` as a checkpoint that
/// `transformers` loads, and reported to `onRelease`.
public final class SubscriberService: BlockingService, @unchecked Sendable {
    public let endpoints: BrokerEndpoints
    public let outDirectory: String?
    public let modelConfig: GPT2Config
    /// The cluster whose releases to follow (nil: the global model).
    public var cluster: String?
    /// CURVE keys when the broker requires them.
    public var curve: CurveClient?
    public var onRelease: (Int) -> Void = { _ in }
    public var maxReleases: Int?
    /// Seconds without a release after which the subscriber asks for anything newer than it
    /// holds (so a release lost while the broker was away still arrives).
    public var catchUpAfter = 3.0
    /// Chunks per window of the snapshot's fetch (`WindowedFetch`).
    public var fetchWindow = 64
    let logger: Logger
    private let stopFlag = StopFlag()
    private var codec = WireCodec()

    public init(endpoints: BrokerEndpoints, modelConfig: GPT2Config, outDirectory: String?, logger: Logger = Logger(label: "fedlm.subscriber")) {
        self.endpoints = endpoints
        self.modelConfig = modelConfig
        codec.maxValues = max(codec.maxValues, modelConfig.parameterCount)
        self.outDirectory = outDirectory
        self.logger = logger
    }

    public func stop() { stopFlag.set() }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let context = ZMQContext()
        let (sub, dealer) = try connect(context)
        defer { sub.close(); dealer.close() }
        var sink = ReleaseSink(cluster: cluster, model: try GPT2Model(config: modelConfig), outDirectory: outDirectory)
        // Snapshot (the subscription is already in place, so nothing falls in between), fetched
        // in windows as trainers fetch releases (`WindowedFetch`).
        var windows = WindowedFetch(window: fetchWindow)
        var snapshot = StreamAssembler(codec: codec)  // the snapshot streams in chunk by chunk
        snapshot.resumesReleases = true
        func ask(_ fetch: Fetch) throws { try dealer.send(codec.encode(.fetch(windows.outgoing(fetch)))) }
        func take(_ info: ReleaseInfo, _ payload: TensorPayload) throws {
            guard try sink.take(info, payload) else { return }
            logger.info("release v\(info.version)\(info.cluster.map { " of cluster \($0) (head \(info.headVersion ?? 0))" } ?? "")")
            onRelease(info.version)
        }
        try ask(Fetch(cluster: cluster))
        var lastAsk = Date().timeIntervalSince1970, lastHeard = lastAsk
        var haveSnapshot = false
        while !stopFlag.isSet, sink.received < (maxReleases ?? .max) {
            let ready = try ZMQPoller.readable([sub, dealer], timeout: 100)
            if ready.contains(1), let reply = try dealer.receive(timeout: 0) {
                lastHeard = Date().timeIntervalSince1970
                if case .release(let info, let payload)? = try? snapshot.accept(reply) {
                    haveSnapshot = true
                    try take(info, payload)
                } else if let (more, _) = windows.more(after: snapshot) {
                    try dealer.send(codec.encode(.fetch(more)))
                }
            }
            if ready.contains(0), let message = try sub.receive(timeout: 0), message.count > 1,
               case .release(let info, let payload)? = try? codec.decode(Array(message[1...])) {
                try take(info, payload)
            }
            let now = Date().timeIntervalSince1970
            if !haveSnapshot, now - max(lastAsk, lastHeard) > 2 {
                // Nothing for 2 s: resume the snapshot's stream where it stopped, or ask again.
                if let more = windows.stalled(snapshot) { try dealer.send(codec.encode(.fetch(more))) } else { try ask(Fetch(cluster: cluster)) }
                lastAsk = now
            } else if haveSnapshot, now - max(lastAsk, sink.lastRelease) > catchUpAfter {
                // Quiet for a while: a publication may have been lost (PUB drops what it cannot
                // deliver, e.g. while the broker restarts). Ask for anything newer than what we
                // hold; the aggregator answers a heartbeat if there is nothing.
                try ask(Fetch(cluster: cluster, haveVersion: sink.latest.version))
                lastAsk = now
            }
        }
    }

    /// The subscription to the cluster's releases and the dealer that fetches the snapshot.
    private func connect(_ context: ZMQContext) throws -> (sub: ZMQSocket, dealer: ZMQSocket) {
        let sub = try ZMQSocket(context, .sub)
        try sub.setMaximumMessageSize(1 << 31)
        try curve?.apply(to: sub)
        try sub.subscribe(AggregatorService.topic(cluster: cluster))
        try sub.connect(BrokerEndpoints.connectable(endpoints.releases))
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setRoutingID(Array("subscriber-\(getpid())-\(UInt32.random(in: 0...UInt32.max))".utf8))
        try curve?.apply(to: dealer)
        try dealer.connect(BrokerEndpoints.connectable(endpoints.trainers))
        return (sub, dealer)
    }
}

/// What the subscriber keeps of the releases it has taken: the newest (global version, head
/// version), so the snapshot and the stream neither miss nor double-count one, and each new
/// release written as a checkpoint when there is somewhere to write it.
struct ReleaseSink {
    let cluster: String?
    let model: GPT2Model
    let outDirectory: String?
    private(set) var latest = (version: -1, head: -1)
    private(set) var received = 0
    private(set) var lastRelease = 0.0

    /// Takes a release if it is newer than the latest and of the followed cluster; false when it
    /// was already covered (by the snapshot or an earlier message).
    mutating func take(_ info: ReleaseInfo, _ payload: TensorPayload) throws -> Bool {
        let key = (version: info.version, head: info.headVersion ?? 0)
        guard key > latest, info.cluster == cluster else { return false }
        latest = key
        received += 1
        lastRelease = Date().timeIntervalSince1970
        if let outDirectory {
            try payload.check(against: model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) })
            payload.values.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
            try Checkpoint.save(model: model, to: outDirectory + "/v\(info.version)" + (info.headVersion.map { "-h\($0)" } ?? ""))
        }
        return true
    }
}
