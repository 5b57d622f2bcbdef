import FedLMCheckpoint
import FedLMModel
import FedLMTensor
import Foundation
import XCTest

final class TrainingTests: XCTestCase {
    func training(lr: Float = 3e-3, steps: Int = 1000) -> TrainingConfig {
        var t = TrainingConfig()
        t.learningRate = lr
        t.minLearningRate = lr / 10
        t.warmupSteps = 10
        t.maxSteps = steps
        t.weightDecay = 0.0
        t.beta2 = 0.99
        return t
    }

    func testTinyModelOverfitsAFixedBatch() throws {
        let c = GPT2Config(layers: 2, embedding: 32, heads: 4, context: 16, vocabulary: 40)
        let model = try GPT2Model(config: c, seed: 1)
        let step = TrainingStep(model: model, training: training(lr: 1e-2, steps: 150))
        let batch = TestModels.batch(c, batch: 4, sequence: 16, seed: 2)
        let first = try model.loss(batch)
        for _ in 0..<150 { try step.run(batch) }
        let last = try model.loss(batch)
        print("overfit: loss \(first) -> \(last)")
        XCTAssertGreaterThan(first, 3.0, "a fresh model should be near ln(40) = 3.7")
        XCTAssertLessThan(last, 0.05, "the model should memorise one batch")
    }

    /// Runs `steps` training steps on fresh random batches from `dataSeed`.
    func train(_ c: GPT2Config, seed: UInt64, steps: Int, dataSeed: UInt64 = 9) throws -> [Float] {
        let model = try GPT2Model(config: c, seed: seed)
        let step = TrainingStep(model: model, training: training())
        for s in 0..<steps { try step.run(TestModels.batch(c, batch: 3, sequence: 12, seed: dataSeed &+ UInt64(s))) }
        return model.parameters.storage.array
    }

    func testTrainingIsBitForBitReproducibleFromASeed() throws {
        let c = GPT2Config(layers: 2, embedding: 16, heads: 2, context: 12, vocabulary: 30)
        let a = try train(c, seed: 5, steps: 8)
        let b = try train(c, seed: 5, steps: 8)
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "same seed, same bits")
        let other = try train(c, seed: 6, steps: 8)
        XCTAssertNotEqual(a, other, "a different seed must give a different model")
    }

    func testResumeFromCheckpointContinuesExactly() throws {
        let c = GPT2Config(layers: 2, embedding: 16, heads: 2, context: 12, vocabulary: 30)
        let config = training()
        let dir = NSTemporaryDirectory() + "fedlm-resume-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Uninterrupted: 10 steps.
        let full = try GPT2Model(config: c, seed: 3)
        let fullStep = TrainingStep(model: full, training: config)
        for s in 0..<10 { try fullStep.run(TestModels.batch(c, batch: 3, sequence: 12, seed: UInt64(s))) }
        // Interrupted after 4: checkpoint, load into fresh objects, run the remaining 6.
        let first = try GPT2Model(config: c, seed: 3)
        let firstStep = TrainingStep(model: first, training: config)
        for s in 0..<4 { try firstStep.run(TestModels.batch(c, batch: 3, sequence: 12, seed: UInt64(s))) }
        try Checkpoint.save(model: first, optimizer: firstStep.optimizer,
                            state: .init(step: 4, optimizer: "adamw", tokensSeen: 4 * 36), to: dir)
        let optimizer = makeOptimizer(config, layout: ParameterLayout(config: c))
        let loaded = try Checkpoint.load(from: dir, optimizer: optimizer)
        XCTAssertEqual(loaded.state?.step, 4)
        XCTAssertEqual(optimizer.step, 4)
        let resumed = TrainingStep(model: loaded.model, optimizer: optimizer, schedule: LearningRateSchedule(config),
                                   gradientClip: config.gradientClip)
        for s in 4..<10 { try resumed.run(TestModels.batch(c, batch: 3, sequence: 12, seed: UInt64(s))) }
        XCTAssertEqual(loaded.model.parameters.storage.array.map(\.bitPattern),
                       full.parameters.storage.array.map(\.bitPattern))
    }

    func testNonFiniteLossLeavesParametersUntouched() throws {
        let c = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 10)
        let model = try GPT2Model(config: c, seed: 1)
        model.parameters.values("transformer.wte.weight")[0] = .nan
        let before = model.parameters.storage.array.map(\.bitPattern)
        let step = TrainingStep(model: model, training: training())
        XCTAssertThrowsError(try step.run(TestModels.batch(c, batch: 1, sequence: 4, seed: 1)))
        XCTAssertEqual(model.parameters.storage.array.map(\.bitPattern), before)
        XCTAssertEqual(step.step, 0)
    }

    func testBadBatchesAreRefusedWithAReason() throws {
        let c = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 10)
        let model = try GPT2Model(config: c, seed: 1)
        let tooLong = TokenBatch(batch: 1, sequence: 5, inputs: [1, 2, 3, 4, 5], targets: [1, 2, 3, 4, 5])
        XCTAssertThrowsError(try model.loss(tooLong)) { XCTAssertTrue("\($0)".contains("exceeds n_positions")) }
        let outOfVocabulary = TokenBatch(batch: 1, sequence: 2, inputs: [1, 10], targets: [1, 2])
        XCTAssertThrowsError(try model.loss(outOfVocabulary)) { XCTAssertTrue("\($0)".contains("token 10")) }
        let wrongCount = TokenBatch(batch: 2, sequence: 2, inputs: [1, 2], targets: [1, 2])
        XCTAssertThrowsError(try model.loss(wrongCount)) { XCTAssertTrue("\($0)".contains("expected 4")) }
    }
}
