import FedLMModel
import FedLMTensor
import XCTest

/// Checks the hand-written backward pass against central finite differences of the loss,
/// computed in Swift from the forward pass alone.
final class FiniteDifferenceTests: XCTestCase {
    func check(_ config: GPT2Config, batch: Int, sequence: Int, samplesPerTensor: Int = 3) throws {
        let model = try GPT2Model(config: config, seed: 7)
        TestModels.perturb(model, seed: 11)
        let data = TestModels.batch(config, batch: batch, sequence: sequence, seed: 3)
        try model.lossAndGradients(data)
        let analytic = model.gradients.storage.array
        var rng = SeededGenerator(seed: 5)
        let h: Float = 1e-2
        var worst = (name: "", error: 0.0)
        for e in model.layout.entries {
            for _ in 0..<samplesPerTensor {
                let i = e.offset + Int(rng.next() % UInt64(e.count))
                let p = model.parameters.pointer
                let saved = p[i]
                p[i] = saved + h
                let up = try model.loss(data)
                p[i] = saved - h
                let down = try model.loss(data)
                p[i] = saved
                let numeric = Double(up - down) / Double(2 * h)
                let a = Double(analytic[i])
                let error = abs(numeric - a) / max(abs(numeric) + abs(a), 1e-2)
                if error > worst.error { worst = (e.name, error) }
                XCTAssertLessThan(error, 0.03, "\(e.name)[\(i - e.offset)]: analytic \(a), numeric \(numeric)")
            }
        }
        print("finite differences: worst relative error \(worst.error) at \(worst.name)")
    }

    func testTiedHeadGradientsMatchFiniteDifferences() throws {
        try check(TestModels.config(), batch: 2, sequence: 8)
    }

    func testUntiedHeadWithSeveralAttentionBlocksMatchesFiniteDifferences() throws {
        // A sequence longer than the attention block size exercises the blocked causal path.
        let c = TestModels.config(layers: 1, embedding: 8, heads: 2, context: 80, vocabulary: 11, tied: false)
        try check(c, batch: 1, sequence: 80, samplesPerTensor: 2)
    }
}
