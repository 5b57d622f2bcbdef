import CFedLMRuntime

/// Tensor messages on point-to-point sockets travel as a stream of small messages, so that every
/// hop (trainer -> broker -> aggregator and back) forwards each chunk as soon as it arrives
/// instead of storing a whole multipart message first: ZeroMQ delivers a multipart message only
/// when all of its frames are in, so a 42 MB update through the broker used to cost two full
/// transfers back to back; streamed, the hops overlap.
///
/// The stream of a RELEASE or UPDATE is its head, `[marker, type, header]` (the header's layout
/// lists the chunk count and every CRC-32C), followed by one CHUNK message per tensor chunk:
/// `[marker, CHUNK, position, chunk bytes]`, where `position` is 8 bytes: the chunk's index and the
/// chunk count, each a little-endian UInt32. Messages without tensors are sent as they are.
/// Publications (PUB/SUB) keep the one-message form: a PUB socket drops whole messages under
/// pressure, which a subscriber notices by version, whereas a dropped chunk would not be.
public enum MessageStream {
    /// The messages to send, in order, for one encoded message (as `WireCodec.encode` returns it).
    public static func split(_ frames: [[UInt8]]) -> [[[UInt8]]] {
        guard frames.count > 3 else { return [frames] }
        let chunks = frames[3...]
        var messages: [[[UInt8]]] = [Array(frames[0..<3])]
        messages.reserveCapacity(chunks.count + 1)
        for (index, chunk) in chunks.enumerated() {
            messages.append(chunkPrefix(index: index, count: chunks.count) + [chunk])
        }
        return messages
    }

    /// The frames of a CHUNK message before the chunk's bytes: marker, type, position (the
    /// chunk's index and the chunk count, little-endian UInt32s).
    public static func chunkPrefix(index: Int, count: Int) -> [[UInt8]] {
        var position: [UInt8] = []
        withUnsafeBytes(of: UInt32(index).littleEndian) { position += $0 }
        withUnsafeBytes(of: UInt32(count).littleEndian) { position += $0 }
        return [WireCodec.magic + [WireCodec.version], [MessageType.chunk.rawValue], position]
    }
}

/// Reassembles the messages of one peer into protocol messages (one assembler per peer: a peer's
/// messages arrive in order over one connection). Each chunk is checked (position, size, CRC-32C,
/// finite values) and copied into place as it arrives, so that work overlaps the transfer; the
/// header is decoded and validated like any other when the last chunk is in.
///
/// A state machine without I/O: feed it each received message, get a `Message` when one is
/// complete. A chunk that does not continue the transfer in progress is refused with a
/// `ProtocolError` naming what is wrong, and the transfer is forgotten (its remaining chunks are
/// then dropped silently, so one broken transfer gets one error); a new head replaces an
/// unfinished transfer (its sender gave up on it and started again).
public struct StreamAssembler: Sendable {
    public let codec: WireCodec
    private var head: [[UInt8]]?
    /// The CRC-32C of a RELEASE head's header frame (`WireCodec.headDigest`), taken once per head.
    private var releaseHeadDigest: UInt32?
    /// The header of the UPDATE being streamed, for refusals of its chunks.
    private var headUpdate: UpdateInfo?
    private var receiver: TensorPayload.Receiver?
    /// Transfers replaced by a new head before they completed.
    public private(set) var abandoned = 0
    /// CHUNK messages that belonged to no transfer in progress (dropped silently).
    public private(set) var discarded = 0
    /// Windowed fetches: a RELEASE stream survives a gap. A chunk after a missing one (counted in
    /// `gaps`), or one already received (in `duplicates`), is dropped instead of ending the
    /// transfer, and a head identical to the one in progress continues it; the receiver asks for
    /// the missing chunks again with a `ResumePoint` (`releaseProgress`). Off: a gap ends the
    /// transfer with an error.
    public var resumesReleases = false
    public private(set) var gaps = 0
    public private(set) var duplicates = 0
    /// Where an UPDATE's values are assembled, given its header and value count (nil, or a
    /// destination that gives nil: a new array). Asked when the update's head arrives.
    public var destinations: (@Sendable (UpdateInfo, Int) -> PayloadDestination?)?

    public init(codec: WireCodec = WireCodec()) { self.codec = codec }

    /// True while a transfer has started and not finished.
    public var inProgress: Bool { head != nil }

    /// The RELEASE stream in progress: its head's digest (`WireCodec.headDigest`), the chunks
    /// received so far and the stream's chunk count.
    public var releaseProgress: (head: UInt32, received: Int, count: Int)? {
        guard let releaseHeadDigest, let receiver else { return nil }
        return (releaseHeadDigest, receiver.received, receiver.chunkCount)
    }

    /// Takes one received message; returns the message it completes, or nil while a stream is
    /// still arriving.
    public mutating func accept(_ frames: [[UInt8]]) throws -> Message? {
        guard frames.count >= 2, frames[1].count == 1 else { return try codec.decode(frames) }
        let type = frames[1][0]
        if type == MessageType.chunk.rawValue {
            return try acceptChunk(frames)
        }
        if frames.count == 3, type == MessageType.release.rawValue || type == MessageType.update.rawValue {
            try codec.checkMarker(frames)
            if resumesReleases, let head, head == frames { return nil }  // the same release again: continue it
            if head != nil { abandoned += 1 }
            reset()
            let update = codec.streamUpdateInfo(head: frames)
            do {
                let destination = update.flatMap { info in destinations.map { provide in { provide(info, $0) } } }
                receiver = try TensorPayload.Receiver(layout: codec.streamLayout(head: frames[2]), maxValues: codec.maxValues,
                                                      destination: destination)
            } catch var e as ProtocolError {
                e.update = update
                throw e
            }
            head = frames
            headUpdate = update
            if type == MessageType.release.rawValue { releaseHeadDigest = WireCodec.headDigest(frames[2]) }
            return nil
        }
        return try codec.decode(frames)
    }

    /// Takes one received message whose frames are still in the receive buffers: a CHUNK's
    /// tensor bytes are checked and copied into place from there, without an intermediate copy.
    public mutating func accept(buffers: [UnsafeRawBufferPointer]) throws -> Message? {
        guard buffers.count == 4, buffers[1].count == 1, buffers[1][0] == MessageType.chunk.rawValue else {
            return try accept(buffers.map { Array($0) })
        }
        return try acceptChunk(buffers[0...2].map { Array($0) }, data: buffers[3])
    }

    private mutating func acceptChunk(_ frames: [[UInt8]]) throws -> Message? {
        guard frames.count == 4 else { return try acceptChunk(frames, data: nil) }
        return try frames[3].withUnsafeBytes { try acceptChunk(Array(frames[0...2]), data: $0) }
    }

    /// A CHUNK: `frames` are its marker, type and position (and any unexpected extra frames when
    /// `data` is nil), `data` its tensor bytes.
    private mutating func acceptChunk(_ frames: [[UInt8]], data: UnsafeRawBufferPointer?) throws -> Message? {
        try codec.checkMarker(frames)
        guard let head, var receiver else {
            // The rest of a stream already refused, or one whose head this peer never saw (it
            // restarted mid-transfer): nothing to attach it to, and the sender retries anyway.
            discarded += 1
            return nil
        }
        func fail(_ code: ProtocolError.Code, _ detail: String) -> ProtocolError {
            let update = headUpdate
            reset()
            return ProtocolError(code, detail, update: update)
        }
        guard let data, frames.count == 3, frames[2].count == 8 else {
            let count = frames.count + (data == nil ? 0 : 1)
            throw fail(.malformed, "a CHUNK has \(count) frames and a \(frames[2].count)-byte position (expected 4 frames, 8 bytes)")
        }
        let (index, count) = frames[2].withUnsafeBytes {
            (Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))),
             Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))))
        }
        if resumesReleases, head[1] == [MessageType.release.rawValue], count == receiver.chunkCount, index != receiver.received {
            if index > receiver.received { gaps += 1 } else { duplicates += 1 }
            return nil
        }
        guard count == receiver.chunkCount, index == receiver.received else {
            throw fail(.malformed, "CHUNK \(index) of \(count) arrived; expected chunk \(receiver.received) of \(receiver.chunkCount) (lost or reordered)")
        }
        self.receiver = nil  // keeps the values uniquely referenced while `add` writes into them
        do { try receiver.add(data) } catch let e as ProtocolError { throw fail(e.code, e.detail) }
        guard receiver.received == receiver.chunkCount else {
            self.receiver = receiver
            return nil
        }
        let update = headUpdate
        reset()
        let tensors: TensorPayload
        do { tensors = try receiver.finish() } catch var e as ProtocolError {
            e.update = update
            throw e
        }
        return try codec.decode(head, tensors: tensors)
    }

    private mutating func reset() {
        head = nil
        headUpdate = nil
        releaseHeadDigest = nil
        receiver = nil
    }
}
