import FedLMProtocol
import FedLMTensor
import XCTest

/// Streamed tensor messages: split into a head and CHUNK messages, reassembled per peer with
/// each chunk checked on arrival; broken streams get one error naming the problem.
final class MessageStreamTests: XCTestCase {
    var codec: WireCodec = {
        var c = WireCodec()
        c.chunkBytes = 64
        return c
    }()
    let specs = [TensorSpec(name: "transformer.wte.weight", shape: [10, 4]), TensorSpec(name: "transformer.ln_f.bias", shape: [4])]
    var update: Message {
        .update(UpdateInfo(updateID: "u-1", trainerID: "t-1", baseVersion: 3, tokens: 4096, localSteps: 8),
                TensorPayload(specs: specs, values: (0..<44).map { Float($0) * 0.25 - 5 }))
    }
    /// 176 bytes of tensors in 64-byte chunks: a head and three CHUNK messages.
    var stream: [[[UInt8]]] { MessageStream.split(codec.encode(update)) }

    func feed(_ messages: [[[UInt8]]], into assembler: inout StreamAssembler) throws -> [Message] {
        try messages.compactMap { try assembler.accept($0) }
    }

    func testStreamReassemblesToTheSameMessage() throws {
        XCTAssertEqual(stream.count, 4)
        XCTAssertEqual(stream[0].count, 3, "the head carries no tensor frames")
        XCTAssertTrue(stream.dropFirst().allSatisfy { $0.count == 4 && $0[1] == [MessageType.chunk.rawValue] })
        var assembler = StreamAssembler(codec: codec)
        XCTAssertNil(try assembler.accept(stream[0]))
        XCTAssertTrue(assembler.inProgress)
        XCTAssertEqual(try feed(Array(stream.dropFirst()), into: &assembler), [update])
        XCTAssertFalse(assembler.inProgress)
        // Small messages pass straight through, and the assembler is reusable.
        let hello = Message.hello(Hello(trainerID: "t-1"))
        XCTAssertEqual(MessageStream.split(codec.encode(hello)).count, 1)
        XCTAssertEqual(try feed(MessageStream.split(codec.encode(hello)) + stream, into: &assembler), [hello, update])
    }

    /// Frames handed over in place (as `receiveInPlace` gives them) assemble to the same message,
    /// and a corrupt chunk is refused the same way.
    func testBuffersInPlaceAssembleLikeCopiedFrames() throws {
        func feedInPlace(_ messages: [[[UInt8]]], into assembler: inout StreamAssembler) throws -> [Message] {
            var out: [Message] = []
            for m in messages {
                if let done = try m.withBuffers({ try assembler.accept(buffers: $0) }) { out.append(done) }
            }
            return out
        }
        var assembler = StreamAssembler(codec: codec)
        let hello = Message.hello(Hello(trainerID: "t-1"))
        XCTAssertEqual(try feedInPlace(stream + MessageStream.split(codec.encode(hello)), into: &assembler), [update, hello])
        var broken = stream
        broken[2][3][5] ^= 0x10
        XCTAssertThrowsError(try feedInPlace(broken, into: &assembler)) { XCTAssertEqual(($0 as? ProtocolError)?.code, .badChecksum) }
        var short = stream
        short[1].removeLast()
        XCTAssertThrowsError(try feedInPlace(short, into: &assembler)) { XCTAssertTrue("\($0)".contains("expected 4 frames"), "\($0)") }
    }

    func testALostChunkIsNamedAndTheRestOfThatStreamIsDropped() throws {
        var assembler = StreamAssembler(codec: codec)
        var s = stream
        s.remove(at: 2)  // chunk 1 of 3 lost
        XCTAssertNil(try assembler.accept(s[0]))
        XCTAssertNil(try assembler.accept(s[1]))
        XCTAssertThrowsError(try assembler.accept(s[2])) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .malformed)
            XCTAssertTrue("\($0)".contains("CHUNK 2 of 3 arrived; expected chunk 1 of 3"), "\($0)")
        }
        XCTAssertFalse(assembler.inProgress)
        // The sender's retry goes through.
        XCTAssertEqual(try feed(stream, into: &assembler), [update])
    }

    func testACorruptChunkIsRefusedByItsChecksum() throws {
        var assembler = StreamAssembler(codec: codec)
        var s = stream
        s[2][3][10] ^= 0x40
        XCTAssertThrowsError(try feed(s, into: &assembler)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .badChecksum)
            XCTAssertTrue("\($0)".contains("chunk 1 has CRC-32C"), "\($0)")
        }
        XCTAssertEqual(assembler.discarded, 0)
        // The chunk after the bad one belongs to no transfer any more: dropped without a second error.
        XCTAssertNil(try assembler.accept(s[3]))
        XCTAssertEqual(assembler.discarded, 1)
    }

    func testNonFiniteValuesAreRefusedWhenTheStreamCompletes() throws {
        var values = (0..<44).map { Float($0) }
        values[41] = .nan
        let bad = MessageStream.split(codec.encode(.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1),
                                                           TensorPayload(specs: specs, values: values))))
        var assembler = StreamAssembler(codec: codec)
        XCTAssertThrowsError(try feed(bad, into: &assembler)) {
            XCTAssertEqual(($0 as? ProtocolError)?.code, .nonFinite)
            XCTAssertTrue("\($0)".contains("transformer.ln_f.bias"), "\($0)")
            // The refusal names the update (its header was readable), so it can be recorded and answered.
            XCTAssertEqual(($0 as? ProtocolError)?.update?.updateID, "u")
            XCTAssertEqual(($0 as? ProtocolError)?.refusesContent, true)
        }
        // The same message in one piece: the same refusal, naming the same update.
        XCTAssertThrowsError(try codec.decode(codec.encode(.update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1),
                                                                   TensorPayload(specs: specs, values: values))))) {
            XCTAssertEqual(($0 as? ProtocolError)?.update?.trainerID, "t")
        }
    }

    // MARK: Windowed release fetches

    var release: Message {
        .release(ReleaseInfo(version: 7), TensorPayload(specs: specs, values: (0..<44).map { Float($0) * 0.5 - 3 }))
    }

    func testAResumableReleaseSurvivesAGapAndDuplicatesAndCompletesWhenTheMissingChunkComes() throws {
        let s = MessageStream.split(codec.encode(release))
        XCTAssertEqual(s.count, 4)
        var assembler = StreamAssembler(codec: codec)
        assembler.resumesReleases = true
        XCTAssertNil(try assembler.accept(s[0]))
        XCTAssertNil(try assembler.accept(s[1]))
        let digest = WireCodec.headDigest(s[0][2])
        XCTAssertEqual(assembler.releaseProgress?.head, digest)
        XCTAssertEqual(assembler.releaseProgress?.received, 1)
        XCTAssertEqual(assembler.releaseProgress?.count, 3)
        // Chunk 1 lost: chunk 2 is dropped as a gap, chunk 0 again as a duplicate; the transfer stays.
        XCTAssertNil(try assembler.accept(s[3]))
        XCTAssertNil(try assembler.accept(s[1]))
        XCTAssertEqual(assembler.gaps, 1)
        XCTAssertEqual(assembler.duplicates, 1)
        XCTAssertEqual(assembler.releaseProgress?.received, 1)
        // The same head again (a request sent twice) continues the transfer.
        XCTAssertNil(try assembler.accept(s[0]))
        XCTAssertEqual(assembler.abandoned, 0)
        XCTAssertEqual(try feed([s[2], s[3]], into: &assembler), [release])
        XCTAssertNil(assembler.releaseProgress)
        // Updates keep the strict rule: a gap ends the transfer with an error.
        var strict = stream
        strict.remove(at: 2)
        XCTAssertThrowsError(try feed(strict, into: &assembler)) { XCTAssertTrue("\($0)".contains("expected chunk 1 of 3"), "\($0)") }
    }

    func testAFetchWindowMustBePositiveAndAResumeNeedsAWindow() throws {
        func decode(_ json: String) throws -> Message { try codec.decode([WireCodec.magic + [WireCodec.version], [MessageType.fetch.rawValue], Array(json.utf8)]) }
        XCTAssertEqual(try decode(#"{"window": 4, "resume": {"head": 12, "next": 3}}"#),
                       .fetch(Fetch(window: 4, resume: ResumePoint(head: 12, next: 3))))
        XCTAssertThrowsError(try decode(#"{"window": 0}"#)) { XCTAssertTrue("\($0)".contains("window 0"), "\($0)") }
        XCTAssertThrowsError(try decode(#"{"resume": {"head": 12, "next": 3}}"#)) { XCTAssertTrue("\($0)".contains("resume needs a window"), "\($0)") }
        XCTAssertThrowsError(try decode(#"{"window": 2, "resume": {"head": 12, "next": -1}}"#)) { XCTAssertTrue("\($0)".contains("negative"), "\($0)") }
    }

    func testANewHeadReplacesAnUnfinishedTransfer() throws {
        var assembler = StreamAssembler(codec: codec)
        XCTAssertNil(try assembler.accept(stream[0]))
        XCTAssertNil(try assembler.accept(stream[1]))
        XCTAssertEqual(try feed(stream, into: &assembler), [update])
        XCTAssertEqual(assembler.abandoned, 1)
    }

    func testOrphanChunksAndOversizedAnnouncementsChangeNothing() throws {
        var assembler = StreamAssembler(codec: codec)
        XCTAssertNil(try assembler.accept(stream[2]), "a chunk whose head this peer never saw")
        XCTAssertEqual(assembler.discarded, 1)
        // A head announcing more chunks than the value limit allows is refused before any arrive.
        var limited = codec
        limited.maxValues = 16
        var small = StreamAssembler(codec: limited)
        XCTAssertThrowsError(try small.accept(stream[0])) { XCTAssertEqual(($0 as? ProtocolError)?.code, .tooLarge) }
        XCTAssertFalse(small.inProgress)
        // A CHUNK on its own is not a message.
        XCTAssertThrowsError(try codec.decode(stream[1])) { XCTAssertTrue("\($0)".contains("CHUNK outside a stream"), "\($0)") }
        // A chunk claiming another count, or of the wrong size, breaks the transfer with a reason.
        var s = stream
        s[1][2] = MessageStream.chunkPrefix(index: 0, count: 7)[2]
        XCTAssertNil(try assembler.accept(s[0]))
        XCTAssertThrowsError(try assembler.accept(s[1])) { XCTAssertTrue("\($0)".contains("CHUNK 0 of 7"), "\($0)") }
        s = stream
        s[1][3].removeLast(4)
        XCTAssertNil(try assembler.accept(s[0]))
        XCTAssertThrowsError(try assembler.accept(s[1])) { XCTAssertTrue("\($0)".contains("chunk 0 has 60 bytes"), "\($0)") }
    }

    /// Random corruption of stream messages: the assembler either waits, completes the original
    /// message, or throws a ProtocolError; it never crashes or returns anything else.
    func testRandomMutationsOfStreamsNeverCrashTheAssembler() {
        var rng = SeededGenerator(seed: 7)
        var outcomes = (completed: 0, refused: 0)
        for _ in 0..<2000 {
            var s = stream
            for _ in 0..<(1 + Int(rng.next() % 2)) {
                let m = Int(rng.next() % UInt64(s.count))
                let i = Int(rng.next() % UInt64(s[m].count))
                switch rng.next() % 5 {
                case 0 where !s[m][i].isEmpty: s[m][i][Int(rng.next() % UInt64(s[m][i].count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
                case 1 where !s[m][i].isEmpty: s[m][i].removeLast(Int(rng.next() % UInt64(s[m][i].count)) + 1)
                case 2: s.swapAt(m, Int(rng.next() % UInt64(s.count)))
                case 3 where s.count > 1: s.remove(at: m)
                default: s.insert(s[m], at: m)
                }
            }
            var assembler = StreamAssembler(codec: codec)
            for message in s {
                do {
                    if let done = try assembler.accept(message) {
                        // Header fields are not checksummed (a flipped digit can still parse),
                        // but the tensors are: whatever completes carries the original values.
                        guard case .update(_, let p) = done, case .update(_, let original) = update else {
                            return XCTFail("completed as \(done.type)")
                        }
                        XCTAssertEqual(p.values, original.values)
                        outcomes.completed += 1
                    }
                } catch is ProtocolError { outcomes.refused += 1 } catch { XCTFail("unexpected \(error)") }
            }
        }
        XCTAssertGreaterThan(outcomes.refused, 1000)
    }
}
