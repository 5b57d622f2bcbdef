import FedLMCheckpoint
@testable import FedLMFederation
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
        var deltas = try DeltaFiles(directory: dir, maximumSpares: 2)
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
        var reopened = try DeltaFiles(directory: dir, maximumSpares: 4)
        try reopened.sweep(keeping: [d])
        XCTAssertEqual(reopened.spares.count, 2)
        XCTAssertEqual(Set(try files()).subtracting(reopened.spares.map { ($0 as NSString).lastPathComponent }),
                       [(d as NSString).lastPathComponent])
        XCTAssertEqual(try read(d), short)
    }
}
