import FedLMFederation
import FedLMMonitoring
import Foundation

/// The HTTP server a role runs beside itself when the topology's `[monitoring]` gives it an
/// address: the aggregator's serves its metrics and the dashboard of its level, the broker's
/// its metrics.
enum RoleMonitoring {
    /// Sets the core's metrics and returns the server, or nil without an address.
    static func aggregator(_ t: Topology, core: AggregatorCore) throws -> MonitoringServer? {
        guard let m = t.monitoring, let address = m.aggregator else { return nil }
        let metrics = PrometheusMetrics()
        core.metrics = AggregatorMetrics(factory: metrics.factory)
        let name = t.upstream.map { "region \($0.region)" } ?? t.name
        let dashboard = DashboardData(title: t.name, levels: [.init(name: name, ledgerPath: t.runDirectory + "/ledger.sqlite")])
        return try MonitoringServer(address: address, access: m, metrics: metrics, dashboard: dashboard)
    }

    static func broker(_ t: Topology?, service: BrokerService) throws -> MonitoringServer? {
        guard let m = t?.monitoring, let address = m.broker else { return nil }
        let metrics = PrometheusMetrics()
        service.metrics = BrokerMetrics(factory: metrics.factory)
        return try MonitoringServer(address: address, access: m, metrics: metrics, dashboard: nil)
    }
}
