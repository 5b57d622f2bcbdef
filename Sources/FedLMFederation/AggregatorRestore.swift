import FedLMAggregation
import FedLMCheckpoint
import FedLMLedger
import FedLMModel
import FedLMProtocol
import FedLMTensor
import Foundation

/// An aggregator's state brought back from its run directory: the newest checkpoint whose hash
/// verifies, with the strategy's and the heads' state, then every update the ledger recorded after
/// it replayed in order from its delta file, each giving the version (and head version) the ledger
/// says it gave. Nothing acknowledged is lost, nothing is applied twice.
struct AggregatorRestore {
    let model: GPT2Model
    let strategy: any AggregationStrategy
    let heads: PersonalizedHeads?
    let version: Int
    let checkpoint: Ledger.VersionRecord
    let replayed: Int

    /// Loads checkpoint `v` (hash-checked) with the strategy's state, then replays, in order,
    /// every update recorded after it; throws if anything needed is missing or disagrees.
    static func restore(_ v: Ledger.VersionRecord, config: AggregationConfig, ledger: Ledger) throws -> AggregatorRestore {
        let sha = try Checkpoint.sha256(ofFile: v.checkpointPath + "/" + Checkpoint.modelFile)
        guard sha == v.sha256 else {
            throw CheckpointError.checksumMismatch(path: v.checkpointPath, expected: v.sha256, found: sha)
        }
        let model = try Checkpoint.load(from: v.checkpointPath).model
        let strategy = config.makeStrategy(layout: model.layout)
        let state = try SafeTensorsFile(path: v.checkpointPath + "/aggregator_state.safetensors")
        try Checkpoint.readStateVectors(state, into: strategy.stateVectors)
        strategy.restore(scalars: state.metadata.compactMapValues(Double.init))
        var heads: PersonalizedHeads?
        if let clusters = config.clusters {
            let h = try AggregatorCore.makeHeads(clusters, config: config, model: model)
            let headsPath = v.checkpointPath + "/heads.safetensors"
            if FileManager.default.fileExists(atPath: headsPath) {
                let file = try SafeTensorsFile(path: headsPath)
                let names = (file.metadata["clusters"] ?? "").split(separator: ",").map(String.init)
                h.restore(names: names, scalars: file.metadata.compactMapValues(Double.init), model: model.parameters)
                try Checkpoint.readStateVectors(file, into: h.stateVectors)
            }
            heads = h
        }
        var version = v.number
        let pending = try ledger.updates(after: v.lastUpdateSeq)
        for u in pending {
            guard let path = u.deltaPath else {
                throw FederationError.replayDiverged("the pseudo-gradient of update \(u.id) is no longer kept")
            }
            // A large whole update under FedBuff's plain mean is folded in piece by piece, as it was received.
            if let fedbuff = strategy as? FedBuff, fedbuff.foldsWhileStreaming, heads == nil, u.cluster == nil,
               model.parameters.count * 4 >= FloatBuffer.mappedBytes,
               try DeltaFiles.forEachPiece(path, count: model.parameters.count, { fedbuff.fold($0, at: $1, staleness: u.staleness) }) {
                if fedbuff.completeFolded(model: model.parameters) == .applied { version += 1 }
                guard version == u.versionAfter else {
                    throw FederationError.replayDiverged("update \(u.id) gave version \(version), the ledger says \(u.versionAfter)")
                }
                continue
            }
            let delta = ParameterVector(layout: model.layout)
            let carried = try DeltaFiles.read(path, into: delta)
            let decision = strategy.receive(Contribution(delta: delta, carried: carried, staleness: u.staleness, dataWeight: Double(max(u.tokens, 1)),
                                                         trainer: u.trainer), model: model.parameters)
            if decision == .applied { version += 1 }
            guard version == u.versionAfter else {
                throw FederationError.replayDiverged("update \(u.id) gave version \(version), the ledger says \(u.versionAfter)")
            }
            if let heads, let c = u.cluster, let hs = u.headStaleness {
                guard heads.heads[c] != nil else { throw FederationError.replayDiverged("update \(u.id) is for cluster \(c), which the checkpoint lacks") }
                _ = heads.receive(delta: delta, carried: carried, cluster: c, staleness: hs, dataWeight: Double(max(u.tokens, 1)), trainer: u.trainer)
                guard heads.heads[c]!.version == u.headVersionAfter else {
                    throw FederationError.replayDiverged("update \(u.id) gave head version \(heads.heads[c]!.version) of \(c), the ledger says \(u.headVersionAfter ?? -1)")
                }
                if decision == .applied { heads.writeConsensus(into: model.parameters) }
            }
        }
        return AggregatorRestore(model: model, strategy: strategy, heads: heads, version: version, checkpoint: v, replayed: pending.count)
    }
}
