import FedLMFederation
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation

/// A misbehaving member, for testing a broker's defences: one DEALER (with an allowed key, when
/// the broker requires keys) sending as fast as libzmq takes them a mix of
/// - random frames (random frame counts and sizes),
/// - valid messages with random bytes changed, cut short or extended (marker, version, type,
///   header, chunk position),
/// - well-formed requests it has no business sending: FETCH and HELLO spam, HELLOs and UPDATEs
///   in other members' names, stray CHUNKs, UPDATE heads announcing huge payloads,
///
/// for a bounded time, reading (or, with `readsReplies` off, never reading) what comes back.
/// The messages are drawn before the flood starts (`poolSize` of them, sent round and round), so
/// the flood costs its sender little more than the sending. Deterministic for a seed.
public struct Flooder: Sendable {
    public struct Report: Sendable {
        public var sent = 0
        public var bytes = 0
        public var replies = 0
        public init() {}
    }

    public var endpoint: String
    public var curve: CurveClient?
    public var routingID: String
    /// Names of other members to impersonate.
    public var otherNames: [String] = ["someone-else"]
    public var seconds: Double
    public var seed: UInt64 = 1
    public var readsReplies = true
    public var poolSize = 4096

    public init(endpoint: String, curve: CurveClient?, routingID: String, seconds: Double) {
        self.endpoint = endpoint
        self.curve = curve
        self.routingID = routingID
        self.seconds = seconds
    }

    /// Floods for `seconds` (or until `stop` says so); blocks until done.
    public func run(stop: @Sendable () -> Bool = { false }) throws -> Report {
        let context = ZMQContext()
        let socket = try ZMQSocket(context, .dealer)
        try socket.setRoutingID(Array(routingID.utf8))
        try socket.setHighWaterMarks(send: 1000, receive: 1000)
        try curve?.apply(to: socket)
        try socket.connect(endpoint)
        defer { socket.close() }
        var rng = SeededGenerator(seed: seed, name: routingID)
        let pool = (0..<max(1, poolSize)).map { _ in next(&rng) }
        var report = Report()
        let end = Date().timeIntervalSince1970 + seconds
        var batch = 0
        while Date().timeIntervalSince1970 < end, !stop() {
            let message = pool[batch % pool.count]
            // A flood goes on whatever happens to its connection (it is shut down when suspended).
            if (try? socket.send(message, wait: false)) == true {
                report.sent += 1
                report.bytes += message.reduce(0) { $0 + $1.count }
            } else {
                usleep(200)  // the queue to the broker is full (it reads as fast as it will), or no connection
            }
            batch += 1
            if readsReplies, batch % 64 == 0 {
                while let _ = try? socket.receive(timeout: 0) { report.replies += 1 }
            }
        }
        return report
    }

    /// One message of the mix.
    func next(_ rng: inout SeededGenerator) -> [[UInt8]] {
        let codec = WireCodec()
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<4:
            return randomFrames(&rng)
        case 4..<7:
            return mutate(validMessage(&rng, codec), &rng)
        default:
            return validMessage(&rng, codec)
        }
    }

    func randomFrames(_ rng: inout SeededGenerator) -> [[UInt8]] {
        (0..<Int.random(in: 1...8, using: &rng)).map { _ in
            let size = Int.random(in: 0..<20, using: &rng) == 0 ? Int.random(in: 0...65_536, using: &rng) : Int.random(in: 0...1024, using: &rng)
            return bytes(size, &rng)
        }
    }

    /// A message that is protocol, though not one this member should send.
    func validMessage(_ rng: inout SeededGenerator, _ codec: WireCodec) -> [[UInt8]] {
        let name = Bool.random(using: &rng) ? routingID : otherNames.randomElement(using: &rng)!
        let specs = [TensorSpec(name: "transformer.wte.weight", shape: [Int.random(in: 1...4096, using: &rng)])]
        switch Int.random(in: 0..<7, using: &rng) {
        case 0: return codec.encode(.hello(Hello(trainerID: name)))
        case 1: return codec.encode(.fetch(Fetch(haveVersion: Int.random(in: -1...100, using: &rng))))
        case 2: return codec.encode(.heartbeat)
        case 3:
            let update = Message.update(UpdateInfo(updateID: "flood-\(UInt32.random(in: 0...UInt32.max, using: &rng))", trainerID: name,
                                                   baseVersion: 0, tokens: 1, localSteps: 1),
                                        TensorPayload(specs: specs, values: [Float](repeating: 1e-3, count: specs[0].count)))
            let parts = MessageStream.split(codec.encode(update))
            return parts[Int.random(in: 0..<parts.count, using: &rng)]
        case 4:
            let count = Int.random(in: 1...1000, using: &rng)
            return MessageStream.chunkPrefix(index: Int.random(in: 0..<count, using: &rng), count: count) + [bytes(Int.random(in: 0...4096, using: &rng), &rng)]
        case 5: return codec.encode(.bye("flood"))
        default: return codec.encode(.ack(Ack(updateID: "x", outcome: .applied, version: 1)))
        }
    }

    func mutate(_ frames: [[UInt8]], _ rng: inout SeededGenerator) -> [[UInt8]] {
        var frames = frames
        switch Int.random(in: 0..<5, using: &rng) {
        case 0:  // flip bytes somewhere
            let f = Int.random(in: 0..<frames.count, using: &rng)
            for _ in 0..<Int.random(in: 1...4, using: &rng) where !frames[f].isEmpty {
                frames[f][Int.random(in: 0..<frames[f].count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
        case 1: frames.removeLast(Int.random(in: 0..<frames.count, using: &rng))  // cut short
        case 2: frames.append(bytes(Int.random(in: 0...512, using: &rng), &rng))  // extra frame
        case 3: frames[1] = [UInt8.random(in: 0...255, using: &rng)]  // any type
        default: frames[0][frames[0].count - 1] = UInt8.random(in: 0...255, using: &rng)  // any version
        }
        return frames
    }

    func bytes(_ n: Int, _ rng: inout SeededGenerator) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var word = rng.next()
            for _ in 0..<min(8, n - i) { out[i] = UInt8(truncatingIfNeeded: word); word >>= 8; i += 1 }
        }
        return out
    }
}
