import Foundation
import XCTest

/// Runs the `fedlm` executable that `swift build` placed next to the test bundle.
struct FedLMProcess {
    static var binary: String {
        var dir = Bundle(for: Marker.self).bundleURL.deletingLastPathComponent()
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("fedlm").path) {
            dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent(".build/debug")
        }
        return dir.appendingPathComponent("fedlm").path
    }

    final class Marker {}

    let process = Process()
    let outputFile: String

    /// Starts `fedlm arguments...` (or another program, `executable`); stdout and stderr go to a
    /// file (pipes could fill and block).
    init(_ arguments: [String], environment: [String: String] = [:], removing: [String] = [], executable: String = FedLMProcess.binary) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for key in removing { env.removeValue(forKey: key) }
        for (k, v) in environment { env[k] = v }
        process.environment = env
        outputFile = NSTemporaryDirectory() + "fedlm-out-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        _ = FileManager.default.createFile(atPath: outputFile, contents: nil)
        let handle = FileHandle(forWritingAtPath: outputFile)!
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }

    @discardableResult
    func wait() -> Int32 {
        process.waitUntilExit()
        return process.terminationStatus
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits until the process exits by itself or `deadline` passes; true if it exited.
    @discardableResult
    func exits(by deadline: Date) -> Bool {
        while process.isRunning, Date() < deadline { usleep(100_000) }
        return !process.isRunning
    }

    /// Runs to completion and returns (exit status, combined output).
    static func run(_ arguments: [String], environment: [String: String] = [:], removing: [String] = []) throws -> (Int32, String) {
        let p = try FedLMProcess(arguments, environment: environment, removing: removing)
        let status = p.wait()
        return (status, p.output)
    }
}

/// A scratch directory with a tiny byte-level config and a deterministic text corpus.
struct Scratch {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "fedlm-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try """
            [model]
            n_layer = 2
            n_embd = 32
            n_head = 2
            n_positions = 32
            vocab_size = 256

            [training]
            batch_size = 4
            learning_rate = 3e-3
            min_learning_rate = 3e-4
            warmup_steps = 5
            max_steps = 40
            seed = 77
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let words = ["the", "federated", "model", "learns", "from", "many", "private", "corpora", "without", "sharing", "data"]
        var text = ""
        var state: UInt64 = 12345
        while text.utf8.count < 40_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            text += words[Int(state >> 33) % words.count] + ((state >> 20) % 9 == 0 ? ".\n" : " ")
        }
        try text.write(toFile: corpus, atomically: true, encoding: .utf8)
    }

    var config: String { dir + "/test.toml" }
    var corpus: String { dir + "/corpus.txt" }

    /// A second data cluster: the corpus with a few words made German.
    func writeGermanVariant() throws -> String {
        let path = dir + "/de.txt"
        try String(contentsOfFile: corpus, encoding: .utf8)
            .replacingOccurrences(of: "the", with: "der").replacingOccurrences(of: "model", with: "Modell")
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `fedlm tokenizer train` on the clusters' files, then `fedlm data prepare`; returns the data directory.
    func prepareData(vocab: Int, clusters: [String: String]) throws -> String {
        var (status, out) = try FedLMProcess.run(["tokenizer", "train", "--vocab", "\(vocab)", "--out", dir + "/tok.json"]
                                                 + clusters.keys.sorted().map { clusters[$0]! })
        XCTAssertEqual(status, 0, out)
        (status, out) = try FedLMProcess.run(["data", "prepare", "--tokenizer", dir + "/tok.json", "--out", dir + "/data",
                                               "--validation-fraction", "0.2"] + clusters.keys.sorted().map { "\($0)=\(clusters[$0]!)" })
        XCTAssertEqual(status, 0, out)
        return dir + "/data"
    }

    /// A small model config for the prepared data; returns its path.
    func writeModelConfig(layers: Int = 2, embedding: Int = 32, context: Int = 32, vocab: Int, batch: Int = 4,
                          training: String = "learning_rate = 3e-3\nwarmup_steps = 5\nmax_steps = 1000") throws -> String {
        let path = dir + "/model.toml"
        try """
            [model]
            n_layer = \(layers)
            n_embd = \(embedding)
            n_head = 2
            n_positions = \(context)
            vocab_size = \(vocab)

            [training]
            batch_size = \(batch)
            \(training)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }
}
