import ArgumentParser
import FedLMCheckpoint
import FedLMModel

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "checkpoint", abstract: "Inspect checkpoints.",
                                                    subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a checkpoint's checksums, tensor names and shapes; print a summary.")
        @Argument(help: "Checkpoint directory.") var directory: String

        func run() throws {
            let loaded = try Checkpoint.load(from: directory)
            let c = loaded.model.config
            print("\(directory): OK (checksums, names, shapes, finite values)")
            print("  \(c.layers) layers, d=\(c.embedding), \(c.heads) heads, context \(c.context), vocabulary \(c.vocabulary), \(c.parameterCount) parameters")
            if let s = loaded.state { print("  step \(s.step), \(s.tokensSeen) tokens seen, optimizer \(s.optimizer)") }
        }
    }
}
