import FedLMTestSupport
import FedLMCheckpoint
import FedLMModel
import FedLMTensor
import Foundation
import XCTest

/// Compares FedLM's loss and every parameter gradient with JAX autodiff of an independently
/// written GPT-2 (Tests/Reference/gpt2_reference.py, float64), exchanged through safetensors.
final class JAXReferenceTests: XCTestCase {
    func compare(_ config: GPT2Config, batch: Int, sequence: Int, ignoreSomeTargets: Bool) throws {
        _ = try ReferencePython.interpreter()  // skip (or fail in CI) before doing any work
        let model = try GPT2Model(config: config, seed: 21)
        TestModels.perturb(model, seed: 22, scale: 0.05)
        var data = TestModels.batch(config, batch: batch, sequence: sequence, seed: 23)
        if ignoreSomeTargets {
            for i in stride(from: 0, to: data.targets.count, by: 7) { data.targets[i] = -100 }
        }
        let loss = try model.lossAndGradients(data)

        let dir = ReferencePython.temporaryDirectory("jax")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Checkpoint.save(model: model, to: dir + "/ckpt")
        try data.inputs.withUnsafeBytes { inputs in
            try data.targets.withUnsafeBytes { targets in
                try SafeTensors.write([
                    .init(name: "inputs", dtype: .i32, shape: [batch, sequence], bytes: inputs),
                    .init(name: "targets", dtype: .i32, shape: [batch, sequence], bytes: targets),
                ], to: dir + "/batch.safetensors")
            }
        }
        let output = try ReferencePython.run("gpt2_reference.py", ["--checkpoint", dir + "/ckpt",
                                                                  "--batch", dir + "/batch.safetensors",
                                                                  "--out", dir + "/grads.safetensors"])
        print(output.trimmingCharacters(in: .whitespacesAndNewlines))
        let reference = try SafeTensorsFile(path: dir + "/grads.safetensors")
        let referenceLoss = try reference.floats("loss")[0]
        XCTAssertEqual(loss, referenceLoss, accuracy: 1e-5 * abs(referenceLoss), "loss")

        var worst = (name: "", error: 0.0)
        for e in model.layout.entries {
            let ours = Array(model.gradients.values(e.name))
            let theirs = try reference.floats(e.name)
            XCTAssertEqual(ours.count, theirs.count, e.name)
            var diff = 0.0, norm = 0.0
            for (a, b) in zip(ours, theirs) {
                diff += Double(a - b) * Double(a - b)
                norm += Double(b) * Double(b)
            }
            let relative = (diff / max(norm, 1e-30)).squareRoot()
            if relative > worst.error { worst = (e.name, relative) }
            // float32 against float64 gives ~1e-6; a wrong term shows up as an error of order 1.
            XCTAssertLessThan(relative, 2e-5, "gradient of \(e.name): relative error \(relative)")
            XCTAssertGreaterThan(norm, 0, "reference gradient of \(e.name) is zero; the test would be vacuous")
        }
        print("JAX reference: loss \(loss) vs \(referenceLoss); worst gradient relative error \(worst.error) at \(worst.name)")
    }

    func testTiedModelMatchesJAX() throws {
        // 80 positions: two attention blocks, so the blocked causal path is covered.
        let c = GPT2Config(layers: 2, embedding: 32, heads: 4, context: 96, vocabulary: 50)
        try compare(c, batch: 2, sequence: 80, ignoreSomeTargets: false)
    }

    func testUntiedModelWithIgnoredTargetsMatchesJAX() throws {
        let c = GPT2Config(layers: 3, embedding: 24, heads: 3, context: 16, vocabulary: 29, tiedHead: false)
        try compare(c, batch: 3, sequence: 16, ignoreSomeTargets: true)
    }
}
