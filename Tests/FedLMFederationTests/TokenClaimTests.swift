import FedLMAggregation
import FedLMFederation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation
import XCTest

/// A sender's token claim is credited at most what its steps, the federation's batch and context,
/// its topology `local_steps` and its budget allow; in a synchronous round the data weights are
/// the credits, so a liar weighs no more than an honest member with the same steps.
final class TokenClaimTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = NSTemporaryDirectory() + "fedlm-claims-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testCreditIsBoundedByStepsMaxStepsAndBudget() {
        let limits = TokenClaimLimits(tokensPerStep: 512, maxSteps: ["a": 5, "b": 10], defaultMaxSteps: 10,
                                      budgets: ["a": 10_000, "region-north": 100_000], regions: ["region-north"])
        // An honest claim: whole.
        XCTAssertEqual(limits.credit(claimed: 2560, localSteps: 5, trainer: "a", creditedSoFar: 0), .init(tokens: 2560, reason: nil))
        // More tokens than its steps hold: the steps' worth.
        let inflated = limits.credit(claimed: 1_000_000_000_000, localSteps: 5, trainer: "a", creditedSoFar: 0)
        XCTAssertEqual(inflated.tokens, 2560)
        XCTAssertTrue(inflated.reason!.contains("5 local steps (at most 5) of 512 tokens allow 2560"), inflated.reason!)
        // More steps than its topology entry allows: at most those steps.
        XCTAssertEqual(limits.credit(claimed: 51_200, localSteps: 100, trainer: "a", creditedSoFar: 0).tokens, 2560)
        XCTAssertEqual(limits.credit(claimed: 51_200, localSteps: 100, trainer: "b", creditedSoFar: 0).tokens, 5120)
        // A sender the topology does not name: the level's default.
        XCTAssertEqual(limits.credit(claimed: 51_200, localSteps: 100, trainer: "stranger", creditedSoFar: 0).tokens, 5120)
        // Near the end of its budget (10,000 + one round of 2,560): what is left.
        let late = limits.credit(claimed: 2560, localSteps: 5, trainer: "a", creditedSoFar: 11_000)
        XCTAssertEqual(late.tokens, 1560)
        XCTAssertTrue(late.reason!.contains("budget of 10000"), late.reason!)
        XCTAssertEqual(limits.credit(claimed: 2560, localSteps: 5, trainer: "a", creditedSoFar: 20_000).tokens, 0)
        // A region: many trainers' steps in one update, bounded only by its budget (+5%).
        XCTAssertEqual(limits.credit(claimed: 40_000, localSteps: 1, trainer: "region-north", creditedSoFar: 0), .init(tokens: 40_000, reason: nil))
        XCTAssertEqual(limits.credit(claimed: 40_000, localSteps: 1, trainer: "region-north", creditedSoFar: 80_000).tokens, 25_000)
        // Negative claims never reach here (the codec refuses them), but would credit nothing.
        XCTAssertEqual(limits.credit(claimed: -5, localSteps: 5, trainer: "a", creditedSoFar: 0).tokens, 0)
    }

    func testASyncRoundWeighsALiarByItsStepsAndTheLedgerKeepsTheClaim() throws {
        var c = AggregationConfig()
        c.mode = .sync
        c.participants = 2
        c.serverOptimizer = .sgd(learningRate: 1)
        c.checkpointEvery = 5
        let modelConfig = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 11)
        let limits = TokenClaimLimits(tokensPerStep: 16, maxSteps: ["honest": 4, "liar": 4], defaultMaxSteps: 4)
        func open() throws -> AggregatorCore {
            let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
            core.tokenClaims = limits
            for t in ["honest", "liar"] { _ = try core.handle(.hello(Hello(trainerID: t)), from: t) }
            return core
        }
        let core = try open()
        let initial = core.model.parameters.storage.array
        let n = initial.count
        let d = (0..<n).map { Float($0 % 7) * 0.01 }, e = (0..<n).map { -Float($0 % 5) * 0.02 }
        func send(_ id: String, _ trainer: String, tokens: Int, steps: Int, _ values: [Float], base: Int) throws -> Message? {
            let m = Message.update(UpdateInfo(updateID: id, trainerID: trainer, baseVersion: base, tokens: tokens, localSteps: steps),
                                   TensorPayload(specs: core.specs, values: values))
            if case .reply(_, let r)? = try core.handle(m, from: trainer).first { return r }
            return nil
        }
        // The honest member trained 2 steps (32 tokens); the liar 4 steps and claims a trillion tokens.
        _ = try send("h1", "honest", tokens: 32, steps: 2, d, base: 0)
        XCTAssertEqual(try send("l1", "liar", tokens: 1_000_000_000_000, steps: 4, e, base: 0), .ack(Ack(updateID: "l1", outcome: .applied, version: 1)))
        // Weights 32 and 64 (its 4 steps of 16 tokens), not 32 and a trillion.
        let after = core.model.parameters.storage.array
        for i in 0..<n {
            let expected = Double(initial[i]) - (32 * Double(d[i]) + 64 * Double(e[i])) / 96
            XCTAssertEqual(Double(after[i]), expected, accuracy: 1e-6)
        }
        let liar = try XCTUnwrap(core.ledger.update(id: "l1"))
        XCTAssertEqual(liar.tokens, 64, "credited its steps' worth")
        XCTAssertEqual(liar.claimedTokens, 1_000_000_000_000, "the claim kept beside the credit")
        XCTAssertNil(try core.ledger.update(id: "h1")?.claimedTokens)
        XCTAssertEqual(try core.ledger.creditedTokens(), ["honest": 32, "liar": 64])
        let status = try core.ledger.status()
        XCTAssertEqual(status.tokens, 96)
        XCTAssertEqual(status.trainers.first { $0.id == "liar" }?.clampedClaims, 1)
        XCTAssertEqual(status.trainers.first { $0.id == "honest" }?.clampedClaims, 0)
        // A restart replays the round with the credited weights: the same model, bit for bit.
        let reopened = try open()
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), after.map(\.bitPattern))
    }
}

/// Robust combinations in synchronous rounds: the round's updates combined per coordinate,
/// without data weights, and kept across a checkpoint taken mid-round.
final class RobustRoundTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = NSTemporaryDirectory() + "fedlm-robust-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testAMedianRoundOutvotesOneMemberAndSurvivesARestartMidRound() throws {
        var c = AggregationConfig()
        c.mode = .sync
        c.participants = 3
        c.combination = .median
        c.serverOptimizer = .sgd(learningRate: 1)
        let modelConfig = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 11)
        func open() throws -> AggregatorCore {
            let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
            for t in ["a", "b", "liar"] { _ = try core.handle(.hello(Hello(trainerID: t)), from: t) }
            return core
        }
        var core = try open()
        let initial = core.model.parameters.storage.array
        let n = initial.count
        let a = (0..<n).map { Float($0 % 7) * 0.01 }, b = (0..<n).map { Float($0 % 5) * 0.012 }
        let liar = (0..<n).map { -Float($0 % 7) * 100 }
        func send(_ id: String, _ trainer: String, _ values: [Float], tokens: Int) throws -> Message? {
            let m = Message.update(UpdateInfo(updateID: id, trainerID: trainer, baseVersion: 0, tokens: tokens, localSteps: 1),
                                   TensorPayload(specs: core.specs, values: values))
            if case .reply(_, let r)? = try core.handle(m, from: trainer).first { return r }
            return nil
        }
        XCTAssertEqual(try send("u1", "liar", liar, tokens: 1_000_000_000), .ack(Ack(updateID: "u1", outcome: .buffered, version: 0)))
        XCTAssertEqual(try send("u2", "a", a, tokens: 10), .ack(Ack(updateID: "u2", outcome: .buffered, version: 0)))
        try core.checkpoint()  // mid-round: the two updates so far live in the checkpoint's slots
        core = try open()
        XCTAssertEqual(try send("u3", "b", b, tokens: 10), .ack(Ack(updateID: "u3", outcome: .applied, version: 1)))
        let after = core.model.parameters.storage.array
        for i in 0..<n {
            let median = [a[i], b[i], liar[i]].sorted()[1]
            XCTAssertEqual(after[i], initial[i] - median, accuracy: 1e-6, "coordinate \(i): the median of the three, whatever the liar claims")
        }
    }
}
