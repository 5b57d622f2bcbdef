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
        /// The element type of every tensor: "F32" (little-endian), the only one this version
        /// carries; stated so that a peer sending another type is refused instead of misread.
        public var dtype: String?
    }

    public static let dtype = "F32"

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
        return (Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: crcs, dtype: Self.dtype), frames)
    }

    /// The number of values a layout describes, after checking it: positive chunk size and
    /// shapes, the size limit, and one checksum per chunk.
    static func valueCount(of layout: Layout, maxValues: Int) throws -> Int {
        if let dtype = layout.dtype, dtype != Self.dtype {
            throw ProtocolError(.shapeMismatch, "tensors of dtype \(dtype); this protocol version carries \(Self.dtype) only")
        }
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
        guard total > 0 else { throw ProtocolError(.malformed, "a tensor message without tensors") }
        let expectedChunks = (total * 4 + layout.chunkBytes - 1) / layout.chunkBytes
        guard layout.chunkCRC32C.count == expectedChunks else {
            throw ProtocolError(.malformed, "\(layout.chunkCRC32C.count) checksums for \(total) values in \(layout.chunkBytes)-byte chunks (expected \(expectedChunks))")
        }
        return total
    }

    /// Rebuilds a payload chunk by chunk, validating each as it comes (size, CRC-32C, finite
    /// values while the chunk is still in cache), so a stream's receiver does this work while
    /// the rest of the stream is still on its way.
    struct Receiver {
        let layout: Layout
        let total: Int
        private(set) var received = 0
        private var values: [Float]
        private var firstNonFinite: Int?

        init(layout: Layout, maxValues: Int) throws {
            self.layout = layout
            let total = try TensorPayload.valueCount(of: layout, maxValues: maxValues)
            self.total = total
            // Uninitialised on purpose: Float is a trivial type, every element is written by
            // `add` before `finish` hands the array out, and pages are only committed as chunks
            // arrive (a head announcing a huge payload costs nothing until the bytes come).
            values = [Float](unsafeUninitializedCapacity: total) { _, initialized in initialized = total }
        }

        var chunkCount: Int { layout.chunkCRC32C.count }

        /// Takes chunk `received` (chunks come in order).
        mutating func add(_ frame: [UInt8], checksumVerified: Bool = false) throws {
            try frame.withUnsafeBytes { try add($0, checksumVerified: checksumVerified) }
        }

        /// Takes chunk `received` from wherever its bytes are (e.g. libzmq's receive buffer).
        mutating func add(_ frame: UnsafeRawBufferPointer, checksumVerified: Bool = false) throws {
            let i = received
            let offset = i * (layout.chunkBytes / 4)
            let expectedSize = min(layout.chunkBytes, (total - offset) * 4)
            guard frame.count == expectedSize else {
                throw ProtocolError(.malformed, "chunk \(i) has \(frame.count) bytes, expected \(expectedSize)")
            }
            if !checksumVerified {
                let crc = fedlm_crc32c(0, frame.baseAddress, frame.count)
                guard crc == layout.chunkCRC32C[i] else {
                    throw ProtocolError(.badChecksum, "chunk \(i) has CRC-32C \(crc), the header says \(layout.chunkCRC32C[i])")
                }
            }
            let n = frame.count / 4
            values.withUnsafeMutableBufferPointer { out in
                let chunk = UnsafeMutableBufferPointer(rebasing: out[offset..<(offset + n)])
                UnsafeMutableRawBufferPointer(chunk).copyMemory(from: frame)
                if firstNonFinite == nil, let bad = TensorPayload.firstNonFinite(UnsafeBufferPointer(chunk)) { firstNonFinite = offset + bad }
            }
            received += 1
        }

        /// The payload, once every chunk is in and every value is finite.
        func finish() throws -> TensorPayload {
            guard received == chunkCount else {
                throw ProtocolError(.malformed, "\(received) of \(chunkCount) chunks arrived")
            }
            if let bad = firstNonFinite {
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
    }

    /// Rebuilds and validates a payload from its chunk frames: sizes, checksums, finite values, limits.
    static func decode(_ layout: Layout, frames: ArraySlice<[UInt8]>, maxValues: Int) throws -> TensorPayload {
        var receiver = try Receiver(layout: layout, maxValues: maxValues)
        guard frames.count == receiver.chunkCount else {
            throw ProtocolError(.malformed, "\(frames.count) chunk frames for \(receiver.total) values in \(layout.chunkBytes)-byte chunks (expected \(receiver.chunkCount))")
        }
        for frame in frames { try receiver.add(frame) }
        return try receiver.finish()
    }

    /// Index of the first NaN or infinity, if any: a branch-free pass over the exponent bits
    /// (vectorised), then a search only when one was seen.
    static func firstNonFinite(_ values: UnsafeBufferPointer<Float>) -> Int? {
        var highest: UInt32 = 0
        values.withMemoryRebound(to: UInt32.self) { bits in
            for b in bits { highest = max(highest, b & 0x7F80_0000) }
        }
        guard highest == 0x7F80_0000 else { return nil }
        return values.firstIndex { !$0.isFinite }
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
