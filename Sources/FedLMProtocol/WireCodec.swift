import Foundation
import CFedLMRuntime

/// Messages to and from ZeroMQ frames (after any ROUTER routing-id frames):
///
///     frame 0   "FEDLM" + protocol version byte (1)
///     frame 1   message type, one byte
///     frame 2   header: JSON object (UTF-8), at most `maxHeaderBytes`
///     frame 3+  tensor chunks (RELEASE and UPDATE only), raw FP32 little-endian
///
/// On point-to-point sockets a RELEASE or UPDATE is streamed instead: the head (frames 0-2) and
/// then one CHUNK message per chunk (`MessageStream`, reassembled by `StreamAssembler`).
///
/// Decoding validates everything before returning: frame count, magic, version, type, header
/// fields, chunk sizes and CRC-32Cs, finite values, size limits. Any problem is a
/// `ProtocolError` naming it; nothing half-decoded escapes.
public struct WireCodec: Sendable {
    public static let version: UInt8 = 2
    public static let magic = Array("FEDLM".utf8)

    /// The largest header accepted: 64 KiB, plus room for one checksum (at most 11 bytes of
    /// JSON) per chunk of the largest payload accepted (`maxValues`) in chunks of `chunkBytes`:
    /// a 1.3B-parameter update's header holds 5,011 checksums.
    public var maxHeaderBytes: Int {
        get { headerLimit ?? 64 * 1024 + 12 * ((maxValues * 4 + chunkBytes - 1) / max(chunkBytes, 1)) }
        set { headerLimit = newValue }
    }
    private var headerLimit: Int?
    /// The most tensor values a message may announce (a receiver allocates for them). Peers
    /// that hold a model raise it to the model's size; the broker, which never allocates for
    /// values, to `WireCodec.forwardingMaxValues`.
    public var maxValues = 256 << 20
    public static let forwardingMaxValues = Int(Int32.max)
    public var chunkBytes = TensorPayload.defaultChunkBytes

    public init() {}

    struct TensorHeader<Info: Codable>: Codable {
        var info: Info
        var layout: TensorPayload.Layout
    }

    public func encode(_ message: Message) -> [[UInt8]] {
        let (head, body) = encodeHead(message)
        switch body {
        case nil: return head
        case .values(let values): return head + TensorPayload.chunks(of: values, chunkBytes: chunkBytes)
        case .chunks(let chunks): return head + chunks
        }
    }

    /// What follows a tensor message's head: F32 values to cut into `chunkBytes` frames where
    /// they lie, or chunks already encoded.
    public enum Body {
        case values([Float])
        case chunks([[UInt8]])
    }

    /// The first three frames of `message` (marker, type, header), and for a RELEASE or UPDATE
    /// its body: the checksums in the header are computed, the values are not copied.
    /// The first three frames of `message` alone (its values, if any, are read for their
    /// checksums where they lie, never copied).
    public func head(of message: Message) -> [[UInt8]] {
        switch message {
        case .release(let info, let payload): headFrames(message.type, TensorHeader(info: info, layout: payload.layout(chunkBytes: chunkBytes)))
        case .update(let info, let payload): headFrames(message.type, TensorHeader(info: info, layout: payload.layout(chunkBytes: chunkBytes)))
        default: encodeHead(message).head
        }
    }

    /// The first three frames of an F32 UPDATE whose chunks the caller sends itself (each
    /// `chunkBytes` long, the last one shorter, with CRC-32Cs `chunkCRCs`): for a sender that
    /// never holds the whole update (`fedlm bench aggregator`).
    public func updateHead(_ info: UpdateInfo, specs: [TensorSpec], chunkCRCs: [UInt32]) -> [[UInt8]] {
        headFrames(.update, TensorHeader(info: info, layout: TensorPayload.Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: chunkCRCs,
                                                                                 dtype: TensorPayload.dtype)))
    }

    private func headFrames<Info>(_ type: MessageType, _ header: TensorHeader<Info>) -> [[UInt8]] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return [Self.magic + [Self.version], [type.rawValue], Array(try! encoder.encode(header))]
    }

    public func encodeHead(_ message: Message) -> (head: [[UInt8]], body: Body?) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func json<T: Encodable>(_ v: T) -> [UInt8] { Array(try! encoder.encode(v)) }
        var frames: [[UInt8]] = [Self.magic + [Self.version], [message.type.rawValue]]
        switch message {
        case .hello(let h): frames.append(json(h))
        case .welcome(let w): frames.append(json(w))
        case .fetch(let f): frames.append(json(f))
        case .ack(let a): frames.append(json(a))
        case .error(let e): frames.append(json(e))
        case .heartbeat: frames.append(Array("{}".utf8))
        case .bye(let reason): frames.append(json(["reason": reason]))
        case .release(let info, let payload):
            frames.append(json(TensorHeader(info: info, layout: payload.layout(chunkBytes: chunkBytes))))
            return (frames, body(payload))
        case .update(let info, let payload):
            frames.append(json(TensorHeader(info: info, layout: payload.layout(chunkBytes: chunkBytes))))
            return (frames, body(payload))
        }
        return (frames, nil)
    }

    private func body(_ payload: TensorPayload) -> Body {
        if let e = payload.encoded { return .chunks(e.chunks) }
        return .values(payload.values)
    }

    /// Checks the protocol marker and version in frame 0 (and that there is a type frame).
    func checkMarker(_ frames: [[UInt8]]) throws {
        guard frames.count >= 3 else { throw ProtocolError(.malformed, "\(frames.count) frames; a message has at least 3") }
        guard frames[0].count == Self.magic.count + 1, Array(frames[0].prefix(Self.magic.count)) == Self.magic else {
            throw ProtocolError(.malformed, "first frame is not the FEDLM protocol marker")
        }
        guard frames[0].last == Self.version else {
            throw ProtocolError(.unsupportedVersion, "protocol version \(frames[0].last!), this peer speaks \(Self.version)")
        }
        guard frames[1].count == 1 else { throw ProtocolError(.malformed, "the type frame has \(frames[1].count) bytes") }
    }

    struct LayoutOnly: Codable { var layout: TensorPayload.Layout }

    /// The tensor layout in the header of a streamed RELEASE or UPDATE head.
    func streamLayout(head header: [UInt8]) throws -> TensorPayload.Layout {
        guard header.count <= maxHeaderBytes else {
            throw ProtocolError(.tooLarge, "header of \(header.count) bytes exceeds \(maxHeaderBytes)")
        }
        do { return try JSONDecoder().decode(LayoutOnly.self, from: Data(header)).layout } catch let e as DecodingError {
            throw ProtocolError(.malformed, "stream head: \(Self.describe(e))")
        } catch {
            throw ProtocolError(.malformed, "stream head is not valid JSON")
        }
    }

    public func decode(_ frames: [[UInt8]]) throws -> Message { try decode(frames, tensors: nil) }

    /// Decodes and validates one message. `tensors`, when given, supplies the payload of a
    /// RELEASE or UPDATE that a `StreamAssembler` already rebuilt (frames are then the head only).
    func decode(_ frames: [[UInt8]], tensors: TensorPayload?) throws -> Message {
        try checkMarker(frames)
        guard let type = MessageType(rawValue: frames[1][0]) else {
            throw ProtocolError(.unknownType, "message type \(frames[1][0]) is not defined in version \(Self.version)")
        }
        if type == .chunk { throw ProtocolError(.malformed, "a CHUNK outside a stream") }
        let header = frames[2]
        guard header.count <= maxHeaderBytes else {
            throw ProtocolError(.tooLarge, "header of \(header.count) bytes exceeds \(maxHeaderBytes)")
        }
        let tensorFrames = frames[3...]
        func payload(_ layout: TensorPayload.Layout) throws -> TensorPayload {
            guard let tensors else { return try TensorPayload.decode(layout, frames: tensorFrames, maxValues: maxValues) }
            guard tensorFrames.isEmpty, tensors.specs == layout.tensors else {
                throw ProtocolError(.malformed, "a stream's head does not match its tensors")
            }
            return tensors
        }
        if type != .release && type != .update && !tensorFrames.isEmpty {
            throw ProtocolError(.malformed, "\(type) carries \(tensorFrames.count) unexpected frames")
        }
        let decoder = JSONDecoder()
        func parse<T: Decodable>(_ t: T.Type) throws -> T {
            do { return try decoder.decode(T.self, from: Data(header)) } catch let e as DecodingError {
                throw ProtocolError(.malformed, "\(type) header: \(Self.describe(e))")
            } catch {
                throw ProtocolError(.malformed, "\(type) header is not valid JSON")
            }
        }
        switch type {
        case .hello: return .hello(try parse(Hello.self))
        case .welcome: return .welcome(try parse(Welcome.self))
        case .fetch:
            let f = try parse(Fetch.self)
            if let w = f.window, w < 1 { throw ProtocolError(.malformed, "FETCH window \(w) is not a positive chunk count") }
            if let r = f.resume {
                guard f.window != nil else { throw ProtocolError(.malformed, "FETCH resume needs a window") }
                guard r.next >= 0 else { throw ProtocolError(.malformed, "FETCH resume from chunk \(r.next), a negative index") }
            }
            return .fetch(f)
        case .ack: return .ack(try parse(Ack.self))
        case .error: return .error(try parse(ErrorReply.self))
        case .heartbeat: _ = try parse([String: String].self); return .heartbeat
        case .bye: return .bye(try parse([String: String].self)["reason"] ?? "")
        case .release:
            let h = try parse(TensorHeader<ReleaseInfo>.self)
            return .release(h.info, try payload(h.layout))
        case .chunk: throw ProtocolError(.malformed, "a CHUNK outside a stream")  // refused above
        case .update:
            let h = try parse(TensorHeader<UpdateInfo>.self)
            guard !h.info.updateID.isEmpty, !h.info.trainerID.isEmpty else {
                throw ProtocolError(.malformed, "update header needs a non-empty updateID and trainerID")
            }
            guard h.info.baseVersion >= 0, h.info.tokens >= 0, h.info.localSteps >= 0 else {
                throw ProtocolError(.malformed, "update header has a negative baseVersion, tokens or localSteps")
            }
            do { return .update(h.info, try payload(h.layout)) } catch var e as ProtocolError {
                e.update = h.info
                throw e
            }
        }
    }

    /// What names a stream's head in a windowed fetch's `ResumePoint`: the CRC-32C of its header
    /// frame (which lists every chunk's CRC-32C).
    public static func headDigest(_ header: [UInt8]) -> UInt32 {
        header.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, $0.count) }
    }

    /// The update header of a streamed UPDATE head, if it is one and names its update and trainer
    /// (so that a refusal of its tensors can say which update it refuses).
    func streamUpdateInfo(head frames: [[UInt8]]) -> UpdateInfo? {
        guard frames.count == 3, frames[1] == [MessageType.update.rawValue],
              let h = try? JSONDecoder().decode(TensorHeader<UpdateInfo>.self, from: Data(frames[2])),
              !h.info.updateID.isEmpty, !h.info.trainerID.isEmpty else { return nil }
        return h.info
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case .typeMismatch(_, let c), .valueNotFound(_, let c):
            return "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type"
        case .dataCorrupted(let c):
            return c.codingPath.isEmpty ? "not valid JSON" : "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))' is invalid"
        @unknown default: return "invalid"
        }
    }
}
