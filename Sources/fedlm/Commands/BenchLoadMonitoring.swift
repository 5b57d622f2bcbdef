import FedLMFederation
import FedLMTools
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
    let dashboard: DashboardData
    let serverTask: Task<Void, Error>
    let watchers: MonitoringWatchers
    let onMetrics: AggregatorMetrics
    private(set) var phases: [Phase] = []
    private(set) var warmup: Phase?

    init(service: AggregatorService, broker: BrokerService, runDirectory: String, scrapeInterval: Double, dashboards: Int) throws {
        self.service = service
        onMetrics = AggregatorMetrics(factory: metrics.factory)
        broker.metrics = BrokerMetrics(factory: metrics.factory)
        let port = UInt16.random(in: 33_000...40_000)
        dashboard = DashboardData(title: "bench load", levels: [.init(name: "bench", ledgerPath: runDirectory + "/ledger.sqlite")])
        server = try MonitoringServer(address: HTTPAddress(host: "127.0.0.1", port: port), access: MonitoringConfig(), metrics: metrics, dashboard: dashboard)
        let server = self.server
        serverTask = Task { try await server.run() }
        watchers = MonitoringWatchers(port: port, scrapeInterval: scrapeInterval, dashboards: dashboards)
    }

    func run(_ generator: LoadGenerator, rounds: Int) throws {
        var generator = generator
        // A first phase the comparison leaves out: the ledger, its WAL and the page cache grow
        // fastest at the start, a drift no pair of neighbouring phases cancels.
        generator.namePrefix = "warmup"
        warmup = try phase(generator, watched: false)
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
        if let warmup { print(String(format: "  warm-up (left out): %d acknowledged in %.1f s, %@ per update", warmup.report.acknowledged, warmup.elapsed, ms(warmup.secondsPerUpdate))) }
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
        // The same cost counted directly: the seconds of monitoring work per monitored update (the
        // metrics one update records, timed over many; snapshots built; expositions written)
        // against the time per update. Free of the phases' drift.
        let recording = recordingSecondsPerUpdate()
        let monitoredUpdates = phases.filter(\.watched).reduce(0) { $0 + $1.report.acknowledged }
        let (builds, buildSeconds) = dashboard.cost, (scrapes, scrapeSeconds) = metrics.cost
        let perUpdate = recording + (buildSeconds + scrapeSeconds) / Double(max(monitoredUpdates, 1))
        print(String(format: "  monitoring work per update, counted: recording %.2f µs + %d dashboard snapshots (%.1f ms each) + %d expositions (%.2f ms each) over %d updates = %.2f µs, %.2f%% of the %@ per update",
                     recording * 1e6, builds, 1000 * buildSeconds / Double(max(builds, 1)), scrapes, 1000 * scrapeSeconds / Double(max(scrapes, 1)),
                     monitoredUpdates, perUpdate * 1e6, 100 * perUpdate / median(watched), ms(median(watched))))
        let statusP99 = phases.compactMap { $0.watchers?.status.percentile(0.99) }
        guard watchers.dashboards > 0 else { return }
        print(String(format: "  dashboard status p99 per monitored phase: %@; failures %d",
                     statusP99.map { ms($0) }.joined(separator: ", "), phases.compactMap { $0.watchers?.failures }.reduce(0, +)))
    }

    /// What recording one update's metrics costs (the calls the aggregator makes per update:
    /// its answer, bytes in and out, versions, trainers), timed over many on this registry.
    func recordingSecondsPerUpdate(_ n: Int = 200_000) -> Double {
        let m = AggregatorMetrics(factory: metrics.factory)
        let start = ContinuousClock.now
        for i in 0..<n {
            m.updateAnswered(outcome: "buffered", staleness: i & 7, bytes: 5000, seconds: 0.1)
            m.received(bytes: 5000)
            m.sent(bytes: 100)
            m.version(i)
            m.trainersConnected(200)
        }
        let elapsed = ContinuousClock.now - start
        return (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18) / Double(n)
    }

    /// Acknowledged updates missing from the ledger (must be 0).
    func lost(in ledgerPath: String) throws -> Int {
        let recorded = try Ledger(path: ledgerPath).acceptedUpdateIDs()
        var acknowledged = Set<String>()
        for p in phases + (warmup.map { [$0] } ?? []) { acknowledged.formUnion(p.report.acknowledgedIDs) }
        let lost = acknowledged.subtracting(recorded).count
        print("  acknowledged but missing from the ledger: \(lost) (must be 0)")
        return lost
    }
}
