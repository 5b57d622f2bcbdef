import FedLMTestSupport
import FedLMCheckpoint
import FedLMModel
import FedLMTensor
import Foundation
import XCTest

/// A FedLM checkpoint loads in Hugging Face `transformers.GPT2LMHeadModel.from_pretrained` and
/// gives the same loss and logits on the same tokens.
///
/// Needs PyTorch and transformers (several GB), so it runs only where `FEDLM_HF_PYTHON` names an
/// interpreter that has them: `scripts/check-huggingface` sets that up and runs this test.
final class HuggingFaceLoadTests: XCTestCase {
    func testTransformersLoadsAFedLMCheckpointAndComputesTheSameLoss() throws {
        guard let python = ProcessInfo.processInfo.environment["FEDLM_HF_PYTHON"] else {
            throw XCTSkip("set FEDLM_HF_PYTHON (scripts/check-huggingface does) to run the transformers check")
        }
        for tied in [true, false] {
            let c = GPT2Config(layers: 2, embedding: 48, heads: 4, context: 80, vocabulary: 300, tiedHead: tied)
            let model = try GPT2Model(config: c, seed: 31)
            TestModels.perturb(model, seed: 32, scale: 0.05)
            let data = TestModels.batch(c, batch: 2, sequence: 70, seed: 33)
            // transformers shifts labels inside the model: position t predicts input t+1, and the
            // last position of each sequence predicts nothing.
            var targets = [Int32]()
            for b in 0..<2 {
                for t in 0..<70 { targets.append(t < 69 ? data.inputs[b * 70 + t + 1] : -100) }
            }
            let batch = TokenBatch(batch: 2, sequence: 70, inputs: data.inputs, targets: targets)
            let loss = try model.loss(batch)
            let lastLogits = try model.lastLogits(batch)

            let dir = ReferencePython.temporaryDirectory("hf")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try Checkpoint.save(model: model, to: dir + "/ckpt")
            try data.inputs.withUnsafeBytes {
                try SafeTensors.write([.init(name: "inputs", dtype: .i32, shape: [2, 70], bytes: $0)], to: dir + "/batch.safetensors")
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [ReferencePython.packageRoot.appendingPathComponent("Tests/Reference/hf_loss.py").path,
                                 "--checkpoint", dir + "/ckpt", "--batch", dir + "/batch.safetensors",
                                 "--out", dir + "/out.safetensors"]
            try process.run()
            process.waitUntilExit()
            XCTAssertEqual(process.terminationStatus, 0)
            let result = try SafeTensorsFile(path: dir + "/out.safetensors")
            let hfLoss = try result.floats("loss")[0]
            let hfLogits = try result.floats("last_logits")
            XCTAssertEqual(loss, hfLoss, accuracy: 1e-5 * abs(hfLoss), "tied \(tied)")
            let worst = zip(lastLogits, hfLogits).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-4, "largest logit difference, tied \(tied)")
            print("transformers: tied \(tied) loss \(loss) vs \(hfLoss); largest logit difference \(worst)")
        }
    }
}
