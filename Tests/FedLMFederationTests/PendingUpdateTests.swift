@testable import FedLMFederation
import FedLMProtocol
import FedLMZeroMQ
import Foundation
import XCTest

/// A trainer's unacknowledged update on disk: written straight from the frames it is sent from
/// (head arrays and chunks cut from the values), read back frame for frame into the same message;
/// a cut file is refused by name.
final class PendingUpdateTests: XCTestCase {
    func testAPendingUpdateReadsBackAsTheSameMessageAndACutFileIsRefused() throws {
        let path = NSTemporaryDirectory() + "fedlm-pending-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var codec = WireCodec()
        codec.chunkBytes = 4096
        let values = (0..<2500).map { Float($0) * 0.01 - 3 }
        let message = Message.update(UpdateInfo(updateID: "t1-4-2-99", trainerID: "t1", baseVersion: 4, tokens: 512, localSteps: 2),
                                     TensorPayload(specs: [TensorSpec(name: "w", shape: [50, 50])], values: values))
        let frames = SharedFrames(message, codec: codec)
        try PendingUpdate(id: "t1-4-2-99", frames: frames).save(path)

        let loaded = try PendingUpdate.load(path)
        XCTAssertEqual(loaded.id, "t1-4-2-99")
        XCTAssertEqual(loaded.frames.arrays(prefix: loaded.frames.count), frames.arrays(prefix: frames.count))
        XCTAssertEqual(try codec.decode(loaded.frames.arrays(prefix: loaded.frames.count)), message)

        let whole = try Data(contentsOf: URL(fileURLWithPath: path))
        try whole.prefix(whole.count - 10).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try PendingUpdate.load(path)) { XCTAssertTrue("\($0)".contains("truncated pending update"), "\($0)") }
    }
}
