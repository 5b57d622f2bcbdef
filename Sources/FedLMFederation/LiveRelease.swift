import FedLMModel
import FedLMProtocol
import FedLMZeroMQ

/// A large model's release sent straight from the model's memory: the chunks' checksums are
/// computed where the values lie, and each chunk is copied into its libzmq message as it is sent.
/// The aggregator then holds no copy of the model for releases. (A release encoded once per
/// version, `SharedFrames`, is sent to every fetcher without copies, at the cost of one copy of
/// the model: right for small models, not at a billion parameters.) Valid while the model holds
/// this version: the service keeps one per version and sends it only from the loop that changes
/// the model.
struct LiveRelease {
    let head: [[UInt8]]
    let chunks: [UnsafeRawBufferPointer]

    /// Models this large or larger are released live (`AggregatorService.liveReleaseBytes`).
    static let defaultThreshold = 256 << 20

    init(model: ParameterVector, version: Int, specs: [TensorSpec], codec: WireCodec) {
        let memory = ModelMemory(model)
        head = codec.head(of: .release(ReleaseInfo(version: version), TensorPayload(specs: specs, destination: memory)))
        let bytes = UnsafeRawBufferPointer(memory.values)
        chunks = stride(from: 0, to: bytes.count, by: codec.chunkBytes).map {
            UnsafeRawBufferPointer(rebasing: bytes[$0..<min($0 + codec.chunkBytes, bytes.count)])
        }
    }

    /// Bytes of one release sent.
    var byteCount: Int { head.reduce(0) { $0 + $1.count } + chunks.reduce(0) { $0 + $1.count } }

    /// The streamed form (`MessageStream`): the head, then one message per chunk of `range` (nil:
    /// all). Returns the bytes sent.
    @discardableResult
    func send(on socket: ZMQSocket, prefix: [[UInt8]], chunks range: Range<Int>? = nil) throws -> Int {
        try socket.send(prefix + head)
        var bytes = head.reduce(0) { $0 + $1.count }
        for i in range ?? chunks.indices {
            try socket.send(prefix + MessageStream.chunkPrefix(index: i, count: chunks.count), copying: [chunks[i]])
            bytes += chunks[i].count
        }
        return bytes
    }

    /// One message under `topic` (subscribers' form).
    func publish(on socket: ZMQSocket, topic: [UInt8]) throws {
        try socket.send([topic] + head, copying: chunks)
    }
}

/// The model's weights seen as a payload's values (read only: nothing is ever received into them).
private final class ModelMemory: PayloadDestination, @unchecked Sendable {
    let model: ParameterVector
    init(_ model: ParameterVector) { self.model = model }
    var values: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: model.pointer, count: model.count) }
    func received(_ range: Range<Int>) {}
}
