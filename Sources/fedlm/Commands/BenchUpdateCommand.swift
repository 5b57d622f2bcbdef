import ArgumentParser
import CFedLMRuntime
import FedLMAggregation
import FedLMFederation
import FedLMModel
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation
import Synchronization

/// The cost of one federated update for a ~10M-parameter model, part by part, against raw
/// libzmq and memory bandwidth measured in the same run.
struct BenchUpdateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update",
        abstract: "Per-update cost (encode, transfer, decode, apply+persist), full exchange time, and throughput vs raw libzmq.")

    @Option(help: "Rounds to time (medians are reported).") var rounds: Int = 7
    @Option(help: "Model width (8 layers, vocabulary 8192): 288 gives about 10M parameters.") var width: Int = 288
    @Option(help: "Where to put the benchmark's run directory.") var directory: String = "runs/bench-update"
    @Option(help: "machine (fsync before each ack) or process (survives a killed aggregator, not a power cut).")
    var durability: String = "machine"

    func run() throws {
        Runtime.announce()
        let config = GPT2Config(layers: 8, embedding: width, heads: 8, context: 256, vocabulary: 8192)
        try config.validate()
        guard let mode = AggregationConfig.Durability(rawValue: durability) else { throw ValidationError("--durability is machine or process") }
        let bench = UpdateBench(config: config, rounds: rounds, directory: directory, durability: mode)
        print(String(format: "model: %d parameters (%.1f MB of FP32 per update)", config.parameterCount, bench.bytes / 1e6))
        try? FileManager.default.removeItem(atPath: directory)
        let memory = bench.memory()
        let raw = try bench.rawOneHop()
        let parts = try bench.parts()
        let exchange = try bench.throughBroker()
        print(report(bench, memory, raw, parts, exchange))
    }

    func report(_ b: UpdateBench, _ memory: UpdateBench.Memory, _ raw: UpdateBench.Raw, _ parts: UpdateBench.Parts,
                _ x: UpdateBench.Exchange) -> String {
        let rounds = b.rounds
        let e2eGBs = b.bytes / median(x.updateT) / 1e9
        let rawGBs = max(raw.copyingGBs, raw.zeroCopyGBs)
        let rawBrokerGBs = max(x.rawBrokerCopyingGBs, x.rawBrokerZeroCopyGBs)
        let transfer = median(x.updateT) - median(parts.encodeT) - median(parts.applyT)
        let strategyGBs = b.bytes / median(parts.strategyT) / 1e9
        func ms(_ v: [Double]) -> String { String(format: "%7.1f ms", 1000 * median(v)) }
        func f(_ format: String, _ v: Double) -> String { String(format: format, v) }
        return """
            medians of \(rounds) rounds, durability \(durability):
              trainer: encode update (CRC-32C per 1 MiB chunk; sent from where the values lie)  \(ms(parts.encodeT))
              transfer through broker + per-chunk work on arrival (remainder)  \(f("%7.1f ms", 1000 * transfer))
                per-chunk work alone (CRC, finite values, norm, copy, file write)  \(ms(parts.receiveT))
              aggregator after the last chunk: apply, commit file, ledger  \(ms(parts.applyT))
                the same, written whole into fresh pages (first updates after a start)  \(ms(parts.coldT))
                of which the strategy's arithmetic                       \(ms(parts.strategyT))
            update (send -> ack), end to end                             \(ms(x.updateT))
            fetch release                                                \(ms(x.fetchT))
            full exchange: fetch + update + ack                          \(ms(x.exchangeT))   (target < 100 ms)
            throughput: update \(f("%.2f", e2eGBs)) GB/s vs raw libzmq \(f("%.2f", rawGBs)) GB/s = \(f("%.0f%%", 100 * e2eGBs / rawGBs))   (target >= 80%)
              (raw libzmq, one hop, 1 MiB messages: \(f("%.2f", raw.copyingGBs)) GB/s copying, \(f("%.2f", raw.zeroCopyGBs)) GB/s without copies; as one multipart message of 1 MiB frames: \(f("%.2f", raw.multipartGBs)) GB/s)
            throughput: update vs raw libzmq through the same broker \(f("%.2f", rawBrokerGBs)) GB/s = \(f("%.0f%%", 100 * e2eGBs / rawBrokerGBs))
              (raw through the broker: \(f("%.2f", x.rawBrokerCopyingGBs)) GB/s copying, \(f("%.2f", x.rawBrokerZeroCopyGBs)) GB/s without copies; the faster is the reference)
            CPU per \(f("%.1f", b.bytes / 1e6)) MB, all threads: raw libzmq through the broker without copies \(f("%.1f", 1000 * (x.rawCPU.zmq + x.rawCPU.other) / Double(rounds))) ms (libzmq I/O threads \(f("%.1f", 1000 * x.rawCPU.zmq / Double(rounds))) ms); an update \(f("%.1f", 1000 * (x.updateCPU.zmq + x.updateCPU.other) / Double(rounds))) ms (libzmq I/O threads \(f("%.1f", 1000 * x.updateCPU.zmq / Double(rounds))) ms, FedLM's threads \(f("%.1f", 1000 * x.updateCPU.other / Double(rounds))) ms); this machine has \(ProcessInfo.processInfo.activeProcessorCount) cores
            throughput, \(x.senders) trainers each with one update in flight (\(x.pipelinedUpdates) updates): \(f("%.2f", x.pipelinedGBs)) GB/s = \(f("%.0f%%", 100 * x.pipelinedGBs / rawGBs)) of raw one-hop, \(f("%.0f%%", 100 * x.pipelinedGBs / rawBrokerGBs)) of raw through the broker
            CRC-32C of one update: \(f("%.1f", 1000 * memory.crcParallelT)) ms (three chains) vs \(f("%.1f", 1000 * memory.crcSerialT)) ms (one chain) = \(f("%.1fx", memory.crcSerialT / memory.crcParallelT))
            application: \(f("%.1f", strategyGBs)) GB/s of updates applied vs single-thread copy \(f("%.1f", memory.copyGBs)) GB/s = \(f("%.0f%%", 100 * strategyGBs / memory.copyGBs))   (target >= 50%)
            """
    }
}

/// The stages of `fedlm bench update`, each a method returning its medians.
final class UpdateBench {
    let config: GPT2Config
    let rounds: Int
    let directory: String
    let durability: AggregationConfig.Durability
    /// Bytes of one F32 update.
    let bytes: Double
    let specs: [TensorSpec]
    let delta: [Float]
    let codec = WireCodec()
    let context = ZMQContext()
    /// An update's bytes as 1 MiB messages, for the raw libzmq references.
    let frame = [UInt8](repeating: 7, count: 1 << 20)
    let frameCount: Int
    let body: SharedFrames

    init(config: GPT2Config, rounds: Int, directory: String, durability: AggregationConfig.Durability) {
        self.config = config
        self.rounds = rounds
        self.directory = directory
        self.durability = durability
        bytes = Double(config.parameterCount * 4)
        specs = ParameterLayout(config: config).entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
        var rng = SeededGenerator(seed: 3)
        delta = (0..<config.parameterCount).map { _ in Float(rng.nextUniform() - 0.5) * 1e-3 }
        frameCount = Int(bytes) / (1 << 20) + 1
        body = SharedFrames(head: [], body: [UInt8](repeating: 7, count: frameCount << 20), bodyFrameBytes: 1 << 20)
    }

    var aggregation: AggregationConfig {
        var a = AggregationConfig()
        a.mode = .fedbuff
        a.bufferSize = 1
        a.serverOptimizer = .sgd(learningRate: 1)
        a.checkpointEvery = 1_000_000
        a.maxStaleness = 1_000_000
        a.durability = durability
        return a
    }

    struct Memory { var copyGBs: Double, crcSerialT: Double, crcParallelT: Double }

    /// Memory bandwidth (one thread copying 400 MB) and CRC-32C over an update's bytes: one
    /// dependent chain against three interleaved ones.
    func memory() -> Memory {
        let big = FloatBuffer(count: 100_000_000), big2 = FloatBuffer(count: 100_000_000)
        big2.copy(from: big)
        let copyGBs = median((0..<3).map { _ in
            let t0 = now()
            big2.copy(from: big)
            return 400e6 / (now() - t0) / 1e9
        })
        func crcSeconds(_ crc: (UInt32, UnsafeRawPointer?, Int) -> UInt32) -> Double {
            median((0..<5).map { _ in
                let t0 = now()
                _ = crc(0, UnsafeRawPointer(big.pointer), Int(bytes))
                return now() - t0
            })
        }
        return Memory(copyGBs: copyGBs, crcSerialT: crcSeconds(fedlm_crc32c_serial), crcParallelT: crcSeconds(fedlm_crc32c))
    }

    struct Raw { var copyingGBs: Double, multipartGBs: Double, zeroCopyGBs: Double }

    /// Raw libzmq: the same bytes DEALER -> ROUTER over TCP loopback, small reply; as separate
    /// 1 MiB messages (the fastest way libzmq moves them, and how FedLM streams tensors), and for
    /// context as one multipart message of 1 MiB frames. Both as a plain libzmq user would (send
    /// and receive copy) and without copies (zero-copy send, messages left in libzmq's buffers),
    /// as FedLM moves them; the faster one is the reference.
    func rawOneHop() throws -> Raw {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(router.lastEndpoint)
        defer { dealer.close(); router.close() }
        let echo = Sink(socket: router, replyAfter: frameCount, counting: { $0 - 1 })
        defer { echo.stop() }
        func raw(multipart: Bool = false, zeroCopy: Bool = false) throws -> Double {
            median(try (0..<rounds).map { _ in
                let t0 = now()
                if multipart { try dealer.send([[UInt8]](repeating: frame, count: frameCount)) } else if zeroCopy {
                    for i in 0..<frameCount { try dealer.send([], shared: body, range: i..<(i + 1)) }
                } else {
                    for _ in 0..<frameCount { try dealer.send([frame]) }
                }
                _ = try dealer.receive()
                return Double(frameCount << 20) / (now() - t0) / 1e9
            })
        }
        let copying = try raw(), multipart = try raw(multipart: true)
        echo.inPlace.set()
        return Raw(copyingGBs: copying, multipartGBs: multipart, zeroCopyGBs: try raw(zeroCopy: true))
    }

    struct Parts { var coldT: [Double], encodeT: [Double] = [], receiveT: [Double] = [], applyT: [Double] = [], strategyT: [Double] = [] }

    /// The parts of an update, each alone, as the aggregator takes a stream: each chunk checked,
    /// assembled and written to the update's file as it arrives (receive), then the rest after
    /// the last chunk (apply); and the strategy's arithmetic alone (FedBuff accumulate + SGD step).
    func parts() throws -> Parts {
        let core = try AggregatorCore(runDirectory: directory + "/parts", config: aggregation, initialModel: try GPT2Model(config: config, seed: 1))
        _ = try core.handle(.hello(Hello(trainerID: "bench")), from: "bench")
        var p = Parts(coldT: try BenchUpdateCommand.warmUp(core, updates: rounds, specs: specs, delta: delta))
        nonisolated(unsafe) let partsCore = core
        for r in 0..<rounds {
            let message = Message.update(UpdateInfo(updateID: "p\(r)", trainerID: "bench", baseVersion: core.version, tokens: 1, localSteps: 1),
                                         TensorPayload(specs: specs, values: delta))
            var t0 = now()
            _ = SharedFrames(message, codec: codec)
            p.encodeT.append(now() - t0)
            let stream = MessageStream.split(codec.encode(message))
            var assembler = StreamAssembler(codec: codec)
            assembler.destinations = { info, count in partsCore.incomingUpdate(info, count: count) }
            t0 = now()
            var decoded: Message?
            for m in stream { decoded = try assembler.accept(m) }
            p.receiveT.append(now() - t0)
            t0 = now()
            _ = try core.handle(decoded!, from: "bench")
            p.applyT.append(now() - t0)
        }
        let strategy = FedBuff(bufferSize: 1, optimizer: .sgd(learningRate: 1), layout: ParameterLayout(config: config))
        let d = ParameterVector(layout: ParameterLayout(config: config))
        for _ in 0..<rounds {
            let t0 = now()
            _ = strategy.receive(Contribution(delta: d, staleness: 0), model: core.model.parameters)
            p.strategyT.append(now() - t0)
        }
        return p
    }

    struct Exchange {
        var rawBrokerCopyingGBs = 0.0, rawBrokerZeroCopyGBs = 0.0
        var rawCPU = (zmq: 0.0, other: 0.0), updateCPU = (zmq: 0.0, other: 0.0)
        var fetchT: [Double] = [], updateT: [Double] = [], exchangeT: [Double] = []
        var senders = 3, pipelinedUpdates = 0, pipelinedGBs = 0.0
    }

    /// The full exchange through a real broker and aggregator: raw libzmq through the broker
    /// first (the floor of its extra hop), then fetch + update + ack one at a time, then several
    /// trainers each keeping one update in flight.
    func throughBroker() throws -> Exchange {
        let endpoints = BrokerEndpoints.loopback()
        let broker = BrokerService(endpoints: endpoints)
        let core = try AggregatorCore(runDirectory: directory + "/e2e", config: aggregation, initialModel: try GPT2Model(config: config, seed: 1),
                                      log: { print($0) })
        var x = Exchange()
        let perSender = max(2, rounds / 2)
        _ = try BenchUpdateCommand.warmUp(core, updates: rounds + x.senders * perSender, specs: specs, delta: delta)
        let service = AggregatorService(core: core, endpoints: endpoints)
        let brokerThread = Thread { try? broker.runBlocking() }
        brokerThread.start()
        try rawThroughBroker(endpoints, into: &x)
        let aggregatorThread = Thread { try? service.runBlocking() }
        aggregatorThread.start()
        try exchanges(endpoints, into: &x)
        let t0 = now()
        try pipelined(endpoints, senders: x.senders, perSender: perSender)
        x.pipelinedUpdates = x.senders * perSender
        x.pipelinedGBs = Double(x.pipelinedUpdates) * bytes / (now() - t0) / 1e9
        service.stop()
        broker.stop()
        Thread.join([aggregatorThread, brokerThread])
        return x
    }

    /// An update's stream (a head and 1 MiB CHUNK messages, as a trainer sends it and the
    /// broker's gate checks it), trainer -> broker -> a bare DEALER in the aggregator's seat that
    /// only counts messages: the floor of the broker's extra hop, without FedLM's work at either end.
    private func rawThroughBroker(_ endpoints: BrokerEndpoints, into x: inout Exchange) throws {
        let rawAggregator = try ZMQSocket(context, .dealer)
        try rawAggregator.setRoutingID(Array("raw-aggregator".utf8))
        try rawAggregator.connect(endpoints.aggregator)
        try rawAggregator.send([[]] + codec.encode(.heartbeat))  // tells the broker where it is
        let rawTrainer = try ZMQSocket(context, .dealer)
        try rawTrainer.setRoutingID(Array("raw-trainer".utf8))
        try rawTrainer.connect(endpoints.trainers)
        defer { rawTrainer.close(); rawAggregator.close() }
        let update = Message.update(UpdateInfo(updateID: "raw", trainerID: "raw-trainer", baseVersion: 0, tokens: 1, localSteps: 1),
                                    TensorPayload(specs: specs, values: delta))
        let messages = MessageStream.split(codec.encode(update))
        let shared = SharedFrames(update, codec: codec)
        let streamBytes = Double(messages.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } })
        let sink = Sink(socket: rawAggregator, replyAfter: messages.count,
                        reply: codec.encode(.ack(Ack(updateID: "raw", outcome: .applied, version: 0))), counting: { _ in 1 })
        defer { sink.stop() }
        usleep(300_000)  // the heartbeat reaches the broker first
        x.rawBrokerCopyingGBs = median(try (0..<rounds).map { _ in
            let t0 = now()
            for m in messages { try rawTrainer.send(m) }
            _ = try rawTrainer.receive()
            return streamBytes / (now() - t0) / 1e9
        })
        sink.inPlace.set()
        let cpu0 = ThreadCPU.now()
        x.rawBrokerZeroCopyGBs = median(try (0..<rounds).map { _ in
            let t0 = now()
            try rawTrainer.sendStreamed(shared)
            _ = try rawTrainer.receive()
            return streamBytes / (now() - t0) / 1e9
        })
        x.rawCPU = ThreadCPU.now().since(cpu0)
    }

    /// One trainer: fetch, update, ack, `rounds` times.
    private func exchanges(_ endpoints: BrokerEndpoints, into x: inout Exchange) throws {
        let trainer = try ZMQSocket(context, .dealer)
        defer { trainer.close() }
        try trainer.setRoutingID(Array("bench".utf8))
        try trainer.connect(endpoints.trainers)
        var assembler = StreamAssembler(codec: codec)
        func call(_ m: Message) throws -> Message { try BenchUpdateCommand.call(m, on: trainer, assembler: &assembler, codec: codec) }
        _ = try call(.hello(Hello(trainerID: "bench")))
        for r in 0..<rounds {
            let t0 = now()
            guard case .release(let info, _) = try call(.fetch(Fetch())) else { throw ValidationError("expected a release") }
            let cpu0 = ThreadCPU.now()
            let t1 = now()
            guard case .ack = try call(.update(UpdateInfo(updateID: "e\(r)", trainerID: "bench", baseVersion: info.version, tokens: 1, localSteps: 1),
                                               TensorPayload(specs: specs, values: delta))) else { throw ValidationError("expected an ack") }
            let t2 = now()
            let cpu = ThreadCPU.now().since(cpu0)
            x.updateCPU = (x.updateCPU.zmq + cpu.zmq, x.updateCPU.other + cpu.other)
            x.fetchT.append(t1 - t0)
            x.updateT.append(t2 - t1)
            x.exchangeT.append(t2 - t0)
        }
    }

    /// Several trainers, each keeping one update in flight (as a federation runs): transfers
    /// overlap the aggregator's work on the previous update.
    private func pipelined(_ endpoints: BrokerEndpoints, senders: Int, perSender: Int) throws {
        let failures = FailureBox()
        let finished = DispatchGroup()
        let (context, codec, specs, delta) = (context, codec, specs, delta)
        let sending = (0..<senders).map { k in
            finished.enter()
            return Thread {
                defer { finished.leave() }
                do {
                    let socket = try ZMQSocket(context, .dealer)
                    defer { socket.close() }
                    try socket.setRoutingID(Array("bench-\(k)".utf8))
                    try socket.connect(endpoints.trainers)
                    var assembler = StreamAssembler(codec: codec)
                    guard case .welcome(let w) = try BenchUpdateCommand.call(.hello(Hello(trainerID: "bench-\(k)")), on: socket, assembler: &assembler, codec: codec) else {
                        throw ValidationError("expected WELCOME")
                    }
                    for r in 0..<perSender {
                        let update = Message.update(UpdateInfo(updateID: "t\(k)-\(r)", trainerID: "bench-\(k)", baseVersion: w.latestVersion,
                                                               tokens: 1, localSteps: 1), TensorPayload(specs: specs, values: delta))
                        guard case .ack = try BenchUpdateCommand.call(update, on: socket, assembler: &assembler, codec: codec) else { throw ValidationError("expected an ack") }
                    }
                } catch { failures.set(error) }
            }
        }
        sending.forEach { $0.start() }
        finished.wait()
        if let failure = failures.error { throw failure }
    }
}

/// A thread that receives 1 MiB messages on `socket` and answers each `replyAfter` of them
/// (counted by `counting`, from a message's frame count) with `reply`, copying them out or, once
/// `inPlace` is set, leaving them in libzmq's buffers.
final class Sink: @unchecked Sendable {
    let stopFlag = StopFlag(), inPlace = StopFlag()
    private let thread: Thread

    init(socket: ZMQSocket, replyAfter: Int, reply: [[UInt8]] = [[1]], counting: @escaping @Sendable (Int) -> Int) {
        let (stopFlag, inPlace) = (stopFlag, inPlace)
        thread = Thread {
            var got = 0
            while !stopFlag.isSet {
                let peer: [UInt8]
                if inPlace.isSet {
                    guard let m = try? socket.receiveInPlace(timeout: 50) else { continue }
                    peer = Array(m.frame(0))
                    got += counting(m.count)
                } else {
                    guard let m = try? socket.receive(timeout: 50) else { continue }
                    peer = m[0]
                    got += counting(m.count)
                }
                if got >= replyAfter { _ = try? socket.send([peer] + reply); got = 0 }
            }
        }
        thread.start()
    }

    func stop() {
        stopFlag.set()
        Thread.join([thread])
    }
}

final class FailureBox: Sendable {
    private let first = Mutex<Error?>(nil)
    var error: Error? { first.withLock { $0 } }
    func set(_ e: Error) { first.withLock { if $0 == nil { $0 = e } } }
}

extension BenchUpdateCommand {
    /// Brings `core` to a running aggregator's steady state, where each update overwrites the
    /// file of one a checkpoint retired: `updates` updates (their apply + persist times, into
    /// fresh page-cache pages, are returned), a checkpoint, one more update and a checkpoint, which
    /// retires the first ones as spares.
    static func warmUp(_ core: AggregatorCore, updates: Int, specs: [TensorSpec], delta: [Float]) throws -> [Double] {
        _ = try core.handle(.hello(Hello(trainerID: "warm-up")), from: "warm-up")
        func update(_ i: Int) throws -> Double {
            let t0 = now()
            _ = try core.handle(.update(UpdateInfo(updateID: "warm-\(i)", trainerID: "warm-up", baseVersion: core.version, tokens: 1, localSteps: 1),
                                        TensorPayload(specs: specs, values: delta)), from: "warm-up")
            return now() - t0
        }
        let times = try (0..<updates).map(update)
        try core.checkpoint()
        _ = try update(updates)
        try core.checkpoint()
        return times
    }

    /// Sends `m` (streamed) like a trainer and returns the reply, resending after silence or
    /// while the aggregator is not connected yet.
    static func call(_ m: Message, on socket: ZMQSocket, assembler: inout StreamAssembler, codec: WireCodec) throws -> Message {
        let frames = SharedFrames(m, codec: codec)
        func send() throws { try socket.sendStreamed(frames) }
        try send()
        var attempts = 0
        while true {
            guard let reply = try socket.receiveInPlace(timeout: 5_000) else {
                // Lost on the way (e.g. to the raw aggregator that just left): once more, like a trainer.
                attempts += 1
                if attempts == 12 { throw ValidationError("no reply within 60 s") }
                try send()
                continue
            }
            guard let decoded = try assembler.accept(buffers: reply.frames) else { continue }  // a release streaming in
            if case .error(let e) = decoded, e.code == .unavailable { usleep(100_000); try send(); continue }
            return decoded
        }
    }
}
