import ArgumentParser
import CFedLMRuntime
import FedLMFederation
import FedLMModel
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation

/// The aggregator at scale: a real broker and aggregator (separate processes) fed synthetic
/// updates of a large model through real sockets, with the aggregator's peak resident memory
/// against the model's F32 size, and its time per update.
struct BenchAggregatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "aggregator",
        abstract: "Aggregator peak memory (x the model's F32 size) and time per update, for a large model (e.g. gpt2-124m, gpt2-350m, gpt2-1.3b).",
        discussion: "Starts `fedlm broker` and `fedlm aggregator` (FedBuff, K = 2, plain SGD: the lightest server state) on a run directory of its own, fetches one release and sends --updates synthetic F32 updates, each only when the one before was acknowledged. The sender generates each 1 MiB chunk as it goes, so it never holds a whole update.")

    @Option(help: "Model config (name or path).") var config: String = "gpt2-124m"
    @Option(help: "Updates to send.") var updates: Int = 6
    @Option(help: "Where to put the run directory (deleted before and after).") var directory: String = "runs/bench-aggregator"
    @Option(help: "machine (fsync before each ack) or process.") var durability: String = "machine"
    @Option(help: "Prepared data directory (the aggregator loads its validation split; nothing is evaluated).") var data: String = "runs/demo-data/shards"
    @Option(help: "Fetch the release as a trainer does, every chunk checked and kept: this many chunks at a time (a trainer's default is 64), or 0 for the whole release at once. Without it the chunks are counted and dropped.")
    var fetchWindow: Int?
    @Option(help: "The broker's trainer port (the aggregator's is the next); random when omitted. For shaping a member's link with tc.")
    var port: Int?

    func validate() throws {
        guard updates >= 2 || (updates == 0 && fetchWindow != nil) else {
            throw ValidationError("--updates must be at least 2 (one buffered, one applied), or 0 with --fetch-window (the fetch alone)")
        }
        if let port, !(1024...65_000).contains(port) { throw ValidationError("--port \(port) is not between 1024 and 65000") }
        guard ["machine", "process"].contains(durability) else { throw ValidationError("--durability is machine or process") }
        if let fetchWindow, fetchWindow < 0 { throw ValidationError("--fetch-window is a chunk count, or 0 for whole releases") }
    }

    func run() throws {
        let model = try ConfigResolution.load(config).model
        let count = model.parameterCount
        let bytes = Double(count * 4)
        print(String(format: "model %@: %d parameters, %.2f GB in F32", config, count, bytes / 1e9))
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let endpoints = port.map { BrokerEndpoints.loopback(port: $0) } ?? BrokerEndpoints.loopback()
        let topology = directory + "/topology.toml"
        try topologyText(endpoints).write(toFile: topology, atomically: true, encoding: .utf8)
        setenv("FEDLM_TRACE_TIMING", "1", 1)
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let broker = try ChildProcess(name: "broker", executable: me, arguments: ["broker", "--topology", topology], log: directory + "/broker.log")
        let started = now()
        let aggregator = try ChildProcess(name: "aggregator", executable: me, arguments: ["aggregator", "--topology", topology],
                                          log: directory + "/aggregator.log")
        defer { stop([aggregator, broker], grace: 120) }
        let sender = try SyntheticSender(endpoints: endpoints, count: count, specs: ParameterLayout(config: model).entries.map { TensorSpec(name: $0.name, shape: $0.shape) })
        defer { sender.close() }
        let version = try sender.hello(aggregator: aggregator)
        let ready = now() - started
        var stages = [("started", ProcessStatus(pid: aggregator.pid))]
        let beforeFetch = ProcessStatus(pid: getpid())
        let fetch: Double
        if let fetchWindow {
            let kept = try sender.fetchKept(window: fetchWindow == 0 ? nil : fetchWindow)
            fetch = kept.seconds
            let me = ProcessStatus(pid: getpid())
            print(String(format: "release fetched %@ and kept in %.2f s: %d chunks, %d lost on the way and asked for again, %d requests; "
                         + "this fetcher's resident memory %.2f GB before, peak %.2f GB after (%.2fx the model)",
                         fetchWindow == 0 ? "whole" : "\(fetchWindow) chunks at a time", kept.seconds, kept.chunks, kept.gaps, kept.requests,
                         beforeFetch.resident / 1e9, me.peak / 1e9, me.peak / bytes))
        } else {
            fetch = try sender.fetch()
        }
        stages.append(("release sent", ProcessStatus(pid: aggregator.pid)))
        var latencies: [Double] = []
        for i in 0..<updates {
            let t0 = now()
            try sender.update(id: "bench-\(i)", base: version + i / 2)
            latencies.append(now() - t0)
            stages.append(("update \(i + 1)", ProcessStatus(pid: aggregator.pid)))
        }
        let memory = ProcessStatus(pid: aggregator.pid)
        let log = (try? String(contentsOfFile: directory + "/aggregator.log", encoding: .utf8)) ?? ""
        let handled = Self.handleTimes(in: log)
        let buffered = stride(from: 0, to: handled.count, by: 2).map { handled[$0] }
        let applied = stride(from: 1, to: handled.count, by: 2).map { handled[$0] }
        func ms(_ v: [Double]) -> String { v.isEmpty ? "n/a" : String(format: "%.0f ms", 1000 * median(v)) }
        print(String(format: "aggregator started (model made, checkpoint v0 written) in %.1f s; release fetched in %.2f s", ready, fetch))
        print("per update, medians of \(updates) (\(durability) durability): send -> ack \(ms(latencies)); aggregator's work after the last chunk: buffered \(ms(buffered)), applied (a new version) \(ms(applied))")
        print("aggregator's peak so far (GB) " + stages.map { String(format: "%@ %.2f", $0.0, $0.1.peak / 1e9) }.joined(separator: ", "))
        print(String(format: "aggregator peak resident memory %.2f GB = %.2fx the model's F32 size (resident at the end %.2f GB)",
                     memory.peak / 1e9, memory.peak / bytes, memory.resident / 1e9))
    }

    func topologyText(_ e: BrokerEndpoints) -> String {
        """
        name = "bench-aggregator"
        run_directory = "\(directory)/run"
        model = "\(ConfigResolution.resolve(config))"
        data = "\(data)"
        [broker]
        trainers = "\(e.trainers)"
        aggregator = "\(e.aggregator)"
        publish = "\(e.publish)"
        releases = "\(e.releases)"
        [aggregation]
        mode = "fedbuff"
        buffer_size = 2
        server_optimizer = "sgd"
        server_learning_rate = 1.0
        max_staleness = 1000
        checkpoint_every = 1000
        durability = "\(durability)"
        evaluate_every = 1000000
        [[trainer]]
        name = "bench"

        """
    }

    /// The aggregator's time from the last chunk to its reply, per update (FEDLM_TRACE_TIMING).
    static func handleTimes(in log: String) -> [Double] {
        log.split(separator: "\n").filter { $0.contains("timing update:") && $0.contains(" handle ") }.compactMap { line in
            guard let r = line.range(of: " handle ") else { return nil }
            return Double(line[r.upperBound...].prefix { $0.isNumber || $0 == "." }).map { $0 / 1000 }
        }
    }
}

/// VmHWM and VmRSS of a process, in bytes (0 once it has exited).
struct ProcessStatus {
    var peak = 0.0, resident = 0.0
    init(pid: pid_t) {
        guard let r = ProcessMemory.residentBytes(pid: pid) else { return }
        (peak, resident) = (Double(r.peak), Double(r.current))
    }
}

/// A trainer that sends F32 updates of `count` values made chunk by chunk from one random 1 MiB
/// pattern, so it never holds a whole update (its own memory stays small next to the aggregator's).
final class SyntheticSender {
    let socket: ZMQSocket
    let context = ZMQContext()
    var codec = WireCodec()
    let count: Int
    let specs: [TensorSpec]
    private let pattern: [Float]
    private var assembler: StreamAssembler

    init(endpoints: BrokerEndpoints, count: Int, specs: [TensorSpec]) throws {
        self.count = count
        self.specs = specs
        codec.maxValues = max(codec.maxValues, count)
        var rng = SeededGenerator(seed: 7)
        pattern = (0..<(codec.chunkBytes / 4)).map { _ in Float(rng.nextNormal() * 1e-4) }
        socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array("bench".utf8))
        try socket.connect(endpoints.trainers)
        assembler = StreamAssembler(codec: codec)
    }

    func close() { socket.close() }

    /// Registers (retrying until the aggregator is up) and returns the version it holds.
    func hello(aggregator: ChildProcess) throws -> Int {
        while true {
            guard aggregator.isRunning else { throw RunFailure("the aggregator exited; see its log") }
            try socket.send(codec.encode(.hello(Hello(trainerID: "bench"))))
            if let reply = try receive(timeout: 5), case .welcome(let w) = reply { return w.latestVersion }
        }
    }

    /// Fetches the global release; returns the seconds it took. Its chunks are counted and
    /// dropped as they arrive (a receiver that checks and keeps them is slower than the broker's
    /// forwarding at a billion parameters: see docs/scale.md).
    func fetch() throws -> Double {
        let t0 = now()
        try socket.send(codec.encode(.fetch(Fetch())))
        while now() - t0 < 600 {
            guard let m = try socket.receiveInPlace(timeout: 1000) else { continue }
            guard m.count == 4, m.frame(1).first == MessageType.chunk.rawValue else { continue }
            let position = Array(m.frame(2))
            guard position.count == 8 else { continue }
            let index = position[0..<4].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            let count = position[4..<8].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            if index == count - 1 { return now() - t0 }
        }
        throw RunFailure("no release within 600 s")
    }

    /// Fetches the global release as a trainer does (`WindowedFetch`, `StreamAssembler` with every
    /// chunk checked and copied into place): in windows of `window` chunks, or whole (nil). A
    /// whole release the fetcher cannot keep up with loses chunks; those are counted, and the
    /// fetch starts again (up to 3 times) as a trainer's request timer would make it.
    func fetchKept(window: Int?) throws -> (seconds: Double, chunks: Int, gaps: Int, requests: Int) {
        var assembler = StreamAssembler(codec: codec)
        assembler.resumesReleases = window != nil
        var windows = window.map { WindowedFetch(window: $0) }
        let t0 = now()
        var requests = 0, lost = 0
        func request(_ f: Fetch) throws {
            try socket.send(codec.encode(.fetch(f)))
            requests += 1
        }
        try request(windows?.outgoing(Fetch()) ?? Fetch())
        var lastHeard = now()
        while now() - t0 < 3600 {
            guard let m = try socket.receiveInPlace(timeout: 1000) else {
                guard now() - lastHeard > 5 else { continue }
                // Silent for 5 s: resume (windows) or fetch again (whole), as a trainer's timer does.
                lastHeard = now()
                if let more = windows?.stalled(assembler) {
                    try request(more)
                } else {
                    guard requests < 4 || windows != nil else { throw RunFailure("the whole release lost \(lost) chunks in 4 tries") }
                    try request(windows?.outgoing(Fetch()) ?? Fetch())
                }
                continue
            }
            lastHeard = now()
            let message: Message?
            do { message = try assembler.accept(buffers: m.frames) } catch {
                lost += 1  // a whole release's gap ends its transfer; the rest of it is dropped
                continue
            }
            if let message {
                guard case .release(_, let payload) = message else { continue }
                return (now() - t0, (payload.values.count * 4 + codec.chunkBytes - 1) / codec.chunkBytes, lost + assembler.gaps, requests)
            }
            if let (more, _) = windows?.more(after: assembler) { try request(more) }
        }
        throw RunFailure("no release kept within an hour")
    }

    /// Sends one update chunk by chunk and waits for its ACK.
    func update(id: String, base: Int) throws {
        let perChunk = codec.chunkBytes / 4
        let chunks = (count + perChunk - 1) / perChunk
        let last = count - (chunks - 1) * perChunk
        let crc = pattern.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, $0.count) }
        let lastCRC = pattern.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, last * 4) }
        let crcs = [UInt32](repeating: crc, count: chunks - 1) + [lastCRC]
        let info = UpdateInfo(updateID: id, trainerID: "bench", baseVersion: base, tokens: 1, localSteps: 1)
        try socket.send(codec.updateHead(info, specs: specs, chunkCRCs: crcs))
        try pattern.withUnsafeBytes { bytes in
            for i in 0..<chunks {
                let frame = UnsafeRawBufferPointer(rebasing: bytes[0..<(i == chunks - 1 ? last * 4 : bytes.count)])
                try socket.send(MessageStream.chunkPrefix(index: i, count: chunks), copying: [frame])
            }
        }
        guard let reply = try receive(timeout: 600) else { throw RunFailure("update \(id): no answer within 600 s") }
        guard case .ack = reply else { throw RunFailure("update \(id): \(reply)") }
    }

    /// The next whole message (streamed releases assembled; heartbeats skipped).
    private func receive(timeout: Int32) throws -> Message? {
        let deadline = now() + Double(timeout)
        while now() < deadline {
            guard let m = try socket.receiveInPlace(timeout: 1000) else { continue }
            guard let message = try assembler.accept(buffers: m.frames) else { continue }
            if case .heartbeat = message { continue }
            return message
        }
        return nil
    }
}
