import ArgumentParser
import FedLMCheckpoint
import FedLMData
import FedLMModel
import Foundation

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eval",
                                                    abstract: "Validation loss and perplexity of a checkpoint, per data cluster.")

    @Option(help: "Checkpoint directory.") var checkpoint: String
    @Option(help: "Prepared data directory.") var data: String
    @Option(help: "Batch size for evaluation.") var batch: Int = 8
    @Option(help: "Most batches per cluster (windows are consecutive, the same every time).") var maxBatches: Int = 16
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let model = try Checkpoint.load(from: checkpoint).model
        let source = PreparedData(dataset: try TokenDataset(directory: data))
        guard model.config.vocabulary >= source.vocabularySize else {
            throw ValidationError("the data's vocabulary (\(source.vocabularySize)) exceeds the model's (\(model.config.vocabulary))")
        }
        var rows: [[String: Any]] = []
        for set in try source.validationSets(batch: batch, sequence: model.config.context, maxBatches: maxBatches) {
            let loss = try meanLoss(model, set.batches)
            rows.append(["cluster": set.name, "loss": Double(loss), "perplexity": exp(Double(loss)),
                         "tokens": set.batches.reduce(0) { $0 + $1.inputs.count }])
        }
        let mean = rows.map { $0["loss"] as! Double }.reduce(0, +) / Double(max(rows.count, 1))
        if json {
            let out: [String: Any] = ["checkpoint": checkpoint, "clusters": rows, "mean_loss": mean, "mean_perplexity": exp(mean)]
            print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("cluster        loss    perplexity   tokens")
        for r in rows {
            let name = (r["cluster"] as! String).padding(toLength: 12, withPad: " ", startingAt: 0)
            print(name + String(format: " %7.4f  %10.2f  %7d", r["loss"] as! Double, r["perplexity"] as! Double, r["tokens"] as! Int))
        }
        print("mean        " + String(format: " %7.4f  %10.2f", mean, exp(mean)))
    }
}
