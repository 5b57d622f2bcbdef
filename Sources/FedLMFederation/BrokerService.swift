import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Logging
import ServiceLifecycle

/// The broker: routes trainers' messages to the aggregator and back, and relays releases.
/// It holds no model state; it knows only which peers it has heard from recently.
///
/// Trainer side: a ROUTER; a message from trainer T arrives as [T, frames...] and is forwarded to
/// the aggregator as [aggregator, T, frames...]. The aggregator's replies [T, frames...] go back
/// to T. The aggregator says where it is by sending [""] + HEARTBEAT (an empty peer addresses the
/// broker). While no aggregator has been heard from within the heartbeat timeout, trainers get
/// ERROR `unavailable` at once instead of waiting.
public final class BrokerService: Service, @unchecked Sendable {
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

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await Task.detached { try self.loop() }.value
        } onGracefulShutdown: {
            self.stop()
        }
    }

    func loop() throws {
        let context = ZMQContext()
        let trainers = try ZMQSocket(context, .router)
        let aggregator = try ZMQSocket(context, .router)
        for s in [trainers, aggregator] {
            try s.setMaximumMessageSize(limits.maxMessageBytes)
            try s.setHighWaterMarks(send: limits.highWaterMark, receive: limits.highWaterMark)
            try s.setHeartbeat(interval: limits.heartbeatInterval, timeout: limits.heartbeatTimeout)
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
            if ready.contains(0), let message = try trainers.receive(timeout: 0), message.count >= 2 {
                let peer = message[0]
                if peersSeen[peer] == nil { logger.info("peer \(String(decoding: peer, as: UTF8.self)) connected") }
                peersSeen[peer] = now
                if let id = aggregatorID, now - aggregatorSeen < timeout {
                    do { try aggregator.send([id] + message) } catch {
                        logger.warning("aggregator unreachable: \(error)")
                        aggregatorID = nil
                    }
                } else {
                    let reply = codec.encode(.error(ErrorReply(code: .unavailable, detail: "no aggregator is connected to the broker")))
                    _ = try? trainers.send([peer] + reply)
                }
            }
            if ready.contains(1), let message = try aggregator.receive(timeout: 0), message.count >= 2 {
                if aggregatorID != message[0] { logger.info("aggregator connected") }
                aggregatorID = message[0]
                aggregatorSeen = now
                let target = message[1]
                if !target.isEmpty {
                    do { try trainers.send(Array(message[1...])) } catch {
                        logger.info("peer \(String(decoding: target, as: UTF8.self)) is gone; reply dropped")
                    }
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
