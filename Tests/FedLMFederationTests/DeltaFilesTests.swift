import FedLMCheckpoint
@testable import FedLMFederation
import FedLMProtocol
import Foundation
import XCTest

/// The aggregator's pseudo-gradient files on a real directory: retired files become spares that
/// the next updates overwrite (a longer spare is cut to size), the number of spares is bounded,
/// and after a restart every file the ledger does not refer to is swept into the spares.
final class DeltaFilesTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = NSTemporaryDirectory() + "fedlm-deltas-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func read(_ path: String) throws -> [Float] { try SafeTensorsFile(path: path).floats("delta") }
    func files() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

    func testRetiredFilesAreOverwrittenByTheNextUpdatesAndSpareCountIsBounded() throws {
        let deltas = try DeltaFiles(directory: dir, maximumSpares: 2)
        let long = (0..<1000).map { Float($0) }, short = (0..<10).map { Float(-$0) }
        let a = try long.withUnsafeBufferPointer { try deltas.write($0, updateID: "t1-0-1", sync: false) }
        let b = try long.withUnsafeBufferPointer { try deltas.write($0, updateID: "t1-0-2", sync: false) }
        let c = try long.withUnsafeBufferPointer { try deltas.write($0, updateID: "t1/0/2", sync: false) }
        XCTAssertNotEqual(b, c, "ids that make the same safe name still get their own files")
        XCTAssertEqual(try read(a), long)
        deltas.retire([a, b, c])
        XCTAssertEqual(deltas.spares.count, 2, "at most two spares; the third file is deleted")
        XCTAssertEqual(try files().filter { $0.hasPrefix("spare-") }.count, 2)
        let spare = try XCTUnwrap(deltas.spares.last)
        let inode = try FileManager.default.attributesOfItem(atPath: spare)[.systemFileNumber] as? Int
        // The next update takes the spare's place: same file, its own (shorter) content, nothing left over.
        let d = try short.withUnsafeBufferPointer { try deltas.write($0, updateID: "t2-5-1", sync: true) }
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: d)[.systemFileNumber] as? Int, inode, "overwritten in place")
        XCTAssertEqual(try read(d), short)
        XCTAssertFalse(FileManager.default.fileExists(atPath: spare))
        XCTAssertEqual(deltas.spares.count, 1)
        // A restart sweeps what the ledger does not refer to (here: all but d) into the spares.
        try "half-written".write(toFile: dir + "/x.safetensors.tmp-1-2", atomically: false, encoding: .utf8)
        let reopened = try DeltaFiles(directory: dir, maximumSpares: 4)
        try reopened.sweep(keeping: [d])
        XCTAssertEqual(reopened.spares.count, 2)
        XCTAssertEqual(Set(try files()).subtracting(reopened.spares.map { ($0 as NSString).lastPathComponent }),
                       [(d as NSString).lastPathComponent])
        XCTAssertEqual(try read(d), short)
    }

    /// An update streamed through a real `StreamAssembler` lands in its file chunk by chunk (in
    /// a spare's pages), and the committed file holds exactly its values; a transfer broken
    /// midway, and an update refused for a NaN, hand their file back to the spares.
    func testStreamedUpdatesAreWrittenAsTheyArriveAndUnfinishedOnesReturnTheirFile() throws {
        let deltas = try DeltaFiles(directory: dir, maximumSpares: 4)
        let values = (0..<3000).map { Float($0) * 0.25 - 100 }
        deltas.retire([try values.withUnsafeBufferPointer { try deltas.write($0, updateID: "old", sync: false) }])
        let spare = try XCTUnwrap(deltas.spares.first)
        let inode = try FileManager.default.attributesOfItem(atPath: spare)[.systemFileNumber] as? Int
        var codec = WireCodec()
        codec.chunkBytes = 4096  // 12,000 bytes: three chunks
        var assembler = StreamAssembler(codec: codec)
        assembler.destinations = { _, count in deltas.incoming(count: count) }
        func update(_ id: String, _ v: [Float]) -> [[[UInt8]]] {
            MessageStream.split(codec.encode(.update(UpdateInfo(updateID: id, trainerID: "t", baseVersion: 0, tokens: 1, localSteps: 1),
                                                     TensorPayload(specs: [TensorSpec(name: "w", shape: [v.count])], values: v))))
        }
        func incomingFiles() throws -> [String] { try files().filter { $0.hasPrefix("incoming-") } }

        let stream = update("u1", values)
        XCTAssertEqual(stream.count, 4)
        XCTAssertNil(try assembler.accept(stream[0]))
        XCTAssertNil(try assembler.accept(stream[1]))
        XCTAssertEqual(deltas.spares, [], "the spare was taken for the incoming update")
        let partial = try XCTUnwrap(try incomingFiles().first)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: dir + "/" + partial)[.systemFileNumber] as? Int, inode)
        let firstChunk = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + partial)).suffix(12_000).prefix(4096)
        XCTAssertEqual(Array(firstChunk), stream[1][3], "the first chunk is in the file before the rest arrives")
        XCTAssertNil(try assembler.accept(stream[2]))
        guard case .update(_, let payload) = try XCTUnwrap(try assembler.accept(stream[3])),
              let incoming = payload.destination as? IncomingDelta else { return XCTFail("expected an update assembled in an IncomingDelta") }
        let path = try deltas.commit(incoming, updateID: "u1", sync: true)
        XCTAssertEqual(try read(path), values)
        XCTAssertEqual(try incomingFiles(), [])

        // Broken midway (a chunk with a bad checksum): the file goes back to the spares.
        deltas.retire([try values.withUnsafeBufferPointer { try deltas.write($0, updateID: "old2", sync: false) }])
        var broken = update("u2", values)
        broken[2][3][0] ^= 1
        XCTAssertNil(try assembler.accept(broken[0]))
        XCTAssertNil(try assembler.accept(broken[1]))
        XCTAssertEqual(deltas.spares.count, 0)
        XCTAssertThrowsError(try assembler.accept(broken[2])) { XCTAssertEqual(($0 as? ProtocolError)?.code, .badChecksum) }
        XCTAssertEqual(deltas.spares.count, 1)
        XCTAssertEqual(try incomingFiles(), [])

        // Refused for a NaN once complete: same.
        var poisoned = values
        poisoned[2500] = .nan
        let nan = update("u3", poisoned)
        for m in nan.dropLast() { XCTAssertNil(try assembler.accept(m)) }
        XCTAssertThrowsError(try assembler.accept(nan.last!)) { XCTAssertEqual(($0 as? ProtocolError)?.code, .nonFinite) }
        XCTAssertEqual(deltas.spares.count, 1)
        XCTAssertEqual(try incomingFiles(), [])
        XCTAssertEqual(try read(path), values, "the committed update's file is untouched")
    }
}
