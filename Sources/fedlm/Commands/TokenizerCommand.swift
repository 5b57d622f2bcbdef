import ArgumentParser
import FedLMData
import FedLMTokenizer
import Foundation

struct TokenizerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenizer", abstract: "Train and use byte-level BPE tokenizers.",
                                                    subcommands: [Train.self, Encode.self, Bench.self])

    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Train a byte-level BPE tokenizer on text files, folders or JSONL (field `text`), streaming.")
        @Option(help: "Vocabulary size, including the 256 byte tokens and <|endoftext|>.") var vocab: Int = 4096
        @Option(help: "Output tokenizer.json.") var out: String = "tokenizer.json"
        @Option(help: "Distinct pre-tokens kept in memory before the rarest are dropped.") var maxWords: Int = 2_000_000
        @Argument(help: "Text files, folders or .jsonl files.") var inputs: [String]

        func run() throws {
            guard !inputs.isEmpty else { throw ValidationError("give at least one input file or folder") }
            var trainer = try BPETrainer(vocabularySize: vocab, maxDistinctWords: maxWords)
            let start = Date()
            var documents = 0
            for file in try TextInputs.files(inputs) {
                try TextInputs.forEachDocument(file, onBadLine: { location, reason in
                    throw DataError.badInput(location: location, reason: reason)
                }) { text in
                    trainer.add(text)
                    trainer.endDocument()
                    documents += 1
                }
            }
            let tokenizer = try trainer.train()
            try TokenizerFile.write(tokenizer, to: out)
            print(String(format: "trained %d tokens on %.1f MB (%d documents) in %.1f s -> %@", tokenizer.vocabularySize,
                         Double(trainer.bytesSeen) / 1e6, documents, Date().timeIntervalSince(start), out))
        }
    }

    struct Encode: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the token ids of a text, a file or standard input.",
            discussion: "The text is encoded as one byte sequence, exactly as given (no trailing newline is added or removed).")
        @Option(help: "tokenizer.json") var tokenizer: String
        @Option(help: "Encode this file instead of TEXT.") var file: String?
        @Argument(help: "Text to encode; '-' or nothing (without --file) reads standard input.") var text: String?

        func validate() throws {
            if file != nil, text != nil { throw ValidationError("give TEXT or --file, not both") }
        }

        func run() throws {
            let t = try TokenizerFile.load(path: tokenizer)
            let bytes: [UInt8]
            if let file {
                guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("--file \(file): cannot read it") }
                bytes = [UInt8](data)
            } else if let text, text != "-" {
                bytes = Array(text.utf8)
            } else {
                bytes = [UInt8](FileHandle.standardInput.readDataToEndOfFile())
            }
            print(t.encodeParallel(bytes).map(String.init).joined(separator: " "))
        }
    }

    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Encoding throughput in MB/s on the given files.")
        @Option(help: "tokenizer.json") var tokenizer: String
        @Option(help: "Timed repetitions.") var reps: Int = 5
        @Option(help: "Threads (default: all cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
        @Argument(help: "Text files or folders.") var inputs: [String]
        func run() throws {
            let t = try TokenizerFile.load(path: tokenizer)
            var text: [UInt8] = []
            for file in try TextInputs.files(inputs) {
                try TextInputs.forEachDocument(file, onBadLine: { _, _ in }) { doc in text.append(contentsOf: doc) }
            }
            var rates: [Double] = []
            var tokens = 0
            for _ in 0..<reps {
                let t0 = now()
                tokens = t.encodeParallel(text, threads: threads).count
                rates.append(Double(text.count) / (now() - t0) / 1e6)
            }
            print(String(format: "encoded %.1f MB into %d tokens (%.2f bytes/token): %.1f MB/s median [%.1f .. %.1f], %d threads",
                         Double(text.count) / 1e6, tokens, Double(text.count) / Double(tokens), median(rates),
                         rates.min()!, rates.max()!, threads))
        }
    }
}
