import CFedLMRuntime
import Foundation

/// Names and shapes of the tensors a payload carries, in order (FP32, little-endian, packed).
public struct TensorSpec: Codable, Equatable, Sendable {
    public let name: String
    public let shape: [Int]
    public init(name: String, shape: [Int]) {
        self.name = name
        self.shape = shape
    }
    public var count: Int { shape.reduce(1, *) }
}

/// Tensors on the wire: one flat FP32 vector split into chunk frames of at most `chunkBytes`
/// (about 1 MiB: libzmq moves such frames several times faster than one 40 MiB frame), each
/// with its CRC-32C in the header.
public struct TensorPayload: Equatable, Sendable {
    public let specs: [TensorSpec]
    public let values: [Float]

    public static let defaultChunkBytes = 1 << 20

    public init(specs: [TensorSpec], values: [Float]) {
        precondition(specs.reduce(0) { $0 + $1.count } == values.count, "payload values do not match the specs")
        self.specs = specs
        self.values = values
    }

    /// Description that goes into the JSON header.
    public struct Layout: Codable, Equatable, Sendable {
        public var tensors: [TensorSpec]
        public var chunkBytes: Int
        public var chunkCRC32C: [UInt32]
    }

    func encode(chunkBytes: Int = defaultChunkBytes) -> (Layout, [[UInt8]]) {
        var frames: [[UInt8]] = []
        var crcs: [UInt32] = []
        values.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = min(chunkBytes, raw.count - offset)
                let chunk = Array(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + n)]))
                crcs.append(chunk.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, n) })
                frames.append(chunk)
                offset += n
            }
        }
        #if _endian(big)
        fatalError("FedLM's wire format is little-endian; big-endian hosts are not supported")
        #endif
        return (Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: crcs), frames)
    }

    /// Rebuilds and validates a payload: sizes, checksums, finite values, limits.
    static func decode(_ layout: Layout, frames: ArraySlice<[UInt8]>, maxValues: Int) throws -> TensorPayload {
        guard layout.chunkBytes > 0, layout.chunkBytes % 4 == 0 else {
            throw ProtocolError(.malformed, "chunk size \(layout.chunkBytes) is not a positive multiple of 4")
        }
        var total = 0
        for spec in layout.tensors {
            guard !spec.shape.isEmpty, spec.shape.allSatisfy({ $0 > 0 }) else {
                throw ProtocolError(.malformed, "tensor \(spec.name) has shape \(spec.shape)")
            }
            let (n, overflow) = spec.shape.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d)
                return (p, acc.1 || o)
            }
            guard !overflow, n <= maxValues - total else {
                throw ProtocolError(.tooLarge, "tensors exceed the limit of \(maxValues) values")
            }
            total += n
        }
        let expectedChunks = (total * 4 + layout.chunkBytes - 1) / layout.chunkBytes
        guard frames.count == expectedChunks, layout.chunkCRC32C.count == expectedChunks else {
            throw ProtocolError(.malformed, "\(frames.count) chunk frames and \(layout.chunkCRC32C.count) checksums for \(total) values in \(layout.chunkBytes)-byte chunks (expected \(expectedChunks))")
        }
        var values = [Float](repeating: 0, count: total)
        try values.withUnsafeMutableBytes { out in
            var offset = 0
            for (i, frame) in frames.enumerated() {
                let expectedSize = min(layout.chunkBytes, total * 4 - offset)
                guard frame.count == expectedSize else {
                    throw ProtocolError(.malformed, "chunk \(i) has \(frame.count) bytes, expected \(expectedSize)")
                }
                let crc = frame.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, frame.count) }
                guard crc == layout.chunkCRC32C[i] else {
                    throw ProtocolError(.badChecksum, "chunk \(i) has CRC-32C \(crc), the header says \(layout.chunkCRC32C[i])")
                }
                frame.withUnsafeBytes { out.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
                offset += frame.count
            }
        }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            var index = bad
            var name = "?"
            for spec in layout.tensors {
                if index < spec.count { name = spec.name; break }
                index -= spec.count
            }
            throw ProtocolError(.nonFinite, "tensor \(name) holds \(values[bad]) at element \(index)")
        }
        return TensorPayload(specs: layout.tensors, values: values)
    }

    /// Refuses a payload whose tensor names or shapes are not exactly `expected`.
    public func check(against expected: [TensorSpec]) throws {
        guard specs.count == expected.count else {
            throw ProtocolError(.shapeMismatch, "\(specs.count) tensors, the model has \(expected.count)")
        }
        for (got, want) in zip(specs, expected) where got != want {
            throw ProtocolError(.shapeMismatch, "tensor \(got.name) \(got.shape), expected \(want.name) \(want.shape)")
        }
    }
}
