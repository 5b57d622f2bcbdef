import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Logging

/// The broker: routes trainers' messages to the aggregator and back, and relays releases.
/// It holds no model state; it knows only which peers it has heard from recently.
///
/// Trainer side: a ROUTER; a message from trainer T arrives as [T, frames...] and is forwarded to
/// the aggregator as [aggregator, T, frames...]. The aggregator's replies [T, frames...] go back
/// to T. The aggregator says where it is by sending [""] + HEARTBEAT (an empty peer addresses the
/// broker). While no aggregator has been heard from within the heartbeat timeout, trainers get
/// ERROR `unavailable` at once instead of waiting.
public final class BrokerService: BlockingService, @unchecked Sendable {
    public let endpoints: BrokerEndpoints
    public let limits: TransportLimits
    /// CURVE encryption and authentication on every socket (nil: plaintext, for local demos).
    public let security: BrokerSecurity?
    let logger: Logger
    private let stopFlag = StopFlag()
    private let codec = WireCodec()

    public init(endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(), security: BrokerSecurity? = nil,
                logger: Logger = Logger(label: "fedlm.broker")) {
        self.endpoints = endpoints
        self.limits = limits
        self.security = security
        self.logger = logger
    }

    public func stop() { stopFlag.set() }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let context = ZMQContext()
        // With security, the ZAP handler is in place before any CURVE socket binds, so no
        // handshake can ever go unchecked (fail closed).
        let zap = try security.map { security in
            try ZAPHandler(context: context, decide: { domain, key in security.allowed.decide(domain: domain, key: key) },
                           log: { [logger] in logger.warning("\($0)") })
        }
        func secure(_ socket: ZMQSocket, _ domain: String) throws {
            if let security { try socket.makeCurveServer(secretKey: security.keys.secretKey, domain: domain) }
        }
        let trainers = try ZMQSocket(context, .router)
        let aggregator = try ZMQSocket(context, .router)
        for s in [trainers, aggregator] {
            try limits.apply(to: s)
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
            logger.info("broker: CURVE on every socket; broker key \(security.keys.publicKey); allowed keys from \(security.allowed.path) (re-read when it changes)")
        } else {
            logger.warning("broker: PLAINTEXT: no encryption, no authentication: anyone who can reach these ports may join, read releases and push updates. For local demos only; set [security] in the topology otherwise.")
        }
        logger.info("broker: trainers \(trainers.lastEndpoint), aggregator \(aggregator.lastEndpoint), releases \(relay.publisherEndpoint) -> \(relay.subscriberEndpoint)")
        var aggregatorID: [UInt8]?
        var aggregatorSeen = 0.0
        var peersSeen: [[UInt8]: Double] = [:]
        var lastSweep = Date().timeIntervalSince1970
        let timeout = Double(limits.heartbeatTimeout) / 1000
        while !stopFlag.isSet {
            let ready = try ZMQPoller.readable([trainers, aggregator], timeout: 100)
            let now = Date().timeIntervalSince1970
            // Frames are handed from socket to socket without copies (tensors are most of the bytes).
            if ready.contains(0) {
                var unavailable: [UInt8]?
                var forbidden: [UInt8]?
                var from: [UInt8]?
                var head: [[UInt8]]?
                do {
                    // With security the first protocol frames are read too, to keep subscribers
                    // (authenticated as such by their key) from pushing updates.
                    head = try trainers.forward(to: aggregator, head: security == nil ? 1 : 3) { head, user in
                        from = head[0]
                        if user == "subscriber", head.count == 3, head[2] == [MessageType.update.rawValue] || head[2] == [MessageType.chunk.rawValue] {
                            if head[2] == [MessageType.update.rawValue] { forbidden = head[0] }
                            return nil
                        }
                        if let id = aggregatorID, now - aggregatorSeen < timeout { return [id] + head }
                        unavailable = head[0]
                        return nil
                    }
                } catch let e as ZMQError where e.code == EHOSTUNREACH {
                    // The aggregator's connection is gone (it crashed or stopped) before its
                    // heartbeats timed out: the trainer hears `unavailable` and retries.
                    logger.info("aggregator disconnected")
                    aggregatorID = nil
                    unavailable = from
                }
                if let peer = head?.first {
                    if peersSeen[peer] == nil { logger.info("peer \(String(decoding: peer, as: UTF8.self)) connected") }
                    peersSeen[peer] = now
                }
                if let peer = forbidden {
                    logger.warning("refused an update from subscriber \(String(decoding: peer, as: UTF8.self))")
                    let reply = codec.encode(.error(ErrorReply(code: .forbidden, detail: "a subscriber's key may receive releases, not push updates")))
                    _ = try? trainers.send([peer] + reply)
                }
                if let peer = unavailable {
                    let reply = codec.encode(.error(ErrorReply(code: .unavailable, detail: "no aggregator is connected to the broker")))
                    _ = try? trainers.send([peer] + reply)
                }
            }
            if ready.contains(1) {
                do {
                    let head = try aggregator.forward(to: trainers, head: 2) { head in
                        head[1].isEmpty ? nil : [head[1]]  // an empty target addresses the broker itself (heartbeat)
                    }
                    if let id = head?.first {
                        if aggregatorID != id { logger.info("aggregator connected") }
                        aggregatorID = id
                        aggregatorSeen = now
                    }
                } catch let e as ZMQError where e.code == EHOSTUNREACH {
                    logger.info("a reply's trainer is gone; dropped")
                }
            }
            if now - lastSweep > 1 {
                lastSweep = now
                for (peer, seen) in peersSeen where now - seen > timeout * 6 {
                    peersSeen[peer] = nil
                    logger.info("peer \(String(decoding: peer, as: UTF8.self)) forgotten after silence")
                }
            }
        }
        logger.info("broker stopped")
    }
}

/// A flag one thread sets and another polls.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
