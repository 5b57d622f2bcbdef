import CoreMetrics
import Foundation
import Synchronization

/// What a broker reports to a metrics backend (`[monitoring]`): messages forwarded and refused
/// (by the gate's reason, a fixed set), bytes in and out per side, replies dropped, and who is
/// connected. The broker loop keeps running totals (`Totals`); `record` turns them into counter
/// increments, so the loop itself never touches the backend per message.
public final class BrokerMetrics: Sendable {
    public enum Name {
        public static let forwarded = "fedlm_broker_forwarded_total"
        public static let refused = "fedlm_broker_refused_total"
        public static let repliesDropped = "fedlm_broker_replies_dropped_total"
        public static let bytes = "fedlm_broker_bytes_total"
        public static let members = "fedlm_broker_members_connected"
        public static let subscribers = "fedlm_broker_subscribers_connected"
        public static let aggregator = "fedlm_broker_aggregator_connected"
    }

    /// The broker's running totals since it started, and what is connected now.
    public struct Totals: Equatable, Sendable {
        public var forwarded = 0
        public var refused: [String: Int] = [:]
        public var repliesDropped = 0
        /// Bytes received from members, sent to members, received from the aggregator.
        public var bytesFromMembers = 0
        public var bytesToMembers = 0
        public var bytesFromAggregator = 0
        public var members = 0
        public var subscribers = 0
        public var aggregatorConnected = false
        public init() {}
    }

    public static let none = BrokerMetrics(factory: NOOPMetricsHandler.instance)

    private let forwarded: Counter
    private let refused: LabeledMetrics<Counter>
    private let repliesDropped: Counter
    private let bytes: LabeledMetrics<Counter>
    private let members: Gauge
    private let subscribers: Gauge
    private let aggregator: Gauge
    /// The totals recorded last (only the broker loop records; the lock makes that checkable).
    private let last = Mutex(Totals())

    public init(factory: any MetricsFactory) {
        forwarded = Counter(label: Name.forwarded, factory: factory)
        refused = LabeledMetrics { Counter(label: Name.refused, dimensions: [("reason", $0[0])], factory: factory) }
        repliesDropped = Counter(label: Name.repliesDropped, factory: factory)
        bytes = LabeledMetrics { Counter(label: Name.bytes, dimensions: [("direction", $0[0]), ("side", $0[1])], factory: factory) }
        members = Gauge(label: Name.members, factory: factory)
        subscribers = Gauge(label: Name.subscribers, factory: factory)
        aggregator = Gauge(label: Name.aggregator, factory: factory)
    }

    /// Brings the backend up to `now` (called by the broker loop only).
    public func record(_ now: Totals) {
        let last = self.last.withLock { last in defer { last = now }; return last }
        forwarded.increment(by: now.forwarded - last.forwarded)
        for (reason, n) in now.refused where n > last.refused[reason] ?? 0 { refused[reason].increment(by: n - (last.refused[reason] ?? 0)) }
        repliesDropped.increment(by: now.repliesDropped - last.repliesDropped)
        bytes["in", "members"].increment(by: now.bytesFromMembers - last.bytesFromMembers)
        bytes["out", "members"].increment(by: now.bytesToMembers - last.bytesToMembers)
        bytes["in", "aggregator"].increment(by: now.bytesFromAggregator - last.bytesFromAggregator)
        members.record(now.members)
        subscribers.record(now.subscribers)
        aggregator.record(now.aggregatorConnected ? 1 : 0)
    }
}
