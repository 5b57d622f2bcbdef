import Foundation

/// What the broker can see of a message from a trainer or subscriber before it forwards it:
/// which request it is, who it says it comes from, and how much follows. The broker forwards
/// nothing it can already see is not protocol; the aggregator still validates everything
/// (tensors, checksums, staleness) itself.
public enum Envelope: Equatable, Sendable {
    case hello(Hello)
    case fetch
    case heartbeat
    case bye
    /// An UPDATE: its header, the number of CHUNK messages that follow it (0: the one-message
    /// form, tensors inside), and the largest chunk the layout allows.
    case update(UpdateInfo, chunks: Int, chunkBytes: Int)
    /// One CHUNK of a stream: its position and the size of its data frame.
    case chunk(index: Int, count: Int, bytes: Int)

    /// True for a message the aggregator answers (the others are parts of a stream, or a BYE).
    public var isRequest: Bool {
        switch self {
        case .hello, .fetch, .heartbeat, .update: return true
        case .bye, .chunk: return false
        }
    }

    /// The trainer id the message claims, for the messages that carry one.
    public var trainerID: String? {
        switch self {
        case .hello(let h): return h.trainerID
        case .update(let info, _, _): return info.trainerID
        default: return nil
        }
    }
}

extension WireCodec {
    /// The message types a trainer or subscriber sends (the others travel the other way).
    public static let inboundTypes: Set<MessageType> = [.hello, .fetch, .update, .chunk, .heartbeat, .bye]

    /// Checks one message from the trainers' side the way the broker does before forwarding it:
    /// marker and version, a type that peers send, the frame count that type has, the header
    /// (size, JSON, fields) and, for an UPDATE, its layout (not its tensors).
    ///
    /// - Parameters:
    ///   - head: the message's first three frames (marker, type, header or chunk position).
    ///   - frameSizes: the size of every frame of the message, the first three included.
    public func envelope(head: [[UInt8]], frameSizes: [Int]) throws -> Envelope {
        try checkMarker(head)
        guard let type = MessageType(rawValue: head[1][0]) else {
            throw ProtocolError(.unknownType, "message type \(head[1][0]) is not defined in version \(Self.version)")
        }
        guard Self.inboundTypes.contains(type) else { throw ProtocolError(.malformed, "\(type) is not sent by a trainer or subscriber") }
        switch type {
        case .chunk:
            guard frameSizes.count == 4, head[2].count == 8 else {
                throw ProtocolError(.malformed, "a CHUNK has \(frameSizes.count) frames and a \(head[2].count)-byte position (expected 4 frames, 8 bytes)")
            }
            let (index, count) = head[2].withUnsafeBytes {
                (Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))),
                 Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))))
            }
            guard index < count else { throw ProtocolError(.malformed, "CHUNK \(index) of \(count)") }
            return .chunk(index: index, count: count, bytes: frameSizes[3])
        case .update:
            guard head[2].count <= maxHeaderBytes else {
                throw ProtocolError(.tooLarge, "header of \(head[2].count) bytes exceeds \(maxHeaderBytes)")
            }
            let header: TensorHeader<UpdateInfo>
            do { header = try JSONDecoder().decode(TensorHeader<UpdateInfo>.self, from: Data(head[2])) } catch let e as DecodingError {
                throw ProtocolError(.malformed, "UPDATE header: \(Self.describe(e))")
            } catch {
                throw ProtocolError(.malformed, "UPDATE header is not valid JSON")
            }
            guard !header.info.updateID.isEmpty, !header.info.trainerID.isEmpty else {
                throw ProtocolError(.malformed, "update header needs a non-empty updateID and trainerID")
            }
            _ = try TensorPayload.valueCount(of: header.layout, maxValues: maxValues)
            let chunks = header.layout.chunkCRC32C.count
            let tensorFrames = frameSizes.count - 3
            guard tensorFrames == 0 || tensorFrames == chunks else {
                throw ProtocolError(.malformed, "\(tensorFrames) tensor frames for a layout of \(chunks) chunks")
            }
            return .update(header.info, chunks: tensorFrames == 0 ? chunks : 0, chunkBytes: header.layout.maxChunkBytes)
        default:
            guard frameSizes.count == 3 else { throw ProtocolError(.malformed, "\(type) has \(frameSizes.count) frames (expected 3)") }
            switch try decode(head) {
            case .hello(let h): return .hello(h)
            case .fetch: return .fetch
            case .heartbeat: return .heartbeat
            default: return .bye
            }
        }
    }
}
