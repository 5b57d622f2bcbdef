import ArgumentParser
import FedLMCheckpoint
import FedLMModel
import FedLMTokenizer
import Foundation

struct SampleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sample", abstract: "Generate text from a checkpoint.")

    @Option(help: "Checkpoint directory.") var checkpoint: String
    @Option(help: "Prompt text.") var prompt: String = ""
    @Option(help: "Tokens to generate.") var tokens: Int = 200
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0.8
    @Option(help: "Sample among the k most likely tokens (0: all).") var topK: Int = 40
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "tokenizer.json (default: the checkpoint's own; without one, bytes are tokens).") var tokenizer: String?

    func run() throws {
        let model = try Checkpoint.load(from: checkpoint).model
        let own = checkpoint + "/tokenizer.json"
        let tokenizerFile = tokenizer ?? (FileManager.default.fileExists(atPath: own) ? own : nil)
        let text = try SampleText.generate(model: model, tokenizerFile: tokenizerFile,
                                           prompt: prompt, tokens: tokens, temperature: temperature, topK: topK, seed: seed)
        print(prompt + text)
    }
}

/// Sampling with the checkpoint's tokenizer, or bytes as tokens when it has none.
enum SampleText {
    static func generate(model: GPT2Model, tokenizerFile: String?, prompt: String, tokens: Int, temperature: Float,
                         topK: Int, seed: UInt64) throws -> String {
        if let tokenizerFile {
            let t = try TokenizerFile.load(path: tokenizerFile)
            let ids = try Sampler.generate(model: model, prompt: t.encode(prompt), tokens: tokens, temperature: temperature,
                                           topK: topK, seed: seed)
            return String(decoding: try t.decode(ids), as: UTF8.self)
        }
        let ids = try Sampler.generate(model: model, prompt: Array(prompt.utf8).map { Int32($0) }, tokens: tokens,
                                       temperature: temperature, topK: topK, seed: seed)
        return String(decoding: ids.map { UInt8(clamping: $0) }, as: UTF8.self)
    }
}
