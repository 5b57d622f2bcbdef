import ArgumentParser
import FedLMCheckpoint
import FedLMModel
import Foundation

struct SampleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sample",
                                                    abstract: "Generate text from a checkpoint (byte-level models).")

    @Option(help: "Checkpoint directory.") var checkpoint: String
    @Option(help: "Prompt text.") var prompt: String = ""
    @Option(help: "Tokens to generate.") var tokens: Int = 200
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0.8
    @Option(help: "Sample among the k most likely tokens (0: all).") var topK: Int = 40
    @Option(help: "Random seed.") var seed: UInt64 = 0

    func run() throws {
        let model = try Checkpoint.load(from: checkpoint).model
        let promptTokens = Array(prompt.utf8).map { Int32($0) }
        let generated = try Sampler.generate(model: model, prompt: promptTokens, tokens: tokens,
                                             temperature: temperature, topK: topK, seed: seed)
        print(prompt + String(decoding: generated.map { UInt8(clamping: $0) }, as: UTF8.self))
    }
}
