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
    let logger: Logger
    private let stopFlag = StopFlag()
    private let codec = WireCodec()

    public init(endpoints: BrokerEndpoints, limits: TransportLimits = TransportLimits(), logger: Logger = Logger(label: "fedlm.broker")) {
        self.endpoints = endpoints
        self.limits = limits
        self.logger = logger
    }

    public func stop() { stopFlag.set() }

    /// The service loop on the calling thread, until `stop()`.
    public func runBlocking() throws {
        let context = ZMQContext()
        let trainers = try ZMQSocket(context, .router)
        let aggregator = try ZMQSocket(context, .router)
        for s in [trainers, aggregator] {
            try limits.apply(to: s)
            try s.setRouterMandatory(true)
        }
        try trainers.bind(endpoints.trainers)
        try aggregator.bind(endpoints.aggregator)
        let relay = try ReleaseRelay(context: context, publishers: endpoints.publish, subscribers: endpoints.releases)
        defer {
            relay.stop()
            trainers.close()
            aggregator.close()
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
                var from: [UInt8]?
                var head: [[UInt8]]?
                do {
                    head = try trainers.forward(to: aggregator, head: 1) { head in
                        from = head[0]
                        if let id = aggregatorID, now - aggregatorSeen < timeout { return [id, head[0]] }
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
