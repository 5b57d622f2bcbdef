import ArgumentParser
import FedLMAggregation
import FedLMFederation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation

/// Hundreds of light simulated trainers pushing small updates through one broker to one
/// aggregator on loopback for a bounded time: is anything lost, does memory stay flat, and how
/// long does an update take from send to ACK.
struct BenchLoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "load",
        abstract: "Many simulated trainers push small updates through one broker: losses, memory over time, latency percentiles.")

    @Option(help: "Simulated trainers.") var trainers: Int = 200
    @Option(help: "Seconds of sending.") var seconds: Double = 20
    @Option(help: "Threads driving the simulated trainers.") var threads: Int = 4
    @Option(help: "machine (fsync before each ack) or process.") var durability: String = "process"
    @Option(help: "Where to put the run directory.") var directory: String = "runs/bench-load"

    func run() throws {
        Runtime.announce()
        guard let mode = AggregationConfig.Durability(rawValue: durability) else { throw ValidationError("--durability is machine or process") }
        try? FileManager.default.removeItem(atPath: directory)
        let config = GPT2Config(layers: 1, embedding: 16, heads: 2, context: 8, vocabulary: 64)
        let aggregation = LoadGenerator.aggregation(durability: mode, checkpointEvery: 50)
        let endpoints = BrokerEndpoints.loopback()
        let broker = BrokerService(endpoints: endpoints)
        let core = try AggregatorCore(runDirectory: directory, config: aggregation, initialModel: try GPT2Model(config: config, seed: 1))
        let service = AggregatorService(core: core, endpoints: endpoints)
        let specs = core.specs
        let services: [BlockingService] = [broker, service]
        let threadsRunning = services.map { s in Thread { try? s.runBlocking() } }
        threadsRunning.forEach { $0.start() }
        // Memory once a second while the load runs.
        let samples = SampleBox()
        let monitor = Thread {
            while !samples.stop {
                samples.append(ResourceUsage.residentBytes ?? 0)
                Thread.sleep(forTimeInterval: 1)
            }
        }
        monitor.start()
        var generator = LoadGenerator(endpoints: endpoints, trainers: trainers, specs: specs, seconds: seconds)
        generator.threads = threads
        let t0 = now()
        let report = try generator.run()
        let elapsed = now() - t0
        samples.stop = true
        services.forEach { $0.stop() }
        while threadsRunning.contains(where: \.isExecuting) || monitor.isExecuting { usleep(1000) }
        let ledger = try Ledger(path: directory + "/ledger.sqlite")
        let recorded = Set(try ledger.database.query("SELECT id FROM updates WHERE outcome != 'refused'").compactMap { $0[0].string })
        let lost = report.acknowledgedIDs.subtracting(recorded).count
        let rss = samples.values
        let half = Array(rss.dropFirst(rss.count / 2))
        func ms(_ v: Double) -> String { String(format: "%.1f ms", v * 1000) }
        print("""
            \(trainers) simulated trainers, \(Int(seconds)) s of sending (+ drain), updates of \(specs.reduce(0) { $0 + $1.count } * 4) bytes, durability \(durability):
              updates sent \(report.sent), acknowledged \(report.acknowledged), refused \(report.refused), unacknowledged at the end \(report.unacknowledged)
              acknowledged but missing from the ledger: \(lost)   (must be 0)
              ledger records \(recorded.count) updates; \(String(format: "%.0f", Double(report.acknowledged) / elapsed)) acknowledged updates/s
              send -> ACK latency: p50 \(ms(report.percentile(0.5))), p95 \(ms(report.percentile(0.95))), p99 \(ms(report.percentile(0.99))), max \(ms(report.percentile(1)))
              resident memory per second: \(rss.map { String(format: "%.0f", Double($0) / 1_048_576) }.joined(separator: " ")) MiB
              second half: min \(formatBytes(half.min() ?? 0)), max \(formatBytes(half.max() ?? 0)) (flat if these are close)
            """)
        if lost > 0 || report.unacknowledged > 0 { throw RunFailure("\(lost) acknowledged updates missing, \(report.unacknowledged) never acknowledged") }
    }
}

final class SampleBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _values: [Int] = []
    private var _stop = false
    var stop: Bool {
        get { lock.lock(); defer { lock.unlock() }; return _stop }
        set { lock.lock(); _stop = newValue; lock.unlock() }
    }
    var values: [Int] { lock.lock(); defer { lock.unlock() }; return _values }
    func append(_ v: Int) { lock.lock(); _values.append(v); lock.unlock() }
}
