import FedLMFederation
import FedLMLedger
import FedLMMonitoring
import Foundation

/// `fedlm bench load --monitor`: the load's phases alternate between monitoring off (no metrics
/// recorded, nobody reading) and on (Prometheus metrics recorded by the aggregator, `/metrics`
/// scraped, the dashboard's status polled), each "on" phase between two "off" ones so that a
/// drift of the machine's speed cancels out. The aggregator's time per update is the phase's
/// time over its acknowledged updates (the simulated trainers keep it saturated).
final class WatchedPhases {
    struct Phase {
        var watched: Bool
        var report: LoadGenerator.Report
        var elapsed: Double
        var watchers: MonitoringWatchers.Report?
        var secondsPerUpdate: Double { elapsed / Double(max(report.acknowledged, 1)) }
    }

    let service: AggregatorService
    let metrics = PrometheusMetrics()
    let server: MonitoringServer
    let serverTask: Task<Void, Error>
    let watchers: MonitoringWatchers
    let onMetrics: AggregatorMetrics
    private(set) var phases: [Phase] = []

    init(service: AggregatorService, broker: BrokerService, runDirectory: String, scrapeInterval: Double, dashboards: Int) throws {
        self.service = service
        onMetrics = AggregatorMetrics(factory: metrics.factory)
        broker.metrics = BrokerMetrics(factory: metrics.factory)
        let port = UInt16.random(in: 33_000...40_000)
        let dashboard = DashboardData(title: "bench load", levels: [.init(name: "bench", ledgerPath: runDirectory + "/ledger.sqlite")])
        server = try MonitoringServer(address: HTTPAddress(host: "127.0.0.1", port: port), access: MonitoringConfig(), metrics: metrics, dashboard: dashboard)
        let server = self.server
        serverTask = Task { try await server.run() }
        watchers = MonitoringWatchers(port: port, scrapeInterval: scrapeInterval, dashboards: dashboards)
    }

    func run(_ generator: LoadGenerator, rounds: Int, samples: SampleBox) throws {
        var generator = generator
        for round in 0...rounds {
            generator.namePrefix = "load\(round)off"
            phases.append(try phase(generator, watched: false))
            guard round < rounds else { break }
            generator.namePrefix = "load\(round)on"
            phases.append(try phase(generator, watched: true))
        }
        serverTask.cancel()
    }

    private func phase(_ generator: LoadGenerator, watched: Bool) throws -> Phase {
        service.useMetrics(watched ? onMetrics : .none)
        if watched { watchers.start() }
        let t0 = Date().timeIntervalSince1970
        let report = try generator.run()
        let elapsed = Date().timeIntervalSince1970 - t0
        return Phase(watched: watched, report: report, elapsed: elapsed, watchers: watched ? watchers.stop() : nil)
    }

    func printReport() {
        func ms(_ v: Double) -> String { String(format: "%.2f ms", v * 1000) }
        for p in phases {
            var line = String(format: "  %@: %d acknowledged in %.1f s, %@ per update; send-to-ACK p50 %@ p99 %@", p.watched ? "monitored" : "unmonitored",
                              p.report.acknowledged, p.elapsed, ms(p.secondsPerUpdate), ms(p.report.percentile(0.5)), ms(p.report.percentile(0.99)))
            if let w = p.watchers {
                line += String(format: "\n      /metrics %d scrapes p50 %@ p99 %@; /api/status %d polls p50 %@ p99 %@ max %@ (%@); %d failed",
                               w.metrics.count, ms(w.metrics.percentile(0.5)), ms(w.metrics.percentile(0.99)), w.status.count,
                               ms(w.status.percentile(0.5)), ms(w.status.percentile(0.99)), ms(w.status.percentile(1)), String(format: "%.0f KB", Double(w.statusBytes) / 1000), w.failures)
            }
            print(line)
        }
        // Each monitored phase against the mean of the unmonitored phases on either side of it.
        let overhead = stride(from: 1, to: phases.count - 1, by: 2).map { i in
            phases[i].secondsPerUpdate / ((phases[i - 1].secondsPerUpdate + phases[i + 1].secondsPerUpdate) / 2) - 1
        }
        let unwatched = phases.filter { !$0.watched }.map(\.secondsPerUpdate), watched = phases.filter(\.watched).map(\.secondsPerUpdate)
        print(String(format: "  median time per update: %@ unmonitored, %@ monitored", ms(median(unwatched)), ms(median(watched))))
        print("  monitoring's cost per update (each monitored phase / mean of the unmonitored phases around it - 1): "
              + overhead.map { String(format: "%+.2f%%", 100 * $0) }.joined(separator: ", ") + String(format: "; median %+.2f%%", 100 * median(overhead)))
        let statusP99 = phases.compactMap { $0.watchers?.status.percentile(0.99) }
        print(String(format: "  dashboard status p99 per monitored phase: %@; failures %d",
                     statusP99.map { ms($0) }.joined(separator: ", "), phases.compactMap { $0.watchers?.failures }.reduce(0, +)))
    }

    /// Acknowledged updates missing from the ledger (must be 0).
    func lost(in ledgerPath: String) throws -> Int {
        let recorded = try Ledger(path: ledgerPath).acceptedUpdateIDs()
        var acknowledged = Set<String>()
        for p in phases { acknowledged.formUnion(p.report.acknowledgedIDs) }
        let lost = acknowledged.subtracting(recorded).count
        print("  acknowledged but missing from the ledger: \(lost) (must be 0)")
        return lost
    }
}
