import ArgumentParser
import CFedLMRuntime
import FedLMAggregation
import FedLMFederation
import FedLMModel
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation

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
        let n = config.parameterCount
        let bytes = Double(n * 4)
        print(String(format: "model: %d parameters (%.1f MB of FP32 per update)", n, bytes / 1e6))
        try? FileManager.default.removeItem(atPath: directory)

        // 1. Memory bandwidth: one thread copying 400 MB.
        let big = FloatBuffer(count: 100_000_000), big2 = FloatBuffer(count: 100_000_000)
        big2.copy(from: big)
        let copyGBs = median((0..<3).map { _ in
            let t0 = now()
            big2.copy(from: big)
            return 400e6 / (now() - t0) / 1e9
        })

        // CRC-32C over an update's bytes: one dependent chain against the three interleaved ones.
        func crcSeconds(_ crc: (UInt32, UnsafeRawPointer?, Int) -> UInt32) -> Double {
            median((0..<5).map { _ in
                let t0 = now()
                _ = crc(0, UnsafeRawPointer(big.pointer), Int(bytes))
                return now() - t0
            })
        }
        let crcSerialT = crcSeconds(fedlm_crc32c_serial), crcParallelT = crcSeconds(fedlm_crc32c)

        // 2. Raw libzmq: the same bytes DEALER -> ROUTER over TCP loopback, small reply; as separate
        // 1 MiB messages (the fastest way libzmq moves them, and how FedLM streams tensors), and
        // for context as one multipart message of 1 MiB frames.
        let context = ZMQContext()
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(router.lastEndpoint)
        let frame = [UInt8](repeating: 7, count: 1 << 20)
        let frameCount = Int(bytes) / (1 << 20) + 1
        // Both as a plain libzmq user would (send and receive copy) and without copies (zero-copy
        // send, messages left in libzmq's buffers), as FedLM moves them; the faster one is the
        // reference, here and through the broker below.
        let body = SharedFrames(head: [], body: [UInt8](repeating: 7, count: frameCount << 20), bodyFrameBytes: 1 << 20)
        let stopEcho = StopBox(), echoInPlace = StopBox()
        let echo = Thread {
            var got = 0
            while !stopEcho.stop {
                let peer: [UInt8]
                if echoInPlace.stop {
                    guard let m = try? router.receiveInPlace(timeout: 50) else { continue }
                    peer = Array(m.frame(0))
                    got += m.count - 1
                } else {
                    guard let m = try? router.receive(timeout: 50) else { continue }
                    peer = m[0]
                    got += m.count - 1
                }
                if got >= frameCount { _ = try? router.send([peer, [1]]); got = 0 }
            }
        }
        echo.start()
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
        let rawCopyingGBs = try raw()
        let rawMultipartGBs = try raw(multipart: true)
        echoInPlace.stop = true
        let rawZeroCopyGBs = try raw(zeroCopy: true)
        let rawGBs = max(rawCopyingGBs, rawZeroCopyGBs)
        stopEcho.stop = true
        while echo.isExecuting { usleep(1000) }

        // 3. The parts of an update, each alone.
        let codec = WireCodec()
        let specs = ParameterLayout(config: config).entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
        var rng = SeededGenerator(seed: 3)
        let delta = (0..<n).map { _ in Float(rng.nextUniform() - 0.5) * 1e-3 }
        var aggregation = AggregationConfig()
        aggregation.mode = .fedbuff
        aggregation.bufferSize = 1
        aggregation.serverOptimizer = .sgd(learningRate: 1)
        aggregation.checkpointEvery = 1_000_000
        aggregation.maxStaleness = 1_000_000
        guard let mode = AggregationConfig.Durability(rawValue: durability) else { throw ValidationError("--durability is machine or process") }
        aggregation.durability = mode
        let core = try AggregatorCore(runDirectory: directory + "/parts", config: aggregation, initialModel: try GPT2Model(config: config, seed: 1))
        _ = try core.handle(.hello(Hello(trainerID: "bench")), from: "bench")
        let coldT = try Self.warmUp(core, updates: rounds, specs: specs, delta: delta)
        // As the aggregator takes a stream: each chunk checked, assembled and written to the
        // update's file as it arrives (receive), then the rest after the last chunk (apply).
        nonisolated(unsafe) let partsCore = core
        var encodeT: [Double] = [], receiveT: [Double] = [], applyT: [Double] = [], strategyT: [Double] = []
        for r in 0..<rounds {
            let message = Message.update(UpdateInfo(updateID: "p\(r)", trainerID: "bench", baseVersion: core.version, tokens: 1, localSteps: 1),
                                         TensorPayload(specs: specs, values: delta))
            var t0 = now()
            _ = SharedFrames(message, codec: codec)
            encodeT.append(now() - t0)
            let stream = MessageStream.split(codec.encode(message))
            var assembler = StreamAssembler(codec: codec)
            assembler.destinations = { _, count in partsCore.incomingUpdate(count: count) }
            t0 = now()
            var decoded: Message?
            for m in stream { decoded = try assembler.accept(m) }
            receiveT.append(now() - t0)
            t0 = now()
            _ = try core.handle(decoded!, from: "bench")
            applyT.append(now() - t0)
        }
        // The strategy's arithmetic alone (FedBuff accumulate + SGD step), for the bandwidth figure.
        let strategy = FedBuff(bufferSize: 1, optimizer: .sgd(learningRate: 1), layout: ParameterLayout(config: config))
        let d = ParameterVector(layout: ParameterLayout(config: config))
        for _ in 0..<rounds {
            let t0 = now()
            _ = strategy.receive(Contribution(delta: d, staleness: 0), model: core.model.parameters)
            strategyT.append(now() - t0)
        }
        // Update bytes applied per second, counted like the copy (bytes moved once).
        let strategyGBs = bytes / median(strategyT) / 1e9

        // 4. The full exchange through a real broker and aggregator.
        let endpoints = BrokerEndpoints.loopback()
        let broker = BrokerService(endpoints: endpoints)
        let e2eCore = try AggregatorCore(runDirectory: directory + "/e2e", config: aggregation, initialModel: try GPT2Model(config: config, seed: 1),
                                         log: { print($0) })
        let senders = 3, perSender = max(2, rounds / 2)
        _ = try Self.warmUp(e2eCore, updates: rounds + senders * perSender, specs: specs, delta: delta)
        let service = AggregatorService(core: e2eCore, endpoints: endpoints)
        let brokerThread = Thread { try? broker.runBlocking() }
        brokerThread.start()

        // 4a. Raw libzmq through the same broker: the same 1 MiB messages, trainer -> broker -> a
        // bare DEALER in the aggregator's seat, no FedLM codec: the floor of the broker's extra hop.
        let rawAggregator = try ZMQSocket(context, .dealer)
        try rawAggregator.setRoutingID(Array("raw-aggregator".utf8))
        try rawAggregator.connect(endpoints.aggregator)
        try rawAggregator.send([[]] + codec.encode(.heartbeat))  // tells the broker where it is
        let rawTrainer = try ZMQSocket(context, .dealer)
        try rawTrainer.setRoutingID(Array("raw-trainer".utf8))
        try rawTrainer.connect(endpoints.trainers)
        // Measured both as a plain libzmq user would (send and receive copy) and without copies
        // (zero-copy send, messages left in libzmq's buffers), as FedLM moves them; the faster
        // one is the reference.
        let stopSink = StopBox(), inPlace = StopBox()
        let sink = Thread {
            var got = 0
            while !stopSink.stop {
                let peer: [UInt8]
                if inPlace.stop {
                    guard let m = try? rawAggregator.receiveInPlace(timeout: 50) else { continue }
                    peer = Array(m.frame(0))
                } else {
                    guard let m = try? rawAggregator.receive(timeout: 50) else { continue }
                    peer = m[0]
                }
                got += 1
                if got >= frameCount { _ = try? rawAggregator.send([peer, [1]]); got = 0 }
            }
        }
        sink.start()
        usleep(300_000)  // the heartbeat reaches the broker first
        let rawBrokerCopyingGBs = median(try (0..<rounds).map { _ in
            let t0 = now()
            for _ in 0..<frameCount { try rawTrainer.send([frame]) }
            _ = try rawTrainer.receive()
            return Double(frameCount << 20) / (now() - t0) / 1e9
        })
        inPlace.stop = true
        let rawCPU0 = ThreadCPU.now()
        let rawBrokerZeroCopyGBs = median(try (0..<rounds).map { _ in
            let t0 = now()
            for i in 0..<frameCount { try rawTrainer.send([], shared: body, range: i..<(i + 1)) }
            _ = try rawTrainer.receive()
            return Double(frameCount << 20) / (now() - t0) / 1e9
        })
        let rawCPU = ThreadCPU.now().since(rawCPU0)
        let rawBrokerGBs = max(rawBrokerCopyingGBs, rawBrokerZeroCopyGBs)
        stopSink.stop = true
        while sink.isExecuting { usleep(1000) }
        rawTrainer.close()
        rawAggregator.close()

        let aggregatorThread = Thread { try? service.runBlocking() }
        aggregatorThread.start()
        let trainer = try ZMQSocket(context, .dealer)
        try trainer.setRoutingID(Array("bench".utf8))
        try trainer.connect(endpoints.trainers)
        var assembler = StreamAssembler(codec: codec)
        func call(_ m: Message) throws -> Message { try Self.call(m, on: trainer, assembler: &assembler, codec: codec) }
        _ = try call(.hello(Hello(trainerID: "bench")))
        var fetchT: [Double] = [], updateT: [Double] = [], exchangeT: [Double] = []
        var updateCPU = (zmq: 0.0, other: 0.0)
        for r in 0..<rounds {
            let t0 = now()
            guard case .release(let info, _) = try call(.fetch(Fetch())) else { throw ValidationError("expected a release") }
            let cpu0 = ThreadCPU.now()
            let t1 = now()
            guard case .ack = try call(.update(UpdateInfo(updateID: "e\(r)", trainerID: "bench", baseVersion: info.version, tokens: 1, localSteps: 1),
                                               TensorPayload(specs: specs, values: delta))) else { throw ValidationError("expected an ack") }
            let t2 = now()
            let cpu = ThreadCPU.now().since(cpu0)
            updateCPU = (updateCPU.zmq + cpu.zmq, updateCPU.other + cpu.other)
            fetchT.append(t1 - t0)
            updateT.append(t2 - t1)
            exchangeT.append(t2 - t0)
        }

        // 5. Throughput with several trainers, each keeping one update in flight (as a
        // federation runs): transfers overlap the aggregator's work on the previous update.
        let failures = FailureBox()
        let finished = DispatchGroup()
        let t5 = now()
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
                    guard case .welcome(let w) = try Self.call(.hello(Hello(trainerID: "bench-\(k)")), on: socket, assembler: &assembler, codec: codec) else {
                        throw ValidationError("expected WELCOME")
                    }
                    for r in 0..<perSender {
                        let update = Message.update(UpdateInfo(updateID: "t\(k)-\(r)", trainerID: "bench-\(k)", baseVersion: w.latestVersion,
                                                               tokens: 1, localSteps: 1), TensorPayload(specs: specs, values: delta))
                        guard case .ack = try Self.call(update, on: socket, assembler: &assembler, codec: codec) else { throw ValidationError("expected an ack") }
                    }
                } catch { failures.set(error) }
            }
        }
        sending.forEach { $0.start() }
        finished.wait()
        if let failure = failures.error { throw failure }
        let pipelinedGBs = Double(senders * perSender) * bytes / (now() - t5) / 1e9
        service.stop()
        broker.stop()
        while aggregatorThread.isExecuting || brokerThread.isExecuting { usleep(1000) }

        let e2eGBs = bytes / median(updateT) / 1e9
        let transfer = median(updateT) - median(encodeT) - median(applyT)
        func ms(_ v: [Double]) -> String { String(format: "%7.1f ms", 1000 * median(v)) }
        print("""
            medians of \(rounds) rounds, durability \(durability):
              trainer: encode update (CRC-32C per 1 MiB chunk; sent from where the values lie)  \(ms(encodeT))
              transfer through broker + per-chunk work on arrival (remainder)  \(String(format: "%7.1f ms", 1000 * transfer))
                per-chunk work alone (CRC, finite values, norm, copy, file write)  \(ms(receiveT))
              aggregator after the last chunk: apply, commit file, ledger  \(ms(applyT))
                the same, written whole into fresh pages (first updates after a start)  \(ms(coldT))
                of which the strategy's arithmetic                       \(ms(strategyT))
            update (send -> ack), end to end                             \(ms(updateT))
            fetch release                                                \(ms(fetchT))
            full exchange: fetch + update + ack                          \(ms(exchangeT))   (target < 100 ms)
            throughput: update \(String(format: "%.2f", e2eGBs)) GB/s vs raw libzmq \(String(format: "%.2f", rawGBs)) GB/s = \(String(format: "%.0f%%", 100 * e2eGBs / rawGBs))   (target >= 80%)
              (raw libzmq, one hop, 1 MiB messages: \(String(format: "%.2f", rawCopyingGBs)) GB/s copying, \(String(format: "%.2f", rawZeroCopyGBs)) GB/s without copies; as one multipart message of 1 MiB frames: \(String(format: "%.2f", rawMultipartGBs)) GB/s)
            throughput: update vs raw libzmq through the same broker \(String(format: "%.2f", rawBrokerGBs)) GB/s = \(String(format: "%.0f%%", 100 * e2eGBs / rawBrokerGBs))
              (raw through the broker: \(String(format: "%.2f", rawBrokerCopyingGBs)) GB/s copying, \(String(format: "%.2f", rawBrokerZeroCopyGBs)) GB/s without copies; the faster is the reference)
            CPU per 41.7 MB, all threads: raw libzmq through the broker without copies \(String(format: "%.1f", 1000 * (rawCPU.zmq + rawCPU.other) / Double(rounds))) ms (libzmq I/O threads \(String(format: "%.1f", 1000 * rawCPU.zmq / Double(rounds))) ms); an update \(String(format: "%.1f", 1000 * (updateCPU.zmq + updateCPU.other) / Double(rounds))) ms (libzmq I/O threads \(String(format: "%.1f", 1000 * updateCPU.zmq / Double(rounds))) ms, FedLM's threads \(String(format: "%.1f", 1000 * updateCPU.other / Double(rounds))) ms); this machine has \(ProcessInfo.processInfo.activeProcessorCount) cores
            throughput, \(senders) trainers each with one update in flight (\(senders * perSender) updates): \(String(format: "%.2f", pipelinedGBs)) GB/s = \(String(format: "%.0f%%", 100 * pipelinedGBs / rawGBs)) of raw one-hop, \(String(format: "%.0f%%", 100 * pipelinedGBs / rawBrokerGBs)) of raw through the broker
            CRC-32C of one update: \(String(format: "%.1f", 1000 * crcParallelT)) ms (three chains) vs \(String(format: "%.1f", 1000 * crcSerialT)) ms (one chain) = \(String(format: "%.1fx", crcSerialT / crcParallelT))
            application: \(String(format: "%.1f", strategyGBs)) GB/s of updates applied vs single-thread copy \(String(format: "%.1f", copyGBs)) GB/s = \(String(format: "%.0f%%", 100 * strategyGBs / copyGBs))   (target >= 50%)
            """)
    }
}

final class StopBox: @unchecked Sendable { var stop = false }

final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private var first: Error?
    var error: Error? { lock.lock(); defer { lock.unlock() }; return first }
    func set(_ e: Error) { lock.lock(); if first == nil { first = e }; lock.unlock() }
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
