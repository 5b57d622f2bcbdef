import FedLMFederation
import FedLMModel
import FedLMProtocol
import XCTest

/// A trainer's decisions on exact numbers, without sockets: resending a request, the fresh-base
/// wait, choosing its cluster again, local steps per round, and what an answer to its update means.
final class TrainerCoreTests: XCTestCase {
    func core(_ change: (inout TrainerOptions) -> Void = { _ in }) -> TrainerCore {
        var training = TrainingConfig()
        training.batchSize = 4
        training.sequenceLength = 16
        var o = TrainerOptions(id: "en", dataDirectory: "d", training: training,
                               modelConfig: GPT2Config(layers: 1, embedding: 8, heads: 2, context: 32, vocabulary: 11, tiedHead: true),
                               stateDirectory: "s")
        change(&o)
        return TrainerCore(options: o, tokensPerStep: 64)
    }

    func testARequestIsSentAgainAfterItsTimeoutAndAtMostTwiceASecondWhileUnavailable() {
        var r = TrainerCore.Request(sentAt: 100, retry: 5)
        XCTAssertFalse(r.silence(now: 104.9))
        XCTAssertTrue(r.silence(now: 105.1), "lost or the aggregator restarted: again")
        XCTAssertFalse(r.silence(now: 110), "the timeout counts from the resend")
        XCTAssertTrue(r.silence(now: 110.2))
        XCTAssertFalse(r.unavailable(now: 110.6))
        XCTAssertTrue(r.unavailable(now: 110.8), "no aggregator yet: again, twice a second at most")
        r.streaming(now: 120)
        XCTAssertFalse(r.silence(now: 124), "a release streaming in is an answer on its way")
        XCTAssertTrue(r.silence(now: 125.5))
    }

    func testAfterABufferedUpdateTheTrainerWaitsBrieflyForAFreshVersion() {
        let waiting = core { $0.freshBaseWait = 0.5 }
        XCTAssertEqual(waiting.fetchPlan(lastBuffered: false, mode: "fedbuff", lastBase: 7, lastRoundSeconds: 10, now: 0),
                       .init(haveVersion: nil, waitUntil: .infinity), "applied: any release")
        let plan = waiting.fetchPlan(lastBuffered: true, mode: "fedbuff", lastBase: 7, lastRoundSeconds: 10, now: 100)
        XCTAssertEqual(plan, .init(haveVersion: 7, waitUntil: 105), "half the last round's 10 s")
        XCTAssertEqual(waiting.askAgain(plan, now: 104), 7, "still newer than 7 only")
        XCTAssertNil(waiting.askAgain(plan, now: 105), "the wait is over: the version there is")
        XCTAssertEqual(core().fetchPlan(lastBuffered: true, mode: "fedbuff", lastBase: 7, lastRoundSeconds: 10, now: 0),
                       .init(haveVersion: nil, waitUntil: .infinity), "fresh_base_wait = 0: never waits")
        let sync = core().fetchPlan(lastBuffered: true, mode: "sync", lastBase: 7, lastRoundSeconds: 10, now: 0)
        XCTAssertEqual(sync, .init(haveVersion: 7, waitUntil: .infinity), "sync rounds wait for the round's version")
        XCTAssertEqual(core().askAgain(sync, now: 1e12), 7)
    }

    func testClustersAreChosenAgainEveryReassignEveryRoundsWhenAutomatic() {
        let automatic = core { $0.automaticCluster = true; $0.reassignEvery = 3 }
        XCTAssertEqual((0..<8).filter { automatic.choosesClusterAgain(round: $0) }, [3, 6])
        XCTAssertFalse(core { $0.reassignEvery = 3 }.choosesClusterAgain(round: 3), "a declared cluster stays")
    }

    func testLocalStepsFollowTheTimeAndTokenBudgets() {
        XCTAssertEqual(core { $0.maxLocalSteps = 20 }.localSteps(stepSeconds: 0, tokensTrained: 0), 20)
        let timed = core { $0.maxLocalSteps = 20; $0.timeBudget = 3 }
        XCTAssertEqual(timed.localSteps(stepSeconds: 0.5, tokensTrained: 0), 6, "3 s at 0.5 s a step")
        XCTAssertEqual(timed.localSteps(stepSeconds: 0.01, tokensTrained: 0), 20, "never more than H")
        XCTAssertEqual(timed.localSteps(stepSeconds: 10, tokensTrained: 0), 1, "at least one")
        let budgeted = core { $0.maxLocalSteps = 20; $0.tokenBudget = 64 * 25 }
        XCTAssertEqual(budgeted.localSteps(stepSeconds: 0, tokensTrained: 64 * 20), 5, "the budget's last 5 steps")
    }

    func testAnAnswerToAnUpdateIsAnAckARefusalOrACallToRegisterAgain() {
        let c = core()
        let ack = Ack(updateID: "u1", outcome: .buffered, version: 3)
        XCTAssertEqual(c.delivery(of: "u1", reply: .ack(ack)), .acknowledged(ack))
        XCTAssertEqual(c.delivery(of: "u2", reply: .ack(ack)), .other, "another update's ACK")
        let forgotten = ErrorReply(code: .unknownTrainer, detail: "say HELLO", refersTo: "u1")
        XCTAssertEqual(c.delivery(of: "u1", reply: .error(forgotten)), .registerAgain)
        let stale = ErrorReply(code: .tooStale, detail: "base 1, now 9", refersTo: "u1")
        XCTAssertEqual(c.delivery(of: "u1", reply: .error(stale)), .refused(stale))
        XCTAssertEqual(c.delivery(of: "u1", reply: .error(ErrorReply(code: .badChecksum, detail: "chunk 3"))), .other,
                       "a broken transfer is not about the update: it is sent again")
        XCTAssertEqual(c.delivery(of: "u1", reply: .heartbeat), .other)
    }
}
