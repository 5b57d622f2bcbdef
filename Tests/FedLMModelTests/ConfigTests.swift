import FedLMModel
import Foundation
import XCTest

final class ConfigTests: XCTestCase {
    let valid = """
        [model]
        n_layer = 2
        n_embd = 64
        n_head = 4
        n_positions = 32
        vocab_size = 100
        """

    func error(_ text: String) -> String {
        do {
            _ = try ConfigFile.parse(text)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testAValidConfigParsesWithDefaults() throws {
        let f = try ConfigFile.parse(valid)
        XCTAssertEqual(f.model, GPT2Config(layers: 2, embedding: 64, heads: 4, context: 32, vocabulary: 100))
        XCTAssertEqual(f.training.sequenceLength, 32)
        XCTAssertEqual(f.training.optimizer, .adamw)
    }

    func testBadConfigsAreRejectedNamingTheField() {
        XCTAssertTrue(error(valid.replacingOccurrences(of: "n_head = 4", with: "n_head = 5")).contains("model.n_head"))
        XCTAssertTrue(error(valid.replacingOccurrences(of: "n_layer = 2", with: "n_layer = -1")).contains("model.n_layer"))
        XCTAssertTrue(error(valid + "\nn_heads = 4").contains("model.n_heads"))
        XCTAssertTrue(error(valid.replacingOccurrences(of: "vocab_size = 100", with: "")).contains("model.vocab_size"))
        XCTAssertTrue(error(valid.replacingOccurrences(of: "n_embd = 64", with: "n_embd = \"64\"")).contains("model.n_embd"))
        XCTAssertTrue(error(valid + "\n[training]\nbatch_size = 0").contains("training.batch_size"))
        XCTAssertTrue(error(valid + "\n[training]\noptimizer = \"adam\"").contains("training.optimizer"))
        XCTAssertTrue(error(valid + "\n[training]\nsequence_length = 64").contains("training.sequence_length"))
        XCTAssertTrue(error(valid + "\n[trainer]\nx = 1").contains("trainer"))
        XCTAssertTrue(error("[model\nn_layer = 1").contains("not valid TOML"))
    }

    func testShippedPresetsParseWithTheRequiredShapes() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Config")
        let expected: [String: (Int, Int, Int, Int)] = ["tiny": (4, 128, 4, 128), "small": (6, 256, 8, 256),
                                                        "medium": (8, 512, 8, 256), "gpt2-124m": (12, 768, 12, 1024)]
        for (name, shape) in expected {
            let f = try ConfigFile.load(path: dir.appendingPathComponent(name + ".toml").path)
            XCTAssertEqual(f.model.layers, shape.0, name)
            XCTAssertEqual(f.model.embedding, shape.1, name)
            XCTAssertEqual(f.model.heads, shape.2, name)
            XCTAssertEqual(f.model.context, shape.3, name)
        }
        let gpt2 = try ConfigFile.load(path: dir.appendingPathComponent("gpt2-124m.toml").path)
        XCTAssertEqual(gpt2.model.parameterCount, 124_439_808, "GPT-2 small's well-known parameter count")
    }
}
