import ArgumentParser
import FedLMData
import FedLMTokenizer
import Foundation

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data", abstract: "Prepare token shards from text.",
                                                    subcommands: [Prepare.self])

    struct Prepare: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tokenize text into per-cluster token shards with a deterministic train/validation split.",
            discussion: """
                Each input is CLUSTER=PATH[,PATH...] or a PATH (the cluster is then named after the file or folder).
                PATHs are text files, folders (their regular files, recursively) or .jsonl files (field `text`).
                Rerunning the same command after an interruption resumes it.
                """)

        @Option(help: "tokenizer.json to encode with.") var tokenizer: String
        @Option(help: "Output directory.") var out: String
        @Option(help: "Fraction of each cluster's text held out for validation.") var validationFraction: Double = 0.05
        @Option(help: "Tokens per shard file.") var shardTokens: Int = 4_000_000
        @Option(help: "What to do with an unreadable file or a bad JSONL line: fail (stop) or skip (report and go on).")
        var onError: String = "fail"
        @Argument(help: "CLUSTER=PATH[,PATH...] or PATH.") var inputs: [String]

        func validate() throws {
            guard !inputs.isEmpty else { throw ValidationError("give at least one input") }
            guard validationFraction >= 0, validationFraction < 1 else { throw ValidationError("--validation-fraction must be in [0, 1)") }
            guard shardTokens > 0 else { throw ValidationError("--shard-tokens must be positive") }
            guard DataPreparer.OnError(rawValue: onError) != nil else { throw ValidationError("--on-error must be skip or fail") }
        }

        func run() throws {
            let t = try TokenizerFile.load(path: tokenizer)
            var preparer = DataPreparer(tokenizer: t, tokenizerPath: tokenizer, directory: out)
            preparer.validationFraction = validationFraction
            preparer.shardTokens = shardTokens
            preparer.onError = DataPreparer.OnError(rawValue: onError)!
            let clusters = inputs.map { input -> (name: String, inputs: [String]) in
                if let eq = input.firstIndex(of: "="), !input[..<eq].contains("/") {
                    return (String(input[..<eq]), input[input.index(after: eq)...].split(separator: ",").map(String.init))
                }
                let base = (input as NSString).lastPathComponent
                return ((base as NSString).deletingPathExtension, [input])
            }
            let start = Date()
            let manifest = try preparer.run(clusters: clusters) { print($0) }
            for c in manifest.clusters {
                print("  \(c.name): \(c.trainTokens) train + \(c.validationTokens) validation tokens in \(c.train.count + c.validation.count) shards")
            }
            print(String(format: "prepared %@ in %.1f s", out, Date().timeIntervalSince(start)))
        }
    }
}
