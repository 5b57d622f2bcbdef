import FedLMModel
import FedLMTensor
import XCTest

/// Training part of the model: gradients of the trained tensors only (checked against finite
/// differences and the whole model's), no activations below the lowest trained block,
/// micro-batches that give the whole batch's gradient, and the memory plan for a budget.
final class PartialTrainingTests: XCTestCase {
    let config = TestModels.config(layers: 3, embedding: 16, heads: 2, context: 8, vocabulary: 37, tied: false)

    func testAPartialModelsGradientsAreTheWholeModelsForItsTensors() throws {
        let data = TestModels.batch(config, batch: 2, sequence: 8, seed: 3)
        let whole = try GPT2Model(config: config, seed: 7)
        TestModels.perturb(whole, seed: 11)
        try whole.lossAndGradients(data)
        for trained in [TrainingMemory.topBlocks(1, config: config), TrainingMemory.topBlocks(2, config: config),
                        try TensorSubset(model: whole.layout, patterns: ["transformer.h.1.mlp.*", "lm_head.*"], layers: 3)] {
            let partial = try GPT2Model(config: config, trained: trained)
            partial.parameters.copy(from: whole.parameters)
            XCTAssertEqual(partial.gradients.count, trained.count, "gradients for the trained tensors only")
            let loss = try partial.lossAndGradients(data)
            XCTAssertEqual(loss, try whole.loss(data))
            for e in partial.gradients.layout.entries {
                let mine = partial.gradients.values(e.name), reference = whole.gradients.values(e.name)
                for i in 0..<e.count {
                    XCTAssertEqual(mine[i], reference[i], accuracy: 1e-5 * max(1, abs(reference[i])), "\(e.name)[\(i)]")
                }
            }
        }
    }

    func testAPartialModelsGradientsMatchFiniteDifferences() throws {
        let model = try GPT2Model(config: config, trained: TrainingMemory.topBlocks(1, config: config))
        model.initialize(seed: 7)
        TestModels.perturb(model, seed: 11)
        let data = TestModels.batch(config, batch: 2, sequence: 8, seed: 3)
        try model.lossAndGradients(data)
        var rng = SeededGenerator(seed: 5)
        let h: Float = 1e-2
        for e in model.gradients.layout.entries {
            let offset = model.layout[e.name].offset
            for _ in 0..<2 {
                let k = Int(rng.next() % UInt64(e.count))
                let p = model.parameters.pointer + offset + k
                let saved = p.pointee
                p.pointee = saved + h
                let up = try model.loss(data)
                p.pointee = saved - h
                let down = try model.loss(data)
                p.pointee = saved
                let numeric = Double(up - down) / Double(2 * h), analytic = Double(model.gradients.values(e.name)[k])
                XCTAssertLessThan(abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-2), 0.03,
                                  "\(e.name)[\(k)]: analytic \(analytic), numeric \(numeric)")
            }
        }
    }

    func testFrozenBlocksKeepNoActivationsAndThePlanIsEstimatedExactly() throws {
        let c = TestModels.config(layers: 4, embedding: 16, heads: 2, context: 8)
        var previous = Int.max
        for blocks in [4, 2, 1, 0] {  // kept for backward: 4, 2 + 1 shared, 1 + 1, 0 + 1 blocks
            let trained = TrainingMemory.topBlocks(blocks, config: c)
            let model = try GPT2Model(config: c, trained: trained)
            try model.lossAndGradients(TestModels.batch(c, batch: 3, sequence: 8, seed: 1))
            XCTAssertEqual(model.activationBytes, model.plannedActivationBytes(batch: 3, sequence: 8), "\(blocks) blocks")
            XCTAssertLessThan(model.activationBytes, previous, "fewer trained blocks, fewer activations")
            previous = model.activationBytes
        }
    }

    func testMicroBatchesGiveTheWholeBatchsStep() throws {
        var training = TrainingConfig()
        training.batchSize = 4
        let data = TestModels.batch(config, batch: 4, sequence: 8, seed: 9)
        let a = try GPT2Model(config: config, seed: 7), b = try GPT2Model(config: config, seed: 7)
        let whole = TrainingStep(model: a, training: training)
        let micro = TrainingStep(model: b, training: training)
        micro.microBatch = 1
        for _ in 0..<3 {
            let ra = try whole.run(data), rb = try micro.run(data)
            XCTAssertEqual(ra.loss, rb.loss, accuracy: 1e-5)
            XCTAssertEqual(ra.gradientNorm, rb.gradientNorm, accuracy: 1e-4 * ra.gradientNorm)
        }
        let pa = a.parameters.storage.array, pb = b.parameters.storage.array
        for i in pa.indices { XCTAssertEqual(pa[i], pb[i], accuracy: 1e-4, "parameter \(i)") }
        micro.microBatch = 3
        XCTAssertThrowsError(try micro.run(data)) { XCTAssertTrue("\($0)".contains("does not divide"), "\($0)") }
    }

    func testAPartialTrainerOnlyMovesItsTensors() throws {
        let trained = TrainingMemory.topBlocks(1, config: config)
        let model = try GPT2Model(config: config, trained: trained)
        model.initialize(seed: 3)
        let before = model.parameters.storage.array
        let step = TrainingStep(model: model, training: TrainingConfig())
        for s in 0..<3 { try step.run(TestModels.batch(config, batch: 2, sequence: 8, seed: UInt64(s))) }
        let after = model.parameters.storage.array
        for e in model.layout.entries {
            let moved = (e.range).contains { before[$0] != after[$0] }
            XCTAssertEqual(moved, trained.contains(e.name), e.name)
        }
    }

    func testTheMemoryPlanFitsTheBudgetAndSaysWhenNothingFits() throws {
        let small = GPT2Config(layers: 6, embedding: 256, heads: 8, context: 256, vocabulary: 4096)
        let whole = TrainingMemory.estimate(config: small, trained: .whole(ParameterLayout(config: small)), microBatch: 16, sequence: 256)
        XCTAssertEqual(try TrainingMemory.plan(config: small, batch: 16, sequence: 256, budget: whole).trained.isWhole, true)
        var last = Int.max
        for fraction in [2, 3, 4] {
            let budget = whole / fraction
            let plan = try TrainingMemory.plan(config: small, batch: 16, sequence: 256, budget: budget)
            XCTAssertLessThanOrEqual(plan.estimatedBytes, budget)
            XCTAssertLessThanOrEqual(plan.trained.count, last, "a smaller budget never trains more")
            last = plan.trained.count
        }
        let pinned = try TrainingMemory.plan(config: small, batch: 16, sequence: 256, budget: whole / 2, microBatch: 16)
        XCTAssertEqual(pinned.microBatch, 16)
        XCTAssertFalse(pinned.trained.isWhole, "without micro-batches half the memory trains part of the model")
        XCTAssertThrowsError(try TrainingMemory.plan(config: small, batch: 16, sequence: 256, budget: 50 << 20)) {
            XCTAssertTrue("\($0)".contains("too small"), "\($0)")
        }
        XCTAssertEqual(try TrainingMemory.parseBytes("300MiB"), 300 << 20)
        XCTAssertEqual(try TrainingMemory.parseBytes("1.5GiB"), 3 << 29)
        XCTAssertThrowsError(try TrainingMemory.parseBytes("lots"))
    }
}
