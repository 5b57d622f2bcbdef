import CZeroMQ
import FedLMZeroMQ
import Foundation
import XCTest

/// The ZeroMQ layer over real sockets on TCP loopback.
final class ZeroMQTests: XCTestCase {
    let context = ZMQContext()

    func testRouterAndDealerExchangeMultipartMessagesByRoutingID() throws {
        let router = try ZMQSocket(context, .router)
        try router.setRouterMandatory(true)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setRoutingID(Array("trainer-7".utf8))
        try dealer.connect(router.lastEndpoint)
        let big = [UInt8](repeating: 0xAB, count: 3 << 20)
        try dealer.send([Array("UPDATE".utf8), big])
        let received = try XCTUnwrap(try router.receive(timeout: 5000))
        XCTAssertEqual(received.count, 3)
        XCTAssertEqual(received[0], Array("trainer-7".utf8), "ROUTER prefixes the sender's routing id")
        XCTAssertEqual(received[1], Array("UPDATE".utf8))
        XCTAssertEqual(received[2], big)
        try router.send([received[0], Array("ACK".utf8)])
        XCTAssertEqual(try dealer.receive(timeout: 5000), [Array("ACK".utf8)])
        // With ROUTER_MANDATORY, an unknown peer is an error, not a silent drop.
        XCTAssertThrowsError(try router.send([Array("nobody".utf8), Array("x".utf8)])) {
            XCTAssertEqual(($0 as? ZMQError)?.code, EHOSTUNREACH)
        }
    }

    /// A message received in place: small frames (held inside libzmq's message structs), empty
    /// ones and large ones, more than the initial eight slots, all read back intact.
    func testReceivedInPlaceFramesMatchWhatWasSent() throws {
        let pull = try ZMQSocket(context, .dealer)
        try pull.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context, .dealer)
        try push.connect(pull.lastEndpoint)
        let frames: [[UInt8]] = (0..<19).map { i in
            i == 4 ? [] : (0..<(i % 3 == 0 ? 100_000 + i : i + 1)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
        }
        try push.send(frames)
        let message = try XCTUnwrap(try pull.receiveInPlace(timeout: 5000))
        XCTAssertEqual(message.count, frames.count)
        XCTAssertEqual(message.frames.map { Array($0) }, frames)
        XCTAssertNil(try pull.receiveInPlace(timeout: 10))
    }

    func testReceiveTimesOutWithNil() throws {
        let pull = try ZMQSocket(context, .pull)
        try pull.bind("tcp://127.0.0.1:*")
        let start = Date()
        XCTAssertNil(try pull.receive(timeout: 50))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.04)
    }

    func testOversizedMessagesAreRefusedByTheReceiver() throws {
        let pull = try ZMQSocket(context, .pull)
        try pull.setMaximumMessageSize(1024)
        try pull.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context, .push)
        try push.connect(pull.lastEndpoint)
        try push.send([[UInt8](repeating: 1, count: 4096)])
        XCTAssertNil(try pull.receive(timeout: 300), "a message over the limit never arrives")
        // A fresh sender within the limit still gets through.
        let polite = try ZMQSocket(context, .push)
        try polite.connect(pull.lastEndpoint)
        try polite.send([[UInt8](repeating: 2, count: 100)])
        XCTAssertEqual(try pull.receive(timeout: 5000)?.first?.count, 100)
    }

    func testReleaseRelayForwardsToSubscribersIncludingLateOnes() throws {
        let relay = try ReleaseRelay(context: context, publishers: "tcp://127.0.0.1:*", subscribers: "tcp://127.0.0.1:*")
        defer { relay.stop() }
        let publisher = try ZMQSocket(context, .pub)
        try publisher.connect(relay.publisherEndpoint)
        func subscriber(_ topic: String) throws -> ZMQSocket {
            let s = try ZMQSocket(context, .sub)
            try s.subscribe(Array(topic.utf8))
            try s.connect(relay.subscriberEndpoint)
            return s
        }
        let early = try subscriber("release/")
        let onlyCode = try subscriber("release/code")
        // Subscriptions propagate asynchronously: publish until the first one arrives.
        var got: [[UInt8]]?
        for _ in 0..<100 where got == nil {
            try publisher.send([Array("release/en".utf8), Array("v1".utf8)])
            got = try early.receive(timeout: 20)
        }
        XCTAssertEqual(got?[1], Array("v1".utf8))
        let late = try subscriber("release/")
        var lateGot: [[UInt8]]?
        for _ in 0..<100 where lateGot == nil {
            try publisher.send([Array("release/code".utf8), Array("v2".utf8)])
            lateGot = try late.receive(timeout: 20)
        }
        XCTAssertEqual(lateGot?[0], Array("release/code".utf8))
        // The code-only subscriber saw code releases and never an "en" one.
        var topics = Set<String>()
        while let m = try onlyCode.receive(timeout: 50) { topics.insert(String(decoding: m[0], as: UTF8.self)) }
        XCTAssertEqual(topics, ["release/code"])
    }

    func testPollerReportsWhichSocketsAreReadable() throws {
        let a = try ZMQSocket(context, .pull), b = try ZMQSocket(context, .pull)
        try a.bind("tcp://127.0.0.1:*")
        try b.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context, .push)
        try push.connect(b.lastEndpoint)
        try push.send([[1]])
        XCTAssertEqual(try ZMQPoller.readable([a, b], timeout: 5000), [1])
        XCTAssertEqual(try ZMQPoller.readable([a], timeout: 10), [])
    }

    func testErrorsNameTheOperationAndEndpoint() throws {
        let s = try ZMQSocket(context, .router)
        XCTAssertThrowsError(try s.bind("nonsense://here")) {
            XCTAssertTrue("\($0)".contains("bind nonsense://here"), "\($0)")
        }
        XCTAssertGreaterThanOrEqual(ZMQContext.version.0, 4)
    }

    /// Zero-copy frames arrive intact, can be sent many times, and are let go once libzmq is done.
    func testSharedFramesAreSentWithoutCopiesAndReleasedAfterwards() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(router.lastEndpoint)
        var shared: SharedFrames? = SharedFrames([Array("head".utf8), [UInt8](repeating: 1, count: 2 << 20), [], (0..<1000).map { UInt8($0 % 251) }])
        weak let watch = shared
        for i in 0..<5 {
            try dealer.send([[UInt8(i)]], shared: shared!, range: 1..<4)
        }
        try dealer.send([Array("one".utf8)], shared: shared!, range: 3..<4)
        let frames = shared!.arrays(prefix: shared!.count)
        shared = nil
        for i in 0..<5 {
            let m = try XCTUnwrap(try router.receive(timeout: 5000))
            XCTAssertEqual(Array(m.dropFirst()), [[UInt8(i)]] + Array(frames[1..<4]))
        }
        XCTAssertEqual(Array(try XCTUnwrap(try router.receive(timeout: 5000)).dropFirst()), [Array("one".utf8), frames[3]])
        let deadline = Date().addingTimeInterval(5)
        while watch != nil, Date() < deadline { usleep(1000) }
        XCTAssertNil(watch, "libzmq released every frame's hold on the box")
    }

    /// A body array goes out as frames cut where its values lie: the bytes arrive in order,
    /// the last frame shorter, and the box (and the array) are let go afterwards.
    func testSharedFramesCutABodyArrayIntoFramesWithoutCopying() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(router.lastEndpoint)
        let values = (0..<2500).map { Float($0) * 0.5 }
        var shared: SharedFrames? = SharedFrames(head: [Array("head".utf8)], body: values, bodyFrameBytes: 4096)
        weak let watch = shared
        XCTAssertEqual(shared!.count, 1 + 3)  // 10,000 bytes: 4096 + 4096 + 1808
        values.withUnsafeBytes { XCTAssertEqual(shared![1].baseAddress, $0.baseAddress, "the first body frame is the array's storage") }
        try dealer.send([], shared: shared!, range: 0..<4)
        shared = nil
        let m = try XCTUnwrap(try router.receive(timeout: 5000))
        XCTAssertEqual(m.dropFirst().map(\.count), [4, 4096, 4096, 1808])
        XCTAssertEqual(Array(m[2...].joined()), values.withUnsafeBytes { Array($0) })
        let deadline = Date().addingTimeInterval(5)
        while watch != nil, Date() < deadline { usleep(1000) }
        XCTAssertNil(watch, "libzmq released every frame's hold on the box")
    }
}
