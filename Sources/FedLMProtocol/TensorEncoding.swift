import CFedLMRuntime
import Foundation

/// How a payload's values travel, chunk by chunk. Every chunk covers the same values as an F32
/// chunk of the layout's `chunkBytes` would (`chunkBytes / 4` values, the last one fewer) and is
/// encoded on its own, so a receiver decodes, checks and places each chunk as it arrives.
///
/// | name | a chunk of n values | bytes |
/// |---|---|---|
/// | `F32` | IEEE binary32, little-endian | 4n |
/// | `F16` | IEEE binary16, round to nearest even, clamped to ±65504 | 2n |
/// | `BF16` | the upper 16 bits of binary32, round to nearest even | 2n |
/// | `I8` | scale s (binary32), then n signed bytes q; value = q·s, s = max|v|/127 | 4 + n |
/// | `TOPK` | blocks of 4096 values (the last fewer), each: k (UInt16), Rice parameter r (UInt8), magnitudes lo and hi (binary32), then k Rice-coded index gaps and k codes of `bits` bits (a sign bit, then a magnitude step m); value = ±(lo + m·(hi − lo)/(2^(bits−1) − 1)), every other value 0 | Σ 11 + ⌈(gap bits + k·bits)/8⌉ |
///
/// TOPK is the chunked sparse form of SparseLoCo (Sarfi et al. 2025): in every block of 4096
/// values, the k = ⌈density·4096⌉ of largest magnitude, each sent as its sign and one of
/// 2^(bits−1) magnitudes spread over where the kept magnitudes lie (a grid centred on zero would
/// spend levels on values top-k never keeps). Blocks keep every part of
/// every tensor in the update (a top-k over a whole megabyte would pick from the tensors with
/// the largest values only) and make 16-bit indices enough. What it leaves out is kept by the
/// sender and added to its next update (error feedback, `Compression.encode(_:residual:)`).
public enum TensorEncoding: String, Codable, Sendable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", int8 = "I8", topk = "TOPK"

    /// The name used in topologies (`f32`, `f16`, `bf16`, `int8`, `topk`).
    public var configName: String {
        switch self {
        case .f32: "f32"
        case .f16: "f16"
        case .bf16: "bf16"
        case .int8: "int8"
        case .topk: "topk"
        }
    }

    public init?(configName: String) {
        guard let e = Self.allCases.first(where: { $0.configName == configName }) else { return nil }
        self = e
    }

    public var isLossless: Bool { self == .f32 }
}

/// An encoding with the sender's settings.
public struct Compression: Equatable, Sendable {
    public var encoding: TensorEncoding
    /// TOPK: the values of a block (`topkBlock`).
    public static let topkBlock = 4096
    /// TOPK: the fraction of each block's values sent (at most 0.5).
    public var density: Double
    /// TOPK: bits per value sent (2 to 8).
    public var bits: Int

    public init(_ encoding: TensorEncoding = .f32, density: Double = 0.01, bits: Int = 2) {
        self.encoding = encoding
        self.density = density
        self.bits = bits
    }

    public static let none = Compression()

    /// Why these settings cannot be used, if they cannot.
    public var problem: String? {
        guard encoding == .topk else { return nil }
        if !(density > 0 && density <= 0.5) { return "density \(density) is not in (0, 0.5]" }
        if !(2...8).contains(bits) { return "bits \(bits) is not between 2 and 8" }
        return nil
    }

    /// Values kept of a TOPK block of `n` values.
    public func kept(of n: Int) -> Int { max(1, min(n, Int((density * Double(n)).rounded(.up)))) }

    /// Encodes one chunk.
    public func encode(_ v: UnsafeBufferPointer<Float>) -> [UInt8] {
        var out: [UInt8] = []
        switch encoding {
        case .f32:
            out = Array(UnsafeRawBufferPointer(v))
        case .f16:
            out.reserveCapacity(2 * v.count)
            for x in v { append16(Float16(min(max(x, -65504), 65504)).bitPattern, to: &out) }
        case .bf16:
            out.reserveCapacity(2 * v.count)
            for x in v { append16(Self.bfloat16(x), to: &out) }
        case .int8:
            let scale = maxMagnitude(v) / 127
            out.reserveCapacity(4 + v.count)
            append32(scale.bitPattern, to: &out)
            for x in v { out.append(UInt8(bitPattern: scale == 0 ? 0 : Int8(clamping: Int((x / scale).rounded())))) }
        case .topk:
            out = encodeTopK(v)
        }
        return out
    }

    private func encodeTopK(_ v: UnsafeBufferPointer<Float>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(v.count / 8)
        for start in stride(from: 0, to: v.count, by: Self.topkBlock) {
            encodeTopKBlock(UnsafeBufferPointer(rebasing: v[start..<min(start + Self.topkBlock, v.count)]), into: &out)
        }
        return out
    }

    private func encodeTopKBlock(_ v: UnsafeBufferPointer<Float>, into out: inout [UInt8]) {
        let indices = Self.largest(kept(of: v.count), of: v)
        let (low, high) = Self.magnitudeRange(indices.map { abs(v[$0]) }, levels: 1 << (bits - 1))
        let rice = Self.riceParameter(kept: indices.count, of: v.count)
        append16(UInt16(indices.count), to: &out)
        out.append(UInt8(rice))
        append32(low.bitPattern, to: &out)
        append32(high.bitPattern, to: &out)
        var bitstream = BitWriter()
        var previous = -1
        for i in indices {
            let gap = i - previous - 1
            bitstream.append(ones: gap >> rice)
            bitstream.append(0, bits: 1)
            bitstream.append(UInt32(gap & ((1 << rice) - 1)), bits: rice)
            previous = i
        }
        let steps = Float((1 << (bits - 1)) - 1)
        for i in indices {
            let magnitude = high > low ? min(max(((abs(v[i]) - low) / (high - low) * steps).rounded(), 0), steps) : 0
            bitstream.append((UInt32(magnitude) << 1) | (v[i] < 0 ? 1 : 0), bits: bits)
        }
        out.append(contentsOf: bitstream.bytes)
    }

    /// The lowest and highest of `levels` evenly spaced magnitudes for the kept values: the
    /// means of their lowest and highest `levels`-quantile groups (for two levels, the means of
    /// the lower and upper half), so the grid sits where the kept values are, not at zero.
    static func magnitudeRange(_ magnitudes: [Float], levels: Int) -> (Float, Float) {
        guard !magnitudes.isEmpty else { return (0, 0) }
        let sorted = magnitudes.sorted()
        let group = max(1, sorted.count / levels)
        let low = sorted.prefix(group).reduce(0, +) / Float(group)
        let high = sorted.suffix(group).reduce(0, +) / Float(group)
        return (low, max(low, high))
    }

    /// The Rice parameter for gaps between k positions among n: about log2 of the mean gap
    /// (Golomb 1966; Rice 1979): a gap g costs ⌊g / 2^r⌋ + 1 + r bits.
    static func riceParameter(kept k: Int, of n: Int) -> Int {
        guard k > 0 else { return 0 }
        let meanGap = Double(n - k) / Double(k)
        return meanGap < 2 ? 0 : min(15, Int(log2(meanGap * 0.69)))
    }

    /// Indices of the `k` values of largest magnitude, ascending (ties: the earlier index).
    static func largest(_ k: Int, of v: UnsafeBufferPointer<Float>) -> [Int] {
        guard k < v.count else { return Array(0..<v.count) }
        var magnitudes = v.map { abs($0) }
        let threshold = Self.select(&magnitudes, rank: v.count - k)
        var above = 0
        for x in v where abs(x) > threshold { above += 1 }
        var ties = k - above
        var out: [Int] = []
        out.reserveCapacity(k)
        for i in 0..<v.count {
            let m = abs(v[i])
            if m > threshold {
                out.append(i)
            } else if m == threshold, ties > 0 {
                out.append(i)
                ties -= 1
            }
        }
        return out
    }

    /// The value that would be at `rank` if `a` were sorted (quickselect; reorders `a`).
    static func select(_ a: inout [Float], rank: Int) -> Float {
        var lo = 0, hi = a.count - 1
        while lo < hi {
            let pivot = a[(lo + hi) / 2]
            var i = lo, j = hi
            while i <= j {
                while a[i] < pivot { i += 1 }
                while a[j] > pivot { j -= 1 }
                if i <= j {
                    a.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if rank <= j { hi = j } else if rank >= i { lo = i } else { return a[rank] }
        }
        return a[rank]
    }

    /// binary32 -> bfloat16 bits, round to nearest even.
    static func bfloat16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }
}

/// Decodes one chunk of `out.count` values into `out`, refusing anything that is not exactly
/// what the encoding describes; returns nothing, throws a `ProtocolError` naming the problem.
public func decodeChunk(_ bytes: UnsafeRawBufferPointer, encoding: TensorEncoding, bits: Int?, chunk: Int,
                        into out: UnsafeMutableBufferPointer<Float>) throws {
    let n = out.count
    func size(_ expected: Int) throws {
        guard bytes.count == expected else {
            throw ProtocolError(.malformed, "\(encoding.rawValue) chunk \(chunk) has \(bytes.count) bytes, expected \(expected)")
        }
    }
    func u16(_ i: Int) -> UInt16 { u16(at: 2 * i) }
    func u16(at offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
    func u32(_ offset: Int) -> UInt32 { bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian }
    switch encoding {
    case .f32:
        try size(4 * n)
        for i in 0..<n { out[i] = Float(bitPattern: u32(4 * i)) }
    case .f16:
        try size(2 * n)
        for i in 0..<n { out[i] = Float(Float16(bitPattern: u16(i))) }
    case .bf16:
        try size(2 * n)
        for i in 0..<n { out[i] = Float(bitPattern: UInt32(u16(i)) << 16) }
    case .int8:
        try size(4 + n)
        let scale = Float(bitPattern: u32(0))
        try checkScale(scale, chunk)
        for i in 0..<n { out[i] = Float(Int8(bitPattern: bytes[4 + i])) * scale }
    case .topk:
        guard let bits, (2...8).contains(bits) else {
            throw ProtocolError(.malformed, "TOPK needs bits between 2 and 8, the layout says \(bits.map(String.init) ?? "none")")
        }
        out.update(repeating: 0)
        var offset = 0
        for start in stride(from: 0, to: n, by: Compression.topkBlock) {
            let block = min(Compression.topkBlock, n - start)
            let what = "TOPK chunk \(chunk), block \(start / Compression.topkBlock)"
            guard bytes.count >= offset + 11 else { throw ProtocolError(.malformed, "\(what): \(bytes.count - offset) bytes left, fewer than its 11-byte head") }
            let k = Int(u16(at: offset))
            guard k <= block else { throw ProtocolError(.malformed, "\(what) keeps \(k) values of \(block)") }
            let rice = Int(bytes[offset + 2])
            guard rice <= 15 else { throw ProtocolError(.malformed, "\(what) has Rice parameter \(rice) (at most 15)") }
            let low = Float(bitPattern: u32(offset + 3)), high = Float(bitPattern: u32(offset + 7))
            try checkScale(low, chunk)
            try checkScale(high, chunk)
            guard high >= low else { throw ProtocolError(.malformed, "\(what): highest magnitude \(high) below the lowest \(low)") }
            let spacing = bits > 1 ? (high - low) / Float((1 << (bits - 1)) - 1) : 0
            var reader = BitReader(bytes, from: offset + 11)
            var indices: [Int] = []
            indices.reserveCapacity(k)
            var previous = -1
            for _ in 0..<k {
                guard let q = reader.unary(limit: block), let r = reader.read(rice) else {
                    throw ProtocolError(.malformed, "\(what): the indices run past the chunk")
                }
                let index = previous + 1 + (q << rice) + Int(r)
                guard index < block else { throw ProtocolError(.malformed, "\(what): index \(index) after \(previous) (below \(block))") }
                indices.append(index)
                previous = index
            }
            for index in indices {
                guard let code = reader.read(bits) else { throw ProtocolError(.malformed, "\(what): the values run past the chunk") }
                let magnitude = low + Float(code >> 1) * spacing
                out[start + index] = code & 1 == 1 ? -magnitude : magnitude
            }
            let end = reader.byteEnd
            offset = end
        }
        guard offset == bytes.count else {
            throw ProtocolError(.malformed, "TOPK chunk \(chunk) has \(bytes.count) bytes, its blocks \(offset)")
        }
    }
}

private func checkScale(_ scale: Float, _ chunk: Int) throws {
    guard scale.isFinite, scale >= 0 else { throw ProtocolError(.nonFinite, "chunk \(chunk) has scale \(scale)") }
}

private func append16(_ v: UInt16, to out: inout [UInt8]) {
    out.append(UInt8(truncatingIfNeeded: v))
    out.append(UInt8(truncatingIfNeeded: v >> 8))
}

private func append32(_ v: UInt32, to out: inout [UInt8]) {
    withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
}

private func maxMagnitude(_ v: UnsafeBufferPointer<Float>) -> Float { v.reduce(0) { max($0, abs($1)) } }

/// Bits written from the lowest bit of each byte up.
struct BitWriter {
    private(set) var bytes: [UInt8] = []
    private var filled = 0

    mutating func append(_ value: UInt32, bits: Int) {
        for b in 0..<bits { appendBit(UInt8((value >> UInt32(b)) & 1)) }
    }

    mutating func append(ones count: Int) {
        for _ in 0..<count { appendBit(1) }
    }

    private mutating func appendBit(_ bit: UInt8) {
        if filled == 0 { bytes.append(0) }
        bytes[bytes.count - 1] |= bit << UInt8(filled)
        filled = (filled + 1) & 7
    }
}

/// Reads what `BitWriter` wrote; nil past the end.
struct BitReader {
    private let bytes: UnsafeRawBufferPointer
    private var bit: Int

    init(_ bytes: UnsafeRawBufferPointer, from offset: Int) {
        self.bytes = bytes
        bit = offset * 8
    }

    /// The byte after the last one read from.
    var byteEnd: Int { (bit + 7) / 8 }

    mutating func read(_ count: Int) -> UInt32? {
        guard bit + count <= bytes.count * 8 else { return nil }
        var value: UInt32 = 0
        for b in 0..<count {
            value |= UInt32((bytes[(bit + b) >> 3] >> UInt8((bit + b) & 7)) & 1) << UInt32(b)
        }
        bit += count
        return value
    }

    /// A run of ones ended by a zero: its length (nil past the end or above `limit`).
    mutating func unary(limit: Int) -> Int? {
        var n = 0
        while true {
            guard let b = read(1) else { return nil }
            if b == 0 { return n }
            n += 1
            if n > limit { return nil }
        }
    }
}

/// A payload's chunks encoded for the wire, with their CRC-32Cs (of the encoded bytes).
public struct EncodedTensors: Sendable {
    public let compression: Compression
    /// The F32 chunk size the chunks partition the values by (`chunkBytes / 4` values each).
    public let chunkBytes: Int
    public let chunks: [[UInt8]]
    public let crcs: [UInt32]

    public var byteCount: Int { chunks.reduce(0) { $0 + $1.count } }
}

extension Compression {
    /// Encodes `values` chunk by chunk. With `residual` (error feedback, as in SparseLoCo and
    /// 1-bit Adam: e ← v − D(Q(v)) with v = Δ + e), the residual is added to the values before
    /// encoding and replaced by what the encoding left out, so nothing is lost, only delayed.
    public func encode(_ values: UnsafeBufferPointer<Float>, chunkBytes: Int = TensorPayload.defaultChunkBytes,
                       residual: UnsafeMutableBufferPointer<Float>? = nil) -> EncodedTensors {
        precondition(residual == nil || residual!.count == values.count, "residual of \(residual!.count) for \(values.count) values")
        let perChunk = chunkBytes / 4
        var chunks: [[UInt8]] = [], crcs: [UInt32] = []
        var v = [Float](repeating: 0, count: min(perChunk, values.count))
        var decoded = v
        for start in stride(from: 0, to: values.count, by: perChunk) {
            let n = min(perChunk, values.count - start)
            let bytes: [UInt8] = v.withUnsafeMutableBufferPointer { vb in
                let chunk = UnsafeMutableBufferPointer(rebasing: vb[0..<n])
                for i in 0..<n { chunk[i] = values[start + i] + (residual?[start + i] ?? 0) }
                return encode(UnsafeBufferPointer(chunk))
            }
            if let residual, encoding.isLossless {
                for i in 0..<n { residual[start + i] = 0 }
            } else if let residual {
                decoded.withUnsafeMutableBufferPointer { db in
                    let out = UnsafeMutableBufferPointer(rebasing: db[0..<n])
                    bytes.withUnsafeBytes { try! decodeChunk($0, encoding: encoding, bits: bits, chunk: 0, into: out) }
                    for i in 0..<n { residual[start + i] = v[i] - out[i] }
                }
            }
            crcs.append(bytes.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, $0.count) })
            chunks.append(bytes)
        }
        return EncodedTensors(compression: self, chunkBytes: chunkBytes, chunks: chunks, crcs: crcs)
    }

    /// The largest chunk this encoding can make of `chunkBytes / 4` values.
    public static func maxChunkBytes(_ encoding: TensorEncoding, chunkBytes: Int, bits: Int?) -> Int {
        let n = chunkBytes / 4
        switch encoding {
        case .f32: return chunkBytes
        case .f16, .bf16: return 2 * n
        case .int8: return 4 + n
        case .topk:
            // A block's unary parts add up to at most its length, the rest to 16 + bits per value.
            let blocks = (n + topkBlock - 1) / topkBlock
            return 12 * blocks + (n * (17 + (bits ?? 8)) + 7) / 8
        }
    }
}
