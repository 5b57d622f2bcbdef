import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Logging
import Synchronization

/// The broker: routes trainers' messages to the aggregator and back, and relays releases.
/// It holds no model state; it knows only which peers it has heard from recently.
///
/// Trainer side: a ROUTER; a message from trainer T arrives as [T, frames...] and, once the
/// `BrokerGate` has let it through (protocol, identity, budget), is forwarded to the aggregator
/// as [aggregator, T, frames...]. The aggregator's replies [T, frames...] go back to T without
/// waiting: a member that does not read its replies loses them, it never stalls the broker. The
/// aggregator says where it is by sending [""] + HEARTBEAT (an empty peer addresses the broker).
/// While no aggregator has been heard from within the heartbeat timeout, trainers get ERROR
/// `unavailable` at once instead of waiting.
public final class BrokerService: BlockingService, @unchecked Sendable {
    public let endpoints: BrokerEndpoints
    public let limits: TransportLimits
    /// CURVE encryption and authentication on every socket (nil: plaintext, for local demos).
    public let security: BrokerSecurity?
    public let gateLimits: BrokerGate.Limits
    /// Where the broker's counts go (`[monitoring]`; nowhere by default).
    public var metrics = BrokerMetrics.none
    let logger: Logger
    private let stopFlag = StopFlag()
    /// The broker checks messages' heads and chunks but never allocates for their values.
    private let codec: WireCodec = {
        var c = WireCodec()
        c.maxValues = WireCodec.forwardingMaxValues
        return c
    }()
    private let countersLock = NSLock()
    private var _counters = Counters()

    /// What the broker has done with the messages it received, for tests and status lines.
    public struct Counters: Sendable {
        public var forwarded = 0
        public var refused: [String: Int] = [:]
        public var repliesDropped = 0
    }

    public var counters: Counters { countersLock.lock(); defer { countersLock.unlock() }; return _counters }

    public init(endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(), security: BrokerSecurity? = nil,
                gateLimits: BrokerGate.Limits = BrokerGate.Limits(), logger: Logger = Logger(label: "fedlm.broker")) {
        self.endpoints = endpoints
        self.limits = limits
        self.security = security
        self.gateLimits = gateLimits
        self.logger = logger
    }

    public func stop() { stopFlag.set() }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let context = ZMQContext()
        // With security, the ZAP handler is in place before any CURVE socket binds, so no
        // handshake can ever go unchecked (fail closed). A connection's user id is its key.
        let zap = try security.map { security in
            try ZAPHandler(context: context, decide: { domain, key in
                                security.allowed.decide(domain: domain, key: key) && !security.suspensions.isSuspended(key) ? key : nil },
                           log: { [logger] in logger.warning("\($0)") })
        }
        func secure(_ socket: ZMQSocket, _ domain: String) throws {
            // Subscribers send the relay only subscriptions (a topic each).
            if domain == "releases" { try socket.setMaximumMessageSize(64 << 10) }
            if let security { try socket.makeCurveServer(secretKey: security.keys.secretKey, domain: domain) }
        }
        let trainers = try ZMQSocket(context, .router)
        let aggregator = try ZMQSocket(context, .router)
        for s in [trainers, aggregator] {
            try limits.applyServer(to: s)
            try s.setRouterMandatory(true)
        }
        try secure(trainers, "trainers")
        try secure(aggregator, "aggregator")
        try trainers.bind(endpoints.trainers)
        try aggregator.bind(endpoints.aggregator)
        let relay = try ReleaseRelay(context: context, publishers: endpoints.publish, subscribers: endpoints.releases, configure: secure)
        defer {
            relay.stop()
            trainers.close()
            aggregator.close()
            zap?.stop()
        }
        if let security {
            logger.info("broker: CURVE on every socket; broker key \(security.keys.publicKey); allowed keys from \(security.allowed.path) (re-read when it changes); membership \(security.membership.rawValue)")
        } else {
            logger.warning("broker: PLAINTEXT: no encryption, no authentication: anyone who can reach these ports may join, read releases and push updates. For local demos only; set [security] in the topology otherwise.")
        }
        logger.info("broker: trainers \(trainers.lastEndpoint), aggregator \(aggregator.lastEndpoint), releases \(relay.publisherEndpoint) -> \(relay.subscriberEndpoint)")
        var loop = Loop(trainers: trainers, aggregator: aggregator, gate: BrokerGate(codec: codec, security: security, limits: gateLimits),
                        timeout: Double(limits.heartbeatTimeout) / 1000)
        var lastMetrics = 0.0
        while !stopFlag.isSet {
            let ready = try ZMQPoller.readable([trainers, aggregator], timeout: 100)
            let now = Date().timeIntervalSince1970
            // A burst from one side never starves the other: a bounded batch each turn.
            if ready.contains(0) { try loop.fromTrainers(now: now, limit: 256) }
            if ready.contains(1) { try loop.fromAggregator(now: now, limit: 256) }
            loop.sweep(now: now)
            for line in loop.notes { logger.info("\(line)") }
            loop.notes = []
            for line in loop.gate.logLines(now: now) { logger.warning("\(line)") }
            countersLock.lock()
            _counters = Counters(forwarded: loop.gate.forwarded, refused: loop.gate.refusals.totals, repliesDropped: loop.repliesDropped)
            countersLock.unlock()
            if now - lastMetrics >= 0.5 {
                lastMetrics = now
                metrics.record(loop.totals(now: now, subscribers: relay.subscriberCount()))
            }
        }
        logger.info("broker stopped")
    }

    /// The broker's routing state and the moves between its two ROUTERs.
    struct Loop {
        let trainers: ZMQSocket
        let aggregator: ZMQSocket
        var gate: BrokerGate
        let timeout: Double
        var aggregatorID: [UInt8]?
        var aggregatorSeen = 0.0
        var peersSeen: [String: Double] = [:]
        var lastSweep = 0.0
        var repliesDropped = 0
        var notes: [String] = []
        let codec = WireCodec()
        /// Bytes received from members, sent to members, received from the aggregator.
        var bytesFromMembers = 0, bytesToMembers = 0, bytesFromAggregator = 0

        /// The running totals the metrics show.
        func totals(now: Double, subscribers: Int) -> BrokerMetrics.Totals {
            var t = BrokerMetrics.Totals()
            t.forwarded = gate.forwarded
            t.refused = gate.refusals.totals
            t.repliesDropped = repliesDropped
            t.bytesFromMembers = bytesFromMembers
            t.bytesToMembers = bytesToMembers
            t.bytesFromAggregator = bytesFromAggregator
            t.members = peersSeen.count
            t.subscribers = subscribers
            t.aggregatorConnected = aggregatorID != nil && now - aggregatorSeen < timeout
            return t
        }

        init(trainers: ZMQSocket, aggregator: ZMQSocket, gate: BrokerGate, timeout: Double) {
            self.trainers = trainers
            self.aggregator = aggregator
            self.gate = gate
            self.timeout = timeout
        }

        /// Up to `limit` messages from trainers and subscribers: each checked by the gate, then
        /// forwarded, refused, or dropped.
        mutating func fromTrainers(now: Double, limit: Int) throws {
            for _ in 0..<limit {
                guard let message = try trainers.receiveInPlace(timeout: 0) else { return }
                let peerID = Array(message.frame(0)), peer = Self.name(message.frame(0))
                let sizes = message.frameSizes
                bytesFromMembers += sizes.reduce(0, +)
                if peersSeen[peer] == nil { notes.append("peer \(peer) connected") }
                peersSeen[peer] = now
                let member = message.userID.flatMap { key in gate.security?.allowed.member(key: key) }
                let action = gate.inbound(peer: peer, head: (1..<min(4, message.count)).map { Array(message.frame($0)) },
                                          frameSizes: Array(sizes.dropFirst()), member: member, now: now)
                switch action {
                case .drop: continue
                case .suspend(let until, _):
                    // Its key is refused at the handshake until then; its connection is closed now
                    // (shutdown, not close: libzmq still owns the descriptor and cleans up).
                    if let key = member?.key { gate.security?.suspensions.suspend(key, until: until) }
                    if let fd = message.sourceFD { shutdown(fd, Int32(SHUT_RDWR)) }
                case .refuse(let error): reply(to: peerID, .error(error))
                case .forward:
                    guard let id = aggregatorID, now - aggregatorSeen < timeout else {
                        reply(to: peerID, .error(ErrorReply(code: .unavailable, detail: "no aggregator is connected to the broker")))
                        gate.answered(peer: peer, now: now)
                        continue
                    }
                    do {
                        try message.send(to: aggregator, prefix: [id, peerID], from: 1)
                    } catch let e as ZMQError where e.code == EHOSTUNREACH {
                        // The aggregator's connection is gone (it crashed or stopped) before its
                        // heartbeats timed out: the trainer hears `unavailable` and retries.
                        notes.append("aggregator disconnected")
                        aggregatorID = nil
                        gate.aggregatorChanged()
                        reply(to: peerID, .error(ErrorReply(code: .unavailable, detail: "no aggregator is connected to the broker")))
                    }
                }
            }
        }

        /// Up to `limit` messages from the aggregator: heartbeats for the broker, replies passed
        /// on to their trainer without waiting.
        mutating func fromAggregator(now: Double, limit: Int) throws {
            for _ in 0..<limit {
                guard let message = try aggregator.receiveInPlace(timeout: 0) else { return }
                guard message.count >= 4 else { continue }
                let bytes = message.frameSizes.reduce(0, +)
                bytesFromAggregator += bytes
                let id = Array(message.frame(0))
                if aggregatorID != id {
                    notes.append("aggregator connected")
                    gate.aggregatorChanged()
                }
                aggregatorID = id
                aggregatorSeen = now
                let target = Array(message.frame(1))
                guard !target.isEmpty else { continue }  // an empty target addresses the broker itself (heartbeat)
                let isChunk = message.frame(3).count == 1 && message.frame(3)[0] == MessageType.chunk.rawValue
                if !isChunk { gate.answered(peer: Self.name(message.frame(1)), now: now) }
                do {
                    if try !message.send(to: trainers, prefix: [target], from: 2, wait: false) { repliesDropped += 1 } else {
                        bytesToMembers += bytes - message.frame(0).count - target.count
                    }
                } catch let e as ZMQError where e.code == EHOSTUNREACH {
                    repliesDropped += 1  // the trainer is gone; it fetches again when it is back
                }
            }
        }

        /// Forgets peers silent for long (their budgets go with them).
        mutating func sweep(now: Double) {
            guard now - lastSweep > 1 else { return }
            lastSweep = now
            for (peer, seen) in peersSeen where now - seen > timeout * 6 {
                peersSeen[peer] = nil
                gate.forget(peer: peer)
                notes.append("peer \(peer) forgotten after silence")
            }
        }

        /// Answers a trainer from the broker itself, never waiting on it.
        mutating func reply(to peer: [UInt8], _ message: Message) {
            if (try? trainers.send([peer] + codec.encode(message), wait: false)) != true { repliesDropped += 1 }
        }

        static func name(_ bytes: UnsafeRawBufferPointer) -> String { String(decoding: bytes, as: UTF8.self) }
    }
}

/// A flag one thread sets and another polls.
package final class StopFlag: Sendable {
    private let value = Atomic(false)
    package init() {}
    package func set() { value.store(true, ordering: .releasing) }
    package var isSet: Bool { value.load(ordering: .acquiring) }
}
