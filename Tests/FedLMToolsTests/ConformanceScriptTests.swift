import FedLMFederation
import FedLMTools
import FedLMProtocol
import XCTest

/// The conformance script's logic without sockets: a client that keeps the rules passes every
/// one, and each kind of breach is caught and named.
final class ConformanceScriptTests: XCTestCase {
    let id = "c1"
    var payload: TensorPayload { TensorPayload(specs: [TensorSpec(name: "transformer.ln_f.bias", shape: [2])], values: [0, 0]) }
    func update(_ n: Int) -> Message {
        .update(UpdateInfo(updateID: "u\(n)", trainerID: id, baseVersion: 0, tokens: 8, localSteps: 1), payload)
    }
    let hello = Message.hello(Hello(trainerID: "c1"))
    let fetch = Message.fetch(Fetch())

    /// Plays a conforming client up to the restart; returns the script.
    func conformingUntilRestart() -> ConformanceScript {
        var s = ConformanceScript(trainerID: id)
        XCTAssertEqual(s.received(hello, from: id, now: 0), .handle)
        guard case .reply(.error(let e)) = s.received(fetch, from: id, now: 1) else { XCTFail("first FETCH refused"); return s }
        XCTAssertEqual(e.code, .unavailable)
        XCTAssertEqual(s.received(fetch, from: id, now: 2), .sendCorruptRelease)
        XCTAssertEqual(s.received(fetch, from: id, now: 3), .handle)
        s.releaseSent(now: 3)
        XCTAssertEqual(s.received(.heartbeat, from: id, now: 4), .handle)
        XCTAssertEqual(s.received(update(1), from: id, now: 5), .ignore)
        guard case .reply(.error(let broken)) = s.received(update(1), from: id, now: 8) else { XCTFail(); return s }
        XCTAssertNil(broken.refersTo, "a broken transfer is not about the update")
        XCTAssertEqual(s.received(update(1), from: id, now: 9), .handle)
        s.answered(.ack(Ack(updateID: "u1", outcome: .applied, version: 1)))
        guard case .reply(.error(let final)) = s.received(update(2), from: id, now: 10) else { XCTFail(); return s }
        XCTAssertEqual(final.refersTo, "u2")
        guard case .reply(.error(let forgotten)) = s.received(update(3), from: id, now: 11) else { XCTFail(); return s }
        XCTAssertEqual(forgotten.code, .unknownTrainer)
        XCTAssertEqual(s.received(hello, from: id, now: 12), .handle)
        XCTAssertEqual(s.received(update(3), from: id, now: 12), .handle)
        s.answered(.ack(Ack(updateID: "u3", outcome: .applied, version: 2)))
        XCTAssertEqual(s.received(update(4), from: id, now: 13), .restartClient)
        return s
    }

    func testAClientThatKeepsTheRulesPassesEveryOne() {
        var s = conformingUntilRestart()
        XCTAssertEqual(s.received(hello, from: id, now: 20), .handle)
        XCTAssertEqual(s.received(update(4), from: id, now: 21), .handle, "the pending update first")
        s.answered(.ack(Ack(updateID: "u4", outcome: .applied, version: 3)))
        XCTAssertEqual(s.received(fetch, from: id, now: 22), .handle)
        s.finished(status: 0)
        for check in s.results { XCTAssertEqual(check.passed, true, "\(check.rule): \(check.detail)") }
    }

    func testEachBreachIsCaughtAndNamed() {
        var s = conformingUntilRestart()
        XCTAssertEqual(s.received(hello, from: id, now: 20), .handle)
        _ = s.received(update(5), from: id, now: 21)  // not the pending u4
        _ = s.received(update(2), from: id, now: 22)  // refused for good, sent again
        _ = s.received(update(1), from: id, now: 23)  // acknowledged, sent again
        s.releaseSent(now: 30)
        _ = s.received(.heartbeat, from: id, now: 40)  // 10 s of silence while training
        s.brokeProtocol("malformed: first frame is not the FEDLM protocol marker")
        s.finished(status: 1)
        let failed = Dictionary(uniqueKeysWithValues: s.results.filter { $0.passed == false }.map { ($0.rule, $0.detail) })
        XCTAssertTrue(failed.keys.contains { $0.hasPrefix("resends its unacknowledged update") }, "\(failed)")
        XCTAssertTrue(failed.keys.contains { $0.hasPrefix("never resends an update refused") }, "\(failed)")
        XCTAssertTrue(failed.keys.contains { $0.hasPrefix("never resends an acknowledged") }, "\(failed)")
        XCTAssertTrue(failed.keys.contains { $0.hasPrefix("sends a message at least every 5 s") }, "\(failed)")
        XCTAssertTrue(failed.keys.contains { $0.hasPrefix("every message it sends is protocol") }, "\(failed)")
    }

    func testAClientWhoseFirstWordIsNotHelloOrWhoseNameDiffersFails() {
        var s = ConformanceScript(trainerID: id)
        _ = s.received(fetch, from: id, now: 0)
        XCTAssertEqual(s.results.first?.passed, false)
        var t = ConformanceScript(trainerID: id)
        _ = t.received(.hello(Hello(trainerID: "someone-else")), from: id, now: 0)
        XCTAssertEqual(t.results.first?.passed, false)
        XCTAssertTrue(t.results.first!.detail.contains("someone-else"))
    }
}
