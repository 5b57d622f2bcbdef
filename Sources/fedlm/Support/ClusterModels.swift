import FedLMCheckpoint
import FedLMLedger
import FedLMModel
import Foundation

/// Models kept in an aggregator's newest checkpoint: the global model, and each cluster's
/// (the global trunk with the cluster's head from heads.safetensors).
struct ClusterModels {
    let checkpoint: Ledger.VersionRecord
    let clusters: [String]

    init(ledger: Ledger) throws {
        guard let newest = try ledger.versions().first else { throw RunFailure("the ledger has no checkpoint yet") }
        checkpoint = newest
        let heads = checkpoint.checkpointPath + "/heads.safetensors"
        clusters = FileManager.default.fileExists(atPath: heads)
            ? (try SafeTensorsFile(path: heads).metadata["clusters"] ?? "").split(separator: ",").map(String.init) : []
    }

    func global() throws -> GPT2Model { try Checkpoint.load(from: checkpoint.checkpointPath).model }

    /// The model a cluster's subscribers get: global trunk, the cluster's head.
    func model(of cluster: String) throws -> GPT2Model {
        guard clusters.contains(cluster) else {
            throw RunFailure("checkpoint v\(checkpoint.number) has no cluster \(cluster) (it has: \(clusters.joined(separator: ", ")))")
        }
        let model = try global()
        let heads = try SafeTensorsFile(path: checkpoint.checkpointPath + "/heads.safetensors")
        let prefix = cluster + "/weights."
        for tensor in heads.names where tensor.hasPrefix(prefix) {
            let name = String(tensor.dropFirst(prefix.count))
            guard let e = model.layout.entry(name) else { throw RunFailure("head tensor \(name) is not a parameter of the model") }
            try heads.copyFloats(tensor, shape: e.shape, into: model.parameters.pointer + e.offset)
        }
        return model
    }
}
