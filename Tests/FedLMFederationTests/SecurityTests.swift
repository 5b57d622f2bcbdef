import FedLMAggregation
import FedLMFederation
import FedLMModel
import FedLMProtocol
import FedLMTestSupport
import FedLMZeroMQ
import Foundation
import XCTest

/// CURVE on every broker socket with a fail-closed ZAP handler, over real TCP loopback: allowed
/// keys get in by role, unknown keys get nothing, a subscriber cannot push, a revoked key is out
/// at its next handshake, and the bytes on the wire carry no protocol marker or tensor name
/// (while in plaintext they do).
final class SecurityTests: XCTestCase {
    let modelConfig = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 11)
    var dir = ""
    var threads: [Thread] = []
    var stops: [() -> Void] = []
    let context = ZMQContext()
    let codec = WireCodec()
    var broker: BrokerService?

    override func setUpWithError() throws {
        signal(SIGPIPE, SIG_IGN)  // the relay's sockets close under it at teardown
        dir = NSTemporaryDirectory() + "fedlm-sec-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        stops.forEach { $0() }
        XCTAssertTrue(Thread.join(threads, timeout: 60), "the services stopped")
        try? FileManager.default.removeItem(atPath: dir)
    }

    func keys(_ name: String) throws -> CurveKeyPair {
        let k = try CurveKeyPair.generate()
        try k.save(prefix: dir + "/" + name)
        return k
    }

    /// The allow-list: each member's name and key pair, by role.
    func writeAllowed(trainers: [(String, CurveKeyPair)], subscribers: [(String, CurveKeyPair)], aggregators: [(String, CurveKeyPair)]) throws {
        func entries(_ k: [(String, CurveKeyPair)]) -> [(String, String)] { k.map { ($0.0, $0.1.publicKey) } }
        try AllowList.text(trainers: entries(trainers), subscribers: entries(subscribers), aggregators: entries(aggregators))
            .write(toFile: dir + "/allowed.toml", atomically: true, encoding: .utf8)
    }

    /// Broker and aggregator on random ports; returns the endpoints.
    func startFederation(security: BrokerSecurity?, aggregatorCurve: CurveClient?, gateLimits: BrokerGate.Limits = BrokerGate.Limits()) throws -> BrokerEndpoints {
        let endpoints = BrokerEndpoints.loopback()
        var config = AggregationConfig()
        config.mode = .fedbuff
        config.bufferSize = 1
        config.serverOptimizer = .sgd(learningRate: 1)
        config.durability = .process
        let broker = BrokerService(endpoints: endpoints, security: security, gateLimits: gateLimits)
        self.broker = broker
        let service = AggregatorService(core: try AggregatorCore(runDirectory: dir + "/run-\(UInt32.random(in: 0...UInt32.max))", config: config,
                                                                 initialModel: try GPT2Model(config: modelConfig, seed: 2)),
                                        endpoints: endpoints)
        service.curve = aggregatorCurve
        for s in [broker as BlockingService, service] {
            let t = Thread { try? s.runBlocking() }
            t.start()
            threads.append(t)
            stops.append { s.stop() }
        }
        return endpoints
    }

    /// A DEALER with `curve` keys (nil: plaintext) connected to `endpoint`.
    func client(_ id: String, _ curve: CurveClient?, _ endpoint: String) throws -> ZMQSocket {
        let s = try ZMQSocket(context, .dealer)
        try s.setRoutingID(Array(id.utf8))
        if let curve { try s.makeCurveClient(serverKey: curve.brokerKey, keys: curve.keys) }
        try s.connect(endpoint)
        return s
    }

    /// Sends `message` and returns the first complete reply within `seconds` (nil: none).
    func call(_ socket: ZMQSocket, _ message: Message, seconds: Double = 3) throws -> Message? {
        for part in MessageStream.split(codec.encode(message)) { try socket.send(part) }
        var assembler = StreamAssembler(codec: codec)
        let end = Date().addingTimeInterval(seconds)
        var lastSend = Date()
        while Date() < end {
            guard let m = try socket.receive(timeout: 100) else {
                // Lost on a connection that dropped while the broker came up: again, as trainers do.
                if Date().timeIntervalSince(lastSend) > 2, !assembler.inProgress {
                    // Without waiting: a refused client has no connection, and a blocking send would wait forever.
                    for part in MessageStream.split(codec.encode(message)) { _ = try socket.send(part, wait: false) }
                    lastSend = Date()
                }
                continue
            }
            if let done = try assembler.accept(m) {
                if case .error(let e) = done, e.code == .unavailable {  // the aggregator is still connecting
                    usleep(100_000)
                    for part in MessageStream.split(codec.encode(message)) { try socket.send(part) }
                    continue
                }
                return done
            }
        }
        return nil
    }

    func testOnlyAllowedKeysGetInByRoleAndTheWireCarriesNoPlaintext() throws {
        let brokerKeys = try keys("broker"), trainer = try keys("t1"), subscriber = try keys("s1"), aggregator = try keys("aggregator")
        let stranger = try CurveKeyPair.generate()
        try writeAllowed(trainers: [("t1", trainer)], subscribers: [("s1", subscriber)], aggregators: [("aggregator", aggregator)])
        let endpoints = try startFederation(security: BrokerSecurity(keys: brokerKeys, allowed: try AllowList(path: dir + "/allowed.toml")),
                                            aggregatorCurve: CurveClient(brokerKey: brokerKeys.publicKey, keys: aggregator))
        // The trainer goes through a TCP relay that records every byte.
        let relay = try TCPRelay(to: Int(endpoints.trainers.split(separator: ":").last!)!)
        stops.append { relay.stop() }
        let t1 = try client("t1", CurveClient(brokerKey: brokerKeys.publicKey, keys: trainer), "tcp://127.0.0.1:\(relay.port)")
        defer { t1.close() }
        guard case .welcome? = try call(t1, .hello(Hello(trainerID: "t1")), seconds: 10) else { return XCTFail("the allowed trainer was not welcomed") }
        guard case .release(let info, let release)? = try call(t1, .fetch(Fetch())) else { return XCTFail("no release for the trainer") }
        let update = Message.update(UpdateInfo(updateID: "u1", trainerID: "t1", baseVersion: info.version, tokens: 8, localSteps: 1),
                                    TensorPayload(specs: release.specs, values: release.values.map { _ in 0.001 }))
        guard case .ack? = try call(t1, update) else { return XCTFail("the trainer's update was not acknowledged") }
        let wire = relay.recorded
        XCTAssertGreaterThan(wire.count, release.values.count * 4, "the release crossed the relay")
        for plain in ["FEDLM", "transformer.wte.weight", "updateID"] {
            XCTAssertFalse(contains(wire, Array(plain.utf8)), "'\(plain)' appears on the wire")
        }

        // An unknown key gets nothing at all; so does a plaintext client.
        let outsider = try client("x", CurveClient(brokerKey: brokerKeys.publicKey, keys: stranger), endpoints.trainers)
        defer { outsider.close() }
        XCTAssertNil(try call(outsider, .hello(Hello(trainerID: "x")), seconds: 2), "an unknown key was answered")
        let plain = try client("p", nil, endpoints.trainers)
        defer { plain.close() }
        XCTAssertNil(try call(plain, .hello(Hello(trainerID: "p")), seconds: 1), "a plaintext client was answered")

        // A subscriber may fetch a snapshot but not push.
        let s1 = try client("s1", CurveClient(brokerKey: brokerKeys.publicKey, keys: subscriber), endpoints.trainers)
        defer { s1.close() }
        guard case .release? = try call(s1, .fetch(Fetch())) else { return XCTFail("the subscriber got no snapshot") }
        let push = Message.update(UpdateInfo(updateID: "s-u", trainerID: "s1", baseVersion: 1, tokens: 8, localSteps: 1),
                                  TensorPayload(specs: release.specs, values: release.values.map { _ in 0.001 }))
        guard case .error(let e)? = try call(s1, push) else { return XCTFail("the subscriber's update was not refused") }
        XCTAssertEqual(e.code, .forbidden)

        // Releases: an allowed subscriber's SUB receives the next publication; a stranger's gets nothing.
        func sub(_ keys: CurveKeyPair) throws -> ZMQSocket {
            let s = try ZMQSocket(context, .sub)
            try s.makeCurveClient(serverKey: brokerKeys.publicKey, keys: keys)
            try s.subscribe(Array("global/".utf8))
            try s.connect(endpoints.releases)
            return s
        }
        let allowedSub = try sub(subscriber), strangerSub = try sub(stranger)
        defer { allowedSub.close(); strangerSub.close() }
        usleep(500_000)  // subscriptions travel up to the aggregator's PUB first
        guard case .release(let now, _)? = try call(t1, .fetch(Fetch())) else { return XCTFail("no release") }
        guard case .ack? = try call(t1, .update(UpdateInfo(updateID: "u2", trainerID: "t1", baseVersion: now.version, tokens: 8, localSteps: 1),
                                               TensorPayload(specs: release.specs, values: release.values.map { _ in 0.001 }))) else {
            return XCTFail("second update not acknowledged")
        }
        XCTAssertNotNil(try allowedSub.receive(timeout: 5000), "the allowed subscriber received the new release")
        XCTAssertNil(try strangerSub.receive(timeout: 1000), "a stranger's subscription received a release")

        // Revocation: remove the trainer's key; its next handshake is refused, and so is every
        // later message on the connection it already has (the list is re-checked once a second).
        try writeAllowed(trainers: [], subscribers: [("s1", subscriber)], aggregators: [("aggregator", aggregator)])
        usleep(1_200_000)
        let again = try client("t1", CurveClient(brokerKey: brokerKeys.publicKey, keys: trainer), endpoints.trainers)
        defer { again.close() }
        XCTAssertNil(try call(again, .hello(Hello(trainerID: "t1")), seconds: 2), "a revoked key was answered")
        guard case .error(let revoked)? = try call(t1, .fetch(Fetch())) else { return XCTFail("the revoked key's connection was not refused") }
        XCTAssertEqual(revoked.code, .forbidden)
    }

    /// One member's key may speak only as the names the allow-list binds to it: not as another
    /// member (by trainer id or routing id), and in a closed federation not as a name nobody
    /// declared. Every refusal is answered `forbidden` and counted by the broker.
    func testAKeySpeaksOnlyAsItsOwnNames() throws {
        let brokerKeys = try keys("broker"), en = try keys("en"), de = try keys("de"), aggregator = try keys("aggregator")
        // en's key has a second name: each connection below uses a routing id of its own (a ROUTER
        // keeps a closed connection's routing id for a moment, and a new one with it must wait).
        try writeAllowed(trainers: [("en", en), ("en-2", en), ("de", de)], subscribers: [], aggregators: [("aggregator", aggregator)])
        for membership in BrokerSecurity.Membership.allCases {
            let security = BrokerSecurity(keys: brokerKeys, allowed: try AllowList(path: dir + "/allowed.toml"), membership: membership)
            let endpoints = try startFederation(security: security, aggregatorCurve: CurveClient(brokerKey: brokerKeys.publicKey, keys: aggregator))
            let enKeys = CurveClient(brokerKey: brokerKeys.publicKey, keys: en)
            func answer(routingID: String, trainerID: String) throws -> Message? {
                let socket = try client(routingID, enKeys, endpoints.trainers)
                defer { socket.close() }
                return try call(socket, .hello(Hello(trainerID: trainerID)), seconds: 10)
            }
            guard case .welcome? = try answer(routingID: "en", trainerID: "en") else { return XCTFail("\(membership): en was not welcomed") }
            for (routing, claimed) in [("en-2", "de"), ("de", "de")] {
                guard case .error(let e)? = try answer(routingID: routing, trainerID: claimed) else {
                    return XCTFail("\(membership): en's key speaking as \(claimed) on \(routing) was not refused")
                }
                XCTAssertEqual(e.code, .forbidden, "\(membership): \(routing)/\(claimed)")
            }
            let undeclared = try answer(routingID: "zz-new", trainerID: "zz-new")
            switch (membership, undeclared) {
            case (.closed, .error(let e)?): XCTAssertEqual(e.code, .forbidden)
            case (.open, .welcome?): break
            default: XCTFail("\(membership): an undeclared name got \(String(describing: undeclared))")
            }
            // An update sent as another member is refused before it reaches the aggregator.
            let socket = try client("en", enKeys, endpoints.trainers)
            defer { socket.close() }
            let forged = Message.update(UpdateInfo(updateID: "forged", trainerID: "de", baseVersion: 0, tokens: 8, localSteps: 1),
                                        TensorPayload(specs: [TensorSpec(name: "x", shape: [4])], values: [0, 0, 0, 0]))
            guard case .error(let e)? = try call(socket, forged) else { return XCTFail("\(membership): a forged update was not refused") }
            XCTAssertEqual(e.code, .forbidden)
            // The broker publishes its counters once per turn of its loop, just after it replies.
            let expected = membership == .closed ? 4 : 3
            let deadline = Date().addingTimeInterval(2)
            while (broker!.counters.refused["forbidden"] ?? 0) < expected, Date() < deadline { usleep(10_000) }
            XCTAssertGreaterThanOrEqual(broker!.counters.refused["forbidden"] ?? 0, expected, "\(membership): the broker counts its refusals")
            stops.forEach { $0() }
            stops = []
            XCTAssertTrue(Thread.join(threads, timeout: 60), "the services stopped")
        }
    }

    /// The way one member took the broker down: it floods until the broker's queue for it is
    /// full (the high-water mark stops libzmq reading its connection), then hangs up. libzmq
    /// (4.3.4, 4.3.5) then aborts the whole process in the connection's next ZMTP heartbeat
    /// (see `TransportLimits.applyServer`). A ROUTER set up as the broker's are, never read, must
    /// outlive that; with `apply(to:)` (heartbeats on) this test process aborts.
    func testABrokerSocketSurvivesAPeerThatFillsItsQueueAndHangsUp() throws {
        let limits = TransportLimits()
        let router = try ZMQSocket(context, .router)
        defer { router.close() }
        try limits.applyServer(to: router)
        try router.bind("tcp://127.0.0.1:*")
        for _ in 0..<2 {
            let flooder = try ZMQSocket(context, .dealer)
            try flooder.setHighWaterMarks(send: 100_000, receive: 100)
            try flooder.connect(router.lastEndpoint)
            let garbage: [[UInt8]] = [[UInt8](repeating: 1, count: 64), [2], [UInt8](repeating: 3, count: 900)]
            let end = Date().addingTimeInterval(1.5)
            while Date() < end { _ = try flooder.send(garbage, wait: false) }
            flooder.close()
            usleep(UInt32(limits.heartbeatInterval) * 2500)  // two and a half heartbeat intervals
        }
        // Still alive, and still serving: a new peer's message arrives.
        let peer = try ZMQSocket(context, .dealer)
        defer { peer.close() }
        try peer.connect(router.lastEndpoint)
        try peer.send([Array("hello".utf8)])
        var seen = false
        while let m = try router.receive(timeout: 2000) { if m.last == Array("hello".utf8) { seen = true; break } }
        XCTAssertTrue(seen)
    }

    func testPlaintextModeShowsItsBytesOnTheWire() throws {
        let endpoints = try startFederation(security: nil, aggregatorCurve: nil)
        let relay = try TCPRelay(to: Int(endpoints.trainers.split(separator: ":").last!)!)
        stops.append { relay.stop() }
        let t1 = try client("t1", nil, "tcp://127.0.0.1:\(relay.port)")
        defer { t1.close() }
        guard case .welcome? = try call(t1, .hello(Hello(trainerID: "t1")), seconds: 10) else { return XCTFail("no welcome") }
        guard case .release? = try call(t1, .fetch(Fetch())) else { return XCTFail("no release") }
        XCTAssertTrue(contains(relay.recorded, Array("transformer.wte.weight".utf8)), "the relay sees what plaintext carries")
    }

    func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count, let first = needle.first else { return false }
        var i = 0
        while i <= haystack.count - needle.count {
            if haystack[i] == first, Array(haystack[i..<(i + needle.count)]) == needle { return true }
            i += 1
        }
        return false
    }
}

/// A TCP relay on loopback that records every byte in both directions.
final class TCPRelay: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    private var stopped = false
    private let thread: Thread

    var recorded: [UInt8] { lock.lock(); defer { lock.unlock() }; return bytes }

    init(to target: Int) throws {
        let front = LoopbackListener()
        listener = front.fd
        port = front.port
        let box = Box()
        thread = Thread { box.relay?.serve(target) }
        box.relay = self
        thread.start()
    }

    private final class Box: @unchecked Sendable { weak var relay: TCPRelay? }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    /// Relays one connection at a time, for as long as the relay runs (a client that
    /// reconnects, e.g. because the broker was not listening yet, gets a new one).
    private func serve(_ target: Int) {
        while !isStopped {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            relay(client, to: target)
            close(client)
        }
    }

    private func relay(_ client: Int32, to target: Int) {
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(target).bigEndian
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var pair = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: server, events: Int16(POLLIN), revents: 0)]
        loop: while !isStopped {
            guard poll(&pair, 2, 100) > 0 else { continue }
            for (from, to) in [(0, 1), (1, 0)] where pair[from].revents != 0 {
                let n = read(pair[from].fd, &buffer, buffer.count)
                if n <= 0 { break loop }
                lock.lock(); bytes += buffer[0..<n]; lock.unlock()
                var sent = 0
                while sent < n {
                    // send with MSG_NOSIGNAL: a peer that already closed must not SIGPIPE the test process.
                    let w = buffer[sent..<n].withUnsafeBytes { send(pair[to].fd, $0.baseAddress, n - sent, Int32(MSG_NOSIGNAL)) }
                    if w <= 0 { break loop }
                    sent += w
                }
            }
        }
    }

    func stop() {
        lock.lock(); stopped = true; lock.unlock()
        XCTAssertTrue(Thread.join([thread], timeout: 60), "the service stopped")
        close(listener)
    }
}
