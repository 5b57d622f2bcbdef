import FedLMFederation
import FedLMModel
import FedLMTensor
import XCTest

/// A trainer's learning-rate schedule spans its token budget (as `fedlm train --tokens` does),
/// and its data sampling is seeded from its name the same way in every process.
final class TrainerScheduleTests: XCTestCase {
    func options(budget: Int?) -> TrainerOptions {
        var training = TrainingConfig()
        training.batchSize = 4
        training.sequenceLength = 16
        training.warmupSteps = 5
        training.maxSteps = 1000
        training.learningRate = 1e-3
        training.minLearningRate = 1e-4
        var o = TrainerOptions(id: "en", dataDirectory: "d", training: training,
                               modelConfig: GPT2Config(layers: 1, embedding: 8, heads: 2, context: 32, vocabulary: 11, tiedHead: true),
                               stateDirectory: "s")
        o.tokenBudget = budget
        return o
    }

    func testTheScheduleSpansTheTokenBudget() {
        let budgeted = options(budget: 64 * 50).scheduledTraining
        XCTAssertEqual(budgeted.maxSteps, 50, "50 batches of 4 x 16 tokens")
        let schedule = LearningRateSchedule(budgeted)
        XCTAssertEqual(schedule.rate(at: 50), 1e-4, "annealed to the minimum at the end of the budget")
        XCTAssertGreaterThan(schedule.rate(at: 25), 4e-4)
        XCTAssertEqual(options(budget: nil).scheduledTraining.maxSteps, 1000, "without a budget: the config's max_steps")
        XCTAssertEqual(options(budget: 10).scheduledTraining.maxSteps, 1, "at least one step")
    }

    func testNamedSeedsAreStableAndDistinct() {
        var a = SeededGenerator(seed: 7, name: "en"), b = SeededGenerator(seed: 7, name: "en"), c = SeededGenerator(seed: 7, name: "de")
        let x = (0..<4).map { _ in a.next() }
        XCTAssertEqual(x, (0..<4).map { _ in b.next() })
        XCTAssertNotEqual(x, (0..<4).map { _ in c.next() })
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c: the same in every process (String.hashValue is not).
        XCTAssertEqual(SeededGenerator.stableHash("a"), 0xaf63_dc4c_8601_ec8c)
    }
}
