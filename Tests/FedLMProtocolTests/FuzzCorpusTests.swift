import FedLMProtocol
import Foundation
import XCTest

/// Replays the fuzzing corpus kept in the repository (Tests/FuzzCorpus, grown by `scripts/fuzz`,
/// coverage-guided libFuzzer) through the same entry points the fuzz targets use: every input
/// must be decoded or refused, never crash.
final class FuzzCorpusTests: XCTestCase {
    let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("FuzzCorpus")

    func inputs(_ target: String) throws -> [[UInt8]] {
        let dir = corpus.appendingPathComponent(target)
        return try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted().map {
            [UInt8](try Data(contentsOf: dir.appendingPathComponent($0)))
        }
    }

    func testWireDecoderCorpusReplays() throws {
        let all = try inputs("wire")
        XCTAssertGreaterThan(all.count, 50)
        for input in all { FuzzInput.decodeOnce(input) }
        // The seeds are valid messages: the corpus still decodes them.
        let seed = try [UInt8](Data(contentsOf: corpus.appendingPathComponent("wire/seed-2")))
        XCTAssertNoThrow(try WireCodec().decode(FuzzInput.frames(seed)))
    }

    func testStreamAssemblerCorpusReplays() throws {
        let all = try inputs("stream")
        XCTAssertGreaterThan(all.count, 50)
        for input in all { FuzzInput.assembleOnce(input) }
    }
}
