import CoreMetrics
import Synchronization
import FedLMFederation
import Prometheus

/// One process's Prometheus registry, with the buckets FedLM's histograms need: swift-metrics
/// handles made from `factory` land here, and `/metrics` prints it in the text exposition format.
public final class PrometheusMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    public let factory: PrometheusMetricsFactory

    public init() {
        var f = PrometheusMetricsFactory(registry: registry)
        f.valueHistogramBuckets[AggregatorMetrics.Name.staleness] = AggregatorMetrics.stalenessBuckets
        f.valueHistogramBuckets[AggregatorMetrics.Name.updateBytes] = AggregatorMetrics.updateBytesBuckets
        // Send-to-ACK spans a loopback round trip to a large update over a slow link.
        f.durationHistogramBuckets[AggregatorMetrics.Name.receiveToAck] = [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100),
                                                                           .milliseconds(250), .seconds(1), .seconds(5), .seconds(30), .seconds(120)]
        let long: [Duration] = [.milliseconds(10), .milliseconds(50), .milliseconds(250), .seconds(1), .seconds(5), .seconds(30), .seconds(120)]
        f.durationHistogramBuckets[AggregatorMetrics.Name.checkpoint] = long
        f.durationHistogramBuckets[AggregatorMetrics.Name.restore] = long
        factory = f
    }

    /// The Prometheus text exposition of everything recorded so far.
    public func exposition() -> [UInt8] {
        let start = ContinuousClock.now
        defer { expositionCost.withLock { $0.count += 1; $0.seconds += (ContinuousClock.now - start).seconds } }
        return registry.emitToBuffer()
    }

    /// Expositions written so far and the seconds they took.
    public var cost: (count: Int, seconds: Double) { expositionCost.withLock { ($0.count, $0.seconds) } }
    private let expositionCost = Mutex<(count: Int, seconds: Double)>((0, 0))
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
