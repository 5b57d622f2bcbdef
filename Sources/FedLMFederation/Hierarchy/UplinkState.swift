import FedLMCheckpoint
import Foundation

/// What a regional aggregator's link to the level above must survive a crash with (one file,
/// `<region run>/uplink/state.safetensors`, replaced atomically at every change).
///
/// - `anchor` (A): the release from above the region last adopted, at version `anchorVersion`
///   above (and `anchorHeadVersion` of the region's personalized model there).
/// - `sent` (S) and `pendingUpdate`: the regional model when the update in flight was taken,
///   and that update's id. Δ = A − S is what the level above was sent (rebuilt from here
///   after a crash and resent under the same id: the level above's ledger applies it once).
/// - `reference` and `adoptedVersion`: an adoption under way. The regional model becomes
///   version `adoptedVersion` = G + (R − reference); written before the regional model moves, so a
///   crash in between is finished on restart.
/// - `reportedTokens`: the region's accepted tokens already counted in updates sent upward.
struct UplinkState: Equatable {
    var anchor: [Float]
    var anchorVersion: Int
    var anchorHeadVersion: Int?
    var sent: [Float]?
    var pendingUpdate: String?
    var pendingTokens = 0
    var reference: [Float]?
    var adoptedVersion: Int?
    var reportedTokens = 0

    func save(to path: String) throws {
        var tensors: [(String, [Float])] = [("anchor", anchor)]
        if let sent { tensors.append(("sent", sent)) }
        if let reference { tensors.append(("reference", reference)) }
        var metadata = ["anchor_version": String(anchorVersion), "pending_tokens": String(pendingTokens),
                        "reported_tokens": String(reportedTokens)]
        metadata["anchor_head_version"] = anchorHeadVersion.map(String.init)
        metadata["pending_update"] = pendingUpdate
        metadata["adopted_version"] = adoptedVersion.map(String.init)
        try withSources(tensors) { try SafeTensors.write($0, metadata: metadata, to: path) }
    }

    static func load(from path: String, count: Int) throws -> UplinkState? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let file = try SafeTensorsFile(path: path)
        func vector(_ name: String) throws -> [Float]? {
            guard file.tensor(name) != nil else { return nil }
            let v = try file.floats(name)
            guard v.count == count else { throw FederationError.local("\(path): '\(name)' has \(v.count) values, the model \(count)") }
            return v
        }
        func integer(_ key: String) throws -> Int? {
            guard let text = file.metadata[key] else { return nil }
            guard let v = Int(text) else { throw FederationError.local("\(path): '\(key)' is '\(text)', not an integer") }
            return v
        }
        guard let anchor = try vector("anchor"), let anchorVersion = try integer("anchor_version") else {
            throw FederationError.local("\(path): no anchor (the release adopted from above)")
        }
        return UplinkState(anchor: anchor, anchorVersion: anchorVersion, anchorHeadVersion: try integer("anchor_head_version"),
                           sent: try vector("sent"), pendingUpdate: file.metadata["pending_update"],
                           pendingTokens: try integer("pending_tokens") ?? 0, reference: try vector("reference"),
                           adoptedVersion: try integer("adopted_version"), reportedTokens: try integer("reported_tokens") ?? 0)
    }
}

/// Calls `body` with safetensors sources over the arrays (1-D F32), valid during the call.
private func withSources<R>(_ tensors: [(String, [Float])], _ body: ([SafeTensors.Source]) throws -> R) rethrows -> R {
    func nest(_ i: Int, _ sources: [SafeTensors.Source]) throws -> R {
        guard i < tensors.count else { return try body(sources) }
        return try tensors[i].1.withUnsafeBytes { bytes in
            try nest(i + 1, sources + [SafeTensors.Source(name: tensors[i].0, dtype: .f32, shape: [tensors[i].1.count], bytes: bytes)])
        }
    }
    return try nest(0, [])
}
