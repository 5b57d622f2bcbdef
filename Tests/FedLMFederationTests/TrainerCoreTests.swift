@testable import FedLMFederation
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

    // MARK: The state machine

    let payload = TensorPayload(specs: [TensorSpec(name: "w", shape: [2])], values: [1, 2])
    func welcome(clusters: [String]? = nil, mode: String = "fedbuff") -> Message {
        .welcome(Welcome(trainerID: "en", cluster: nil, heartbeatMilliseconds: 1000, maxStaleness: 10, latestVersion: 0,
                         mode: mode, clusters: clusters))
    }
    func release(_ version: Int, cluster: String? = nil) -> Message { .release(ReleaseInfo(version: version, cluster: cluster), payload) }
    func round(of actions: [TrainerCore.Action]) -> TrainerCore.Round? {
        for case .train(let r) in actions { return r }
        return nil
    }

    func testATrainerRegistersFetchesTrainsAndDeliversUntilItsBudgetIsSpent() {
        var c = core { $0.cluster = "en"; $0.maxLocalSteps = 5; $0.tokenBudget = 64 * 8 }
        XCTAssertEqual(c.start(now: 0), [.send(.hello(Hello(trainerID: "en", cluster: "en", assignment: "declared")))])
        XCTAssertEqual(c.received(.heartbeat, now: 1), [], "not an answer to HELLO")
        XCTAssertEqual(c.received(welcome(), now: 1), [.note(.registered(cluster: "en")), .send(.fetch(Fetch(cluster: "en")))])
        let first = c.received(release(3), now: 2)
        XCTAssertEqual(round(of: first)?.steps, 5)
        XCTAssertEqual(round(of: first)?.number, 1)
        XCTAssertEqual(c.trained(updateID: "u1", tokens: 64 * 5, steps: 5, seconds: 1, now: 3), [.sendUpdate("u1")])
        XCTAssertEqual(c.received(.ack(Ack(updateID: "old", outcome: .applied, version: 4)), now: 4), [], "another update's ACK")
        let ack = Ack(updateID: "u1", outcome: .applied, version: 4)
        XCTAssertEqual(c.received(.ack(ack), now: 4), [.settled(updateID: "u1", .acknowledged(ack)), .send(.fetch(Fetch(cluster: "en")))])
        XCTAssertEqual(round(of: c.received(release(4), now: 5))?.steps, 3, "the budget's last 3 steps")
        _ = c.trained(updateID: "u2", tokens: 64 * 3, steps: 3, seconds: 1, now: 6)
        let stale = ErrorReply(code: .tooStale, detail: "base 4, now 20", refersTo: "u2")
        XCTAssertEqual(c.received(.error(stale), now: 7), [.settled(updateID: "u2", .refused(stale)), .finish])
        XCTAssertTrue(c.isFinished)
        XCTAssertEqual(c.tokensTrained, 64 * 8)
    }

    func testARequestWithoutAnswerIsSentAgainAfterItsTimeout() {
        var c = core { $0.ackTimeout = 30 }
        _ = c.start(now: 0)
        XCTAssertEqual(c.quiet(now: 4), [])
        XCTAssertEqual(c.quiet(now: 5.5), [.resend], "HELLO again after 5 s")
        XCTAssertEqual(c.received(.error(ErrorReply(code: .unavailable, detail: "no aggregator")), now: 5.8), [])
        XCTAssertEqual(c.received(.error(ErrorReply(code: .unavailable, detail: "no aggregator")), now: 6.1), [.resend])
        _ = c.received(welcome(), now: 7)
        _ = c.received(release(1), now: 8)
        _ = c.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 9)
        XCTAssertEqual(c.quiet(now: 20), [], "an update waits its ACK timeout")
        c.streaming(now: 30)
        XCTAssertEqual(c.quiet(now: 39.5), [], "something streaming in counts as an answer")
        XCTAssertEqual(c.quiet(now: 60.5), [.resend])
    }

    func testAfterABufferedUpdateTheTrainerAsksForANewerVersionUntilTheFreshBaseWaitEnds() {
        var c = core { $0.freshBaseWait = 0.5 }
        _ = c.start(now: 0)
        _ = c.received(welcome(), now: 0)
        _ = c.received(release(7), now: 0)
        _ = c.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 10, now: 10)
        let buffered = Ack(updateID: "u1", outcome: .buffered, version: 7)
        XCTAssertEqual(c.received(.ack(buffered), now: 100).last, .send(.fetch(Fetch(haveVersion: 7))), "a version newer than 7")
        XCTAssertEqual(c.received(.heartbeat, now: 101), [.sendAfter(seconds: 0.02, .fetch(Fetch(haveVersion: 7)))], "none yet: ask again")
        XCTAssertEqual(c.received(.heartbeat, now: 105), [.note(.noFreshVersion(after: 7)), .send(.fetch(Fetch()))],
                       "half the last round's 10 s are over: the version there is")
        XCTAssertEqual(c.received(.heartbeat, now: 106), [], "already asking for any version")
        XCTAssertNotNil(round(of: c.received(release(7), now: 106)))
    }

    func testAForgottenTrainerRegistersAgainAndSendsTheSameUpdate() {
        var c = core { $0.cluster = "en" }
        XCTAssertEqual(c.start(now: 0, pendingUpdate: "left-before-restart").count, 1)
        XCTAssertEqual(c.received(welcome(), now: 1).last, .sendUpdate("left-before-restart"), "the update left from before a restart goes first")
        XCTAssertEqual(c.updateInFlight, "left-before-restart")
        let forgotten = ErrorReply(code: .unknownTrainer, detail: "say HELLO", refersTo: "left-before-restart")
        XCTAssertEqual(c.received(.error(forgotten), now: 2), [.send(.hello(Hello(trainerID: "en", cluster: "en", assignment: "declared")))])
        XCTAssertEqual(c.received(welcome(), now: 3), [.note(.registered(cluster: "en")), .sendUpdate("left-before-restart")])
        let ack = Ack(updateID: "left-before-restart", outcome: .duplicate, version: 2)
        XCTAssertEqual(c.received(.ack(ack), now: 4).first, .settled(updateID: "left-before-restart", .acknowledged(ack)))
        XCTAssertNil(c.updateInFlight)
    }

    func testAnAutomaticTrainerJoinsTheClusterWithTheLowestLossAndChoosesAgainLater() {
        var c = core { $0.automaticCluster = true; $0.reassignEvery = 2 }
        XCTAssertEqual(c.start(now: 0), [.send(.hello(Hello(trainerID: "en", cluster: nil, assignment: nil)))])
        XCTAssertEqual(c.received(welcome(clusters: ["a", "b"]), now: 1).last, .send(.fetch(Fetch(cluster: "a"))))
        XCTAssertEqual(c.received(release(5, cluster: "b"), now: 1), [], "not the cluster asked for")
        XCTAssertEqual(c.received(release(5, cluster: "a"), now: 1), [.evaluate(cluster: "a", ReleaseInfo(version: 5, cluster: "a"), payload)])
        XCTAssertEqual(c.evaluated(cluster: "a", loss: 3.5, now: 2), [.send(.fetch(Fetch(cluster: "b")))])
        _ = c.received(release(6, cluster: "b"), now: 2)
        XCTAssertEqual(c.evaluated(cluster: "b", loss: 2.5, now: 3),
                       [.note(.clusterLosses(["a", "b"], [3.5, 2.5], chosen: "b")),
                        .send(.hello(Hello(trainerID: "en", cluster: "b", assignment: "automatic")))])
        XCTAssertEqual(c.received(welcome(clusters: ["a", "b"]), now: 4).last, .send(.fetch(Fetch(cluster: "b"))))
        for (k, id) in ["u1", "u2"].enumerated() {
            _ = c.received(release(6 + k, cluster: "b"), now: 5)
            _ = c.trained(updateID: id, tokens: 64, steps: 1, seconds: 1, now: 6)
            let after = c.received(.ack(Ack(updateID: id, outcome: .applied, version: 7 + k)), now: 7)
            XCTAssertEqual(after.last, .send(.fetch(Fetch(cluster: k == 0 ? "b" : "a"))), "round \(k + 1): every 2 rounds a new choice")
        }
        _ = c.received(release(9, cluster: "a"), now: 8)
        _ = c.evaluated(cluster: "a", loss: 1.0, now: 8)
        _ = c.received(release(9, cluster: "b"), now: 8)
        XCTAssertEqual(c.evaluated(cluster: "b", loss: 2.0, now: 9),
                       [.note(.clusterLosses(["a", "b"], [1.0, 2.0], chosen: "a")), .note(.movedCluster(from: "b", to: "a")),
                        .send(.hello(Hello(trainerID: "en", cluster: "a", assignment: "automatic")))])
        XCTAssertEqual(c.cluster, "a")
    }

    func testARefusedClusterOrAFederationWithoutClustersStopsTheTrainer() {
        var declared = core { $0.cluster = "xx" }
        _ = declared.start(now: 0)
        XCTAssertEqual(declared.received(.error(ErrorReply(code: .unknownCluster, detail: "no cluster xx")), now: 1), [.fail("en: no cluster xx")])
        var automatic = core { $0.automaticCluster = true }
        _ = automatic.start(now: 0)
        XCTAssertEqual(automatic.received(welcome(), now: 1).last,
                       .fail("en: automatic cluster choice, but the federation has no clusters"))
    }

    func testSilenceIsReportedOnceAfterItsThresholdAndItsEndWhenTheBrokerAnswers() {
        var w = SilenceWatch(warnAfter: 15, now: 0)
        XCTAssertNil(w.quiet(now: 14))
        w.waiting(since: 10)
        XCTAssertNil(w.quiet(now: 20), "counts from the request")
        XCTAssertEqual(w.quiet(now: 25.5), .began(since: 10))
        XCTAssertNil(w.quiet(now: 40), "said once")
        XCTAssertEqual(w.heard(now: 50), .ended(seconds: 40))
        XCTAssertNil(w.heard(now: 51))
    }

    // MARK: Overlap

    func testWithOverlapTheNextRoundStartsWhileTheUpdateIsInFlightAndMergesTheFreshRelease() {
        var c = core { $0.overlap = true; $0.maxLocalSteps = 2; $0.tokenBudget = 64 * 6 }
        _ = c.start(now: 0)
        _ = c.received(welcome(), now: 0)
        XCTAssertEqual(round(of: c.received(release(3), now: 0))?.start, .release, "the first round starts from the release")
        XCTAssertEqual(c.trained(updateID: "u1", tokens: 128, steps: 2, seconds: 1, now: 1), [], "the driver hands in what arrived first")
        let first = c.drained(now: 1)
        XCTAssertEqual(Array(first.prefix(2)), [.sendUpdate("u1"), .send(.fetch(Fetch(haveVersion: 3)))])
        XCTAssertEqual(round(of: first)?.start, .local, "round 2 starts at once, from where round 1 ended")
        XCTAssertEqual(round(of: first)?.release.version, 3, "still based on v3")
        XCTAssertEqual(c.quiet(now: 7), [], "no FETCH again while the update it follows is still uploading")
        // Round 2 trains; meanwhile the ACK and a newer release arrive.
        XCTAssertEqual(c.trained(updateID: "u2", tokens: 128, steps: 2, seconds: 1, now: 2), [])
        let ack = Ack(updateID: "u1", outcome: .applied, version: 4)
        XCTAssertEqual(c.received(.ack(ack), now: 2), [.settled(updateID: "u1", .acknowledged(ack))], "no round starts before the queue is read")
        XCTAssertEqual(c.received(release(4), now: 2), [.hold(ReleaseInfo(version: 4), payload)], "kept until a round starts")
        let second = c.drained(now: 2)
        XCTAssertEqual(Array(second.prefix(2)), [.sendUpdate("u2"), .send(.fetch(Fetch(haveVersion: 4)))])
        XCTAssertEqual(round(of: second)?.start, .releaseMinusOwn, "v4 minus u2, which v4 cannot hold yet")
        XCTAssertEqual(round(of: second)?.release.version, 4)
        // The budget is spent after round 3: its update waits for u2's ACK, then the trainer finishes.
        XCTAssertEqual(c.trained(updateID: "u3", tokens: 128, steps: 2, seconds: 1, now: 3), [])
        XCTAssertEqual(c.received(.heartbeat, now: 3), [], "nothing newer than v4")
        XCTAssertEqual(c.drained(now: 3), [], "u2 is still in flight: u3 is held")
        XCTAssertEqual(c.quiet(now: 3 + 30.5), [.sendUpdate("u2")], "u2 again after its ACK timeout")
        _ = c.received(.ack(Ack(updateID: "u2", outcome: .applied, version: 5)), now: 34)
        XCTAssertEqual(c.drained(now: 34), [.sendUpdate("u3"), .send(.fetch(Fetch(haveVersion: 4)))])
        _ = c.received(.ack(Ack(updateID: "u3", outcome: .applied, version: 6)), now: 35)
        XCTAssertEqual(c.drained(now: 35), [.finish])
        XCTAssertTrue(c.isFinished)
    }

    func testOverlapWaitsInSynchronousRoundsAndAForgottenTrainerDeliversBothUpdates() {
        var sync = core { $0.overlap = true }
        _ = sync.start(now: 0)
        _ = sync.received(welcome(mode: "sync"), now: 0)
        _ = sync.received(release(1), now: 0)
        XCTAssertEqual(sync.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 1), [.sendUpdate("u1")], "sync rounds: no overlap")

        var c = core { $0.overlap = true; $0.cluster = "en" }
        _ = c.start(now: 0)
        _ = c.received(welcome(), now: 0)
        _ = c.received(release(1), now: 0)
        _ = c.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 1)
        _ = c.drained(now: 1)
        _ = c.trained(updateID: "u2", tokens: 64, steps: 1, seconds: 1, now: 2)
        let forgotten = ErrorReply(code: .unknownTrainer, detail: "say HELLO", refersTo: "u1")
        XCTAssertEqual(c.received(.error(forgotten), now: 2), [.send(.hello(Hello(trainerID: "en", cluster: "en", assignment: "declared")))])
        XCTAssertEqual(c.received(welcome(), now: 3).last, .sendUpdate("u1"))
        XCTAssertEqual(c.received(.ack(Ack(updateID: "u1", outcome: .applied, version: 2)), now: 4).last, .sendUpdate("u2"),
                       "the held update follows")
        XCTAssertEqual(c.received(.ack(Ack(updateID: "u2", outcome: .applied, version: 3)), now: 5).last, .send(.fetch(Fetch(cluster: "en"))))
    }

    // MARK: Release steps

    func step(_ from: Int, _ to: Int, through: Int) -> Message { .release(ReleaseInfo(version: to, stepFrom: from, through: through), payload) }

    func testReleaseStepsFromTheHeldVersionAreAddedInOrderAndAStepFromElsewhereAsksForTheWholeRelease() {
        var c = core { $0.asksForReleaseSteps = true; $0.freshBaseWait = 0 }
        _ = c.start(now: 0)
        XCTAssertEqual(c.received(welcome(), now: 0).last, .send(.fetch(Fetch())), "holds nothing yet")
        XCTAssertEqual(c.received(release(3), now: 0).first, .hold(ReleaseInfo(version: 3), payload))
        XCTAssertEqual(c.holds, 3)
        _ = c.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 1)
        let next = c.received(.ack(Ack(updateID: "u1", outcome: .applied, version: 4)), now: 1)
        XCTAssertEqual(next.last, .send(.fetch(Fetch(holds: 3))), "says which version it holds")
        XCTAssertEqual(c.received(step(3, 4, through: 5), now: 2), [.hold(ReleaseInfo(version: 4, stepFrom: 3, through: 5), payload)],
                       "the first of two steps: add it and wait for the next")
        XCTAssertNil(round(of: c.received(step(3, 4, through: 5), now: 2)), "a step from a version it no longer holds is not trained on")
        XCTAssertNil(c.holds)
        var d = core { $0.asksForReleaseSteps = true }
        _ = d.start(now: 0)
        _ = d.received(welcome(), now: 0)
        _ = d.received(release(3), now: 0)
        _ = d.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 1)
        _ = d.received(.ack(Ack(updateID: "u1", outcome: .applied, version: 5)), now: 1)
        _ = d.received(step(3, 4, through: 5), now: 2)
        let last = d.received(step(4, 5, through: 5), now: 2)
        XCTAssertEqual(last.first, .hold(ReleaseInfo(version: 5, stepFrom: 4, through: 5), payload))
        XCTAssertEqual(round(of: last)?.start, .release, "through v5: a round starts from the held v5")
        XCTAssertEqual(round(of: last)?.release.version, 5)
        XCTAssertEqual(d.holds, 5)
        _ = d.trained(updateID: "u2", tokens: 64, steps: 1, seconds: 1, now: 3)
        _ = d.received(.ack(Ack(updateID: "u2", outcome: .applied, version: 6)), now: 3)
        XCTAssertEqual(d.received(step(2, 6, through: 6), now: 4), [.send(.fetch(Fetch()))],
                       "a step from v2 while holding v5: the whole release instead")
    }

    func testHeartbeatsAnsweringTheTrainersOwnAreNotTakenForTheFetchAnswer() {
        var c = core { $0.overlap = true }
        _ = c.start(now: 0)
        _ = c.received(welcome(), now: 0)
        _ = c.received(release(1), now: 0)
        _ = c.trained(updateID: "u1", tokens: 64, steps: 1, seconds: 1, now: 1)
        _ = c.drained(now: 1)  // u1 and a FETCH go out, round 2 starts
        c.sentAlive()
        c.sentAlive()  // two heartbeats while round 2 trains
        _ = c.trained(updateID: "u2", tokens: 64, steps: 1, seconds: 1, now: 2)
        _ = c.received(.ack(Ack(updateID: "u1", outcome: .applied, version: 2)), now: 2)
        XCTAssertEqual(c.received(.heartbeat, now: 2), [])
        XCTAssertEqual(c.received(.heartbeat, now: 2), [], "the answers to its own two heartbeats")
        XCTAssertEqual(c.received(release(2), now: 2), [.hold(ReleaseInfo(version: 2), payload)], "the FETCH's answer is still awaited")
        XCTAssertEqual(round(of: c.drained(now: 2))?.start, .releaseMinusOwn)
    }

    func testTheMergeRuleSubtractsTheShareOfTheTrainersOwnUpdate() {
        // S = R − λ·Δ_own on exact binary numbers.
        var weights: [Float] = [1.0, -2.0, 0.5, 4.0]
        let own: [Float] = [0.5, 0.25, -1.0, 0.0]
        weights.withUnsafeMutableBufferPointer { LocalTraining.subtract(own, times: 0.5, from: $0.baseAddress!) }
        XCTAssertEqual(weights, [0.75, -2.125, 1.0, 4.0])
        weights.withUnsafeMutableBufferPointer { LocalTraining.subtract(own, times: 0, from: $0.baseAddress!) }
        XCTAssertEqual(weights, [0.75, -2.125, 1.0, 4.0], "λ = 0: the release as it is")
        weights.withUnsafeMutableBufferPointer { LocalTraining.subtract(own, times: 1, from: $0.baseAddress!) }
        XCTAssertEqual(weights, [0.25, -2.375, 2.0, 4.0])
    }
}
