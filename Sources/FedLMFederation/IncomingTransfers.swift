import FedLMProtocol

/// The aggregator's streams in progress, one `StreamAssembler` per peer, bounded so that peers
/// starting many transfers (or dying mid-transfer) cannot make it hold unbounded memory.
public struct IncomingTransfers {
    let codec: WireCodec
    /// Transfers in progress at once; a new one beyond this is refused with `unavailable`.
    var maxInProgress = 32
    /// Seconds without a chunk after which an unfinished transfer is dropped.
    var idleTimeout = 60.0
    /// Where UPDATEs are assembled (`StreamAssembler.destinations`).
    var destinations: (@Sendable (UpdateInfo, Int) -> PayloadDestination?)?
    private var assemblers: [String: StreamAssembler] = [:]
    private var lastActivity: [String: Double] = [:]

    public init(codec: WireCodec) { self.codec = codec }

    /// Only assemblers with a transfer in progress are kept (`forgetIfIdle`), so this is their count.
    var inProgress: Int { assemblers.count }

    /// Takes one message from `peer`; returns the message it completes, if any.
    public mutating func accept(_ frames: [[UInt8]], from peer: String, now: Double) throws -> Message? {
        try accept(from: peer, now: now) { try $0.accept(frames) }
    }

    /// Takes one message from `peer` whose frames are still in the receive buffers.
    mutating func accept(buffers: [UnsafeRawBufferPointer], from peer: String, now: Double) throws -> Message? {
        try accept(from: peer, now: now) { try $0.accept(buffers: buffers) }
    }

    private mutating func accept(from peer: String, now: Double, feed: (inout StreamAssembler) throws -> Message?) throws -> Message? {
        let wasInProgress = assemblers[peer]?.inProgress ?? false
        let others = inProgress - (wasInProgress ? 1 : 0)
        // Mutated in place: a copy of the assembler would share, and then copy, its buffer.
        let message: Message?
        if assemblers[peer] == nil {
            var assembler = StreamAssembler(codec: codec)
            assembler.destinations = destinations
            assemblers[peer] = assembler
        }
        do { message = try feed(&assemblers[peer]!) } catch {
            forgetIfIdle(peer, now: now)
            throw error
        }
        forgetIfIdle(peer, now: now)
        if !wasInProgress, assemblers[peer] != nil, others >= maxInProgress {
            assemblers[peer] = nil
            lastActivity[peer] = nil
            throw ProtocolError(.unavailable, "\(maxInProgress) transfers are already in progress; try again shortly")
        }
        return message
    }

    private mutating func forgetIfIdle(_ peer: String, now: Double) {
        if assemblers[peer]?.inProgress == true {
            lastActivity[peer] = now
        } else {
            assemblers[peer] = nil
            lastActivity[peer] = nil
        }
    }

    /// Drops transfers idle for longer than `idleTimeout`; returns their peers.
    mutating func expire(now: Double) -> [String] {
        let idle = lastActivity.filter { now - $0.value > idleTimeout }.map(\.key).sorted()
        for peer in idle {
            assemblers[peer] = nil
            lastActivity[peer] = nil
        }
        return idle
    }
}
