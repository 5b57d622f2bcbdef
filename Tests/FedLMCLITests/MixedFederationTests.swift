import FedLMCheckpoint
import FedLMLedger
import FedLMTestSupport
import Foundation
import XCTest

/// Federations of different trainers, as separate processes over TCP loopback: a partial trainer
/// beside full ones, and the PyTorch trainer (`clients/python`) beside a Swift one.
final class MixedFederationTests: XCTestCase {
    func testAPartialTrainerAndFullTrainersTrainTogether() throws {
        let partial = ["transformer.h.1.*", "transformer.ln_f.*"]
        let entry = { (name: String, extra: [String]) in
            SmallFederation.trainer(name, ["local_steps = 3", "tokens = 6000"] + extra)
        }
        let f = try SmallFederation(SmallFederation.fedbuff("checkpoint_every = 1000", "evaluate_every = 2")
                                    + entry("full-1", []) + entry("full-2", [])
                                    + entry("part", ["train = [\(partial.map { "\"\($0)\"" }.joined(separator: ", "))]"]),
                                    twoClusters: true)
        defer { f.scratch.remove() }
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let trainers = try ["full-1", "full-2", "part"].map { ($0, try f.start("trainer", ["--name", $0, "--threads", "1"])) }
        defer { for (_, p) in trainers { p.signal(SIGKILL) }; aggregator.signal(SIGKILL); broker.signal(SIGKILL) }
        let logs = SmallFederation.finish(trainers, aggregator: aggregator, broker: broker, logs: [])

        let ledger = try Ledger(path: f.ledgerPath)
        for name in ["full-1", "full-2", "part"] {
            XCTAssertGreaterThan(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = '\(name)' AND outcome != 'refused'"), 0,
                                 "\(name)'s updates were accepted")
        }
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE outcome = 'refused'"), 0, logs)
        // The partial trainer's updates carried its tensors only (their files name them).
        let paths = try ledger.database.query("SELECT delta_path FROM updates WHERE trainer = 'part' AND delta_path IS NOT NULL").compactMap { $0[0].string }
        XCTAssertFalse(paths.isEmpty)
        let names = try SafeTensorsFile(path: paths[0]).names.sorted()
        XCTAssertEqual(names, ["transformer.h.1.attn.c_attn.bias", "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
                               "transformer.h.1.attn.c_proj.weight", "transformer.h.1.ln_1.bias", "transformer.h.1.ln_1.weight",
                               "transformer.h.1.ln_2.bias", "transformer.h.1.ln_2.weight", "transformer.h.1.mlp.c_fc.bias",
                               "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.bias", "transformer.h.1.mlp.c_proj.weight",
                               "transformer.ln_f.bias", "transformer.ln_f.weight"])
        let losses = try ledger.metrics("validation_loss").map(\.value)
        XCTAssertGreaterThan(losses.count, 2)
        XCTAssertLessThan(losses.last!, losses.first! - 0.3, "validation loss \(losses)")
    }

    func testSwiftAndPyTorchTrainersTrainTogether() throws {
        try federateWithPyTorch(device: "cpu")
    }

    /// The PyTorch trainer fetches releases of 13 chunks two at a time (`--fetch-window 2`):
    /// every fetch completes without waiting out its request timer, and its updates get in.
    func testThePyTorchTrainerFetchesReleasesInWindows() throws {
        _ = try ClientPython.interpreter()
        let f = try SmallFederation(SmallFederation.fedbuff().replacingOccurrences(of: "buffer_size = 2", with: "buffer_size = 1")
                                    + SmallFederation.trainer("torch"), embedding: 512)
        defer { f.scratch.remove() }
        let broker = try f.start("broker"), aggregator = try f.start("aggregator", ["--threads", "1"])
        defer { for p in [broker, aggregator] { p.signal(SIGKILL) } }
        let log = f.scratch.dir + "/torch.log"
        let started = Date()
        let torch = try ClientPython.startTrainer(["--broker", f.trainersAddress, "--name", "torch", "--data", f.scratch.dir + "/data",
                                                   "--config", f.scratch.dir + "/model.toml", "--local-steps", "2", "--tokens", "320",
                                                   "--threads", "1", "--fetch-window", "2", "--state", f.scratch.dir + "/torch"], log: log)
        let deadline = Date().addingTimeInterval(240)
        while torch.isRunning, Date() < deadline { usleep(200_000) }
        if torch.isRunning { torch.terminate() }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        XCTAssertEqual(torch.terminationStatus, 0, output)
        XCTAssertLessThan(Date().timeIntervalSince(started), 100, "a window was waited for (30 s request timer):\n\(output)")
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'torch' AND outcome = 'applied'"), 5, output)
    }

    /// `fedlm conformance` with both trainers FedLM has: each keeps every rule of the protocol.
    func testTheSwiftAndThePyTorchTrainerKeepEveryConformanceRule() throws {
        let python = try ClientPython.interpreter()
        let scratch = try Scratch()
        defer { scratch.remove() }
        let data = try scratch.prepareData(vocab: 300, clusters: ["en": scratch.corpus])
        let model = try scratch.writeModelConfig(vocab: 300)
        let common = ["--broker", "{broker}", "--name", "{name}", "--state", "{state}", "--data", "{data}", "--config", "{config}",
                      "--tokens", "1536", "--ack-timeout", "3"]
        let clients = [("swift", [FedLMProcess.binary, "trainer", "--max-local-steps", "2", "--threads", "1"] + common),
                       ("pytorch", [python, "-m", "fedlm_client", "--local-steps", "2", "--threads", "1"] + common)]
        for (name, command) in clients {
            let (status, output) = try FedLMProcess.run(["conformance", "--data", data, "--config", model, "--out", scratch.dir + "/" + name,
                                                         "--time-limit", "240", "--"] + command,
                                                        environment: ["PYTHONPATH": ClientPython.clientDirectory])
            XCTAssertEqual(status, 0, "\(name):\n\(output)")
            XCTAssertTrue(output.contains("the client keeps every rule"), "\(name):\n\(output)")
        }
    }

    /// The PyTorch trainer's CUDA path, where PyTorch sees a GPU (skipped elsewhere, saying so).
    func testThePyTorchTrainerTrainsOnAGPUWhereThereIsOne() throws {
        let python = try ClientPython.interpreter()
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: python)
        probe.arguments = ["-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"]
        try probe.run()
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { throw XCTSkip("PyTorch sees no CUDA device on this machine: the CUDA path is not exercised") }
        try federateWithPyTorch(device: "cuda")
    }

    private func federateWithPyTorch(device: String) throws {
        _ = try ClientPython.interpreter()  // skip or fail before any federation starts
        let f = try SmallFederation(SmallFederation.fedbuff("checkpoint_every = 1000", "evaluate_every = 2")
                                    + SmallFederation.trainer("swift", "local_steps = 3", "tokens = 6000"), twoClusters: true)
        defer { f.scratch.remove() }
        let topology = try String(contentsOfFile: f.topology, encoding: .utf8)
        func value(_ key: String) -> String {
            let line = topology.split(separator: "\n").first { $0.hasPrefix(key + " = ") }!
            return String(line.split(separator: "\"")[1])
        }
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let swift = try f.start("trainer", ["--name", "swift", "--threads", "1"])
        // Its own text and the federation's tokenizer (no FedLM installation needed on its machine).
        let output = f.scratch.dir + "/torch.log"
        let torch = try ClientPython.startTrainer(["--broker", f.trainersAddress, "--text", f.scratch.corpus,
                                                   "--tokenizer", f.scratch.dir + "/tok.json", "--config", value("model"),
                                                   "--name", "torch", "--local-steps", "3", "--tokens", "6000", "--threads", "1",
                                                   "--state", f.scratch.dir + "/torch", "--device", device], log: output)
        defer { if torch.isRunning { torch.terminate() }; swift.signal(SIGKILL); aggregator.signal(SIGKILL); broker.signal(SIGKILL) }
        let deadline = Date().addingTimeInterval(300)
        while torch.isRunning, Date() < deadline { usleep(200_000) }
        let torchLog = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        XCTAssertFalse(torch.isRunning, "the PyTorch trainer did not finish: \(torchLog)")
        XCTAssertEqual(torch.terminationStatus, 0, torchLog)
        _ = SmallFederation.finish([("swift", swift)], aggregator: aggregator, broker: broker, logs: [])

        for name in ["swift", "torch"] {
            XCTAssertGreaterThan(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = '\(name)' AND outcome != 'refused'"), 0,
                                 "\(name)'s updates were accepted")
        }
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE outcome = 'refused'"), 0)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT SUM(tokens) FROM updates WHERE trainer = 'torch' AND outcome != 'refused'"), 6000)
        let losses = try Ledger(path: f.ledgerPath).metrics("validation_loss").map(\.value)
        XCTAssertGreaterThan(losses.count, 2)
        XCTAssertLessThan(losses.last!, losses.first! - 0.3, "validation loss \(losses)")
    }
}
