import FedLMProtocol
import FedLMZeroMQ

extension ZMQSocket {
    /// Sends an encoded message on a point-to-point socket in its streamed form
    /// (`MessageStream`): a tensor message goes out as its head and one message per chunk, each
    /// preceded by `prefix` (routing frames: a ROUTER's or the aggregator's peer id).
    public func sendStreamed(_ frames: [[UInt8]], prefix: [[UInt8]] = []) throws {
        for message in MessageStream.split(frames) { try send(prefix + message) }
    }

    /// Streams an encoded tensor message held in `shared` without copying its chunks: its head
    /// and the chunks of `range` (nil: all). Returns the bytes sent.
    @discardableResult
    public func sendStreamed(_ shared: SharedFrames, prefix: [[UInt8]] = [], chunks range: Range<Int>? = nil) throws -> Int {
        guard shared.count > 3 else {
            let frames = shared.arrays(prefix: shared.count)
            try send(prefix + frames)
            return frames.reduce(0) { $0 + $1.count }
        }
        let head = shared.arrays(prefix: 3)
        try send(prefix + head)
        var bytes = head.reduce(0) { $0 + $1.count }
        let count = shared.count - 3
        for i in range ?? 0..<count {
            try send(prefix + MessageStream.chunkPrefix(index: i, count: count), shared: shared, range: (3 + i)..<(4 + i))
            bytes += shared[3 + i].count
        }
        return bytes
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

    /// The chunks of this encoded tensor message that `window` asks for (nil: all of them).
    public func chunks(in window: ReleaseWindow?) -> Range<Int> {
        let count = max(self.count - 3, 0)
        guard let window, count > 0 else { return 0..<count }
        return window.chunks(head: arrays(prefix: 3)[2], count: count)
    }
}

/// One window of a release stream (a windowed FETCH): the stream's head, then at most `size`
/// chunks, from where `resume` says while it names that head, else from the first. The head
/// goes with every window: it is the answer the broker counts (`BrokerGate.answered`), and a
/// receiver holding the same head continues its transfer.
public struct ReleaseWindow: Equatable, Sendable {
    public let size: Int
    public let resume: ResumePoint?

    public init(size: Int, resume: ResumePoint?) {
        self.size = size
        self.resume = resume
    }

    /// The chunks to send of a stream with this header frame and chunk count.
    public func chunks(head header: [UInt8], count: Int) -> Range<Int> {
        let continues = resume.map { $0.head == WireCodec.headDigest(header) } ?? false
        let start = continues ? min(max(resume!.next, 0), count) : 0
        return start..<min(count, start + size)
    }
}
