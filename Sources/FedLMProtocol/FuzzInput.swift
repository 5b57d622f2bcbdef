/// How the fuzz targets (`scripts/fuzz`) and the replay of their corpus in the tests turn raw
/// bytes into what the network would deliver: frames are a 2-byte little-endian length and that
/// many bytes; a message is a 1-byte frame count and its frames.
public enum FuzzInput {
    /// The bytes as the frames of one message.
    public static func frames(_ bytes: [UInt8]) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        var i = 0
        while i + 2 <= bytes.count {
            let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8
            i += 2
            let end = min(bytes.count, i + n)
            frames.append(Array(bytes[i..<end]))
            i = end
        }
        return frames
    }

    /// The bytes as a sequence of messages (for the stream assembler).
    public static func messages(_ bytes: [UInt8]) -> [[[UInt8]]] {
        var messages: [[[UInt8]]] = []
        var i = 0
        while i < bytes.count {
            let count = Int(bytes[i]) % 8
            i += 1
            var frames: [[UInt8]] = []
            for _ in 0..<count where i + 2 <= bytes.count {
                let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8
                i += 2
                let end = min(bytes.count, i + n)
                frames.append(Array(bytes[i..<end]))
                i = end
            }
            messages.append(frames)
        }
        return messages
    }

    /// The inverse of `frames`, for writing seeds.
    public static func encode(frames: [[UInt8]]) -> [UInt8] {
        frames.flatMap { f in [UInt8(f.count & 0xFF), UInt8(f.count >> 8)] + f }
    }

    /// The inverse of `messages`, for writing seeds.
    public static func encode(messages: [[[UInt8]]]) -> [UInt8] {
        messages.flatMap { [UInt8($0.count)] + encode(frames: $0) }
    }

    /// One fuzz input through the wire decoder and through the broker's check of the same frames
    /// (`WireCodec.envelope`): any outcome but a crash is fine.
    public static func decodeOnce(_ bytes: [UInt8]) {
        var codec = WireCodec()
        codec.maxValues = 1 << 16
        let frames = frames(bytes)
        _ = try? codec.decode(frames)
        _ = try? codec.envelope(head: Array(frames.prefix(3)), frameSizes: frames.map(\.count))
    }

    /// One fuzz input through a stream assembler.
    public static func assembleOnce(_ bytes: [UInt8]) {
        var codec = WireCodec()
        codec.maxValues = 1 << 16
        codec.chunkBytes = 64
        // Frames copied (as tests and tools pass them) and in place (as the aggregator and
        // trainers receive them) must give the same outcome for every message.
        var copied = StreamAssembler(codec: codec), inPlace = StreamAssembler(codec: codec)
        for m in messages(bytes) {
            let a = Result { try copied.accept(m) }
            let b = Result { try m.withBuffers { try inPlace.accept(buffers: $0) } }
            switch (a, b) {
            case (.success(let x), .success(let y)): precondition(x == y, "in-place assembly differs")
            case (.failure(let x), .failure(let y)): precondition("\(x)" == "\(y)", "in-place refusal differs: \(x) vs \(y)")
            default: preconditionFailure("in-place assembly and copied assembly disagree: \(a) vs \(b)")
            }
        }
    }
}

extension Array where Element == [UInt8] {
    /// The frames as buffers over their own storage, for the duration of `body` (to feed
    /// `StreamAssembler.accept(buffers:)` as a receive in place would).
    public func withBuffers<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) throws -> R {
        var buffers: [UnsafeRawBufferPointer] = []
        func nest(_ i: Int) throws -> R {
            if i == count { return try body(buffers) }
            return try self[i].withUnsafeBytes { raw in
                buffers.append(raw)
                return try nest(i + 1)
            }
        }
        return try nest(0)
    }
}
