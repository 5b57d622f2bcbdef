import FedLMAggregation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation

/// What the aggregator sends: the global model or a cluster's as a RELEASE, encoded once per
/// version, or as release steps from a version a trainer holds.
extension AggregatorCore {
    /// The current model as a RELEASE: the global model, or a cluster's (global trunk, its head).
    public func release(cluster: String? = nil) -> Message {
        if cluster == nil, let p = publishedModel() {
            return .release(ReleaseInfo(version: p.version), p.weights.withUnsafeBufferPointer { TensorPayload(specs: specs, copying: $0) })
        }
        guard let cluster, let heads, let head = heads.heads[cluster] else {
            return .release(ReleaseInfo(version: version), encodedRelease(UnsafeBufferPointer(model.parameters.storage.buffer)))
        }
        let values = [Float](unsafeUninitializedCapacity: model.parameters.count) { out, n in
            heads.release(cluster, model: model.parameters, into: out.baseAddress!)
            n = model.parameters.count
        }
        return .release(ReleaseInfo(version: version, cluster: cluster, headVersion: head.version),
                        values.withUnsafeBufferPointer { encodedRelease($0) })
    }

    /// The published model, moved to the current version (with release steps on, and no
    /// personalized heads).
    func publishedModel() -> PublishedModel? {
        guard let compression = releaseSteps, heads == nil else { return nil }
        let current = UnsafeBufferPointer(model.parameters.storage.buffer)
        if published == nil { published = PublishedModel(weights: current, version: version, compression: compression) }
        published!.advance(to: current, version: version)
        return published
    }

    /// The release steps from version `held` to the current one, oldest first (empty when they
    /// are no longer kept).
    public func releaseSteps(from held: Int) -> [Message] {
        guard let p = publishedModel(), let steps = p.steps(from: held) else { return [] }
        return steps.map { .release(ReleaseInfo(version: $0.to, stepFrom: $0.from, through: p.version), TensorPayload(specs: specs, encoded: $0.encoded)) }
    }

    func encodedRelease(_ values: UnsafeBufferPointer<Float>) -> TensorPayload {
        guard releaseCompression.encoding != .f32 else { return TensorPayload(specs: specs, copying: values) }
        return TensorPayload(specs: specs, encoded: releaseCompression.encode(values))
    }

    /// The identity of what a release of `cluster` would carry now (changes when it must be re-sent).
    public func releaseKey(cluster: String?) -> String {
        guard let cluster, let head = heads?.heads[cluster] else { return "v\(version)" }
        return "v\(version)/\(cluster)/h\(head.version).\(head.shared)"
    }
}
