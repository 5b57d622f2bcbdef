import FedLMData
import FedLMModel
import FedLMTensor
import FedLMTokenizer
import Foundation
import XCTest

final class DataPipelineTests: XCTestCase {
    var dir = ""
    var tokenizer: Tokenizer!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "fedlm-data-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir + "/in", withIntermediateDirectories: true)
        var rng = SeededGenerator(seed: 1)
        let words = [["the", "cat", "sat", "on", "a", "mat", "and", "dreamt"], ["der", "Hund", "läuft", "über", "die", "Straße"],
                     ["def", "f(x):", "return", "x", "+", "1", "#", "done"]]
        for (c, vocab) in words.enumerated() {
            for f in 0..<3 {
                var text = ""
                for _ in 0..<3000 {
                    text += vocab[Int(rng.next() % UInt64(vocab.count))] + (rng.next() % 11 == 0 ? "\n" : " ")
                }
                try text.write(toFile: "\(dir)/in/c\(c)-\(f).txt", atomically: true, encoding: .utf8)
            }
        }
        try """
            {"text": "first document"}
            {"text": "second document"}
            not json at all
            {"title": "no text field"}
            {"text": "last one"}
            """.write(toFile: dir + "/in/docs.jsonl", atomically: true, encoding: .utf8)
        var trainer = try BPETrainer(vocabularySize: 400)
        for f in try TextInputs.files([dir + "/in"]) where f.hasSuffix(".txt") {
            trainer.add(Array(try Data(contentsOf: URL(fileURLWithPath: f))))
            trainer.endDocument()
        }
        tokenizer = try trainer.train()
        try TokenizerFile.write(tokenizer, to: dir + "/tokenizer.json")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    var clusters: [(name: String, inputs: [String])] {
        (0..<3).map { c in ("c\(c)", (0..<3).map { "\(dir)/in/c\(c)-\($0).txt" }) }
    }

    func prepare(_ out: String, clusters: [(name: String, inputs: [String])]? = nil, onError: DataPreparer.OnError = .fail,
                 log: (String) -> Void = { _ in }) throws -> DataManifest {
        var p = DataPreparer(tokenizer: tokenizer, tokenizerPath: dir + "/tokenizer.json", directory: out)
        p.onError = onError
        p.pieceBytes = 512
        p.validationFraction = 0.1
        p.shardTokens = 1000
        return try p.run(clusters: clusters ?? self.clusters, log: log)
    }

    func testPreparationIsDeterministicAndLosesNoText() throws {
        let a = try prepare(dir + "/a"), b = try prepare(dir + "/b")
        XCTAssertEqual(a, b, "same inputs, same manifest, same shard hashes")
        let dataset = try TokenDataset(directory: dir + "/a")
        XCTAssertEqual(dataset.clusters, ["c0", "c1", "c2"])
        for c in a.clusters {
            XCTAssertGreaterThan(c.validationTokens, 0, c.name)
            XCTAssertGreaterThan(c.trainTokens, 5 * c.validationTokens, c.name)
            // Every byte of the input is in the shards (train and validation pieces together).
            var decoded = 0
            for shard in c.train + c.validation {
                let reader = try TokenShardReader(path: dir + "/a/" + shard.file)
                decoded += try tokenizer.decode(reader.tokens(0..<reader.count).filter { $0 != tokenizer.endOfTextID! }).count
            }
            let inputBytes = c.sources.reduce(0) { $0 + $1.bytes }
            XCTAssertEqual(decoded, inputBytes, c.name)
            XCTAssertEqual(c.sources.count, 3)
        }
    }

    /// Text compressed by the gzip tool gives the same documents as the plain file, for plain
    /// text and JSONL; a truncated or foreign file is refused naming it.
    func testGzipCompressedTextAndJSONLGiveTheSameDocuments() throws {
        for name in ["c0-0.txt", "docs.jsonl"] {
            let plain = dir + "/in/" + name
            let gzip = Process()
            gzip.executableURL = URL(fileURLWithPath: "/bin/sh")
            gzip.arguments = ["-c", "gzip -c '\(plain)' > '\(plain).gz'"]
            try gzip.run()
            gzip.waitUntilExit()
            XCTAssertEqual(gzip.terminationStatus, 0)
            func documents(_ file: String) throws -> [[UInt8]] {
                var out: [[UInt8]] = []
                try TextInputs.forEachDocument(file, onBadLine: { _, _ in }) { out.append($0) }
                return out
            }
            XCTAssertEqual(try documents(plain + ".gz"), try documents(plain), name)
            XCTAssertGreaterThan(try documents(plain).count, 0)
        }
        let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/in/c0-0.txt.gz"))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: dir + "/in/cut.txt.gz"))
        XCTAssertThrowsError(try TextInputs.forEachDocument(dir + "/in/cut.txt.gz", onBadLine: { _, _ in }) { _ in }) {
            XCTAssertTrue("\($0)".contains("cut.txt.gz") && "\($0)".contains("truncated"), "\($0)")
        }
        try Data("not gzip at all".utf8).write(to: URL(fileURLWithPath: dir + "/in/fake.txt.gz"))
        XCTAssertThrowsError(try TextInputs.forEachDocument(dir + "/in/fake.txt.gz", onBadLine: { _, _ in }) { _ in }) {
            XCTAssertTrue("\($0)".contains("fake.txt.gz") && "\($0)".contains("not valid gzip"), "\($0)")
        }
    }

    func testBadJSONLLinesAreReportedWithPathAndLineOrStopTheRun() throws {
        var logged: [String] = []
        let m = try prepare(dir + "/skip", clusters: [("docs", [dir + "/in/docs.jsonl"])], onError: .skip) { logged.append($0) }
        XCTAssertEqual(m.clusters[0].sources[0].documents, 3)
        XCTAssertEqual(m.clusters[0].sources[0].skipped, ["\(dir)/in/docs.jsonl:3: not a JSON object",
                                                          "\(dir)/in/docs.jsonl:4: no string field 'text'"])
        XCTAssertTrue(logged.contains { $0.contains("docs.jsonl:3") })
        XCTAssertThrowsError(try prepare(dir + "/fail", clusters: [("docs", [dir + "/in/docs.jsonl"])])) {
            XCTAssertTrue("\($0)".contains("docs.jsonl:3: not a JSON object"), "\($0)")
        }
        XCTAssertThrowsError(try prepare(dir + "/missing", clusters: [("x", [dir + "/in/nope.txt"])])) {
            XCTAssertTrue("\($0)".contains("nope.txt: no such file"), "\($0)")
        }
        XCTAssertThrowsError(try prepare(dir + "/dup", clusters: [("x", [dir + "/in/c0-0.txt"]), ("x", [dir + "/in/c0-1.txt"])]))
    }

    func testAnInterruptedRunResumesToTheSameResult() throws {
        let clean = try prepare(dir + "/clean")
        // Interrupt: the third source of c1 cannot be read, so the run stops there.
        var interruptedClusters = clusters
        interruptedClusters[1].inputs[2] = dir + "/in/does-not-exist.txt"
        XCTAssertThrowsError(try prepare(dir + "/resumed", clusters: interruptedClusters))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/resumed/progress.json"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/resumed/manifest.json"))
        // A leftover partial shard from the crash must not survive the resume.
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/resumed/c1/train-00099.tokens"))
        var logged: [String] = []
        let resumed = try prepare(dir + "/resumed") { logged.append($0) }
        XCTAssertTrue(logged.first?.contains("resuming") ?? false, "\(logged.first ?? "")")
        XCTAssertEqual(resumed, clean)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/resumed/c1/train-00099.tokens"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/resumed/progress.json"))
    }

    func testCorruptOrTruncatedShardsAreRefusedByName() throws {
        let m = try prepare(dir + "/c")
        let shard = dir + "/c/" + m.clusters[0].train[0].file
        var data = try Data(contentsOf: URL(fileURLWithPath: shard))
        data[data.count - 3] ^= 0x01
        try data.write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try TokenDataset(directory: dir + "/c")) {
            XCTAssertTrue("\($0)".contains(shard) && "\($0)".contains("checksum"), "\($0)")
        }
        try data.prefix(data.count - 10).write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try TokenShardReader(path: shard)) { XCTAssertTrue("\($0)".contains("bytes"), "\($0)") }
        try Data("garbage!".utf8).write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try TokenShardReader(path: shard)) { XCTAssertTrue("\($0)".contains("header"), "\($0)") }
        XCTAssertThrowsError(try TokenDataset(directory: dir + "/nothing-here")) { XCTAssertTrue("\($0)".contains("manifest")) }
    }

    func testBatchesAreReproducibleShiftedWindowsFromTheRightClusters() throws {
        _ = try prepare(dir + "/d")
        let d = try TokenDataset(directory: dir + "/d")
        var r1 = SeededGenerator(seed: 5), r2 = SeededGenerator(seed: 5)
        let a = try d.batch(.train, batch: 4, sequence: 32, rng: &r1)
        let b = try d.batch(.train, batch: 4, sequence: 32, rng: &r2)
        XCTAssertEqual(a, b)
        for row in 0..<4 {
            XCTAssertEqual(Array(a.inputs[(row * 32 + 1)..<(row * 32 + 32)]), Array(a.targets[(row * 32)..<(row * 32 + 31)]))
        }
        // Only c2's (code) tokens when asked for c2.
        var r3 = SeededGenerator(seed: 6)
        let code = try d.batch(.train, clusters: ["c2"], batch: 8, sequence: 16, rng: &r3)
        let text = String(decoding: try tokenizer.decode(code.inputs), as: UTF8.self)
        XCTAssertFalse(text.contains("Hund") || text.contains("cat"), text)
        XCTAssertThrowsError(try d.batch(.train, clusters: ["nope"], batch: 1, sequence: 8, rng: &r3)) {
            XCTAssertTrue("\($0)".contains("unknown cluster 'nope'"))
        }
        let v1 = try d.validationBatches("c0", batch: 2, sequence: 16, maxBatches: 3)
        let v2 = try d.validationBatches("c0", batch: 2, sequence: 16, maxBatches: 3)
        XCTAssertEqual(v1, v2)
        XCTAssertEqual(v1.count, 3)
    }
}
