import FedLMLedger
import Foundation
import XCTest

/// A federation across two network namespaces joined by a bandwidth-capped veth pair, through
/// the delay relay (`scripts/lib/wan.py`): the broker and aggregator in one namespace, a trainer in
/// the other; F32 without overlap against sparse updates and release steps with overlap. Needs
/// root (CI runs as root).
final class WideAreaTests: XCTestCase {
    func testCompressedOverlappedUpdatesAndReleaseStepsCrossTwoNamespacesAndEverythingIsRemovedAfterwards() throws {
        guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") else {
            throw XCTSkip("needs root and iproute2 (network namespaces)")
        }
        let scratch = try Scratch()
        defer { scratch.remove() }
        let data = try scratch.prepareData(vocab: 300, clusters: ["en": scratch.corpus])
        let config = try scratch.writeModelConfig(vocab: 300)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let out = scratch.dir + "/wan"
        var rows: [[String: Any]] = []
        for (cases, overlap) in [("f32", "off"), ("topk-steps", "on")] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", root + "/scripts/lib/wan.py", "--fedlm", FedLMProcess.binary, "--config", config, "--data", data,
                           "--links", "50", "--rtts", "40", "--cases", cases, "--overlap", overlap, "--rounds", "3", "--local-steps", "4",
                           "--threads", "1", "--eval-batches", "2", "--timeout", "300", "--out", out, "--json"]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, output)
            let json = try XCTUnwrap(output.split(separator: "\n").last(where: { $0.hasPrefix("[") }), output)
            rows += try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
        }
        XCTAssertEqual(rows.count, 2)
        for row in rows {
            XCTAssertEqual(row["updatesAcknowledged"] as? Int, 3, "\(row)")
            XCTAssertEqual(row["tokens"] as? Int, 3 * 4 * 4 * 32, "three rounds of four steps of 4 x 32 tokens")
            XCTAssertTrue((row["loss"] as? Double)?.isFinite ?? false)
            // Exactly once across the link: the ledger holds the three updates, each applied once.
            let ledger = try Ledger(path: out + "/\(row["name"]!)/run/ledger.sqlite")
            XCTAssertEqual(try ledger.summary().accepted, 3)
        }
        let f32 = rows[0], sparse = rows[1]
        let f32Sent = try XCTUnwrap(f32["bytesSent"] as? Int), sparseSent = try XCTUnwrap(sparse["bytesSent"] as? Int)
        XCTAssertGreaterThan(f32Sent, 10 * sparseSent, "sparse updates: far fewer bytes up (\(f32Sent) vs \(sparseSent))")
        // Down: the whole model once, then steps (the F32 run fetches the whole model every round).
        let f32Received = try XCTUnwrap(f32["bytesReceived"] as? Int), stepsReceived = try XCTUnwrap(sparse["bytesReceived"] as? Int)
        XCTAssertGreaterThan(f32Received, 2 * stepsReceived, "release steps: fewer bytes down (\(f32Received) vs \(stepsReceived))")
        // Every namespace this run made is gone.
        let list = Process()
        list.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        list.arguments = ["ip", "netns", "list"]
        let pipe = Pipe()
        list.standardOutput = pipe
        try list.run()
        let namespaces = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        list.waitUntilExit()
        XCTAssertFalse(namespaces.contains("fedlm-wan-"), namespaces)
    }
}
