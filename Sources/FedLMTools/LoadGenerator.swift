import FedLMFederation
import FedLMAggregation
import FedLMProtocol
import FedLMZeroMQ
import Foundation

/// Many light simulated trainers pushing small updates through one broker: each registers, then
/// sends an UPDATE, waits for its ACK, and sends the next, for a bounded time. Counts what was
/// sent and acknowledged (nothing may be lost) and the send-to-ACK latencies.
///
/// Its own bookkeeping stays the same size however long it runs (a latency histogram, and the
/// acknowledged update numbers of each simulated trainer as ranges), so the memory a benchmark
/// sees growing is the broker's and the aggregator's.
public struct LoadGenerator: Sendable {
    public struct Report: Sendable {
        public var sent = 0
        public var acknowledged = 0
        public var refused = 0
        /// Updates still waiting for their ACK when the time was up (resent until acknowledged
        /// during the drain; any left after it are lost).
        public var unacknowledged = 0
        public var latencies = LatencyHistogram()
        /// Per simulated trainer, the numbers of its acknowledged updates (update id "<trainer>-<n>").
        public var acknowledgedNumbers: [String: IndexSet] = [:]

        /// Every acknowledged update id.
        public var acknowledgedIDs: Set<String> {
            Set(acknowledgedNumbers.flatMap { trainer, numbers in numbers.map { "\(trainer)-\($0)" } })
        }

        public func percentile(_ p: Double) -> Double { latencies.percentile(p) }
    }

    public var endpoints: BrokerEndpoints
    public var trainers: Int
    public var threads = 4
    public var specs: [TensorSpec]
    public var seconds: Double
    /// Extra time to collect outstanding ACKs after sending stops.
    public var drainSeconds = 10.0
    /// CURVE keys, when the broker requires them (one key for every simulated trainer: the
    /// broker's membership must then be open).
    public var curve: CurveClient?
    /// Prefix of the simulated trainers' names ("<prefix>-<i>"), distinct per run against one broker.
    public var namePrefix = "load"

    /// The aggregator a load runs against: FedBuff over 8 updates, plain SGD, no staleness bound
    /// (every simulated update starts from version 0), trainers never forgotten for silence (the
    /// simulated ones may wait long for a core).
    public static func aggregation(durability: AggregationConfig.Durability, checkpointEvery: Int) -> AggregationConfig {
        var c = AggregationConfig()
        c.mode = .fedbuff
        c.bufferSize = 8
        c.staleness = .constant
        c.maxStaleness = 1 << 30
        c.serverOptimizer = .sgd(learningRate: 0.01)
        c.checkpointEvery = checkpointEvery
        c.trainerTimeout = 600
        c.durability = durability
        return c
    }

    public init(endpoints: BrokerEndpoints, trainers: Int, specs: [TensorSpec], seconds: Double) {
        self.endpoints = endpoints
        self.trainers = trainers
        self.specs = specs
        self.seconds = seconds
    }

    /// Runs the load; blocks until done.
    public func run() throws -> Report {
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var total = Report()
            var failure: Error?
        }
        let results = Results()
        let groups = (0..<threads).map { t in Array(stride(from: t, to: trainers, by: threads)) }
        let done = DispatchGroup()
        for group in groups where !group.isEmpty {
            done.enter()
            Thread { [self] in
                defer { done.leave() }
                do {
                    let r = try runGroup(group)
                    results.lock.lock()
                    results.total.sent += r.sent
                    results.total.acknowledged += r.acknowledged
                    results.total.refused += r.refused
                    results.total.unacknowledged += r.unacknowledged
                    results.total.latencies.merge(r.latencies)
                    results.total.acknowledgedNumbers.merge(r.acknowledgedNumbers) { $0.union($1) }
                    results.lock.unlock()
                } catch {
                    results.lock.lock(); results.failure = error; results.lock.unlock()
                }
            }.start()
        }
        done.wait()
        if let failure = results.failure { throw failure }
        return results.total
    }

    private func runGroup(_ indices: [Int]) throws -> Report {
        let codec = WireCodec()
        let context = ZMQContext()
        let values = [Float](repeating: 1e-6, count: specs.reduce(0) { $0 + $1.count })
        var report = Report()
        var sims = try indices.map { try SimulatedTrainer(id: "\(namePrefix)-\($0)", context: context, endpoints: endpoints, curve: curve, codec: codec) }
        defer { sims.forEach { $0.socket.close() } }
        let start = Date().timeIntervalSince1970
        while true {
            let now = Date().timeIntervalSince1970
            let sending = now - start < seconds
            if !sending, sims.allSatisfy({ $0.outstanding == nil }) { break }
            if now - start > seconds + drainSeconds { break }
            for k in sims.indices {
                if sending, sims[k].registered, sims[k].outstanding == nil {
                    try sims[k].sendUpdate(specs: specs, values: values, codec: codec, now: now)
                    report.sent += 1
                }
                try sims[k].resendIfLate(now: now)
            }
            for k in try ZMQPoller.readable(sims.map(\.socket), timeout: 10) {
                guard let reply = try sims[k].socket.receive(timeout: 0), let message = try? codec.decode(reply) else { continue }
                try sims[k].received(message, codec: codec, into: &report)
            }
        }
        report.unacknowledged = sims.filter { $0.outstanding != nil }.count
        return report
    }
}

/// Latencies in logarithmic buckets 2% wide from 1 microsecond to about 100 seconds: percentiles
/// to within 2% in constant memory.
public struct LatencyHistogram: Sendable {
    static let smallest = 1e-6
    static let growth = 1.02
    private(set) var counts = [Int](repeating: 0, count: 931)
    public private(set) var count = 0
    public private(set) var maximum = 0.0

    public init() {}

    public mutating func record(_ seconds: Double) {
        let bucket = seconds <= Self.smallest ? 0 : Int((log(seconds / Self.smallest) / log(Self.growth)).rounded(.up))
        counts[min(max(bucket, 0), counts.count - 1)] += 1
        count += 1
        maximum = max(maximum, seconds)
    }

    public mutating func merge(_ other: LatencyHistogram) {
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        maximum = max(maximum, other.maximum)
    }

    /// The upper edge of the bucket holding the p-th latency (p in 0...1; 1 gives the maximum).
    public func percentile(_ p: Double) -> Double {
        guard count > 0 else { return .nan }
        if p >= 1 { return maximum }
        let rank = Int(Double(count - 1) * p) + 1
        var seen = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= rank { return min(Self.smallest * pow(Self.growth, Double(i)), maximum) }
        }
        return maximum
    }
}

/// One trainer the load generator simulates: its socket, whether it is registered, and the
/// update it waits on an answer for (resent with the same id after 5 s).
private struct SimulatedTrainer {
    let id: String
    let socket: ZMQSocket
    var registered = false
    var outstanding: (id: String, number: Int, frames: [[UInt8]], sentAt: Double)?
    var next = 0

    init(id: String, context: ZMQContext, endpoints: BrokerEndpoints, curve: CurveClient?, codec: WireCodec) throws {
        self.id = id
        socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array(id.utf8))
        try curve?.apply(to: socket)
        try socket.connect(BrokerEndpoints.connectable(endpoints.trainers))
        try socket.send(codec.encode(.hello(Hello(trainerID: id))))
    }

    mutating func sendUpdate(specs: [TensorSpec], values: [Float], codec: WireCodec, now: Double) throws {
        let update = "\(id)-\(next)"
        let frames = codec.encode(.update(UpdateInfo(updateID: update, trainerID: id, baseVersion: 0, tokens: 1, localSteps: 1),
                                          TensorPayload(specs: specs, values: values)))
        try socket.send(frames)
        outstanding = (update, next, frames, now)
        next += 1
    }

    /// Resends what waited too long (the same id: the aggregator dedupes).
    mutating func resendIfLate(now: Double) throws {
        guard let o = outstanding, now - o.sentAt > 5 else { return }
        try socket.send(o.frames)
        outstanding = (o.id, o.number, o.frames, now)
    }

    mutating func received(_ message: Message, codec: WireCodec, into report: inout LoadGenerator.Report) throws {
        switch message {
        case .welcome: registered = true
        case .ack(let a):
            guard let o = outstanding, o.id == a.updateID else { return }
            report.latencies.record(Date().timeIntervalSince1970 - o.sentAt)
            report.acknowledged += 1
            report.acknowledgedNumbers[id, default: IndexSet()].insert(o.number)
            outstanding = nil
        case .error(let e) where e.code == .unavailable:
            if !registered { try socket.send(codec.encode(.hello(Hello(trainerID: id)))) }
        case .error(let e) where e.refersTo != nil && e.refersTo == outstanding?.id:
            report.refused += 1
            outstanding = nil
        default: break
        }
    }
}
