import FedLMCheckpoint
import Foundation
import XCTest

final class CommandLineTests: XCTestCase {
    func testReexecutesWithFastOpenBLASKernelsWhenTheLibraryFallsBackToGenericOnes() throws {
        // This machine's CPU may well be recognised by OpenBLAS; FEDLM_SIMULATE_GENERIC_BLAS makes
        // fedlm treat the loaded core as a fallback, which drives the real re-exec path.
        let (status, output) = try FedLMProcess.run(["bench", "sgemm", "--seconds", "0.05"],
                                                    environment: ["FEDLM_SIMULATE_GENERIC_BLAS": "1"],
                                                    removing: ["OPENBLAS_CORETYPE"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("chosen by FedLM from CPU features"), output)
        XCTAssertTrue(output.contains("OpenBLAS core SkylakeX") || output.contains("OpenBLAS core Haswell"), output)
        XCTAssertTrue(output.contains("GFLOP/s"), output)
    }

    /// `fedlm experiment` refuses a variant the spec does not have (naming it and those it has)
    /// and a corpus with no manifest, before it writes anything.
    func testExperimentRefusesAnUnknownVariantOrCorpusBeforeWritingAnything() throws {
        let s = try Scratch()
        defer { s.remove() }
        let spec = s.dir + "/spec.toml"
        try """
            name = "t"
            run_directory = "\(s.dir)/run"
            model = "\(s.dir)/model.toml"
            data = "\(s.dir)/data"
            tokens = 100
            [[variant]]
            name = "a"
            centralized = true
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        let (status, output) = try FedLMProcess.run(["experiment", spec, "--only", "a,b"])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("has no variant b (it has a)"), output)
        let (dataStatus, dataOutput) = try FedLMProcess.run(["experiment", spec, "--data", s.dir + "/nowhere"])
        XCTAssertNotEqual(dataStatus, 0, dataOutput)
        XCTAssertTrue(dataOutput.contains("--data \(s.dir)/nowhere: no manifest.json"), dataOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.dir + "/run"), "nothing written")
    }

    func testAnExplicitCoreTypeIsRespected() throws {
        let (status, output) = try FedLMProcess.run(["bench", "sgemm", "--seconds", "0.05"],
                                                    environment: ["OPENBLAS_CORETYPE": "Haswell"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("OpenBLAS core Haswell (OPENBLAS_CORETYPE set by the environment)"), output)
    }

    /// Every role takes --log-level and --log-format: JSON lines with time, level, label and
    /// message; a level above info hides info lines; a bad value is refused naming the option.
    func testRolesLogJSONLinesAtTheLevelAsked() throws {
        let f = try SmallFederation(SmallFederation.fedbuff() + SmallFederation.trainer("t1", "local_steps = 2", "tokens = 400"))
        defer { f.scratch.remove() }
        let broker = try f.start("broker", ["--log-format", "json"])
        let aggregator = try f.start("aggregator", ["--threads", "1", "--log-format", "json", "--log-level", "debug"])
        let trainer = try f.start("trainer", ["--name", "t1", "--threads", "1", "--log-level", "warning"])
        defer { for p in [trainer, aggregator, broker] { p.signal(SIGKILL) } }
        XCTAssertTrue(trainer.exits(by: Date().addingTimeInterval(120)), trainer.output)
        XCTAssertEqual(trainer.wait(), 0, trainer.output)
        aggregator.signal(SIGTERM)
        aggregator.wait()
        broker.signal(SIGTERM)
        broker.wait()
        let records = aggregator.output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        XCTAssertGreaterThan(records.count, 3, aggregator.output)
        XCTAssertEqual(records.count, aggregator.output.split(separator: "\n").count, "every line is a JSON object: \(aggregator.output)")
        for r in records {
            XCTAssertNotNil(r["time"] as? String)
            XCTAssertNotNil(r["message"] as? String)
            XCTAssertTrue(["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(r["level"] as? String ?? ""), "\(r)")
        }
        XCTAssertTrue(records.contains { ($0["message"] as? String ?? "").contains("-> version") && $0["label"] as? String == "fedlm.aggregator" },
                      aggregator.output)
        XCTAssertFalse(trainer.output.contains(" info "), "--log-level warning hides info lines: \(trainer.output)")
        for line in broker.output.split(separator: "\n") {
            XCTAssertNotNil(try? JSONSerialization.jsonObject(with: Data(line.utf8)), "the broker logs JSON lines: \(line)")
        }
        let (status, out) = try FedLMProcess.run(["broker", "--log-format", "xml"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("--log-format is 'xml'"), out)
    }

    func testABadConfigFailsNamingTheField() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let bad = scratch.dir + "/bad.toml"
        try String(contentsOfFile: scratch.config, encoding: .utf8).replacingOccurrences(of: "n_head = 2", with: "n_head = 3")
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let (status, output) = try FedLMProcess.run(["config", "check", bad])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(output.contains("model.n_head") && output.contains("do not divide"), output)
        let (ok, text) = try FedLMProcess.run(["config", "check", scratch.config])
        XCTAssertEqual(ok, 0, text)
        XCTAssertTrue(text.contains("parameters:"), text)
    }

    func testTrainingOnSomeClustersRefusesAnUnknownOne() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let data = try scratch.prepareData(vocab: 280, clusters: ["en": scratch.corpus])
        let model = try scratch.writeModelConfig(layers: 1, embedding: 16, context: 16, vocab: 280, batch: 2, training: "")
        let common = ["train", "--config", model, "--data", data, "--sample-bytes", "0", "--steps", "2", "--out", scratch.dir + "/run"]
        let (status, output) = try FedLMProcess.run(common + ["--clusters", "en,xx"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(output.contains("unknown cluster 'xx' (known: en)"), output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.dir + "/run/checkpoint"), "nothing trained or written")
        let (textStatus, textOutput) = try FedLMProcess.run(["train", "--config", model, "--text", scratch.corpus, "--clusters", "en"])
        XCTAssertNotEqual(textStatus, 0)
        XCTAssertTrue(textOutput.contains("--clusters selects clusters of --data DIR"), textOutput)
        let (ok, trained) = try FedLMProcess.run(common + ["--clusters", "en"])
        XCTAssertEqual(ok, 0, trained)
    }

    func testInterruptedTrainingResumesToTheSameModelAsAnUninterruptedRun() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let common = ["train", "--config", scratch.config, "--text", scratch.corpus, "--sample-bytes", "0",
                      "--validate-every", "10", "--threads", "2"]
        let (status, output) = try FedLMProcess.run(common + ["--out", scratch.dir + "/straight", "--checkpoint-every", "0"])
        XCTAssertEqual(status, 0, output)

        let interrupted = try FedLMProcess(common + ["--out", scratch.dir + "/resumed", "--checkpoint-every", "2"])
        let checkpoint = scratch.dir + "/resumed/checkpoint"
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: checkpoint + "/training_state.json"), Date() < deadline {
            usleep(20_000)
        }
        interrupted.signal(SIGINT)
        XCTAssertEqual(interrupted.wait(), 0, interrupted.output)
        let stoppedAt = try Checkpoint.load(from: checkpoint).state?.step ?? -1
        XCTAssertGreaterThan(stoppedAt, 0)
        print("interrupted at step \(stoppedAt) of 40")
        let (resumedStatus, resumedOutput) = try FedLMProcess.run(common + ["--out", scratch.dir + "/resumed", "--resume"])
        XCTAssertEqual(resumedStatus, 0, resumedOutput)
        if stoppedAt < 40 { XCTAssertTrue(resumedOutput.contains("resumed from"), resumedOutput) }
        let a = try Data(contentsOf: URL(fileURLWithPath: scratch.dir + "/straight/checkpoint/model.safetensors"))
        let b = try Data(contentsOf: URL(fileURLWithPath: checkpoint + "/model.safetensors"))
        XCTAssertEqual(a, b, "resumed run must end bit-for-bit where the uninterrupted run ends")
    }

    func testSIGKILLAtRandomMomentsNeverLeavesABrokenCheckpoint() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let out = scratch.dir + "/crash"
        let args = ["train", "--config", scratch.config, "--text", scratch.corpus, "--sample-bytes", "0",
                    "--steps", "100000", "--checkpoint-every", "1", "--out", out, "--resume"]
        var lastStep = -1
        for round in 0..<5 {
            let p = try FedLMProcess(args)
            // Let it start, then kill at a random point of its checkpoint-every-step loop.
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline {
                if let step = try? Checkpoint.load(from: out + "/checkpoint").state?.step, step > lastStep { break }
                usleep(10_000)
            }
            usleep(UInt32.random(in: 0...150_000))
            p.signal(SIGKILL)
            p.wait()
            // The checkpoint directory verifies (checksums, shapes) and never goes backwards.
            let loaded = try Checkpoint.load(from: out + "/checkpoint")
            let step = loaded.state?.step ?? -1
            XCTAssertGreaterThanOrEqual(step, lastStep, "round \(round)")
            lastStep = step
        }
        print("survived 5 SIGKILLs; last checkpoint at step \(lastStep)")
        XCTAssertGreaterThan(lastStep, 0)
    }
}
