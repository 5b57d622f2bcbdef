import FedLMFederation
import FedLMProtocol
import FedLMTensor
import FedLMZeroMQ
import Foundation
import XCTest

/// The broker's decisions without sockets: what `WireCodec.envelope` lets through, the per-peer
/// budget, identities bound to keys, refusals answered and logged once per interval, and the
/// supervision policy of `fedlm up`.
final class BrokerGateTests: XCTestCase {
    let codec = WireCodec()
    let specs = [TensorSpec(name: "w", shape: [1000])]

    func sizes(_ frames: [[UInt8]]) -> [Int] { frames.map(\.count) }

    /// A gate's verdict on whole frames.
    func inbound(_ gate: inout BrokerGate, _ frames: [[UInt8]], peer: String = "t1", member: Member? = nil, now: Double = 0) -> BrokerGate.Action {
        gate.inbound(peer: peer, head: Array(frames.prefix(3)), frameSizes: sizes(frames), member: member, now: now)
    }

    func updateStream(id: String = "u1", trainer: String = "t1", values: Int = 1000) -> [[[UInt8]]] {
        var c = codec
        c.chunkBytes = 1024
        return MessageStream.split(c.encode(.update(UpdateInfo(updateID: id, trainerID: trainer, baseVersion: 0, tokens: 1, localSteps: 1),
                                                    TensorPayload(specs: [TensorSpec(name: "w", shape: [values])],
                                                                  values: [Float](repeating: 0.5, count: values)))))
    }

    func code(_ action: BrokerGate.Action) -> ProtocolError.Code? {
        if case .refuse(let e) = action { return e.code }
        return nil
    }

    func testEnvelopeAcceptsWhatTrainersSendAndNamesWhatIsWrongWithTheRest() throws {
        let hello = codec.encode(.hello(Hello(trainerID: "t1")))
        XCTAssertEqual(try codec.envelope(head: hello, frameSizes: sizes(hello)), .hello(Hello(trainerID: "t1")))
        let stream = updateStream()
        guard case .update(let info, let chunks, let chunkBytes) = try codec.envelope(head: stream[0], frameSizes: sizes(stream[0])) else {
            return XCTFail("an update head")
        }
        XCTAssertEqual(info.updateID, "u1")
        XCTAssertEqual(chunks, 4)  // 4000 bytes in 1 KiB chunks
        XCTAssertEqual(chunkBytes, 1024)
        XCTAssertEqual(try codec.envelope(head: Array(stream[2].prefix(3)), frameSizes: sizes(stream[2])), .chunk(index: 1, count: 4, bytes: 1024))
        var smallChunks = codec
        smallChunks.chunkBytes = 1024
        let oneMessage = smallChunks.encode(.update(info, TensorPayload(specs: specs, values: [Float](repeating: 0, count: 1000))))
        guard case .update(_, 0, _) = try codec.envelope(head: Array(oneMessage.prefix(3)), frameSizes: sizes(oneMessage)) else {
            return XCTFail("the one-message form has its tensors inside")
        }

        func refusal(_ frames: [[UInt8]]) -> ProtocolError.Code? {
            do { _ = try codec.envelope(head: Array(frames.prefix(3)), frameSizes: sizes(frames)) } catch let e as ProtocolError { return e.code } catch {}
            return nil
        }
        XCTAssertEqual(refusal([[1, 2], [3]]), .malformed, "too few frames")
        XCTAssertEqual(refusal([Array("GARBAGE".utf8), [1], [2]]), .malformed, "no marker")
        XCTAssertEqual(refusal([WireCodec.magic + [9], [1], Array("{}".utf8)]), .unsupportedVersion)
        XCTAssertEqual(refusal([hello[0], [77], hello[2]]), .unknownType)
        XCTAssertEqual(refusal(codec.encode(.ack(Ack(updateID: "x", outcome: .applied, version: 1)))), .malformed, "an ACK is not sent by trainers")
        XCTAssertEqual(refusal(hello + [[0]]), .malformed, "an extra frame")
        XCTAssertEqual(refusal([hello[0], hello[1], Array("{\"trainerID\": 3".utf8)]), .malformed, "not JSON")
        XCTAssertEqual(refusal(Array(oneMessage.dropLast())), .malformed, "a tensor frame missing")
        XCTAssertEqual(refusal(Array(stream[1].prefix(3))), .malformed, "a CHUNK without its data frame")
        var tooBig = codec
        tooBig.maxValues = 10
        XCTAssertThrowsError(try tooBig.envelope(head: stream[0], frameSizes: sizes(stream[0]))) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .tooLarge)
        }
        // Random frames never get through as anything but a refusal.
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<2000 {
            let frames = (0..<Int.random(in: 1...6, using: &rng)).map { _ in (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) } }
            XCTAssertNotNil(refusal(frames), "\(frames)")
        }
    }

    func testAStreamPassesInOrderAndStrayOrReorderedChunksDoNot() {
        var gate = BrokerGate(security: nil)
        let stream = updateStream()
        XCTAssertEqual(inbound(&gate, stream[0]), .forward)
        XCTAssertEqual(inbound(&gate, stream[1]), .forward)
        XCTAssertEqual(code(inbound(&gate, stream[3], now: 1)), .malformed, "chunk 2 of 4 skipped")
        XCTAssertEqual(inbound(&gate, stream[4], now: 2), .drop, "the broken stream's rest is dropped silently")
        XCTAssertEqual(inbound(&gate, stream[1], peer: "t2"), .drop, "a CHUNK of no stream")
        // The sender starts over: the whole stream passes.
        for part in stream { XCTAssertEqual(inbound(&gate, part, now: 3), .forward) }
        XCTAssertEqual(gate.refusals.totals, ["malformed": 1, "strayChunk": 2])
        XCTAssertEqual(gate.forwarded, 2 + 5)
    }

    func testRequestsAndBytesInFlightAreBoundedPerPeerUntilTheAggregatorAnswers() {
        var limits = BrokerGate.Limits()
        limits.requestsInFlight = 3
        limits.bytesInFlight = 6000
        limits.replyInterval = 0
        var gate = BrokerGate(security: nil, limits: limits)
        let fetch = codec.encode(.fetch(Fetch()))
        for _ in 0..<3 { XCTAssertEqual(inbound(&gate, fetch), .forward) }
        XCTAssertEqual(code(inbound(&gate, fetch)), .unavailable, "a fourth request before any answer")
        XCTAssertEqual(inbound(&gate, fetch, peer: "t2"), .forward, "another peer has its own budget")
        gate.answered(peer: "t1", now: 1)
        XCTAssertEqual(inbound(&gate, fetch, now: 1), .forward, "an answer frees a place")
        for _ in 0..<3 { gate.answered(peer: "t1", now: 2) }
        // Bytes: an update of 4000 bytes fits, a second one before the ACK does not.
        for part in updateStream() { XCTAssertEqual(inbound(&gate, part, now: 3), .forward) }
        XCTAssertEqual(code(inbound(&gate, updateStream(id: "u2")[0], now: 3)), nil)  // the head is small
        XCTAssertEqual(code(inbound(&gate, updateStream(id: "u2")[1], now: 3)), nil)
        XCTAssertEqual(code(inbound(&gate, updateStream(id: "u2")[2], now: 3)), .unavailable, "over 6000 bytes in flight")
        // Unanswered for longer than answerTimeout: the budget starts over.
        XCTAssertEqual(inbound(&gate, updateStream(id: "u3")[0], now: 3 + limits.answerTimeout + 1), .forward)
    }

    func testRefusalsAreAnsweredOncePerIntervalAndLoggedOncePerPeer() {
        var limits = BrokerGate.Limits()
        limits.suspendAfter = .max  // counted here, never suspended
        var gate = BrokerGate(security: nil, limits: limits, logInterval: 10)
        let garbage: [[UInt8]] = [[1], [2], [3]]
        XCTAssertNotNil(code(inbound(&gate, garbage, now: 0)))
        for i in 1..<1000 { XCTAssertEqual(inbound(&gate, garbage, now: 0.5 + Double(i) / 10_000), .drop) }
        XCTAssertNotNil(code(inbound(&gate, garbage, now: 1.6)), "answered again after the reply interval")
        var lines = gate.logLines(now: 2)
        XCTAssertEqual(lines.count, 1, "\(lines)")
        XCTAssertTrue(lines[0].contains("refused a message from t1"), lines[0])
        lines = gate.logLines(now: 10.5)
        XCTAssertEqual(lines, ["refused 1000 more messages from t1 in 10 s (malformed 1000)"])
        XCTAssertEqual(gate.logLines(now: 30), [])
        XCTAssertEqual(gate.refusals.total, 1001)
    }

    func testIdentitiesAreBoundToKeysClosedOrOpen() throws {
        let dir = NSTemporaryDirectory() + "fedlm-gate-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let en = try CurveKeyPair.generate(), de = try CurveKeyPair.generate(), sub = try CurveKeyPair.generate()
        try AllowList.text(trainers: [("en", en.publicKey), ("en-2", en.publicKey), ("de", de.publicKey)], subscribers: [("viewer", sub.publicKey)],
                           aggregators: []).write(toFile: dir + "/allowed.toml", atomically: true, encoding: .utf8)
        let allowed = try AllowList(path: dir + "/allowed.toml")
        let member = try XCTUnwrap(allowed.member(key: en.publicKey))
        XCTAssertEqual(member, Member(role: .trainer, names: ["en", "en-2"], key: en.publicKey))
        XCTAssertTrue(allowed.decide(domain: "trainers", key: en.publicKey))
        XCTAssertFalse(allowed.decide(domain: "aggregator", key: en.publicKey))
        XCTAssertFalse(allowed.decide(domain: "trainers", key: try CurveKeyPair.generate().publicKey))
        let viewer = try XCTUnwrap(allowed.member(key: sub.publicKey))
        for membership in BrokerSecurity.Membership.allCases {
            var gate = BrokerGate(security: BrokerSecurity(keys: en, allowed: allowed, membership: membership), limits: {
                var l = BrokerGate.Limits(); l.replyInterval = 0; return l
            }())
            func verdict(_ message: Message, as peer: String, _ who: Member?) -> ProtocolError.Code? {
                code(inbound(&gate, codec.encode(message), peer: peer, member: who))
            }
            XCTAssertNil(verdict(.hello(Hello(trainerID: "en")), as: "en", member))
            XCTAssertNil(verdict(.hello(Hello(trainerID: "en-2")), as: "en-2", member), "a key's second name")
            XCTAssertEqual(verdict(.hello(Hello(trainerID: "de")), as: "en", member), .forbidden, "another trainer id")
            XCTAssertEqual(verdict(.hello(Hello(trainerID: "de")), as: "de", member), .forbidden, "another member's routing id")
            XCTAssertEqual(verdict(.fetch(Fetch()), as: "de", member), .forbidden, "any message on another's routing id")
            XCTAssertEqual(verdict(.hello(Hello(trainerID: "zz")), as: "zz", member), membership == .closed ? .forbidden : nil, "an undeclared name")
            XCTAssertEqual(verdict(.fetch(Fetch()), as: "en", nil), .forbidden, "a key no longer allowed")
            XCTAssertNil(verdict(.fetch(Fetch()), as: "viewer-123", viewer), "a subscriber fetches under a name of its own")
            XCTAssertEqual(verdict(.fetch(Fetch()), as: "de", viewer), .forbidden, "but not under a member's name")
            let push = updateStream(trainer: "viewer-123")[0]
            XCTAssertEqual(code(inbound(&gate, push, peer: "viewer-123", member: viewer)), .forbidden, "a subscriber never pushes")
            XCTAssertEqual(verdict(.hello(Hello(trainerID: "viewer-123")), as: "viewer-123", viewer), .forbidden, "nor registers as a trainer")
        }
    }

    func testAllowListFilesAreCheckedAndNameWhatIsWrong() throws {
        let dir = NSTemporaryDirectory() + "fedlm-allow-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = try CurveKeyPair.generate().publicKey
        for (text, expected) in [("trainers = [\"\(key)\"]", "must be a table of name = \"key\""),
                                 ("[trainers]\nen = \"not a key\"", "is not a CURVE public key"),
                                 ("[trainers]\nen = \"\(key)\"\n[aggregators]\nagg = \"\(key)\"", "listed both as"),
                                 ("[visitors]\nx = \"\(key)\"", "unknown key 'visitors'"),
                                 ("[trainers]\nen = 5", "'trainers.en' must be a Z85 public key or a list of them"),
                                 ("[trainers]\nen = []", "'trainers.en' must be a Z85 public key or a list of them")] {
            try text.write(toFile: dir + "/allowed.toml", atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try AllowList(path: dir + "/allowed.toml")) {
                XCTAssertTrue("\($0)".contains(expected), "\($0)")
                XCTAssertTrue("\($0)".contains(dir + "/allowed.toml"), "names the file: \($0)")
            }
        }
    }

    func testSupervisorRestartsWithinItsBudgetStopsOtherwiseAndEndsWhenTrainersFinish() {
        let processes: [String: Supervisor.Role] = ["broker": .broker, "aggregator": .aggregator, "trainer-a": .trainer, "trainer-b": .trainer]
        var policy = SupervisionPolicy()
        policy.maxRestarts = 2
        var s = Supervisor(policy: policy, processes: processes)
        XCTAssertEqual(s.exited("broker", status: nil, signal: SIGABRT), .restart("broker", after: 1))
        XCTAssertEqual(s.exited("broker", status: 0), .restart("broker", after: 2), "a broker exiting at all has failed; backoff doubles")
        guard case .stop(let why?) = s.exited("broker", status: 1) else { return XCTFail("the third failure stops the run") }
        XCTAssertTrue(why.contains("after 2 restarts"), why)
        XCTAssertEqual(s.exited("trainer-a", status: 0), .none, "one trainer finished")
        XCTAssertEqual(s.exited("trainer-b", status: 1), .restart("trainer-b", after: 1))
        XCTAssertEqual(s.exited("trainer-b", status: 0), .stop(failure: nil), "every trainer finished")
        policy.onFailure = .stop
        var strict = Supervisor(policy: policy, processes: processes)
        guard case .stop(let reason?) = strict.exited("aggregator", status: nil, signal: SIGKILL) else { return XCTFail("on_failure = stop") }
        XCTAssertTrue(reason.contains("aggregator was killed by signal 9"), reason)
        // A crash loop: three failures within the window stop the run; failures further apart
        // than the window start the count (and the backoff) afresh.
        policy.onFailure = .restart
        policy.restartWindow = 60
        policy.maxRestartDelay = 3
        var looping = Supervisor(policy: policy, processes: processes)
        XCTAssertEqual(looping.exited("trainer-a", status: 1, now: 0), .restart("trainer-a", after: 1))
        XCTAssertEqual(looping.exited("trainer-a", status: 1, now: 100), .restart("trainer-a", after: 1), "the one before is out of the window")
        XCTAssertEqual(looping.exited("trainer-a", status: 1, now: 110), .restart("trainer-a", after: 2))
        guard case .stop(let loop?) = looping.exited("trainer-a", status: 1, now: 120) else { return XCTFail("a crash loop stops the run") }
        XCTAssertTrue(loop.contains("crash loop: 3 failures within 60 s"), loop)
    }
}

extension BrokerGateTests {
    func testAMemberThatKeepsSendingGarbageIsSuspendedAndOthersAreNot() {
        var limits = BrokerGate.Limits()
        limits.suspendAfter = 50
        limits.suspension = 60
        var gate = BrokerGate(security: nil, limits: limits)
        let garbage: [[UInt8]] = [[1], [2], [3]]
        let fetch = codec.encode(.fetch(Fetch()))
        var suspendedAt: Int?
        for i in 0..<200 {
            if case .suspend(let until, let why) = inbound(&gate, garbage, peer: "bad", now: Double(i) / 100) {
                suspendedAt = i
                XCTAssertEqual(until, Double(i) / 100 + 60, accuracy: 1e-9)
                XCTAssertTrue(why.contains("50 refused messages"), why)
                break
            }
        }
        XCTAssertEqual(suspendedAt, 49, "suspended at the 50th refusal")
        XCTAssertEqual(inbound(&gate, fetch, peer: "bad", now: 1), .drop, "even protocol is dropped while suspended")
        XCTAssertTrue(gate.isSuspended("bad", now: 30))
        XCTAssertEqual(inbound(&gate, fetch, peer: "good", now: 1), .forward, "others are not")
        XCTAssertEqual(inbound(&gate, fetch, peer: "bad", now: 61), .forward, "back after the suspension")
        XCTAssertTrue(gate.logLines(now: 61).contains { $0.hasPrefix("suspended bad for 60 s") })
        // Refusals spread thinner than the window allows never suspend.
        var patient = BrokerGate(security: nil, limits: limits)
        for i in 0..<500 { XCTAssertNotEqual({ if case .suspend = $0 { return true }; return false }(inbound(&patient, garbage, now: Double(i) * 0.3)), true) }
    }
}
