import FedLMProtocol
import XCTest

/// Compressed tensors on exact numbers: each encoding's bytes and what a receiver decodes from
/// them, error feedback, refusals of malformed chunks, and a compressed UPDATE through a stream.
final class TensorEncodingTests: XCTestCase {
    func encode(_ c: Compression, _ v: [Float]) -> [UInt8] { v.withUnsafeBufferPointer { c.encode($0) } }

    func decode(_ bytes: [UInt8], _ encoding: TensorEncoding, bits: Int? = nil, count: Int) throws -> [Float] {
        var out = [Float](repeating: .nan, count: count)
        try bytes.withUnsafeBytes { b in
            try out.withUnsafeMutableBufferPointer { try decodeChunk(b, encoding: encoding, bits: bits, chunk: 0, into: $0) }
        }
        return out
    }

    func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    func testHalfPrecisionRoundsToNearestEvenAndClampsF16() throws {
        // 1 + 2^-8 lies halfway between bfloat16's 1 and 1 + 2^-7: to the even one, 1.
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, 1 + 2^-6.
        let v: [Float] = [1, 1 + 0x1p-8, 1 + 3 * 0x1p-8, -2]
        XCTAssertEqual(encode(Compression(.bf16), v), [0x80, 0x3F, 0x80, 0x3F, 0x82, 0x3F, 0x00, 0xC0])
        XCTAssertEqual(try decode(encode(Compression(.bf16), v), .bf16, count: 4), [1, 1, 1 + 0x1p-6, -2])
        let f16 = encode(Compression(.f16), [1, 70000, -0.5])
        XCTAssertEqual(f16, [0x00, 0x3C, 0xFF, 0x7B, 0x00, 0xB8], "70000 is clamped to the largest finite binary16, 65504")
        XCTAssertEqual(try decode(f16, .f16, count: 3), [1, 65504, -0.5])
    }

    func testInt8SendsAScaleAndOneByteAValue() throws {
        let v: [Float] = [0.5, -1.27, 0.004, 1.27]
        let bytes = encode(Compression(.int8), v)
        let scale = Float(1.27) / 127
        XCTAssertEqual(bytes, le32(scale.bitPattern) + [50, UInt8(bitPattern: -127), 0, 127])
        XCTAssertEqual(try decode(bytes, .int8, count: 4), [50 * scale, -127 * scale, 0, 127 * scale])
        XCTAssertEqual(encode(Compression(.int8), [0, 0]), le32(0) + [0, 0], "all zero: scale 0")
    }

    func testTopKKeepsTheLargestOfEachBlockOnAMidRiseGrid() throws {
        let c = Compression(.topk, density: 0.5, bits: 2)
        let bytes = encode(c, [0.1, -3, 0.2, 1.5])
        // One block, k = 2: indices 1 and 3, magnitudes 3 and 1.5; two magnitude levels, the means
        // of the lower and upper half: lo 1.5, hi 3. Mean gap 1: Rice parameter 0, so each gap of 1
        // is "10"; then the codes, sign bit first: -3 is sign 1, level 1 ("11"); 1.5 is sign 0,
        // level 0 ("00"): bits 1,0,1,0,1,1,0,0 = 0x35.
        XCTAssertEqual(bytes, le16(2) + [0] + le32(Float(1.5).bitPattern) + le32(Float(3).bitPattern) + [0x35])
        XCTAssertEqual(try decode(bytes, .topk, bits: 2, count: 4), [0, -3, 0, 1.5])
        XCTAssertEqual(c.kept(of: 1000), 500)
        XCTAssertEqual(Compression(.topk, density: 0.01).kept(of: 4096), 41)
        // Blocks of 4096: each keeps its own largest, at its own scale (a block of small values
        // is not starved by a block of large ones).
        var v = [Float](repeating: 0.001, count: 4096 + 10)
        v[7] = 100
        v[4096 + 3] = -0.002
        let two = try decode(encode(Compression(.topk, density: 0.0001, bits: 8), v), .topk, bits: 8, count: v.count)
        XCTAssertEqual(two[7], 100)
        XCTAssertEqual(two[4096 + 3], -0.002, accuracy: 1e-5, "the second block's largest, at the second block's scale")
        XCTAssertEqual(two.filter { $0 != 0 }.count, 2)
        // Ties at the threshold: the earlier index.
        XCTAssertEqual(try decode(encode(Compression(.topk, density: 0.5, bits: 8), [1, -1, 1, -1]), .topk, bits: 8, count: 4).map { $0 != 0 },
                       [true, true, false, false])
    }

    func testErrorFeedbackDelaysWhatTopKLeavesOutButLosesNothing() {
        let n = 1000
        var rng = SystemRandomNumberGenerator()
        let delta = (0..<n).map { _ in Float.random(in: -1...1, using: &rng) }
        var residual = [Float](repeating: 0, count: n)
        var sent = [Float](repeating: 0, count: n)
        let c = Compression(.topk, density: 0.05, bits: 4)
        for _ in 0..<10 {
            let e = delta.withUnsafeBufferPointer { d in residual.withUnsafeMutableBufferPointer { c.encode(d, chunkBytes: 4 * 256, residual: $0) } }
            XCTAssertEqual(e.chunks.count, 4, "1000 values in chunks of 256")
            let decoded = TensorPayload(specs: [TensorSpec(name: "w", shape: [n])], encoded: e).values
            for i in 0..<n { sent[i] += decoded[i] }
        }
        // Ten rounds of the same delta: what was sent plus what is still held is ten deltas.
        for i in 0..<n { XCTAssertEqual(sent[i] + residual[i], 10 * delta[i], accuracy: 1e-4) }
        XCTAssertGreaterThan(sent.filter { $0 != 0 }.count, 300,
                             "5% a round, yet ten rounds reach far more entries: the held-back ones grow until they are sent")
    }

    func testMalformedChunksAreRefusedByName() {
        func refusal(_ bytes: [UInt8], _ e: TensorEncoding, bits: Int? = 2, count: Int = 4) -> String {
            do { _ = try decode(bytes, e, bits: bits, count: count); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertTrue(refusal([1, 2, 3], .int8).contains("I8 chunk 0 has 3 bytes, expected 8"))
        XCTAssertTrue(refusal(le32(Float.nan.bitPattern) + [1, 2, 3, 4], .int8).contains("scale nan"))
        let one = le32(0x3F80_0000), two = le32(0x4000_0000)
        XCTAssertTrue(refusal(le16(9) + [0] + one + one, .topk).contains("block 0 keeps 9 values of 4"))
        XCTAssertTrue(refusal(le16(1) + [0] + one + one + [0x0F], .topk).contains("index 4 after -1"), "a gap of 4 in a block of 4")
        XCTAssertTrue(refusal(le16(3) + [0] + one + one + [0x00], .topk).contains("the values run past the chunk"))
        XCTAssertTrue(refusal(le16(1) + [16] + one + one, .topk).contains("Rice parameter 16"))
        XCTAssertTrue(refusal(le16(1) + [0] + one + one + [0x00, 7], .topk).contains("has 13 bytes, its blocks 12"))
        XCTAssertTrue(refusal(le16(1) + [0] + le32(Float.infinity.bitPattern) + one + [0], .topk).contains("scale inf"))
        XCTAssertTrue(refusal(le16(1) + [0] + two + one + [0], .topk).contains("highest magnitude 1.0 below the lowest 2.0"))
        XCTAssertTrue(refusal(le16(1) + [0], .topk).contains("fewer than its 11-byte head"))
        XCTAssertTrue(refusal([], .topk, bits: 9).contains("bits between 2 and 8"))
        XCTAssertTrue(refusal([0, 0, 0], .bf16).contains("BF16 chunk 0 has 3 bytes, expected 8"))
    }

    func testACompressedUpdateStreamsAndIsCheckedOnItsEncodedBytes() throws {
        var codec = WireCodec()
        codec.chunkBytes = 64  // 16 values a chunk
        let specs = [TensorSpec(name: "w", shape: [40])]
        let values = (0..<40).map { Float($0 % 7) * 0.125 - 0.3 }
        for c in [Compression(.int8), Compression(.bf16), Compression(.topk, density: 0.25, bits: 3)] {
            let encoded = values.withUnsafeBufferPointer { c.encode($0, chunkBytes: 64) }
            let payload = TensorPayload(specs: specs, encoded: encoded)
            let update = Message.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1), payload)
            let stream = MessageStream.split(codec.encode(update))
            XCTAssertEqual(stream.count, 4, "a head and three chunks")
            var assembler = StreamAssembler(codec: codec)
            var got: Message?
            for m in stream { got = try assembler.accept(m) }
            guard case .update(_, let received)? = got else { return XCTFail("no update from \(c.encoding)") }
            XCTAssertEqual(received.values, payload.values, "\(c.encoding): what the sender's payload says it sends")
            XCTAssertEqual(received.sumOfSquares!, payload.values.reduce(0) { $0 + Double($1) * Double($1) }, accuracy: 1e-9)
            let sent = stream.dropFirst().reduce(0) { $0 + $1[3].count }
            XCTAssertLessThan(sent, 40 * 4, "\(c.encoding) sends fewer bytes than F32")
            // A flipped bit in a chunk fails its checksum, on the encoded bytes.
            var broken = stream
            broken[2][3][0] ^= 1
            var fresh = StreamAssembler(codec: codec)
            XCTAssertThrowsError(try broken.forEach { _ = try fresh.accept($0) }) {
                XCTAssertEqual(($0 as? ProtocolError)?.code, .badChecksum)
            }
        }
    }

    func testAnUnknownEncodingOrBadTopKBitsInAHeadIsRefused() throws {
        let codec = WireCodec()
        var frames = codec.encode(.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1),
                                          TensorPayload(specs: [TensorSpec(name: "w", shape: [2])], values: [1, 2])))
        let header = String(decoding: frames[2], as: UTF8.self)
        frames[2] = Array(header.replacingOccurrences(of: "\"dtype\":\"F32\"", with: "\"dtype\":\"Q3\"").utf8)
        XCTAssertThrowsError(try codec.decode(frames)) { XCTAssertTrue("\($0)".contains("encoded as Q3"), "\($0)") }
        frames[2] = Array(header.replacingOccurrences(of: "\"dtype\":\"F32\"", with: "\"dtype\":\"TOPK\"").utf8)
        XCTAssertThrowsError(try codec.decode(frames)) { XCTAssertTrue("\($0)".contains("bits between 2 and 8"), "\($0)") }
    }
}
