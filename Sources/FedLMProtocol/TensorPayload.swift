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

/// Memory of the receiver's own that a stream's tensor values are assembled in, instead of a
/// new array: the aggregator gives each incoming update one that also writes every chunk to the
/// update's file as it arrives (`StreamAssembler.destinations`).
public protocol PayloadDestination: AnyObject, Sendable {
    /// Room for exactly the payload's values.
    var values: UnsafeMutableBufferPointer<Float> { get }
    /// `values[range]` has just been checked and copied in (chunks come in order).
    func received(_ range: Range<Int>)
}

/// Tensors on the wire: one flat FP32 vector split into chunk frames of at most `chunkBytes`
/// (about 1 MiB: libzmq moves such frames several times faster than one 40 MiB frame), each
/// with its CRC-32C in the header.
public struct TensorPayload: Equatable, Sendable {
    public let specs: [TensorSpec]
    private let storage: Storage
    /// The sum of the squared values, when a receiver added it up on the way in (the norm of an
    /// update without another pass over it).
    public private(set) var sumOfSquares: Double?
    /// Chunk checksums computed while the values were copied in (`init(specs:copying:)`), for
    /// `layout` when it cuts the same chunks.
    private var knownChecksums: (chunkBytes: Int, crcs: [UInt32])?

    private enum Storage: Sendable {
        case array([Float])
        case destination(PayloadDestination)
        /// Values to be sent in an encoding other than F32 (a sender's payload).
        case encoded(EncodedTensors)
    }

    public static let defaultChunkBytes = 1 << 20

    public init(specs: [TensorSpec], values: [Float]) {
        precondition(specs.reduce(0) { $0 + $1.count } == values.count, "payload values do not match the specs")
        self.specs = specs
        self.storage = .array(values)
    }

    /// A payload of a copy of `source`, taken in one pass that also computes each chunk's
    /// CRC-32C (of `chunkBytes`), so encoding it later costs no second pass: the aggregator's
    /// release of each new version.
    public init(specs: [TensorSpec], copying source: UnsafeBufferPointer<Float>, chunkBytes: Int = defaultChunkBytes) {
        precondition(specs.reduce(0) { $0 + $1.count } == source.count, "payload values do not match the specs")
        precondition(chunkBytes > 0 && chunkBytes % 4 == 0, "chunk size \(chunkBytes)")
        let perChunk = chunkBytes / 4
        var crcs: [UInt32] = []
        crcs.reserveCapacity((source.count + perChunk - 1) / perChunk)
        let values = [Float](unsafeUninitializedCapacity: source.count) { out, initialized in
            var stats = fedlm_chunk_stats()
            for start in stride(from: 0, to: source.count, by: perChunk) {
                fedlm_take_floats(source.baseAddress! + start, out.baseAddress! + start, min(perChunk, source.count - start), &stats)
                crcs.append(stats.crc32c)
            }
            initialized = source.count
        }
        self.init(specs: specs, values: values)
        knownChecksums = (chunkBytes, crcs)
    }

    /// A payload sent in `encoded` form (`Compression.encode`); its values are what a receiver
    /// decodes.
    public init(specs: [TensorSpec], encoded: EncodedTensors) {
        self.specs = specs
        self.storage = .encoded(encoded)
    }

    /// The encoded chunks, when this payload is sent encoded.
    public var encoded: EncodedTensors? {
        if case .encoded(let e) = storage { e } else { nil }
    }

    /// A payload whose values are in `destination` (assembled there by a `StreamAssembler`).
    public init(specs: [TensorSpec], destination: PayloadDestination) {
        precondition(specs.reduce(0) { $0 + $1.count } == destination.values.count, "payload values do not match the specs")
        self.specs = specs
        self.storage = .destination(destination)
    }

    /// The values as an array (a copy when they are in a destination: prefer `withValues`).
    public var values: [Float] {
        switch storage {
        case .array(let values): values
        case .destination(let d): Array(d.values)
        case .encoded(let e): Self.decodedValues(e, count: specs.reduce(0) { $0 + $1.count })
        }
    }

    /// The values a receiver of `e` gets.
    public static func decodedValues(_ e: EncodedTensors, count: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        let perChunk = e.chunkBytes / 4
        out.withUnsafeMutableBufferPointer { o in
            for (i, chunk) in e.chunks.enumerated() {
                let start = i * perChunk
                let slice = UnsafeMutableBufferPointer(rebasing: o[start..<min(start + perChunk, count)])
                chunk.withUnsafeBytes { try! decodeChunk($0, encoding: e.compression.encoding, bits: e.compression.bits, chunk: i, into: slice) }
            }
        }
        return out
    }

    /// The destination the values were assembled in, if they were.
    public var destination: PayloadDestination? {
        if case .destination(let d) = storage { d } else { nil }
    }

    /// Calls `body` with the values where they lie.
    public func withValues<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        switch storage {
        case .array(let values): try values.withUnsafeBufferPointer(body)
        case .destination(let d): try body(UnsafeBufferPointer(d.values))
        case .encoded: try values.withUnsafeBufferPointer(body)
        }
    }

    public static func == (a: TensorPayload, b: TensorPayload) -> Bool {
        a.specs == b.specs && a.withValues { x in b.withValues { y in x.elementsEqual(y) } }
    }

    /// Description that goes into the JSON header.
    public struct Layout: Codable, Equatable, Sendable {
        public var tensors: [TensorSpec]
        public var chunkBytes: Int
        public var chunkCRC32C: [UInt32]
        /// How the values travel (`TensorEncoding`: "F32", "F16", "BF16", "I8", "TOPK"; absent:
        /// F32); a peer naming another is refused instead of misread.
        public var dtype: String?
        /// TOPK: bits per value sent.
        public var bits: Int?

        /// The encoding the layout names.
        public func encoding() throws -> TensorEncoding {
            guard let dtype else { return .f32 }
            guard let e = TensorEncoding(rawValue: dtype) else {
                throw ProtocolError(.shapeMismatch, "tensors encoded as \(dtype); this protocol version knows \(TensorEncoding.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return e
        }

        /// The largest chunk frame this layout allows.
        public var maxChunkBytes: Int {
            Compression.maxChunkBytes((try? encoding()) ?? .f32, chunkBytes: chunkBytes, bits: bits)
        }
    }

    public static let dtype = "F32"

    /// The layout of this payload cut into chunks of `chunkBytes`: names, shapes and each
    /// chunk's CRC-32C, computed where the values lie, on every core (the header must be
    /// complete before the first chunk can go, so this is on the sender's critical path).
    func layout(chunkBytes: Int = defaultChunkBytes) -> Layout {
        #if _endian(big)
        fatalError("FedLM's wire format is little-endian; big-endian hosts are not supported")
        #endif
        if case .encoded(let e) = storage {
            precondition(e.chunkBytes == chunkBytes, "encoded in \(e.chunkBytes)-byte chunks, sent in \(chunkBytes)")
            return Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: e.crcs, dtype: e.compression.encoding.rawValue,
                          bits: e.compression.encoding == .topk ? e.compression.bits : nil)
        }
        if let known = knownChecksums, known.chunkBytes == chunkBytes {
            return Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: known.crcs, dtype: Self.dtype)
        }
        let crcs = withValues { floats in
            let raw = UnsafeRawBufferPointer(floats)
            let count = (raw.count + chunkBytes - 1) / chunkBytes
            return [UInt32](unsafeUninitializedCapacity: count) { out, initialized in
                // Each iteration writes only its own element.
                nonisolated(unsafe) let out = out.baseAddress!, bytes = raw.baseAddress!
                let total = raw.count
                let crc: @Sendable (Int) -> Void = { i in
                    let offset = i * chunkBytes
                    (out + i).initialize(to: fedlm_crc32c(0, bytes + offset, min(chunkBytes, total - offset)))
                }
                if count >= 8 {
                    DispatchQueue.concurrentPerform(iterations: count, execute: crc)
                } else {
                    for i in 0..<count { crc(i) }
                }
                initialized = count
            }
        }
        return Layout(tensors: specs, chunkBytes: chunkBytes, chunkCRC32C: crcs, dtype: Self.dtype)
    }

    /// The chunk frames of `values` as byte arrays (the copying form, for multipart messages).
    static func chunks(of values: [Float], chunkBytes: Int) -> [[UInt8]] {
        values.withUnsafeBytes { raw in
            stride(from: 0, to: raw.count, by: chunkBytes).map { offset in
                Array(UnsafeRawBufferPointer(rebasing: raw[offset..<min(offset + chunkBytes, raw.count)]))
            }
        }
    }

    /// The number of values a layout describes, after checking it: positive chunk size and
    /// shapes, the size limit, and one checksum per chunk.
    static func valueCount(of layout: Layout, maxValues: Int) throws -> Int {
        if try layout.encoding() == .topk, !(2...8).contains(layout.bits ?? 0) {
            throw ProtocolError(.malformed, "TOPK tensors need bits between 2 and 8, the layout says \(layout.bits.map(String.init) ?? "none")")
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
        let encoding: TensorEncoding
        private(set) var received = 0
        private var values: [Float]
        private let destination: PayloadDestination?
        private var firstNonFinite: Int?
        private var sumOfSquares = 0.0

        /// `destination`, if it gives one for the payload's value count, is where the values go.
        init(layout: Layout, maxValues: Int, destination: ((Int) -> PayloadDestination?)? = nil) throws {
            self.layout = layout
            let total = try TensorPayload.valueCount(of: layout, maxValues: maxValues)
            self.total = total
            encoding = try layout.encoding()
            if let d = destination?(total), d.values.count == total {
                self.destination = d
                values = []
            } else {
                self.destination = nil
                // Uninitialised on purpose: Float is a trivial type, every element is written by
                // `add` before `finish` hands the array out, and pages are only committed as
                // chunks arrive (a head announcing a huge payload costs nothing until the bytes come).
                values = [Float](unsafeUninitializedCapacity: total) { _, initialized in initialized = total }
            }
        }

        var chunkCount: Int { layout.chunkCRC32C.count }

        /// Takes chunk `received` (chunks come in order).
        mutating func add(_ frame: [UInt8]) throws {
            try frame.withUnsafeBytes { try add($0) }
        }

        /// Takes chunk `received` from wherever its bytes are (e.g. libzmq's receive buffer):
        /// copies it into place and, in the same pass (`fedlm_take_floats`), checks its CRC-32C
        /// and finite values and adds up its squares.
        mutating func add(_ frame: UnsafeRawBufferPointer) throws {
            if encoding != .f32 { return try addEncoded(frame) }
            let i = received
            let offset = i * (layout.chunkBytes / 4)
            let expectedSize = min(layout.chunkBytes, (total - offset) * 4)
            guard frame.count == expectedSize else {
                throw ProtocolError(.malformed, "chunk \(i) has \(frame.count) bytes, expected \(expectedSize)")
            }
            let n = frame.count / 4
            var stats = fedlm_chunk_stats()
            /// Copies and checks the chunk into `out`; returns its first non-finite value's index.
            func place(_ out: UnsafeMutableBufferPointer<Float>) -> Int? {
                let chunk = UnsafeMutableBufferPointer(rebasing: out[offset..<(offset + n)])
                fedlm_take_floats(frame.baseAddress, chunk.baseAddress, n, &stats)
                return stats.nonFinite != 0 ? TensorPayload.firstNonFinite(UnsafeBufferPointer(chunk)) : nil
            }
            // A chunk that fails its checksum has been copied, but is never handed on: the
            // transfer is dropped (and a destination not told it arrived).
            let bad = if let destination { place(destination.values) } else { values.withUnsafeMutableBufferPointer { place($0) } }
            guard stats.crc32c == layout.chunkCRC32C[i] else {
                throw ProtocolError(.badChecksum, "chunk \(i) has CRC-32C \(stats.crc32c), the header says \(layout.chunkCRC32C[i])")
            }
            if firstNonFinite == nil, let bad { firstNonFinite = offset + bad }
            sumOfSquares += stats.sumOfSquares
            destination?.received(offset..<(offset + n))
            received += 1
        }

        /// Takes an encoded chunk: its CRC-32C over the bytes as sent, then decoded into place,
        /// the decoded values checked for finiteness and their squares added up.
        private mutating func addEncoded(_ frame: UnsafeRawBufferPointer) throws {
            let i = received
            let offset = i * (layout.chunkBytes / 4)
            let n = min(layout.chunkBytes / 4, total - offset)
            let crc = fedlm_crc32c(0, frame.baseAddress, frame.count)
            guard crc == layout.chunkCRC32C[i] else {
                throw ProtocolError(.badChecksum, "chunk \(i) has CRC-32C \(crc), the header says \(layout.chunkCRC32C[i])")
            }
            func place(_ out: UnsafeMutableBufferPointer<Float>) throws -> (Int?, Double) {
                let chunk = UnsafeMutableBufferPointer(rebasing: out[offset..<(offset + n)])
                try decodeChunk(frame, encoding: encoding, bits: layout.bits, chunk: i, into: chunk)
                var squares = 0.0
                for x in chunk { squares += Double(x) * Double(x) }
                return (TensorPayload.firstNonFinite(UnsafeBufferPointer(chunk)), squares)
            }
            let (bad, squares) = if let destination { try place(destination.values) } else {
                try values.withUnsafeMutableBufferPointer { try place($0) }
            }
            if firstNonFinite == nil, let bad { firstNonFinite = offset + bad }
            sumOfSquares += squares
            destination?.received(offset..<(offset + n))
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
                let value = destination.map { $0.values[bad] } ?? values[bad]
                throw ProtocolError(.nonFinite, "tensor \(name) holds \(value) at element \(index)")
            }
            var payload = if let destination { TensorPayload(specs: layout.tensors, destination: destination) } else {
                TensorPayload(specs: layout.tensors, values: values)
            }
            payload.sumOfSquares = sumOfSquares
            return payload
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

    /// The positions in `expected` of the tensors a partial UPDATE carries (a subset of the
    /// model's tensors, each once, in the model's order), or nil when it carries all of them.
    /// Refuses anything else with `shapeMismatch`, naming the tensor.
    public func carried(of expected: [TensorSpec]) throws -> [Int]? {
        if specs.count == expected.count {
            try check(against: expected)
            return nil
        }
        var indices: [Int] = []
        var next = 0
        for got in specs {
            guard let i = expected[next...].firstIndex(where: { $0.name == got.name }) else {
                let known = expected.contains { $0.name == got.name }
                throw ProtocolError(.shapeMismatch, known ? "tensor \(got.name) is listed twice or out of the model's order"
                                                          : "the model has no tensor named \(got.name)")
            }
            guard expected[i].shape == got.shape else {
                throw ProtocolError(.shapeMismatch, "tensor \(got.name) \(got.shape), expected \(expected[i].shape)")
            }
            indices.append(i)
            next = i + 1
        }
        return indices
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
