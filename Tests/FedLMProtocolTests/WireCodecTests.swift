import CFedLMRuntime
import FedLMProtocol
import FedLMTensor
import Foundation
import XCTest

final class WireCodecTests: XCTestCase {
    var codec: WireCodec = {
        var c = WireCodec()
        c.chunkBytes = 64  // many chunks even for small tensors
        return c
    }()

    let specs = [TensorSpec(name: "transformer.wte.weight", shape: [5, 4]), TensorSpec(name: "transformer.ln_f.bias", shape: [4])]
    var payload: TensorPayload { TensorPayload(specs: specs, values: (0..<24).map { Float($0) * 0.5 - 3 }) }
    var update: Message {
        .update(UpdateInfo(updateID: "u-1", trainerID: "t-1", baseVersion: 3, cluster: "de", tokens: 4096, localSteps: 8), payload)
    }

    func code(_ frames: [[UInt8]], file: StaticString = #filePath, line: UInt = #line) -> ProtocolError.Code? {
        do {
            _ = try codec.decode(frames)
            return nil
        } catch let e as ProtocolError {
            return e.code
        } catch {
            XCTFail("not a ProtocolError: \(error)", file: file, line: line)
            return nil
        }
    }

    func testEveryMessageTypeRoundTrips() throws {
        let messages: [Message] = [
            .hello(Hello(trainerID: "t-1", cluster: "en")),
            .welcome(Welcome(trainerID: "t-1", cluster: "en", heartbeatMilliseconds: 1000, maxStaleness: 8, latestVersion: 12)),
            .fetch(Fetch(cluster: "code", haveVersion: 4)),
            .release(ReleaseInfo(version: 7, cluster: "it"), payload),
            update,
            .ack(Ack(updateID: "u-1", outcome: .applied, version: 8)),
            .error(ErrorReply(code: .tooStale, detail: "staleness 9 exceeds 8", refersTo: "u-2")),
            .heartbeat,
            .bye("shutting down"),
        ]
        XCTAssertEqual(Set(messages.map(\.type)), Set(MessageType.allCases).subtracting([.chunk]), "CHUNK only exists inside a stream")
        for m in messages {
            let frames = codec.encode(m)
            XCTAssertEqual(try codec.decode(frames), m)
        }
        XCTAssertEqual(codec.encode(update).count, 3 + 2, "96 bytes of tensors in 64-byte chunks")
    }

    func testMalformedFramesGetTheirOwnErrorCodes() throws {
        let good = codec.encode(update)
        XCTAssertEqual(code(Array(good.prefix(2))), .malformed)
        var f = good; f[0] = Array("FEDLX".utf8) + [1]; XCTAssertEqual(code(f), .malformed)
        f = good; f[0] = Array("FEDLM".utf8) + [1]; XCTAssertEqual(code(f), .unsupportedVersion)
        f = good; f[1] = [99]; XCTAssertEqual(code(f), .unknownType)
        f = good; f[1] = [5, 5]; XCTAssertEqual(code(f), .malformed)
        f = good; f[2] = Array("{not json".utf8); XCTAssertEqual(code(f), .malformed)
        f = codec.encode(.hello(Hello(trainerID: "x"))); f.append([1, 2, 3]); XCTAssertEqual(code(f), .malformed)
        f = good; f.removeLast(); XCTAssertEqual(code(f), .malformed, "a chunk is missing")
        f = good; f[3].removeLast(); XCTAssertEqual(code(f), .malformed, "a chunk is short")
        f = good; f[4][0] ^= 0x01; XCTAssertEqual(code(f), .badChecksum)
        var small = codec
        small.maxHeaderBytes = 10
        XCTAssertThrowsError(try small.decode(good)) { XCTAssertEqual(($0 as? ProtocolError)?.code, .tooLarge) }
        small = codec
        small.maxValues = 10
        XCTAssertThrowsError(try small.decode(good)) { XCTAssertEqual(($0 as? ProtocolError)?.code, .tooLarge) }
    }

    func testHeaderFieldsAreCheckedByName() throws {
        var f = codec.encode(update)
        var header = try JSONSerialization.jsonObject(with: Data(f[2])) as! [String: Any]
        var info = header["info"] as! [String: Any]
        info.removeValue(forKey: "baseVersion")
        header["info"] = info
        f[2] = Array(try JSONSerialization.data(withJSONObject: header))
        XCTAssertThrowsError(try codec.decode(f)) { XCTAssertTrue("\($0)".contains("missing field 'baseVersion'"), "\($0)") }
        info["baseVersion"] = "three"
        header["info"] = info
        f[2] = Array(try JSONSerialization.data(withJSONObject: header))
        XCTAssertThrowsError(try codec.decode(f)) { XCTAssertTrue("\($0)".contains("baseVersion"), "\($0)") }
        info["baseVersion"] = -1
        header["info"] = info
        f[2] = Array(try JSONSerialization.data(withJSONObject: header))
        XCTAssertThrowsError(try codec.decode(f)) { XCTAssertTrue("\($0)".contains("negative"), "\($0)") }
    }

    func testNonFiniteValuesAreRefusedNamingTheTensor() {
        var values = payload.values
        values[22] = .nan
        let frames = codec.encode(.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1),
                                          TensorPayload(specs: specs, values: values)))
        XCTAssertThrowsError(try codec.decode(frames)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .nonFinite)
            XCTAssertTrue("\($0)".contains("transformer.ln_f.bias") && "\($0)".contains("element 2"), "\($0)")
        }
    }

    /// The layout states its encoding; a message claiming one this version does not know is
    /// refused, streamed or not, and chunks that do not fit the one it claims are malformed.
    func testAnotherDtypeIsRefusedByName() throws {
        var frames = codec.encode(.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1), payload))
        var header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(frames[2])) as? [String: Any])
        var layout = try XCTUnwrap(header["layout"] as? [String: Any])
        XCTAssertEqual(layout["dtype"] as? String, "F32")
        layout["dtype"] = "F16"
        header["layout"] = layout
        frames[2] = Array(try JSONSerialization.data(withJSONObject: header))
        XCTAssertThrowsError(try codec.decode(frames)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .malformed)
            XCTAssertTrue("\($0)".contains("F16 chunk 0 has 64 bytes, expected 32"), "\($0)")
        }
        layout["dtype"] = "Q3"
        header["layout"] = layout
        frames[2] = Array(try JSONSerialization.data(withJSONObject: header))
        XCTAssertThrowsError(try codec.decode(frames)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .shapeMismatch)
            XCTAssertTrue("\($0)".contains("encoded as Q3"), "\($0)")
            XCTAssertEqual(($0 as? ProtocolError)?.update?.updateID, "u", "a content refusal names the update")
        }
        var assembler = StreamAssembler(codec: codec)
        XCTAssertThrowsError(try MessageStream.split(frames).forEach { _ = try assembler.accept($0) }) {
            XCTAssertTrue("\($0)".contains("encoded as Q3"), "\($0)")
            XCTAssertEqual(($0 as? ProtocolError)?.update?.updateID, "u")
        }
    }

    func testShapeCheckAgainstTheModel() throws {
        XCTAssertNoThrow(try payload.check(against: specs))
        let other = [TensorSpec(name: "transformer.wte.weight", shape: [4, 5]), specs[1]]
        XCTAssertThrowsError(try payload.check(against: other)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .shapeMismatch)
            XCTAssertTrue("\($0)".contains("[5, 4]"), "\($0)")
        }
        XCTAssertThrowsError(try payload.check(against: [specs[0]]))
    }

    func testCRC32CMatchesTheStandardCheckValue() {
        let check = Array("123456789".utf8)
        XCTAssertEqual(check.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, 9) }, 0xE306_9283)
        // Continuation equals one pass, at any split (covers the 8-byte and byte-wise paths).
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let whole = data.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, 1000) }
        for split in [1, 7, 8, 9, 500, 999] {
            let a = data.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress, split) }
            let b = data.withUnsafeBytes { fedlm_crc32c(a, $0.baseAddress! + split, 1000 - split) }
            XCTAssertEqual(b, whole, "split \(split)")
        }
    }

    /// The three-chain CRC (blocks joined by shift tables) against a bit-at-a-time CRC-32C
    /// written here from the polynomial alone: lengths around every block boundary of both
    /// block sizes (8192 and 256 bytes, three at a time), odd alignments, and continuation.
    func testParallelCRC32CMatchesABitwiseReference() {
        func reference(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
            var c = ~crc
            for byte in bytes {
                c ^= UInt32(byte)
                for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        var rng = SeededGenerator(seed: 7)
        let data = (0..<(3 * 8192 * 3 + 4096)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        var lengths = [0, 1, 7, 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 768 + 5, 2 * 3 * 8192 + 3 * 256 * 2 + 17]
        lengths += (0..<20).map { _ in Int.random(in: 0...(data.count - 8), using: &rng) }
        data.withUnsafeBytes { all in
            for length in lengths {
                for offset in [0, 1, 3, 5] where offset + length <= all.count {
                    let slice = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                    let expected = reference(0, slice)
                    XCTAssertEqual(fedlm_crc32c(0, slice.baseAddress, length), expected, "length \(length) at offset \(offset)")
                    XCTAssertEqual(fedlm_crc32c_serial(0, slice.baseAddress, length), expected, "serial, length \(length)")
                    let seed: UInt32 = 0xDEAD_BEEF
                    XCTAssertEqual(fedlm_crc32c(seed, slice.baseAddress, length), reference(seed, slice), "continued, length \(length)")
                }
            }
        }
    }

    /// The receiver's one-pass chunk check against each check done on its own: the copy is
    /// exact, the CRC equals `fedlm_crc32c` of the bytes, a NaN or infinity anywhere (also in a
    /// block's tail) is seen, and the sum of squares matches a Double sum to float precision;
    /// lengths across the 6,144-value block and the 16-value step, from an odd address.
    func testOnePassChunkCheckMatchesTheSeparateChecks() {
        var rng = SeededGenerator(seed: 11)
        for count in [0, 1, 15, 16, 17, 6143, 6144, 6145, 20_000, 262_144] {
            let values = (0..<count).map { _ in Float.random(in: -3...3, using: &rng) }
            var bytes = [UInt8](repeating: 0, count: count * 4 + 1)  // values at offset 1: unaligned
            values.withUnsafeBytes { src in bytes.withUnsafeMutableBytes { ($0.baseAddress! + 1).copyMemory(from: src.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, byteCount: src.count) } }
            for poison in [nil, Float.nan, Float.infinity] as [Float?] {
                var input = bytes
                let at = count == 0 ? 0 : count - 1 - (count / 3)
                if let poison, count > 0 { withUnsafeBytes(of: poison) { p in for k in 0..<4 { input[1 + at * 4 + k] = p[k] } } }
                var out = [Float](repeating: 0, count: count)
                var stats = fedlm_chunk_stats()
                input.withUnsafeBytes { src in out.withUnsafeMutableBufferPointer { fedlm_take_floats(src.baseAddress! + 1, $0.baseAddress, count, &stats) } }
                let crc = input.withUnsafeBytes { fedlm_crc32c(0, $0.baseAddress! + 1, count * 4) }
                XCTAssertEqual(stats.crc32c, crc, "count \(count)")
                XCTAssertEqual(out.withUnsafeBytes { Array($0) }, Array(input[1...]), "count \(count): copied exactly")
                XCTAssertEqual(stats.nonFinite != 0, poison != nil && count > 0, "count \(count), poison \(String(describing: poison))")
                if poison == nil {
                    let reference = values.reduce(0.0) { $0 + Double($1) * Double($1) }
                    XCTAssertEqual(stats.sumOfSquares, reference, accuracy: max(1e-9, reference * 1e-5), "count \(count)")
                }
            }
        }
    }

    /// A payload copied with its checksums taken on the way encodes exactly like one built from
    /// the same values (same header, same chunks), whatever the chunk size asked for.
    func testCopiedPayloadEncodesLikeOneFromAnArray() throws {
        var rng = SeededGenerator(seed: 5)
        let values = (0..<10_001).map { _ in Float.random(in: -1...1, using: &rng) }
        let specs = [TensorSpec(name: "a", shape: [10_001])]
        var codec = WireCodec()
        for chunk in [4096, 1 << 20] {
            codec.chunkBytes = chunk
            let copied = values.withUnsafeBufferPointer { TensorPayload(specs: specs, copying: $0, chunkBytes: 4096) }
            XCTAssertEqual(codec.encode(.release(ReleaseInfo(version: 3), copied)),
                           codec.encode(.release(ReleaseInfo(version: 3), TensorPayload(specs: specs, values: values))), "chunks of \(chunk)")
        }
    }

    /// Random corruption of valid messages: decoding either succeeds or throws a ProtocolError,
    /// never crashes, whatever is flipped, cut or appended.
    func testRandomMutationsNeverCrashTheDecoder() {
        var rng = SeededGenerator(seed: 42)
        let seeds = [codec.encode(update), codec.encode(.hello(Hello(trainerID: "t"))),
                     codec.encode(.release(ReleaseInfo(version: 1), payload)), codec.encode(.ack(Ack(updateID: "u", outcome: .buffered, version: 2)))]
        var refused = 0
        for _ in 0..<3000 {
            var f = seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(f.count))
                switch rng.next() % 5 {
                case 0 where !f[i].isEmpty: f[i][Int(rng.next() % UInt64(f[i].count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
                case 1 where !f[i].isEmpty: f[i].removeLast(Int(rng.next() % UInt64(f[i].count)) + 1)
                case 2: f[i].append(UInt8(truncatingIfNeeded: rng.next()))
                case 3 where f.count > 1: f.remove(at: i)
                default: f.insert(Array("{}".utf8), at: i)
                }
            }
            do { _ = try codec.decode(f) } catch is ProtocolError { refused += 1 } catch { XCTFail("unexpected \(error)") }
        }
        XCTAssertGreaterThan(refused, 2500, "nearly every mutation is caught")
    }
}
