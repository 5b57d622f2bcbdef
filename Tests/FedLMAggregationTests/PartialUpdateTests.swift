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
}
