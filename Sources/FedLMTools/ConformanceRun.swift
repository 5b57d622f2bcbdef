import FedLMFederation
import FedLMAggregation
import FedLMModel
import FedLMProtocol
import FedLMZeroMQ
import Foundation

/// Runs a trainer program against `ConformanceScript`: binds a ROUTER where the client expects
/// the broker, answers through a real `AggregatorCore` (SQLite ledger, checkpoints) except where
/// the script says otherwise, and starts, kills and restarts the client's process.
public final class ConformanceRun {
    public struct Options {
        /// The client's command; `{broker}`, `{name}`, `{state}`, `{data}` and `{config}` are
        /// replaced by the address to connect to, its trainer id, its state directory, and the
        /// data and model config the harness was given.
        public var command: [String]
        public var data: String
        public var configPath: String
        public var model: GPT2Config
        public var trainerID = "conformance-client"
        public var directory: String
        public var timeLimit = 600.0
        public init(command: [String], data: String, configPath: String, model: GPT2Config, directory: String) {
            self.command = command
            self.data = data
            self.configPath = configPath
            self.model = model
            self.directory = directory
        }
    }

    let options: Options
    private var script: ConformanceScript
    private let codec = WireCodec()
    private var client: Process?
    public private(set) var log: [String] = []

    public init(options: Options) {
        self.options = options
        script = ConformanceScript(trainerID: options.trainerID)
    }

    /// Runs the script to the client's end (or the time limit) and returns each rule's result.
    public func run() throws -> [ConformanceScript.Check] {
        try FileManager.default.createDirectory(atPath: options.directory, withIntermediateDirectories: true)
        var config = AggregationConfig()
        config.bufferSize = 1
        config.serverOptimizer = .sgd(learningRate: 1)
        config.durability = .process
        let core = try AggregatorCore(runDirectory: options.directory + "/aggregator", config: config,
                                      initialModel: try GPT2Model(config: options.model, seed: 1))
        let context = ZMQContext()
        let router = try ZMQSocket(context, .router)
        defer { router.close() }
        let address = try bindSomewhere(router)
        note("listening at \(address) as the broker; client: \(options.command.joined(separator: " "))")
        try startClient(address: address)
        var transfers = IncomingTransfers(codec: codec)
        let started = Date().timeIntervalSince1970
        while let client, Date().timeIntervalSince1970 - started < options.timeLimit {
            guard try router.poll(timeout: 100), let frames = try router.receive(timeout: 0), frames.count >= 2 else {
                if !client.isRunning { break }
                continue
            }
            let peer = String(decoding: frames[0], as: UTF8.self), now = Date().timeIntervalSince1970
            let message: Message
            do {
                guard let complete = try transfers.accept(Array(frames.dropFirst()), from: peer, now: now) else { continue }
                message = complete
            } catch let e as ProtocolError {
                script.brokeProtocol("\(e)")
                note("protocol error from \(peer): \(e)")
                continue
            }
            try perform(script.received(message, from: peer, now: now), message: message, peer: peer, core: core, router: router, address: address)
        }
        if let client, client.isRunning {
            note("time limit of \(Int(options.timeLimit)) s reached; stopping the client")
            client.terminate()
            client.waitUntilExit()
        }
        script.finished(status: client?.terminationStatus ?? -1)
        return script.results
    }

    private func perform(_ action: ConformanceScript.Action, message: Message, peer: String, core: AggregatorCore, router: ZMQSocket,
                         address: String) throws {
        let to = [Array(peer.utf8)]
        switch action {
        case .handle:
            for action in try core.handle(message, from: peer) {
                switch action {
                case .reply(_, let reply):
                    script.answered(reply)
                    try router.sendStreamed(codec.encode(reply), prefix: to)
                case .sendRelease(_, let cluster, let window, let resume):
                    let frames = SharedFrames(core.release(cluster: cluster), codec: codec)
                    try router.sendStreamed(frames, prefix: to, chunks: frames.chunks(in: window.map { ReleaseWindow(size: $0, resume: resume) }))
                    script.releaseSent(now: Date().timeIntervalSince1970)
                case .sendReleaseSteps(_, let held):
                    for step in core.releaseSteps(from: held) { try router.sendStreamed(codec.encode(step), prefix: to) }
                    script.releaseSent(now: Date().timeIntervalSince1970)
                }
            }
        case .reply(let reply):
            note("scripted answer to \(message.type): \(reply.type)")
            try router.sendStreamed(codec.encode(reply), prefix: to)
        case .sendCorruptRelease:
            var frames = codec.encode(core.release())
            frames[3][0] ^= 0xFF
            note("scripted answer to FETCH: a release whose first chunk is corrupt")
            try router.sendStreamed(frames, prefix: to)
        case .ignore:
            note("scripted: no answer to \(message.type)")
        case .restartClient:
            note("scripted: killing the client with an update unanswered, then starting it again")
            kill(client!.processIdentifier, SIGKILL)
            client?.waitUntilExit()
            try startClient(address: address)
        }
    }

    private func bindSomewhere(_ socket: ZMQSocket) throws -> String {
        for _ in 0..<20 {
            let address = "tcp://127.0.0.1:\(Int.random(in: 20_000...32_000))"
            if (try? socket.bind(address)) != nil { return address }
        }
        throw FederationError.local("conformance: no free loopback port to bind")
    }

    private func startClient(address: String) throws {
        let values = ["{broker}": address, "{name}": options.trainerID, "{state}": options.directory + "/client-state",
                      "{data}": options.data, "{config}": options.configPath]
        let arguments = options.command.map { arg in values.reduce(arg) { $0.replacingOccurrences(of: $1.key, with: $1.value) } }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: arguments[0].contains("/") ? arguments[0] : "/usr/bin/env")
        p.arguments = arguments[0].contains("/") ? Array(arguments.dropFirst()) : arguments
        let logPath = options.directory + "/client.log"
        if !FileManager.default.fileExists(atPath: logPath) { FileManager.default.createFile(atPath: logPath, contents: nil) }
        let handle = FileHandle(forWritingAtPath: logPath)!
        handle.seekToEndOfFile()
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        client = p
        note("started the client (pid \(p.processIdentifier)); its output: \(logPath)")
    }

    private func note(_ line: String) { log.append(line) }
}
