import FedLMProtocol
import FedLMZeroMQ

extension ZMQSocket {
    /// Sends an encoded message on a point-to-point socket in its streamed form
    /// (`MessageStream`): a tensor message goes out as its head and one message per chunk, each
    /// preceded by `prefix` (routing frames: a ROUTER's or the aggregator's peer id).
    public func sendStreamed(_ frames: [[UInt8]], prefix: [[UInt8]] = []) throws {
        for message in MessageStream.split(frames) { try send(prefix + message) }
    }

    /// Streams an encoded tensor message held in `shared` without copying its chunks.
    public func sendStreamed(_ shared: SharedFrames, prefix: [[UInt8]] = []) throws {
        guard shared.count > 3 else { try send(prefix + shared.arrays(prefix: shared.count)); return }
        try send(prefix + shared.arrays(prefix: 3))
        let count = shared.count - 3
        for i in 0..<count {
            try send(prefix + MessageStream.chunkPrefix(index: i, count: count), shared: shared, range: (3 + i)..<(4 + i))
        }
    }

    /// Publishes an encoded message held in `shared` as one message under `topic`, without
    /// copying its tensor frames.
    func publish(_ shared: SharedFrames, topic: [UInt8]) throws {
        guard shared.count > 3 else { try send([topic] + shared.arrays(prefix: shared.count)); return }
        try send([topic] + shared.arrays(prefix: 3), shared: shared, range: 3..<shared.count)
    }
}

extension SharedFrames {
    /// `message` encoded by `codec` for sending without copies: a RELEASE's or UPDATE's values
    /// become its chunk frames where they lie (only their checksums are computed).
    public convenience init(_ message: Message, codec: WireCodec) {
        switch codec.encodeHead(message) {
        case (let head, .values(let values)?): self.init(head: head, body: values, bodyFrameBytes: codec.chunkBytes)
        case (let head, .chunks(let chunks)?): self.init(head + chunks)
        case (let head, nil): self.init(head)
        }
    }
}
