import FedLMAggregation
import FedLMModel
import XCTest

/// Partial updates (from trainers that train some tensors only) merged tensor by tensor: each
/// tensor is averaged among the updates that carry it, in every mode. Constant vectors, so each
/// coordinate must equal the scalar worked out by hand.
final class PartialUpdateTests: XCTestCase {
    let layout = ParameterLayout(config: GPT2Config(layers: 2, embedding: 2, heads: 1, context: 1, vocabulary: 1))
    /// The top block and ln_f: what a partial trainer of this model trains.
    var top: TensorSubset { TrainingMemory.topBlocks(1, config: GPT2Config(layers: 2, embedding: 2, heads: 1, context: 1, vocabulary: 1)) }

    func vector(_ value: Float, only subset: TensorSubset? = nil) -> ParameterVector {
        let v = ParameterVector(layout: layout)
        let ranges = subset?.modelRanges ?? [0..<v.count]
        for r in ranges { for i in r { v.pointer[i] = value } }
        return v
    }

    /// Checks every coordinate: `inTop` on the top subset's tensors, `elsewhere` on the rest.
    func assertSplit(_ v: ParameterVector, inTop: Float, elsewhere: Float, accuracy: Float = 1e-6, file: StaticString = #filePath, line: UInt = #line) {
        let topRanges = top.modelRanges
        for i in 0..<v.count {
            let expected = topRanges.contains { $0.contains(i) } ? inTop : elsewhere
            XCTAssertEqual(v.pointer[i], expected, accuracy: accuracy, "coordinate \(i)", file: file, line: line)
        }
    }

    func testFedBuffAveragesEachTensorAmongTheUpdatesThatCarryIt() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout)
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.2), staleness: 0), model: model), .buffered(count: 1, needed: 2))
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.4, only: top), carried: top, staleness: 0), model: model), .applied)
        // Top tensors: mean of 0.2 and 0.4 = 0.3; the rest: only the whole update's 0.2 (not 0.1).
        assertSplit(model, inTop: 0.7, elsewhere: 0.8)
    }

    func testATensorNoBufferedUpdateCarriesIsNotSteppedEvenWithMomentum() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 2, weight: .constant, optimizer: .nesterov(learningRate: 1, momentum: 0.5), layout: layout)
        _ = s.receive(Contribution(delta: vector(0.2), staleness: 0), model: model)
        _ = s.receive(Contribution(delta: vector(0.2), staleness: 0), model: model)
        // m = 0.2, w = 1 - (0.2 + 0.5 * 0.2) = 0.7 everywhere.
        assertSplit(model, inTop: 0.7, elsewhere: 0.7)
        _ = s.receive(Contribution(delta: vector(0.2, only: top), carried: top, staleness: 0), model: model)
        _ = s.receive(Contribution(delta: vector(0.2, only: top), carried: top, staleness: 0), model: model)
        // Top: m = 0.5 * 0.2 + 0.2 = 0.3, w = 0.7 - (0.2 + 0.15) = 0.35; the rest keeps its weights.
        assertSplit(model, inTop: 0.35, elsewhere: 0.7)
    }

    func testTheBufferOfPartialUpdatesSurvivesACheckpoint() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 3, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout)
        _ = s.receive(Contribution(delta: vector(0.3), staleness: 0), model: model)
        _ = s.receive(Contribution(delta: vector(0.6, only: top), carried: top, staleness: 0), model: model)
        // A restart: a new strategy with the saved vectors and scalars.
        let restored = FedBuff(bufferSize: 3, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout)
        for (saved, fresh) in zip(s.stateVectors, restored.stateVectors) { fresh.vector.copy(from: saved.vector) }
        restored.restore(scalars: s.stateScalars)
        XCTAssertEqual(restored.receive(Contribution(delta: vector(0.9, only: top), carried: top, staleness: 0), model: model), .applied)
        // Top: (0.3 + 0.6 + 0.9) / 3 = 0.6; the rest: 0.3 / 1.
        assertSplit(model, inTop: 0.4, elsewhere: 0.7)
    }

    func testFedAsyncMixesOnlyTheCarriedTensors() {
        let model = vector(1), base = vector(2)
        let s = FedAsync(mixing: 0.5, weight: .constant, maxStaleness: 4)
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.5, only: top), carried: top, base: base, staleness: 0), model: model), .applied)
        // Top: 0.5 * 1 + 0.5 * (2 - 0.5) = 1.25; the rest untouched.
        assertSplit(model, inTop: 1.25, elsewhere: 1)
    }

    func testASyncRoundWeighsEachTensorByTheDataOfTheUpdatesThatCarryIt() {
        let model = vector(1)
        let s = SynchronousFedAvg(participants: 2, optimizer: .sgd(learningRate: 1), layout: layout)
        _ = s.receive(Contribution(delta: vector(0.1), staleness: 0, dataWeight: 1, trainer: "a"), model: model)
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.4, only: top), carried: top, staleness: 0, dataWeight: 3, trainer: "b"), model: model),
                       .applied)
        // Top: (1 * 0.1 + 3 * 0.4) / 4 = 0.325; the rest: 0.1.
        assertSplit(model, inTop: 0.675, elsewhere: 0.9)
    }

    func testAMedianOfPartialUpdatesIsTakenOverTheUpdatesThatCarryEachTensor() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 3, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, combination: .median)
        _ = s.receive(Contribution(delta: vector(0.1), staleness: 0), model: model)
        _ = s.receive(Contribution(delta: vector(0.3, only: top), carried: top, staleness: 0), model: model)
        XCTAssertEqual(s.receive(Contribution(delta: vector(9, only: top), carried: top, staleness: 0), model: model), .applied)
        // Top: median of 0.1, 0.3, 9 = 0.3; the rest: the median of the one update carrying it, 0.1
        // (not of 0.1, 0, 0).
        assertSplit(model, inTop: 0.7, elsewhere: 0.9)
    }

    func testASubsetOfAnotherModelIsRefused() {
        let model = vector(1)
        let otherConfig = GPT2Config(layers: 3, embedding: 2, heads: 1, context: 1, vocabulary: 1)
        let foreign = TrainingMemory.topBlocks(1, config: otherConfig)
        let s = FedBuff(bufferSize: 1, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout)
        guard case .refused = s.receive(Contribution(delta: vector(0.5), carried: foreign, staleness: 0), model: model) else {
            return XCTFail("a subset of another layout must be refused")
        }
        assertSplit(model, inTop: 1, elsewhere: 1)
    }

    // MARK: Staleness per tensor

    func testAWholeUpdateIsStaleOnlyInTheTensorsThatStepsSinceItsBaseChanged() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 1, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        // Three steps of partial updates move the top tensors only: 1 - 3 * 0.1 = 0.7 there.
        for _ in 0..<3 { XCTAssertEqual(s.receive(Contribution(delta: vector(0.1, only: top), carried: top, staleness: 0), model: model), .applied) }
        assertSplit(model, inTop: 0.7, elsewhere: 1)
        // A whole update based three versions back: top tensors 3 steps stale (1/sqrt(4) = 0.5),
        // the rest none (weight 1).
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.2), staleness: 3), model: model), .applied)
        assertSplit(model, inTop: 0.7 - 0.5 * 0.2, elsewhere: 1 - 0.2)
        // Counted per model, the same update would weigh 0.5 everywhere.
        let perModel = FedBuff(bufferSize: 1, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout)
        let other = vector(1)
        for _ in 0..<3 { _ = perModel.receive(Contribution(delta: vector(0.1, only: top), carried: top, staleness: 0), model: other) }
        _ = perModel.receive(Contribution(delta: vector(0.2), staleness: 3), model: other)
        assertSplit(other, inTop: 0.6, elsewhere: 0.9)
    }

    func testStepsOfWholeUpdatesCountForEveryTensorAsBefore() {
        let a = vector(1), b = vector(1)
        let perTensor = FedBuff(bufferSize: 2, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        let perModel = FedBuff(bufferSize: 2, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout)
        for (k, staleness) in [0, 0, 1, 2, 1, 3].enumerated() {
            let delta = vector(Float(k + 1) * 0.01)
            XCTAssertEqual(perTensor.receive(Contribution(delta: delta, staleness: staleness), model: a),
                           perModel.receive(Contribution(delta: delta, staleness: staleness), model: b))
        }
        for i in 0..<a.count { XCTAssertEqual(a.pointer[i], b.pointer[i], "coordinate \(i)") }
    }

    func testTheRecordOfStepsSurvivesACheckpoint() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 1, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        _ = s.receive(Contribution(delta: vector(0.1), staleness: 0), model: model)
        for _ in 0..<2 { _ = s.receive(Contribution(delta: vector(0.1, only: top), carried: top, staleness: 0), model: model) }
        let restored = FedBuff(bufferSize: 1, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        restored.restore(scalars: s.stateScalars)
        XCTAssertEqual(restored.tensorStaleness, s.tensorStaleness)
        // Based three versions back: top 3 steps stale (0.5), the rest 1 step (1/sqrt(2)).
        _ = restored.receive(Contribution(delta: vector(0.2), staleness: 3), model: model)
        assertSplit(model, inTop: 0.9 - 0.2 - 0.5 * 0.2, elsewhere: 0.9 - Float(0.2 / 2.0.squareRoot()))
    }

    func testARecordedStepFromElsewhereMovesEveryTensor() {
        var history = TensorStaleness(window: 3)
        history.record(unchanged: [4, 1])
        XCTAssertEqual(history.staleness(of: 1, versionStaleness: 1), 0)
        history.record()
        XCTAssertEqual(history.staleness(of: 1, versionStaleness: 1), 1)
        XCTAssertEqual(history.staleness(of: 1, versionStaleness: 2), 1)
        XCTAssertEqual(history.staleness(of: 2, versionStaleness: 2), 2)
        // Older than the window: counted as moving everything.
        history.record(unchanged: [1])
        history.record(unchanged: [1])
        XCTAssertEqual(history.staleness(of: 1, versionStaleness: 5), 3)
        XCTAssertFalse(history.isUniform)
    }

    func testAFoldedWholeUpdateIsWeightedTensorByTensorAsAReceivedOne() {
        let folded = vector(1), received = vector(1)
        let a = FedBuff(bufferSize: 2, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        let b = FedBuff(bufferSize: 2, weight: .inverseSquareRoot, optimizer: .sgd(learningRate: 1), layout: layout, stalenessPerTensor: true)
        for s in [a, b] {
            let m = s === a ? folded : received
            for _ in 0..<2 { _ = s.receive(Contribution(delta: vector(0.1, only: top), carried: top, staleness: 0), model: m) }
        }
        let delta = vector(0.3)
        // Folded in three pieces that cut across tensors, then completed.
        let cuts = [0, 5, 17, delta.count]
        for (lo, hi) in zip(cuts, cuts.dropFirst()) {
            a.fold(UnsafeBufferPointer(start: delta.pointer + lo, count: hi - lo), at: lo, staleness: 1)
        }
        XCTAssertEqual(a.completeFolded(model: folded), .buffered(count: 1, needed: 2))
        XCTAssertEqual(b.receive(Contribution(delta: delta, staleness: 1), model: received), .buffered(count: 1, needed: 2))
        for (s, m) in [(a, folded), (b, received)] { XCTAssertEqual(s.receive(Contribution(delta: vector(0.1), staleness: 0), model: m), .applied) }
        for i in 0..<folded.count { XCTAssertEqual(folded.pointer[i], received.pointer[i], accuracy: 1e-7, "coordinate \(i)") }
    }

    func testAPartialWeightScalesOnlyPartialUpdates() {
        let model = vector(1)
        let s = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, partialWeight: 0.5)
        _ = s.receive(Contribution(delta: vector(0.2), staleness: 0), model: model)
        XCTAssertEqual(s.receive(Contribution(delta: vector(0.4, only: top), carried: top, staleness: 0), model: model), .applied)
        // Top: mean of 0.2 and 0.5 * 0.4 = 0.2; the rest: the whole update's 0.2.
        assertSplit(model, inTop: 0.8, elsewhere: 0.8)
    }
}
