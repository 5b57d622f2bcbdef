import FedLMProtocol

/// Releases as compressed differences from a version the trainer holds.
///
/// The aggregator keeps the published model P beside its own model M. When M moves on to a new
/// version v, P follows by a compressed step: D_v = Q(M_v − P), P ← P + decode(D_v), element by
/// element in binary32. A trainer that holds P at version u receives D_{u+1} … D_v and adds them
/// in the same order, so it holds exactly the aggregator's P_v, bit for bit, without ever
/// receiving the whole model again. What Q leaves out stays in M − P and goes out with later
/// steps (server-side error feedback, as in the downlink of DoubleSqueeze, Tang et al. 2019).
/// Trainers train from P; their pseudo-gradients are taken from there and applied to M.
///
/// A trainer whose version is no longer among the kept steps (or whose steps would be larger
/// than the model) gets the whole P in F32.
public struct PublishedModel: Sendable {
    public let compression: Compression
    public private(set) var weights: [Float]
    public private(set) var version: Int
    /// Steps kept for trainers that are behind, oldest first; consecutive.
    public private(set) var steps: [Step] = []
    /// How many steps are kept.
    public let keep: Int

    public struct Step: Sendable {
        public let from: Int
        public let to: Int
        public let encoded: EncodedTensors
    }

    public init(weights: UnsafeBufferPointer<Float>, version: Int, compression: Compression, keep: Int = 16) {
        self.weights = Array(weights)
        self.version = version
        self.compression = compression
        self.keep = keep
    }

    /// Moves P toward `model` at `version` (a newer one) by one compressed step.
    public mutating func advance(to model: UnsafeBufferPointer<Float>, version newVersion: Int) {
        guard newVersion > version else { return }
        precondition(model.count == weights.count, "model of \(model.count) values, published \(weights.count)")
        let difference = (0..<model.count).map { model[$0] - weights[$0] }
        let encoded = difference.withUnsafeBufferPointer { compression.encode($0, chunkBytes: TensorPayload.defaultChunkBytes) }
        Self.add(encoded, to: &weights)
        steps.append(Step(from: version, to: newVersion, encoded: encoded))
        if steps.count > keep { steps.removeFirst(steps.count - keep) }
        version = newVersion
    }

    /// The steps from `held` to the current version, if all are kept and together smaller than
    /// the whole model in F32.
    public func steps(from held: Int) -> [Step]? {
        guard held < version, let first = steps.firstIndex(where: { $0.from == held }) else { return nil }
        let chain = Array(steps[first...])
        guard chain.reduce(0, { $0 + $1.encoded.byteCount }) < 4 * weights.count else { return nil }
        return chain
    }

    /// weights += decode(step), element by element: what the aggregator and every trainer do.
    public static func add(_ step: EncodedTensors, to weights: inout [Float]) {
        let d = TensorPayload.decodedValues(step, count: weights.count)
        for i in weights.indices { weights[i] += d[i] }
    }

    /// weights += the values of a received step.
    public static func add(_ step: TensorPayload, to weights: inout [Float]) {
        step.withValues { d in
            for i in weights.indices { weights[i] += d[i] }
        }
    }
}
