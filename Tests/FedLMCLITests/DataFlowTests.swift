import FedLMCheckpoint
import Foundation
import XCTest

/// The issue-3 flow through the real binary: train a tokenizer, prepare two clusters, train on
/// them, evaluate per cluster, sample with the checkpoint's own tokenizer.
final class DataFlowTests: XCTestCase {
    func testTokenizerPrepareTrainEvalSample() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let d = scratch.dir
        // Two clusters: the scratch corpus and a German-ish variant of it.
        let data = try scratch.prepareData(vocab: 300, clusters: ["en": scratch.corpus, "de": try scratch.writeGermanVariant()])
        _ = try scratch.writeModelConfig(vocab: 300, training: "learning_rate = 3e-3\nwarmup_steps = 5\nmax_steps = 30")
        var status: Int32, out: String
        (status, out) = try FedLMProcess.run(["train", "--config", d + "/model.toml", "--data", data, "--out", d + "/run",
                                               "--validate-every", "15", "--sample-bytes", "20"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("validation de") && out.contains(" en "), out)
        let curve = try String(contentsOfFile: d + "/run/validation.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(curve.first, "step,tokens,seconds,de,en,mean")
        XCTAssertEqual(curve.count, 4, "header + steps 0, 15, 30")
        let first = Double(curve[1].split(separator: ",").last!)!, last = Double(curve[3].split(separator: ",").last!)!
        XCTAssertLessThan(last, first, "validation loss falls")
        XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/run/checkpoint/tokenizer.json"))
        XCTAssertNoThrow(try Checkpoint.verifyChecksums(d + "/run/checkpoint"))

        (status, out) = try FedLMProcess.run(["eval", "--checkpoint", d + "/run/checkpoint", "--data", data, "--json"])
        XCTAssertEqual(status, 0, out)
        let json = try JSONSerialization.jsonObject(with: Data(out.split(separator: "\n").last!.utf8)) as! [String: Any]
        let clusters = (json["clusters"] as! [[String: Any]]).map { $0["cluster"] as! String }
        XCTAssertEqual(clusters, ["de", "en"])
        XCTAssertEqual(json["mean_loss"] as! Double, last, accuracy: 0.3)

        (status, out) = try FedLMProcess.run(["sample", "--checkpoint", d + "/run/checkpoint", "--prompt", "the ", "--tokens", "10"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("the "), out)
    }

    /// `fedlm tokenizer encode` takes its text as an argument, from a file or from standard input,
    /// and gives the same ids each way; a file far larger than an argument may be (400 KB) works.
    func testTokenizerEncodesAnArgumentAFileAndStandardInputAlike() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let d = scratch.dir
        var (status, out) = try FedLMProcess.run(["tokenizer", "train", "--vocab", "300", "--out", d + "/tok.json", scratch.corpus])
        XCTAssertEqual(status, 0, out)
        let corpus = try String(contentsOfFile: scratch.corpus, encoding: .utf8)
        var big = corpus
        while big.utf8.count < 400_000 { big += corpus }
        try big.write(toFile: d + "/big.txt", atomically: true, encoding: .utf8)
        try "the quick fox".write(toFile: d + "/short.txt", atomically: true, encoding: .utf8)
        func ids(_ arguments: [String], stdin: String? = nil) throws -> [Int] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: FedLMProcess.binary)
            p.arguments = ["tokenizer", "encode", "--tokenizer", d + "/tok.json"] + arguments
            let output = Pipe()
            p.standardOutput = output
            if let stdin { p.standardInput = FileHandle(forReadingAtPath: stdin) }
            try p.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
            return String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).map { Int($0)! }
        }
        let fromArgument = try ids(["the quick fox"])
        XCTAssertFalse(fromArgument.isEmpty)
        XCTAssertEqual(try ids(["--file", d + "/short.txt"]), fromArgument)
        XCTAssertEqual(try ids([], stdin: d + "/short.txt"), fromArgument)
        let fromFile = try ids(["--file", d + "/big.txt"])
        XCTAssertGreaterThan(fromFile.count, 400_000 / 8, "the whole file")
        XCTAssertEqual(try ids(["-"], stdin: d + "/big.txt"), fromFile)
        (status, out) = try FedLMProcess.run(["tokenizer", "encode", "--tokenizer", d + "/tok.json", "--file", d + "/missing.txt"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("missing.txt"), out)
    }

    func testPrepareReportsABadJSONLLineWithItsLocation() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let d = scratch.dir
        try "{\"text\": \"fine\"}\n{\"txt\": \"wrong field\"}\n".write(toFile: d + "/bad.jsonl", atomically: true, encoding: .utf8)
        var (status, out) = try FedLMProcess.run(["tokenizer", "train", "--vocab", "260", "--out", d + "/tok.json", scratch.corpus])
        XCTAssertEqual(status, 0, out)
        (status, out) = try FedLMProcess.run(["data", "prepare", "--tokenizer", d + "/tok.json", "--out", d + "/data", d + "/bad.jsonl"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("bad.jsonl:2: no string field 'text'"), out)
        (status, out) = try FedLMProcess.run(["data", "prepare", "--tokenizer", d + "/tok.json", "--out", d + "/data2",
                                               "--on-error", "skip", d + "/bad.jsonl"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("skipped") && out.contains("bad.jsonl:2"), out)
    }
}
