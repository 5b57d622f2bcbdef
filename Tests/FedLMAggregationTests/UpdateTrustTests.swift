import FedLMAggregation
import FedLMModel
import XCTest

/// `trust = "direction"` on exact numbers: while the server has no direction every update counts;
/// after a step, an update against it counts with weight 0 in a synchronous round and in FedBuff,
/// and the direction follows the steps applied.
final class UpdateTrustTests: XCTestCase {
    let layout = ParameterLayout(config: GPT2Config(layers: 1, embedding: 2, heads: 1, context: 1, vocabulary: 1))

    func vector(_ value: Float) -> ParameterVector {
        let v = ParameterVector(layout: layout)
        for i in 0..<v.count { v.pointer[i] = value }
        return v
    }

    func assertAll(_ v: ParameterVector, _ expected: Float, _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
        for i in 0..<v.count { XCTAssertEqual(v.pointer[i], expected, accuracy: 1e-6, "\(message) coordinate \(i)", file: file, line: line) }
    }

    func testCosineAndWeight() {
        let t = UpdateTrust(decay: 0.5, layout: layout)
        let all = [0..<layout.totalCount]
        XCTAssertNil(t.cosine(vector(1), over: all), "no direction yet")
        XCTAssertEqual(t.weight(vector(-1), over: all), 1, "trusted while there is no direction")
        t.record(vector(2), scale: 1)          // d = 0.5 * 0 + 0.5 * 2 = 1 everywhere
        assertAll(t.direction, 1)
        XCTAssertEqual(t.cosine(vector(3), over: all)!, 1, accuracy: 1e-12)
        XCTAssertEqual(t.cosine(vector(-3), over: all)!, -1, accuracy: 1e-12)
        XCTAssertEqual(t.weight(vector(-3), over: all), 0)
        // Half the coordinates against, half along, the rest zero: cosine 0, trusted.
        let mixed = vector(0)
        mixed.pointer[0] = 1
        mixed.pointer[1] = -1
        XCTAssertEqual(t.cosine(mixed, over: all)!, 0, accuracy: 1e-12)
        XCTAssertEqual(t.weight(mixed, over: all), 1)
    }

    func testASyncRoundLeavesOutAnUpdateAgainstTheFederationsDirection() {
        let round = SynchronousFedAvg(participants: 3, optimizer: .sgd(learningRate: 1), layout: layout, trustDecay: 0.5)
        let model = vector(10)
        // Round 1: no direction yet, everyone counts: mean of 1, 1 and -1 (weights 1, 1, 1) = 1/3.
        XCTAssertEqual(round.receive(Contribution(delta: vector(1), staleness: 0, dataWeight: 1, trainer: "a"), model: model), .buffered(count: 1, needed: 3))
        _ = round.receive(Contribution(delta: vector(1), staleness: 0, dataWeight: 1, trainer: "b"), model: model)
        XCTAssertEqual(round.receive(Contribution(delta: vector(-1), staleness: 0, dataWeight: 1, trainer: "liar"), model: model), .applied)
        assertAll(model, 10 - 1.0 / 3)
        assertAll(round.trust!.direction, 0.5 / 3, "d = 0.5 * the round's mean")
        // Round 2: the liar's update points against d: counted (the round completes) with weight 0.
        _ = round.receive(Contribution(delta: vector(2), staleness: 0, dataWeight: 1, trainer: "a"), model: model)
        _ = round.receive(Contribution(delta: vector(4), staleness: 0, dataWeight: 3, trainer: "b"), model: model)
        XCTAssertEqual(round.receive(Contribution(delta: vector(-100), staleness: 0, dataWeight: 1_000_000, trainer: "liar"), model: model), .applied)
        XCTAssertEqual(round.lastTrust, 0)
        assertAll(model, 10 - 1.0 / 3 - (2 + 3 * 4) / 4.0, "the data-weighted mean of the two others: (1*2 + 3*4) / 4")
        assertAll(round.trust!.direction, 0.5 * (0.5 / 3) + 0.5 * 3.5)
        // A restart restores the direction with the other state vectors.
        XCTAssertTrue(round.stateVectors.contains { $0.name == "trust.direction" })
    }

    func testFedBuffLeavesADistrustedUpdateOutOfTheBuffer() {
        let s = FedBuff(bufferSize: 2, weight: .constant, optimizer: .sgd(learningRate: 1), layout: layout, trustDecay: 0.5)
        XCTAssertFalse(s.foldsWhileStreaming, "trust needs the whole update")
        let model = vector(0)
        _ = s.receive(Contribution(delta: vector(1), staleness: 0), model: model)
        XCTAssertEqual(s.receive(Contribution(delta: vector(3), staleness: 0), model: model), .applied)
        assertAll(model, -2, "mean of 1 and 3")
        assertAll(s.trust!.direction, 1, "0.5 * the mean 2")
        XCTAssertEqual(s.receive(Contribution(delta: vector(-5), staleness: 0), model: model), .buffered(count: 0, needed: 2))
        XCTAssertEqual(s.lastTrust, 0)
        XCTAssertEqual(s.buffered, 0, "no slot for it")
        XCTAssertEqual(s.receive(Contribution(delta: vector(4), staleness: 0), model: model), .buffered(count: 1, needed: 2))
        XCTAssertEqual(s.receive(Contribution(delta: vector(2), staleness: 0), model: model), .applied)
        assertAll(model, -2 - (4 + 2) / 2.0, "the mean of the two trusted updates")
    }
}
