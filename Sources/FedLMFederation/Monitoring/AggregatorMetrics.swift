import CoreMetrics
import Foundation
import Synchronization

/// What an aggregator reports to a metrics backend (swift-metrics; Prometheus under
/// `[monitoring]`, nothing otherwise). Every label takes values from a bounded set: outcomes and
/// refusal codes are the protocol's, clusters the federation's (at most `LabelValues.limit`,
/// then "other"); trainer names and keys are never labels (`fedlm status` and the dashboard
/// show trainers).
public final class AggregatorMetrics: Sendable {
    /// The metric names, as Prometheus shows them.
    public enum Name {
        public static let updates = "fedlm_aggregator_updates_total"
        public static let staleness = "fedlm_aggregator_update_staleness"
        public static let updateBytes = "fedlm_aggregator_update_bytes"
        public static let receiveToAck = "fedlm_aggregator_update_receive_to_ack_seconds"
        public static let bytesReceived = "fedlm_aggregator_received_bytes_total"
        public static let bytesSent = "fedlm_aggregator_sent_bytes_total"
        public static let version = "fedlm_aggregator_version"
        public static let trainers = "fedlm_aggregator_trainers_connected"
        public static let validationLoss = "fedlm_aggregator_validation_loss"
        public static let personalizedLoss = "fedlm_aggregator_personalized_loss"
        public static let checkpoint = "fedlm_aggregator_checkpoint_seconds"
        public static let restore = "fedlm_aggregator_restore_seconds"
        public static let dpEpsilon = "fedlm_aggregator_dp_epsilon"
        public static let clampedClaims = "fedlm_aggregator_clamped_token_claims_total"
    }

    /// Bucket bounds of the histograms that are not durations.
    public static let stalenessBuckets: [Double] = [0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64]
    public static let updateBytesBuckets: [Double] = (0...10).map { 1024 * pow(4, Double($0)) }  // 1 KiB ... 1 GiB

    /// Metrics that go nowhere (no `[monitoring]`).
    public static let none = AggregatorMetrics(factory: NOOPMetricsHandler.instance)

    private let updates: LabeledMetrics<Counter>
    private let versions: LabeledMetrics<Gauge>
    private let validation: LabeledMetrics<Gauge>
    private let personalized: LabeledMetrics<Gauge>
    private let staleness: Recorder
    private let updateBytes: Recorder
    private let receiveToAck: CoreMetrics.Timer
    private let received: Counter
    private let sent: Counter
    private let trainers: Gauge
    private let checkpoint: CoreMetrics.Timer
    private let restore: CoreMetrics.Timer
    /// Made on first use: a federation without differential privacy shows no epsilon.
    private let epsilon: LabeledMetrics<Gauge>
    private let clamped: LabeledMetrics<Counter>

    public init(factory: any MetricsFactory) {
        updates = LabeledMetrics { Counter(label: Name.updates, dimensions: [("outcome", $0[0]), ("reason", $0[1])], factory: factory) }
        versions = LabeledMetrics { Gauge(label: Name.version, dimensions: [("cluster", $0[0])], factory: factory) }
        validation = LabeledMetrics { Gauge(label: Name.validationLoss, dimensions: [("cluster", $0[0])], factory: factory) }
        personalized = LabeledMetrics { Gauge(label: Name.personalizedLoss, dimensions: [("cluster", $0[0])], factory: factory) }
        staleness = Recorder(label: Name.staleness, factory: factory)
        updateBytes = Recorder(label: Name.updateBytes, factory: factory)
        receiveToAck = CoreMetrics.Timer(label: Name.receiveToAck, factory: factory)
        received = Counter(label: Name.bytesReceived, factory: factory)
        sent = Counter(label: Name.bytesSent, factory: factory)
        trainers = Gauge(label: Name.trainers, factory: factory)
        checkpoint = CoreMetrics.Timer(label: Name.checkpoint, factory: factory)
        restore = CoreMetrics.Timer(label: Name.restore, factory: factory)
        epsilon = LabeledMetrics { _ in Gauge(label: Name.dpEpsilon, factory: factory) }
        clamped = LabeledMetrics { Counter(label: Name.clampedClaims, dimensions: [("trainer", $0[0])], factory: factory) }
    }

    /// An update answered: `outcome` applied | buffered | duplicate | refused; `reason` the
    /// refusal's code ("" otherwise); `bytes` what its transfer carried; `seconds` from its
    /// first chunk to the answer.
    public func updateAnswered(outcome: String, reason: String = "", staleness value: Int?, bytes: Int, seconds: Double) {
        updates[outcome, reason].increment()
        if let value { staleness.record(value) }
        updateBytes.record(bytes)
        receiveToAck.recordSeconds(seconds)
    }

    public func received(bytes: Int) { received.increment(by: bytes) }
    /// An update credited with fewer tokens than its sender claimed (`TokenClaimLimits`).
    public func clampedClaim(trainer: String) { clamped[trainer].increment() }
    public func sent(bytes: Int) { sent.increment(by: bytes) }
    /// The global version (cluster "") or a personalized head's.
    public func version(_ v: Int, cluster: String = "") { versions[cluster].record(v) }
    public func trainersConnected(_ n: Int) { trainers.record(n) }
    public func validationLoss(_ loss: Double, cluster: String) { validation[cluster].record(loss) }
    public func personalizedLoss(_ loss: Double, cluster: String) { personalized[cluster].record(loss) }
    public func checkpointed(seconds: Double) { checkpoint.recordSeconds(seconds) }
    public func restored(seconds: Double) { restore.recordSeconds(seconds) }
    public func privacy(epsilon value: Double) { epsilon[""].record(value) }
}

/// One metric per combination of label values, made on first use and kept; at most `limit`
/// distinct combinations, after which new ones share the values "other" (a bounded label set
/// whatever peers send).
final class LabeledMetrics<Metric: Sendable>: Sendable {
    static var limit: Int { 64 }
    private let made = Mutex<[[String]: Metric]>([:])
    private let make: @Sendable ([String]) -> Metric

    init(_ make: @escaping @Sendable ([String]) -> Metric) { self.make = make }

    subscript(_ values: String...) -> Metric {
        made.withLock { made in
            if let m = made[values] { return m }
            let key = made.count < Self.limit ? values : values.map { _ in "other" }
            if let m = made[key] { return m }
            let m = make(key)
            made[key] = m
            return m
        }
    }
}
