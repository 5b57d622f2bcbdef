import ArgumentParser
import FedLMAggregation
import FedLMFederation
import FedLMTools
import FedLMLedger
import FedLMModel
import FedLMProtocol
import FedLMZeroMQ
import Foundation
import Synchronization

/// Hundreds of light simulated trainers pushing small updates through one broker to one
/// aggregator on loopback for a bounded time: is anything lost, does memory stay flat, and how
/// long does an update take from send to ACK. With `--flood`, phases of that load alternate with
/// and without one member flooding the broker at full speed (`fedlm bench flood`, a separate
/// process, with its own allowed key under `--secure`), side by side in one run: the honest
/// trainers' throughput under the flood as a share of it without. With `--monitor`, phases
/// alternate with monitoring off and on (Prometheus metrics recorded, `/metrics` scraped, the
/// dashboard's status polled by several clients): what watching costs the aggregator per
/// update, and how fast the dashboard answers under the load.
struct BenchLoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "load",
        abstract: "Many simulated trainers push small updates through one broker: losses, memory over time, latency percentiles; --flood adds a flooding member, --monitor scrapes metrics and polls the dashboard.")

    @Option(help: "Simulated trainers.") var trainers: Int = 200
    @Option(help: "Seconds of sending (per phase with --flood).") var seconds: Double = 20
    @Option(help: "Threads driving the simulated trainers.") var threads: Int = 4
    @Option(help: "machine (fsync before each ack) or process.") var durability: String = "process"
    @Option(help: "Where to put the run directory.") var directory: String = "runs/bench-load"
    @Flag(help: "CURVE on every socket (generated keys; the simulated trainers share one key, so membership is open).") var secure = false
    @Flag(help: "Alternate phases without and with one member flooding the broker.") var flood = false
    @Option(help: "With --flood: flooded phases, each between two quiet ones; medians are reported.") var rounds: Int = 3
    @Option(help: "With --flood: the first flood's seed (each round adds one).") var floodSeed: UInt64 = 1
    @Flag(help: "Never suspend the flooder: the whole flood goes through the broker's checks (a networked fuzz run).") var noSuspend = false
    @Flag(help: "Alternate phases with monitoring off and on (metrics recorded and scraped, dashboards polling).") var monitor = false
    @Option(help: "With --monitor: seconds between scrapes of /metrics.") var scrapeInterval: Double = 1
    @Option(help: "With --monitor: dashboard clients polling /api/status every 2 s.") var dashboards: Int = 5

    func validate() throws {
        guard trainers >= 1, seconds > 0, threads >= 1, rounds >= 1 else { throw ValidationError("--trainers, --seconds, --threads and --rounds must be positive") }
        guard !(flood && monitor) else { throw ValidationError("--flood and --monitor measure different things: one at a time") }
        guard scrapeInterval > 0, dashboards >= 0 else { throw ValidationError("--scrape-interval must be positive and --dashboards >= 0") }
        guard AggregationConfig.Durability(rawValue: durability) != nil else { throw ValidationError("--durability is machine or process") }
    }

    func run() throws {
        Runtime.announce()
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let config = GPT2Config(layers: 1, embedding: 16, heads: 2, context: 8, vocabulary: 64)
        let aggregation = LoadGenerator.aggregation(durability: AggregationConfig.Durability(rawValue: durability)!, checkpointEvery: 50)
        let endpoints = BrokerEndpoints.loopback()
        let keys = try secure ? BenchKeys(directory: directory + "/keys", flooders: flood ? rounds : 0) : nil
        var gateLimits = BrokerGate.Limits()
        if noSuspend {
            gateLimits.suspendAfter = .max
            gateLimits.suspendAfterStrays = .max
        }
        let broker = BrokerService(endpoints: endpoints, security: keys?.broker, gateLimits: gateLimits)
        let core = try AggregatorCore(runDirectory: directory + "/run", config: aggregation, initialModel: try GPT2Model(config: config, seed: 1))
        let service = AggregatorService(core: core, endpoints: endpoints)
        service.curve = keys?.client("aggregator")
        let watching = try monitor ? WatchedPhases(service: service, broker: broker, runDirectory: directory + "/run",
                                                  scrapeInterval: scrapeInterval, dashboards: dashboards) : nil
        let services: [BlockingService] = [broker, service]
        let threadsRunning = services.map { s in Thread { try? s.runBlocking() } }
        threadsRunning.forEach { $0.start() }
        let samples = SampleBox()
        let monitor = Thread {
            while !samples.stop {
                samples.append(ResourceUsage.residentBytes ?? 0)
                Thread.sleep(forTimeInterval: 1)
            }
        }
        monitor.start()
        var generator = LoadGenerator(endpoints: endpoints, trainers: trainers, specs: core.specs, seconds: seconds)
        generator.threads = threads
        generator.curve = keys?.client("load")
        if let watching {
            try watching.run(generator, rounds: rounds)
            samples.stop = true
            services.forEach { $0.stop() }
            Thread.join(threadsRunning + [monitor])
            print("\(trainers) simulated trainers, \(Int(seconds)) s of sending per phase (+ drain), durability \(durability):")
            watching.printReport()
            if try watching.lost(in: directory + "/run/ledger.sqlite") > 0 { throw RunFailure("acknowledged updates missing from the ledger") }
            return
        }
        var phases: [Phase] = []
        for round in 0..<(flood ? rounds : 1) {
            generator.namePrefix = "load\(round)q"
            phases.append(try Phase.run(generator, flooder: nil, samples: samples))
            guard flood else { break }
            generator.namePrefix = "load\(round)f"
            // A member of its own each round, so that every flooded phase starts with a flooder not yet suspended.
            var arguments = ["bench", "flood", "--endpoint", endpoints.trainers, "--as", "flooder-\(round)", "--seconds", "\(seconds + generator.drainSeconds)",
                             "--seed", "\(floodSeed + UInt64(round))", "--impersonate", "load\(round)f-0,aggregator"]
            if let keys { arguments += ["--key", keys.directory + "/flooder-\(round)", "--broker-key", keys.directory + "/broker.public"] }
            phases.append(try Phase.run(generator, flooder: arguments, log: directory + "/flooder.log", samples: samples))
        }
        if flood {  // every flooded phase between two quiet ones: a drift of the machine's speed cancels out
            generator.namePrefix = "load\(rounds)q"
            phases.append(try Phase.run(generator, flooder: nil, samples: samples))
        }
        samples.stop = true
        let refused = broker.counters.refused
        services.forEach { $0.stop() }
        Thread.join(threadsRunning + [monitor])
        let ledger = try Ledger(path: directory + "/run/ledger.sqlite")
        let recorded = try ledger.acceptedUpdateIDs()
        var acknowledged = Set<String>()
        for phase in phases { acknowledged.formUnion(phase.report.acknowledgedIDs) }
        let lost = acknowledged.subtracting(recorded).count
        let unacknowledged = phases.reduce(0) { $0 + $1.report.unacknowledged }
        print("\(trainers) simulated trainers, \(Int(seconds)) s of sending per phase (+ drain), updates of \(core.specs.reduce(0) { $0 + $1.count } * 4) bytes, durability \(durability)\(secure ? ", CURVE" : ""):")
        for phase in phases { print("  " + phase.line) }
        if flood {
            let quiet = phases.filter { $0.flooderCPU == nil }.map(\.rate), flooded = phases.filter { $0.flooderCPU != nil }.map(\.rate)
            // Each flooded phase against the mean of the quiet phases on either side of it.
            let kept = stride(from: 1, to: phases.count - 1, by: 2).map { i in phases[i].rate / max((phases[i - 1].rate + phases[i + 1].rate) / 2, 1e-9) }
            print(String(format: "  median acknowledged updates/s: %.0f without the flood, %.0f with it", median(quiet), median(flooded)))
            print("  throughput kept under the flood (each flooded phase / mean of the quiet phases around it): "
                  + kept.map { String(format: "%.0f%%", 100 * $0) }.joined(separator: ", ") + String(format: "; median %.0f%%", 100 * median(kept)))
            print("  the broker refused: " + refused.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        let rss = samples.values
        let half = Array(rss.dropFirst(rss.count / 2))
        print("""
              acknowledged but missing from the ledger: \(lost)   (must be 0); never acknowledged: \(unacknowledged)
              resident memory per second (broker, aggregator and load in one process): \(rss.map { String(format: "%.0f", Double($0) / 1_048_576) }.joined(separator: " ")) MiB
              second half: min \(formatBytes(half.min() ?? 0)), max \(formatBytes(half.max() ?? 0)) (flat if these are close)
            """)
        if lost > 0 || unacknowledged > 0 { throw RunFailure("\(lost) acknowledged updates missing, \(unacknowledged) never acknowledged") }
    }

    /// One load phase, with or without a flooding process alongside.
    struct Phase {
        var report: LoadGenerator.Report
        var elapsed: Double
        var peakRSS: Int
        /// CPU seconds the flooding process used (nil: a quiet phase), and what it said.
        var flooderCPU: Double?
        var flooderSaid = ""
        var rate: Double { Double(report.acknowledged) / elapsed }

        static func run(_ generator: LoadGenerator, flooder arguments: [String]?, log: String = "", samples: SampleBox) throws -> Phase {
            let before = samples.values.count
            let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            let flooder = try arguments.map { arguments in
                try? FileManager.default.removeItem(atPath: log)  // this phase's words only
                return try ChildProcess(name: "flooder", executable: me, arguments: arguments, log: log)
            }
            if flooder != nil { usleep(300_000) }  // its handshake done, the flood under way
            let t0 = now()
            let report = try generator.run()
            let elapsed = now() - t0
            var phase = Phase(report: report, elapsed: elapsed, peakRSS: samples.values.dropFirst(before).max() ?? 0)
            if let flooder {
                stop([flooder], grace: 5)
                phase.flooderCPU = flooder.cpuSeconds
                phase.flooderSaid = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").last.map(String.init) ?? ""
            }
            return phase
        }

        var line: String {
            func ms(_ v: Double) -> String { String(format: "%.1f ms", v * 1000) }
            let what = flooderCPU.map { String(format: "flooded (flooder: %@; %.1f CPU-s)", flooderSaid, $0) } ?? "quiet"
            return String(format: "%@: %d sent, %d acknowledged, %.0f acknowledged/s; latency p50 %@ p99 %@; peak resident %@", what,
                          report.sent, report.acknowledged, rate, ms(report.percentile(0.5)), ms(report.percentile(0.99)), formatBytes(peakRSS))
        }
    }
}

/// One member flooding a broker with garbage at full speed, to test its defences (your own broker only).
struct BenchFloodCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flood",
        abstract: "Flood a broker as one misbehaving member: random frames, corrupted and forged messages, at full speed.")

    @Option(help: "The broker's address for trainers.") var endpoint: String
    @Option(name: .customLong("as"), help: "Routing id to connect with (the member's name).") var routingID: String
    @Option(help: "CURVE key pair prefix of the member (<prefix>.public, <prefix>.secret).") var key: String?
    @Option(help: "The broker's public key file, with --key.") var brokerKey: String?
    @Option(help: "Other members' names to send HELLOs and UPDATEs as, comma-separated.") var impersonate: String = "someone-else"
    @Option(help: "Seconds to flood (SIGTERM stops it sooner).") var seconds: Double = 10
    @Option(help: "Seed of the message mix.") var seed: UInt64 = 1
    @Flag(help: "Never read the broker's replies.") var noRead = false

    func validate() throws {
        guard (key == nil) == (brokerKey == nil) else { throw ValidationError("--key and --broker-key go together") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
    }

    func run() throws {
        StopSignal.install()
        var flooder = Flooder(endpoint: endpoint, curve: try key.map { try CurveClient.load(prefix: $0, brokerKeyFile: brokerKey!) },
                              routingID: routingID, seconds: seconds)
        flooder.otherNames = impersonate.split(separator: ",").map(String.init)
        flooder.seed = seed
        flooder.readsReplies = !noRead
        let t0 = now()
        let report = try flooder.run { StopSignal.requested }
        print(String(format: "%d messages, %@ in %.1f s, %d replies read", report.sent, formatBytes(report.bytes), now() - t0, report.replies))
    }
}

/// Key pairs for a secure benchmark: broker, aggregator, one shared by the simulated trainers
/// ("load", open membership), and one for each flooder ("flooder-<i>"), saved in `directory`.
struct BenchKeys {
    let directory: String
    let broker: BrokerSecurity
    private let pairs: [String: CurveKeyPair]

    init(directory: String, flooders: Int) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var pairs: [String: CurveKeyPair] = [:]
        let flooderNames = (0..<flooders).map { "flooder-\($0)" }
        for name in ["broker", "aggregator", "load"] + flooderNames {
            pairs[name] = try CurveKeyPair.generate()
            try pairs[name]!.save(prefix: directory + "/" + name)
        }
        let allowed = directory + "/allowed.toml"
        try AllowList.text(trainers: (["load"] + flooderNames).map { ($0, pairs[$0]!.publicKey) }, subscribers: [],
                           aggregators: [("aggregator", pairs["aggregator"]!.publicKey)]).write(toFile: allowed, atomically: true, encoding: .utf8)
        broker = BrokerSecurity(keys: pairs["broker"]!, allowed: try AllowList(path: allowed), membership: .open)
        self.pairs = pairs
    }

    func client(_ name: String) -> CurveClient { CurveClient(brokerKey: broker.keys.publicKey, keys: pairs[name]!) }
}

/// The resident-memory samples a monitor thread takes until it is told to stop.
final class SampleBox: Sendable {
    private let samples = Mutex<[Int]>([])
    private let stopped = Atomic(false)
    var stop: Bool {
        get { stopped.load(ordering: .acquiring) }
        set { stopped.store(newValue, ordering: .releasing) }
    }
    var values: [Int] { samples.withLock { $0 } }
    func append(_ v: Int) { samples.withLock { $0.append(v) } }
}
