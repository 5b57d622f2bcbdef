import FedLMAggregation
import FedLMModel
import XCTest

/// Strategies and server optimizers on exact numbers. Every vector is constant, so each
/// coordinate must equal the scalar worked out by hand in the comments.
final class AggregationTests: XCTestCase {
    let layout = ParameterLayout(config: GPT2Config(layers: 1, embedding: 2, heads: 1, context: 1, vocabulary: 1))

    func vector(_ value: Float) -> ParameterVector {
        let v = ParameterVector(layout: layout)
        for i in 0..<v.count { v.pointer[i] = value }
        return v
    }

    func assertAll(_ v: ParameterVector, _ expected: Float, accuracy: Float = 1e-6, _ message: String = "",
                   file: StaticString = #filePath, line: UInt = #line) {
        for i in 0..<v.count {
            XCTAssertEqual(v.pointer[i], expected, accuracy: accuracy, "\(message) coordinate \(i)", file: file, line: line)
        }
    }

    func testStalenessWeights() {
        XCTAssertEqual(StalenessWeight.constant.weight(staleness: 7), 1)
        XCTAssertEqual(StalenessWeight.polynomial(exponent: 0.5).weight(staleness: 3), 0.5)  // 4^-0.5
        XCTAssertEqual(StalenessWeight.hinge(slope: 0.5, cutoff: 2).weight(staleness: 2), 1)
        XCTAssertEqual(StalenessWeight.hinge(slope: 0.5, cutoff: 2).weight(staleness: 4), 0.5)  // 1 / (0.5 * 2 + 1)
        XCTAssertEqual(StalenessWeight.inverseSquareRoot.weight(staleness: 3), 0.5)
        XCTAssertEqual(StalenessWeight.inverseSquareRoot.weight(staleness: 0), 1)
    }

    func testFedAsyncMixesTheClientModelByStaleness() {
        let model = vector(1), base = vector(2), delta = vector(0.5)
        let s = FedAsync(mixing: 0.5, weight: .polynomial(exponent: 0.5), maxStaleness: 16)
        // a = 0.5 * 4^-0.5 = 0.25; w_client = 2 - 0.5 = 1.5; w = 0.75 * 1 + 0.25 * 1.5 = 1.125
        XCTAssertEqual(s.receive(Contribution(delta: delta, base: base, staleness: 3), model: model), .applied)
        assertAll(model, 1.125)
        // Too stale, or without base weights: refused, model untouched.
        guard case .refused(let why) = s.receive(Contribution(delta: delta, base: base, staleness: 17), model: model) else {
            return XCTFail("expected a refusal")
        }
        XCTAssertTrue(why.contains("exceeds the maximum of 16"), why)
        guard case .refused = s.receive(Contribution(delta: delta, staleness: 0), model: model) else { return XCTFail() }
        guard case .refused = s.receive(Contribution(delta: delta, base: base, staleness: -1), model: model) else {
            return XCTFail()
        }
        assertAll(model, 1.125)
        // A pseudo-gradient for another model shape is refused.
        let other = ParameterVector(layout: ParameterLayout(config: GPT2Config(layers: 2, embedding: 2, heads: 1, context: 1, vocabulary: 1)))
        guard case .refused(let shape) = s.receive(Contribution(delta: other, base: base, staleness: 0), model: model) else {
            return XCTFail()
        }
        XCTAssertTrue(shape.contains("shapes"), shape)
        assertAll(model, 1.125)
    }

    func testFedBuffAveragesKStalenessWeightedUpdatesThenSteps() {
        let model = vector(1), d1 = vector(0.2), d2 = vector(0.4), d3 = vector(0.1)
        let s = FedBuff(bufferSize: 2, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout)
        XCTAssertEqual(s.receive(Contribution(delta: d1, staleness: 0), model: model), .buffered(count: 1, needed: 2))
        assertAll(model, 1, "buffered updates do not touch the model")
        // g = (1 * 0.2 + 0.5 * 0.4) / 2 = 0.2; w = 1 - 0.2
        XCTAssertEqual(s.receive(Contribution(delta: d2, staleness: 3), model: model), .applied)
        assertAll(model, 0.8)
        XCTAssertEqual(s.buffered, 0)
        // The buffer starts empty again: one more update of 0.1 with K = 2 waits.
        XCTAssertEqual(s.receive(Contribution(delta: d3, staleness: 0), model: model), .buffered(count: 1, needed: 2))
    }

    func testNesterovServerOptimizerMatchesPyTorchSGDNesterov() {
        let w = vector(1), g = vector(1)
        let opt = ServerOptimizer(.nesterov(learningRate: 0.7, momentum: 0.9), layout: layout)
        opt.apply(g, to: w)  // m = 1; w = 1 - 0.7 * (1 + 0.9) = -0.33
        assertAll(w, -0.33)
        opt.apply(g, to: w)  // m = 1.9; w = -0.33 - 0.7 * (1 + 1.71) = -2.227
        assertAll(w, -2.227, accuracy: 1e-5)
    }

    func testAdamServerOptimizerFirstStepIsLearningRateTimesSign() {
        let w = vector(1), g = vector(-0.3)
        let opt = ServerOptimizer(.adam(learningRate: 0.1, beta1: 0.9, beta2: 0.99, epsilon: 0), layout: layout)
        opt.apply(g, to: w)  // m_hat = g, v_hat = g^2 -> w += 0.1
        assertAll(w, 1.1)
    }

    func testDelayedNesterovUpdatesMomentumOncePerPeriod() {
        let w = vector(1), g = vector(1)
        let opt = ServerOptimizer(.delayedNesterov(learningRate: 1, momentum: 0.5, period: 2), layout: layout)
        opt.apply(g, to: w)  // plain step: w = 0
        assertAll(w, 0)
        opt.apply(g, to: w)  // w = -1; m = 0.5 * 0 + 2 / 2 = 1; w -= 0.5 * 1
        assertAll(w, -1.5)
        opt.apply(g, to: w)  // plain step again: w = -2.5
        assertAll(w, -2.5)
    }

    func testSynchronousFedAvgWaitsForEveryoneAndWeightsByData() {
        let model = vector(1), stale = vector(9), d1 = vector(0.4), d2 = vector(0.8)
        let s = SynchronousFedAvg(participants: 2, optimizer: .sgd(learningRate: 1), layout: layout)
        guard case .refused = s.receive(Contribution(delta: stale, staleness: 1), model: model) else { return XCTFail() }
        XCTAssertEqual(s.receive(Contribution(delta: d1, staleness: 0, dataWeight: 1, trainer: "a"), model: model),
                       .buffered(count: 1, needed: 2))
        // One update per trainer per round.
        guard case .refused(let twice) = s.receive(Contribution(delta: d1, staleness: 0, dataWeight: 1, trainer: "a"), model: model) else {
            return XCTFail()
        }
        XCTAssertTrue(twice.contains("already contributed"), twice)
        // g = (1 * 0.4 + 3 * 0.8) / 4 = 0.7; w = 0.3
        XCTAssertEqual(s.receive(Contribution(delta: d2, staleness: 0, dataWeight: 3, trainer: "b"), model: model), .applied)
        assertAll(model, 0.3)
        // A participant dies mid-round: shrinking to the one that delivered completes the round.
        s.setParticipants(3, model: model)
        XCTAssertEqual(s.receive(Contribution(delta: d1, staleness: 0, dataWeight: 1, trainer: "a"), model: model), .buffered(count: 1, needed: 3))
        XCTAssertEqual(s.setParticipants(2, model: model), .buffered(count: 1, needed: 2))
        assertAll(model, 0.3, "still waiting for the second")
        XCTAssertEqual(s.setParticipants(1, model: model), .applied)
        assertAll(model, -0.1)  // 0.3 - 0.4
        XCTAssertEqual(s.waitingFor, 1)
    }

    /// Robust combinations on exact numbers: five updates, one of them hostile (-10x).
    func testMedianAndTrimmedMeanIgnoreOneHostileUpdateOfFive() {
        let honest: [Float] = [0.1, 0.2, 0.3, 0.4]
        let hostile: Float = -3  // -10 x 0.3
        // Median of {0.1, 0.2, 0.3, 0.4, -3} = 0.2; SGD rate 1: w = 1 - 0.2 = 0.8.
        let median = FedBuff(bufferSize: 5, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, combination: .median)
        // Trimmed mean dropping one each side: mean of {0.1, 0.2, 0.3} = 0.2.
        let trimmed = FedBuff(bufferSize: 5, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout,
                              combination: .trimmedMean(fraction: 0.2))
        // The plain mean is dragged: (1.0 - 3) / 5 = -0.4; w = 1.4.
        let mean = FedBuff(bufferSize: 5, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout)
        for (strategy, expected) in [(median, Float(0.8)), (trimmed, 0.8), (mean, 1.4)] {
            let model = vector(1)
            for (i, v) in (honest + [hostile]).enumerated() {
                let d = strategy.receive(Contribution(delta: vector(v), staleness: 0), model: model)
                XCTAssertEqual(d, i < 4 ? .buffered(count: i + 1, needed: 5) : .applied)
            }
            assertAll(model, expected, "\(strategy.combination)")
        }
        XCTAssertEqual(RobustCombination.trimmed(0.2, of: 5), 1)
        XCTAssertEqual(RobustCombination.trimmed(0.45, of: 10), 4)
        XCTAssertEqual(RobustCombination.trimmed(0.1, of: 2), 0, "nothing to trim from two")
        // Even K: the median is the mean of the middle two ({0.1, 0.2, 0.4, 5} -> 0.3).
        let even = FedBuff(bufferSize: 4, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, combination: .median)
        let model = vector(1)
        for v: Float in [0.4, 5, 0.1, 0.2] { _ = even.receive(Contribution(delta: vector(v), staleness: 0), model: model) }
        assertAll(model, 0.7, accuracy: 1e-6)
    }

    /// Norm clipping scales an oversized update down to the bound before it is buffered.
    func testUpdatesAreClippedToTheNormBound() {
        let n = Float(layout.totalCount)
        // A constant update c has norm c * sqrt(n); bound it at sqrt(n) (i.e. c = 1).
        let s = FedBuff(bufferSize: 1, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, maxNorm: Double(n.squareRoot()))
        let model = vector(0)
        _ = s.receive(Contribution(delta: vector(4), staleness: 0), model: model)
        assertAll(model, -1, accuracy: 1e-5, "clipped from 4 to 1")
        _ = s.receive(Contribution(delta: vector(0.5), staleness: 0), model: model)
        assertAll(model, -1.5, accuracy: 1e-5, "within the bound: unchanged")
    }

    /// Differential privacy: clipping and Gaussian noise of the configured scale on each
    /// aggregate, reproducible from the strategy's saved state, and the epsilon it reports.
    func testDifferentialPrivacyClipsAddsCalibratedNoiseAndReportsEpsilon() {
        let n = Float(layout.totalCount)
        // No noise: the mean of the clipped updates (4 -> clipped to 1 per coordinate, and 0.5).
        let exact = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout,
                            privacy: DifferentialPrivacy(clip: Double(n.squareRoot()), noiseMultiplier: 0))
        let model = vector(0)
        _ = exact.receive(Contribution(delta: vector(4), staleness: 0), model: model)
        _ = exact.receive(Contribution(delta: vector(0.5), staleness: 0), model: model)
        assertAll(model, -0.75, accuracy: 1e-5, "(1 + 0.5) / 2")

        // Noise: zero updates, so the step is -noise / K with standard deviation z * clip / K.
        let big = ParameterLayout(config: GPT2Config(layers: 1, embedding: 32, heads: 1, context: 4, vocabulary: 64))
        let dp = DifferentialPrivacy(clip: 0.5, noiseMultiplier: 1.0)
        let noisy = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: big, privacy: dp)
        let savedState = noisy.stateScalars
        let w = ParameterVector(layout: big), zero = ParameterVector(layout: big)
        _ = noisy.receive(Contribution(delta: zero, staleness: 0), model: w)
        XCTAssertEqual(noisy.receive(Contribution(delta: zero, staleness: 0), model: w), .applied)
        let values = w.storage.array.map(Double.init)
        let mean = values.reduce(0, +) / Double(values.count)
        let std = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)).squareRoot()
        XCTAssertEqual(std, 0.25, accuracy: 0.0125, "z * clip / K over \(values.count) coordinates")
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        // The same saved state (seed, aggregate count) gives the same noise: what replay relies on.
        let again = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: big, privacy: dp)
        again.restore(scalars: savedState)
        let w2 = ParameterVector(layout: big)
        _ = again.receive(Contribution(delta: zero, staleness: 0), model: w2)
        _ = again.receive(Contribution(delta: zero, staleness: 0), model: w2)
        XCTAssertEqual(w2.storage.array, w.storage.array)

        // zCDP: rho = 10 / (2 * 1^2) = 5; epsilon = 5 + 2 sqrt(5 ln 1e5) = 20.17.
        XCTAssertEqual(DifferentialPrivacy(clip: 1, noiseMultiplier: 1, delta: 1e-5).epsilon(contributions: 10), 20.17, accuracy: 0.01)
        XCTAssertEqual(DifferentialPrivacy(clip: 1, noiseMultiplier: 0).epsilon(contributions: 1), .infinity)
    }

    /// Direction-aware staleness correction, on numbers worked out by hand: only a stale
    /// update's part that conflicts with the server's recent direction shrinks, by the staleness
    /// weight; agreeing tensors and the part orthogonal to the direction stay.
    func testDirectionCorrectionShrinksOnlyTheConflictingPartOfAStaleUpdate() {
        let correction = DirectionCorrection(decay: 0.5, layout: layout)
        correction.record(vector(2), scale: 1)  // d = 0.5 * 0 + 0.5 * 2 = 1 everywhere
        assertAll(correction.direction, 1)
        let delta = vector(0.5)
        let first = layout.entries[0].range  // two values: -1 plus an orthogonal part (+0.25, -0.25)
        delta.pointer[first.lowerBound] = -0.75
        delta.pointer[first.lowerBound + 1] = -1.25
        XCTAssertTrue(correction.correct(delta, weight: 1) === delta, "a fresh update (weight 1) passes unchanged")
        let out = correction.correct(delta, weight: 0.25)
        // First tensor: <Δ, d> = -2, ||d||² = 2, so Δ - (1 - 0.25)(-1) d = Δ + 0.75.
        XCTAssertEqual(out.pointer[first.lowerBound], 0)
        XCTAssertEqual(out.pointer[first.lowerBound + 1], -0.5)
        for i in first.upperBound..<out.count { XCTAssertEqual(out.pointer[i], 0.5, "agreeing tensors stay (coordinate \(i))") }
        XCTAssertEqual(delta.pointer[first.lowerBound], -0.75, "the update itself is not changed")
    }

    /// FedBuff with the correction: the direction is an average of the applied steps, it is part
    /// of the saved state, and a strategy restored from that state continues identically.
    func testFedBuffWithDirectionCorrectionRecordsItsStepsAndRestores() {
        func make() -> FedBuff {
            FedBuff(bufferSize: 1, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, directionDecay: 0.9)
        }
        let s = make(), model = vector(0)
        // Fresh: applied whole. model = -1; d = 0.1 * 1 = 0.1.
        XCTAssertEqual(s.receive(Contribution(delta: vector(1), staleness: 0), model: model), .applied)
        assertAll(model, -1)
        // Staleness 3 (weight 0.5), conflicting: <Δ, d> / ||d||² = -10 per tensor, so
        // Δ' = -1 - 0.5 (-10)(0.1) = -0.5, stepped with weight 0.5: model = -1 + 0.25 = -0.75
        // (without the correction: -0.5). d = 0.9 * 0.1 + 0.1 * (0.5 * -0.5) = 0.065.
        XCTAssertEqual(s.receive(Contribution(delta: vector(-1), staleness: 3), model: model), .applied)
        assertAll(model, -0.75)
        let saved = s.stateVectors.first { $0.name == "direction" }!.vector
        assertAll(saved, 0.065)
        let restored = make()
        restored.stateVectors.first { $0.name == "direction" }!.vector.copy(from: saved)
        restored.restore(scalars: s.stateScalars)
        let a = vector(-0.75), b = vector(-0.75)
        _ = s.receive(Contribution(delta: vector(-2), staleness: 1), model: a)
        _ = restored.receive(Contribution(delta: vector(-2), staleness: 1), model: b)
        XCTAssertEqual(a.storage.array, b.storage.array)
        XCTAssertFalse(s.foldsWhileStreaming, "a corrected update needs the whole update and the direction")
    }

    /// Fair shares: while senders alternate nothing changes; a sender that sends alone after
    /// the others stopped counts less and less, down to 1 / R; the window survives a restore.
    func testFairShareDownWeightsASenderThatSendsAlone() {
        var fair = FairShare(window: 4)
        XCTAssertEqual(fair.weight(for: "a"), 1)        // R = 1, count 1: min(1, 4 / 1)
        XCTAssertEqual(fair.weight(for: "b"), 1)        // R = 2, count 1: min(1, 4 / 2)
        XCTAssertEqual(fair.weight(for: "a"), 1)        // count 2: 4 / (2 * 2)
        XCTAssertEqual(fair.weight(for: "b"), 1)
        XCTAssertEqual(fair.weight(for: "a"), 1)        // window a b a b -> b a b a: count 2
        XCTAssertEqual(fair.weight(for: "a"), 2 / Float(3))  // a b a a: 4 / (2 * 3)
        XCTAssertEqual(fair.weight(for: "a"), 2 / Float(3))  // b a a a
        XCTAssertEqual(fair.weight(for: "a"), 0.5)      // a a a a: 4 / (2 * 4), i.e. 1 / R
        var restored = FairShare(window: 4)
        restored.restore(fair.scalars)
        XCTAssertEqual(restored, fair)
        XCTAssertEqual(restored.weight(for: "b"), 1)    // a a a b: count 1
        // In FedBuff, the multiplier scales the step: K = 1, SGD 1, constant staleness.
        let s = FedBuff(bufferSize: 1, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, fairShareWindow: 2)
        let model = vector(0)
        _ = s.receive(Contribution(delta: vector(1), staleness: 0, trainer: "a"), model: model)   // m = 1
        _ = s.receive(Contribution(delta: vector(1), staleness: 0, trainer: "b"), model: model)   // m = 1
        _ = s.receive(Contribution(delta: vector(1), staleness: 0, trainer: "b"), model: model)   // b b: 2 / (2 * 2)
        assertAll(model, -2.5)
        XCTAssertFalse(s.foldsWhileStreaming)
        let again = FedBuff(bufferSize: 1, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, fairShareWindow: 2)
        again.restore(scalars: s.stateScalars)
        XCTAssertEqual(again.fairShare, s.fairShare)
    }
}
