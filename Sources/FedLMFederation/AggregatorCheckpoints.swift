import FedLMAggregation
import FedLMCheckpoint
import FedLMLedger
import FedLMModel
import Foundation

/// Writes the aggregator's checkpoints: the model (safetensors, Hugging Face names), the
/// strategy's state and every cluster's head in `checkpoints/v<version>`, its hash recorded in the
/// ledger with the last update it covers; the delta files it covers are retired, and with
/// `keep_checkpoints` the oldest are forgotten (in the ledger first, then on disk).
struct AggregatorCheckpoints {
    let runDirectory: String
    let ledger: Ledger
    let deltas: DeltaFiles
    let keep: Int?

    var directory: String { runDirectory + "/checkpoints" }

    func write(version: Int, model: GPT2Model, strategy: any AggregationStrategy, heads: PersonalizedHeads?) throws {
        let dir = directory + "/v\(version)"
        let statePath = runDirectory + "/.aggregator_state.safetensors"
        try SafeTensors.write(Checkpoint.tensorSources(of: strategy.stateVectors), metadata: strategy.stateScalars.mapValues { String($0) }.merging(["strategy": strategy.name]) { a, _ in a }, to: statePath)
        let lastSeq = try ledger.lastUpdateSeq
        var extra = ["aggregator_state.safetensors": statePath]
        if let heads {
            let headsPath = runDirectory + "/.heads.safetensors"
            try SafeTensors.write(Checkpoint.tensorSources(of: heads.stateVectors),
                                  metadata: heads.stateScalars.mapValues { String($0) }.merging(["clusters": heads.names.joined(separator: ",")]) { a, _ in a },
                                  to: headsPath)
            extra["heads.safetensors"] = headsPath
        }
        try Checkpoint.save(model: model, state: .init(step: version, optimizer: strategy.name, tokensSeen: 0),
                            extraFiles: extra, to: dir)
        let sha = try Checkpoint.sha256(ofFile: dir + "/" + Checkpoint.modelFile)
        let covered = try ledger.recordVersion(.init(number: version, checkpointPath: dir, sha256: sha, lastUpdateSeq: lastSeq,
                                                     createdAt: Date().timeIntervalSince1970))
        deltas.retire(covered)
        if let keep {
            // Forgotten in the ledger first: a crash in between leaves a directory nobody uses,
            // never a version whose files are gone.
            for old in try ledger.forgetVersions(keepingNewest: max(2, keep)) where old.checkpointPath != dir {
                try? FileManager.default.removeItem(atPath: old.checkpointPath)
            }
        }
    }
}
