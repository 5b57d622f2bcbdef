import ArgumentParser
import FedLMModel

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Inspect and validate configs.",
                                                    subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config and print its model's size.")
        @Argument(help: "Preset name or TOML path.") var config: String

        func run() throws {
            let file = try ConfigResolution.load(config)
            let m = file.model
            print("\(ConfigResolution.resolve(config)): OK")
            print("  model: \(m.layers) layers, d=\(m.embedding), \(m.heads) heads, context \(m.context), vocabulary \(m.vocabulary), \(m.tiedHead ? "tied" : "untied") head")
            print("  parameters: \(m.parameterCount)")
            let t = file.training
            print("  training: \(t.optimizer.rawValue), batch \(t.batchSize) x \(t.sequenceLength ?? m.context), lr \(t.learningRate) -> \(t.minLearningRate), warmup \(t.warmupSteps), \(t.maxSteps) steps")
        }
    }
}
