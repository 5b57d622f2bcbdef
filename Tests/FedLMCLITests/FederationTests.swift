import FedLMCheckpoint
import FedLMLedger
import FedLMModel
import Foundation
import XCTest

/// The federation as it runs: broker, aggregator and three trainers as separate processes over
/// TCP loopback, with a trainer and then the aggregator killed by SIGKILL and restarted mid-run.
final class FederationTests: XCTestCase {
    func testFederationLearnsAndSurvivesKilledTrainerAndAggregator() throws {
        let trainerBlock = { (name: String, clusters: String) in
            SmallFederation.trainer(name, "clusters = [\(clusters)]", "local_steps = 5", "tokens = 16000", "ack_timeout = 3.0")
        }
        let f = try SmallFederation(SmallFederation.fedbuff("max_staleness = 10", "checkpoint_every = 3", "evaluate_every = 2")
                                    + trainerBlock("t1", "\"en\"") + trainerBlock("t2", "\"de\"") + trainerBlock("t3", "\"en\", \"de\""),
            twoClusters: true)
        defer { f.scratch.remove() }
        let broker = try f.start("broker")
        var aggregator = try f.start("aggregator", ["--threads", "1"])
        func trainer(_ name: String) throws -> FedLMProcess { try f.start("trainer", ["--name", name, "--threads", "1"]) }
        var trainers = ["t1": try trainer("t1"), "t2": try trainer("t2"), "t3": try trainer("t3")]
        var logs: [String] = []
        defer {
            for p in trainers.values { p.signal(SIGKILL) }
            aggregator.signal(SIGKILL)
            broker.signal(SIGKILL)
        }
        let count = f.ledger

        // Kill trainer t1 once it has delivered two updates; restart it.
        SmallFederation.waitFor("t1's first updates") { count("SELECT COUNT(*) FROM updates WHERE trainer = 't1'") >= 2 }
        trainers["t1"]!.signal(SIGKILL)
        trainers["t1"]!.wait()
        logs.append(trainers["t1"]!.output)
        let t1Before = count("SELECT COUNT(*) FROM updates WHERE trainer = 't1'")
        trainers["t1"] = try trainer("t1")

        // Kill the aggregator at version >= 6; restart it on the same run directory.
        SmallFederation.waitFor("version 6") { count("SELECT MAX(version_after) FROM updates") >= 6 }
        aggregator.signal(SIGKILL)
        aggregator.wait()
        logs.append(aggregator.output)
        aggregator = try f.start("aggregator", ["--threads", "1"])

        let allLogs = SmallFederation.finish(["t1", "t2", "t3"].map { ($0, trainers[$0]!) }, aggregator: aggregator, broker: broker,
                                             logs: logs)

        let ledger = try Ledger(path: f.ledgerPath)
        // The restarted trainer came back and delivered more.
        XCTAssertGreaterThan(count("SELECT COUNT(*) FROM updates WHERE trainer = 't1'"), t1Before, "t1 rejoined")
        // The restarted aggregator restored from a checkpoint and the ledger.
        XCTAssertTrue(allLogs.contains("restored v"), "aggregator restart restored its state")
        // Every update a trainer saw acknowledged is in the ledger as applied or buffered.
        let acked = SmallFederation.acknowledgedIDs(in: allLogs)
        XCTAssertGreaterThan(acked.count, 10)
        for id in acked {
            let record = try ledger.update(id: id)
            XCTAssertNotNil(record, "acknowledged update \(id) is missing from the ledger")
            XCTAssertTrue(record.map { $0.outcome != .refused } == true, "\(id): \(String(describing: record?.outcome))")
        }
        // Versions never go backwards, in the order updates were recorded.
        let versions = try ledger.database.query("SELECT version_after FROM updates WHERE outcome != 'refused' ORDER BY seq").compactMap { $0[0].int }
        XCTAssertEqual(versions, versions.sorted(), "versions are monotonic")
        // And the federation learned: validation loss well below its start.
        let losses = try ledger.metrics("validation_loss").map(\.value)
        XCTAssertGreaterThan(losses.count, 3)
        print("federation: \(acked.count) acknowledged updates, final version \(versions.last ?? 0), validation loss \(losses.first!) -> \(losses.last!)")
        XCTAssertLessThan(losses.last!, losses.first! - 0.5, "validation loss \(losses)")
    }

    /// Chaos: the aggregator SIGKILLed at random moments four times (once with its newest
    /// checkpoint truncated behind its back), and half of the trainers killed and restarted at
    /// random, during one run. After each restart nothing acknowledged is lost, nothing is applied
    /// twice, versions stay monotonic, and training keeps going.
    func testRepeatedAggregatorKillsAndTrainerChurnLoseNothing() throws {
        let trainerBlock = { (name: String) in SmallFederation.trainer(name, "local_steps = 3", "tokens = 9000", "ack_timeout = 2.0") }
        let f = try SmallFederation(SmallFederation.fedbuff("max_staleness = 50", "checkpoint_every = 2", "evaluate_every = 4", "durability = \"process\"")
                                    + ["a", "b", "c", "d"].map(trainerBlock).joined())
        defer { f.scratch.remove() }
        let broker = try f.start("broker")
        var aggregator = try f.start("aggregator", ["--threads", "1"])
        func trainer(_ name: String) throws -> FedLMProcess { try f.start("trainer", ["--name", name, "--threads", "1"]) }
        var trainers = try Dictionary(uniqueKeysWithValues: ["a", "b", "c", "d"].map { ($0, try trainer($0)) })
        var logs: [String] = []
        defer {
            for p in trainers.values { p.signal(SIGKILL) }
            aggregator.signal(SIGKILL)
            broker.signal(SIGKILL)
        }
        var rng = SystemRandomNumberGenerator()
        var kills = 0
        var truncated: Int?
        for round in 0..<4 {
            // Let some updates land, then kill at a random moment.
            let target = f.version + 2
            let deadline = Date().addingTimeInterval(60)
            while f.version < target, Date() < deadline { usleep(100_000) }
            usleep(UInt32.random(in: 0...400_000, using: &rng))
            aggregator.signal(SIGKILL)
            aggregator.wait()
            logs.append(aggregator.output)
            kills += 1
            // Once, the newest checkpoint is found truncated (a disk gone bad): its hash gives it
            // away and the restart falls back to the one before, replaying the updates since.
            if round == 1 {
                let newest = try XCTUnwrap(try Ledger(path: f.ledgerPath).versions().first)
                let file = newest.checkpointPath + "/model.safetensors"
                let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
                try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: file))
                truncated = newest.number
            }
            // Trainer churn: one of a, b killed and restarted in each round (half of the trainers).
            let victim = round % 2 == 0 ? "a" : "b"
            if trainers[victim]!.process.isRunning {
                trainers[victim]!.signal(SIGKILL)
                trainers[victim]!.wait()
                logs.append(trainers[victim]!.output)
                trainers[victim] = try trainer(victim)
            }
            aggregator = try f.start("aggregator", ["--threads", "1"])
        }
        let allLogs = SmallFederation.finish(["a", "b", "c", "d"].map { ($0, trainers[$0]!) }, aggregator: aggregator, broker: broker,
                                             logs: logs)
        XCTAssertEqual(allLogs.components(separatedBy: "restored v").count - 1, kills, "every restart restored from a checkpoint")
        let corrupt = try XCTUnwrap(truncated)
        XCTAssertTrue(allLogs.contains("cannot restore from v\(corrupt)"), "the truncated v\(corrupt) was detected")
        XCTAssertTrue(allLogs.contains("does not match the recorded"), "detected by its SHA-256")
        let ledger = try Ledger(path: f.ledgerPath)
        let acked = SmallFederation.acknowledgedIDs(in: allLogs)
        XCTAssertGreaterThan(acked.count, 15)
        for id in Set(acked) {
            let record = try ledger.update(id: id)
            XCTAssertTrue(record.map { $0.outcome != .refused } == true, "acknowledged update \(id): \(String(describing: record?.outcome))")
        }
        // Applied at most once: ids are unique in the ledger, and replay reproduced each version
        // (a restart whose replay disagrees with the ledger refuses to start).
        let ids = try ledger.database.query("SELECT id FROM updates").compactMap { $0[0].string }
        XCTAssertEqual(ids.count, Set(ids).count)
        let versions = try ledger.database.query("SELECT version_after FROM updates WHERE outcome != 'refused' ORDER BY seq").compactMap { $0[0].int }
        XCTAssertEqual(versions, versions.sorted(), "versions are monotonic")
        // Every trainer trained its whole budget, so training kept going through the chaos.
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(DISTINCT trainer) FROM updates WHERE outcome != 'refused'"), 4)
        print("chaos: \(kills) aggregator kills, \(acked.count) acknowledged updates, final version \(versions.last ?? 0)")
    }

    /// CURVE end to end with real processes: `fedlm keys generate --topology` makes every key and
    /// the allow-list, `fedlm up` trains encrypted, and a trainer whose key the broker does not
    /// know gets nothing in (refused at the handshake, nothing in the ledger).
    func testSecureFederationTrainsWithGeneratedKeysAndShutsOutAStranger() throws {
        let keys = NSTemporaryDirectory() + "fedlm-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let f = try SmallFederation("""
            [security]
            keys = "\(keys)"
            [aggregation]
            mode = "fedbuff"
            buffer_size = 2
            server_optimizer = "sgd"
            server_learning_rate = 1.0
            [[trainer]]
            name = "t1"
            local_steps = 2
            tokens = 3000
            [[trainer]]
            name = "t2"
            local_steps = 2
            tokens = 3000
            """)
        defer { f.scratch.remove() }
        let (generated, keysOutput) = try FedLMProcess.run(["keys", "generate", "--topology", f.topology])
        XCTAssertEqual(generated, 0, keysOutput)
        for name in ["broker", "aggregator", "subscriber", "t1", "t2"] {
            let secret = keys + "/\(name).secret"
            let mode = (try FileManager.default.attributesOfItem(atPath: secret)[.posixPermissions] as? NSNumber)?.intValue
            XCTAssertEqual(mode, 0o600, "\(secret) readable by its owner only")
        }
        let up = try FedLMProcess(["up", f.topology])
        defer { up.signal(SIGKILL) }
        up.exits(by: Date().addingTimeInterval(180))
        XCTAssertEqual(up.wait(), 0, up.output)
        let logs = f.scratch.dir + "/run/logs/"
        let brokerLog = (try? String(contentsOfFile: logs + "broker.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(brokerLog.contains("CURVE on every socket"), brokerLog)
        XCTAssertFalse(brokerLog.contains("PLAINTEXT"))
        XCTAssertEqual(f.ledger("SELECT COUNT(DISTINCT trainer) FROM updates WHERE outcome != 'refused'"), 2)
        XCTAssertGreaterThanOrEqual(f.version, 2)

        // The same federation again, roles started by hand, and a stranger with its own key pair.
        let (made, madeOutput) = try FedLMProcess.run(["keys", "generate", "stranger", "--dir", keys + "/outside"])
        XCTAssertEqual(made, 0, madeOutput)
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        defer { for p in [broker, aggregator] { p.signal(SIGKILL) } }
        let before = f.ledger("SELECT COUNT(*) FROM updates")
        let stranger = try FedLMProcess(["trainer", "--broker", f.trainersAddress, "--data", f.scratch.dir + "/data",
                                         "--config", f.scratch.dir + "/model.toml",
                                         "--name", "stranger", "--max-local-steps", "1", "--tokens", "400", "--threads", "1",
                                         "--state", f.scratch.dir + "/stranger", "--key", keys + "/outside/stranger",
                                         "--broker-key", keys + "/broker.public"])
        defer { stranger.signal(SIGKILL) }
        // Refused at its handshake, and still refused a few HELLOs later.
        SmallFederation.waitFor("the broker to refuse the stranger's key", seconds: 60) { broker.output.contains("refused key") }
        usleep(3_000_000)
        XCTAssertTrue(stranger.process.isRunning, "still knocking: \(stranger.output)")
        XCTAssertFalse(stranger.output.contains("registered"), stranger.output)
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates"), before, "nothing from the stranger reached the aggregator")
        broker.signal(SIGTERM)
        broker.wait()
        XCTAssertTrue(broker.output.contains("refused key"), broker.output)
    }

    /// `fresh_base_wait`: after an update the aggregator only buffered, a trainer waits (bounded)
    /// for the next version instead of training on the same one again. Every round of a trainer
    /// starts from a newer version than its previous round, unless it logged that the wait ran out.
    func testTrainersWaitBrieflyForAFreshVersionAfterABufferedUpdate() throws {
        let trainer = { (name: String) in SmallFederation.trainer(name, "local_steps = 4", "tokens = 2500", "fresh_base_wait = 5.0") }
        let f = try SmallFederation("""
            [aggregation]
            mode = "fedbuff"
            buffer_size = 2
            staleness = "constant"
            server_optimizer = "sgd"
            server_learning_rate = 1.0
            """ + "\n" + trainer("a") + "\n" + trainer("b"))
        defer { f.scratch.remove() }
        let (broker, aggregator, trainers) = try f.startFederation(trainers: ["a", "b"])
        defer { for p in trainers + [aggregator, broker] { p.signal(SIGKILL) } }
        XCTAssertTrue(SmallFederation.finish(trainers), "trainers finished")
        var rounds = 0, timeouts = 0
        for t in trainers {
            var previous: Int?
            for line in t.output.split(separator: "\n") {
                if line.contains("no version after v") {
                    previous = nil  // the wait ran out: the same version again is allowed
                    timeouts += 1
                } else if let r = line.range(of: " on v"), line.contains(": round ") {
                    let base = Int(line[r.upperBound...].prefix { $0.isNumber })!
                    if let previous { XCTAssertGreaterThan(base, previous, "a round started from the version of the one before:\n\(t.output)") }
                    previous = base
                    rounds += 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(rounds, 6)
        XCTAssertLessThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE staleness > 0"), timeouts,
                                 "only an update trained after a wait ran out can be stale")
    }

    /// Releases of 13 chunks fetched two chunks at a time by real trainers through a real broker:
    /// every fetch completes, each next window asked for while the last arrives (no stream
    /// stalls into the request timer), and the federation trains as with whole releases.
    func testTrainersFetchReleasesInWindowsThroughTheBroker() throws {
        let trainer = { (name: String) in SmallFederation.trainer(name, "local_steps = 2", "tokens = 640") }
        let f = try SmallFederation(SmallFederation.fedbuff() + "[wire]\nfetch_window = 2\n" + trainer("a") + trainer("b"), embedding: 512)
        defer { f.scratch.remove() }
        let (broker, aggregator, trainers) = try f.startFederation(trainers: ["a", "b"])
        defer { for p in trainers + [aggregator, broker] { p.signal(SIGKILL) } }
        XCTAssertTrue(SmallFederation.finish(trainers) && trainers.allSatisfy { $0.process.terminationStatus == 0 }, "trainers finished")
        for t in trainers {
            XCTAssertFalse(t.output.contains("stalled"), "a window was asked for late:\n\(t.output)")
            XCTAssertFalse(t.output.contains("undecodable"), t.output)
        }
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE outcome IN ('applied', 'buffered')"), 8)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT MAX(version_after) FROM updates"), 4)
        // A subscriber's snapshot, two chunks at a time, is the aggregator's latest release.
        let out = f.scratch.dir + "/releases"
        let asked = Date()
        let (subscribed, output) = try FedLMProcess.run(["subscribe", "--topology", f.topology, "--fetch-window", "2", "--count", "1", "--out", out])
        XCTAssertEqual(subscribed, 0, output)
        XCTAssertLessThan(Date().timeIntervalSince(asked), 8, "each window asked for as the last arrived, not after 2 s stalls")
        let latest = f.ledger("SELECT MAX(version_after) FROM updates")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/v\(latest)/model.safetensors"), output)
    }

    /// Personalized heads with real processes, and the `fedlm cluster` commands on the run they
    /// leave: list shows who trained where, create adds a cluster, export writes each cluster's
    /// model (the global trunk with its own head) as a checkpoint, and an unknown name is refused.
    /// With FEDLM_HF_PYTHON set (scripts/check-huggingface), transformers loads the export and
    /// computes the same loss.
    func testClusterCommandsListCreateAndExportEachClustersModel() throws {
        let f = try SmallFederation.twoOrganisations()
        defer { f.scratch.remove() }
        let (broker, aggregator, trainers) = try f.startFederation(trainers: ["t-en", "t-de"])
        defer { for p in trainers + [aggregator, broker] { p.signal(SIGKILL) } }
        XCTAssertTrue(SmallFederation.finish(trainers), "trainers finished")
        aggregator.signal(SIGTERM)
        XCTAssertEqual(aggregator.wait(), 0, aggregator.output)
        broker.signal(SIGTERM)
        broker.wait()

        let (listed, list) = try FedLMProcess.run(["cluster", "list", "--topology", f.topology])
        XCTAssertEqual(listed, 0, list)
        XCTAssertTrue(list.contains("t-en") && list.contains("t-de"), list)
        let (created, createOutput) = try FedLMProcess.run(["cluster", "create", "fr", "--topology", f.topology])
        XCTAssertEqual(created, 0, createOutput)
        XCTAssertTrue(try FedLMProcess.run(["cluster", "list", "--topology", f.topology]).1.contains("fr"))

        let d = f.scratch.dir
        for c in ["en", "de"] {
            let (status, out) = try FedLMProcess.run(["cluster", "export", c, "--topology", f.topology, "--out", d + "/export-\(c)"])
            XCTAssertEqual(status, 0, out)
            XCTAssertNoThrow(try Checkpoint.verifyChecksums(d + "/export-\(c)"))
        }
        let (refused, refusal) = try FedLMProcess.run(["cluster", "export", "xx", "--topology", f.topology, "--out", d + "/export-xx"])
        XCTAssertNotEqual(refused, 0)
        XCTAssertTrue(refusal.contains("no cluster xx"), refusal)
        XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/export-xx"))

        // The exports share the trunk (the global model's) and differ in the head: the last block.
        let en = try Checkpoint.load(from: d + "/export-en").model
        let de = try Checkpoint.load(from: d + "/export-de").model
        let global = try Checkpoint.load(from: try XCTUnwrap(try Ledger(path: f.ledgerPath).versions().first).checkpointPath).model
        let last = en.config.layers - 1
        for entry in en.layout.entries {
            let a = Array(UnsafeBufferPointer(start: en.parameters.pointer(entry.name), count: entry.count))
            let b = Array(UnsafeBufferPointer(start: de.parameters.pointer(entry.name), count: entry.count))
            let g = Array(UnsafeBufferPointer(start: global.parameters.pointer(entry.name), count: entry.count))
            if entry.name.hasPrefix("transformer.h.\(last).") {
                XCTAssertNotEqual(a, b, "\(entry.name) is head: each cluster has its own")
            } else if !entry.name.hasPrefix("transformer.ln_f") && !entry.name.hasPrefix("lm_head") {
                XCTAssertEqual(a, b, "\(entry.name) is trunk: shared")
                XCTAssertEqual(a, g, "\(entry.name): the trunk is the global model's")
            }
        }

        guard let python = ProcessInfo.processInfo.environment["FEDLM_HF_PYTHON"] else { return }
        let inputs = (0..<2 * 24).map { Int32(($0 * 37 + 11) % en.config.vocabulary) }
        try inputs.withUnsafeBytes {
            try SafeTensors.write([.init(name: "inputs", dtype: .i32, shape: [2, 24], bytes: $0)], to: d + "/batch.safetensors")
        }
        var targets = [Int32]()
        for b in 0..<2 { for t in 0..<24 { targets.append(t < 23 ? inputs[b * 24 + t + 1] : -100) } }
        let swiftLoss = try en.loss(TokenBatch(batch: 2, sequence: 24, inputs: inputs, targets: targets))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Reference/hf_loss.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script, "--checkpoint", d + "/export-en", "--batch", d + "/batch.safetensors", "--out", d + "/hf.safetensors"]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let hfLoss = try SafeTensorsFile(path: d + "/hf.safetensors").floats("loss")[0]
        XCTAssertEqual(swiftLoss, hfLoss, accuracy: 1e-5 * abs(hfLoss), "transformers computes the exported cluster model's loss")
        print("transformers on the exported cluster en: loss \(hfLoss) vs FedLM \(swiftLoss)")
    }

    func testSharedPersonalModelsTrainAndCompareWithTrainingAlone() throws {
        let f = try SmallFederation.twoOrganisations(clusterKeys: "head = [\"*\"]\nshare = 0.5")
        defer { f.scratch.remove() }
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let trainers = try ["t-en", "t-de"].map { try f.start("trainer", ["--name", $0, "--threads", "1"]) }
        _ = SmallFederation.finish(zip(["t-en", "t-de"], trainers).map { ($0, $1) }, aggregator: aggregator, broker: broker, logs: [])
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE outcome = 'refused'"), 0)

        // Every parameter is personal: the two organisations' models differ in every tensor.
        let d = f.scratch.dir
        for c in ["en", "de"] {
            let (status, out) = try FedLMProcess.run(["cluster", "export", c, "--topology", f.topology, "--out", d + "/export-\(c)"])
            XCTAssertEqual(status, 0, out)
        }
        let en = try Checkpoint.load(from: d + "/export-en").model, de = try Checkpoint.load(from: d + "/export-de").model
        for entry in en.layout.entries {
            XCTAssertNotEqual(Array(UnsafeBufferPointer(start: en.parameters.pointer(entry.name), count: entry.count)),
                              Array(UnsafeBufferPointer(start: de.parameters.pointer(entry.name), count: entry.count)), entry.name)
        }

        // fedlm compare: each organisation alone on its budget, everything pooled, one row each.
        let (status, table) = try FedLMProcess.run(["compare", f.topology, "--out", d + "/compare"])
        XCTAssertEqual(status, 0, table)
        for row in ["| t-en | en | ", "| t-de | de | ", "alone / federated", "mean loss; geometric mean of the ratios"] {
            XCTAssertTrue(table.contains(row), "\(row) in:\n\(table)")
        }
        XCTAssertTrue(table.contains("every organisation does better than alone") || table.contains("better off alone: "), table)
        XCTAssertEqual(try String(contentsOfFile: d + "/compare/compare.md", encoding: .utf8).isEmpty, false)
        for run in ["alone-t-en", "alone-t-de", "pooled"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/compare/\(run)/checkpoint/model.safetensors"), run)
        }
        let summary = try String(contentsOfFile: d + "/compare/alone-t-en/train.log", encoding: .utf8)
            .split(separator: "\n").first { $0.contains("training tokens") }.map(String.init) ?? ""
        XCTAssertTrue(summary.contains("; en ") && !summary.contains("de "), "alone trains on its own clusters only: \(summary)")

        // A trainer without a budget cannot be compared: the error names it.
        let noBudget = d + "/no-budget.toml"
        try String(contentsOfFile: f.topology, encoding: .utf8).replacingOccurrences(of: "tokens = 6000\n", with: "")
            .write(toFile: noBudget, atomically: true, encoding: .utf8)
        let (refused, why) = try FedLMProcess.run(["compare", noBudget])
        XCTAssertNotEqual(refused, 0)
        XCTAssertTrue(why.contains("trainer 't-en' has no 'tokens'"), why)
    }

    /// `join_at_tokens`: `fedlm up` starts an organisation once the federation accepted that many
    /// tokens, creating the new cluster it names from the global model (the consensus of the
    /// clusters' models) first; its updates count like anyone's. One whose mark is never reached
    /// joins when everyone else is done, instead of leaving the run waiting forever.
    func testAnOrganisationJoiningLaterGetsANewClusterAndTrains() throws {
        let f = try SmallFederation(SmallFederation.fedbuff("checkpoint_every = 2", "[clusters]", "names = [\"en\"]", "head = [\"*\"]", "share = 0.5")
            + SmallFederation.trainer("t-en", "clusters = [\"en\"]", "cluster = \"en\"", "local_steps = 3", "tokens = 6000")
            + SmallFederation.trainer("t-de", "clusters = [\"de\"]", "cluster = \"de\"", "local_steps = 3", "tokens = 2000", "join_at_tokens = 2000")
            + SmallFederation.trainer("t-late", "clusters = [\"en\"]", "cluster = \"en\"", "local_steps = 3", "tokens = 600", "join_at_tokens = 1000000"),
            twoClusters: true)
        defer { f.scratch.remove() }
        let up = try FedLMProcess(["up", f.topology])
        defer { up.signal(SIGKILL) }
        up.exits(by: Date().addingTimeInterval(180))
        XCTAssertEqual(up.wait(), 0, up.output)
        XCTAssertTrue(up.output.contains("trainer-t-de joins the federation"), up.output)
        let first = f.ledger("SELECT MIN(seq) FROM updates WHERE trainer = 't-de' AND outcome != 'refused'")
        XCTAssertGreaterThan(first, 0, "the newcomer's updates were accepted")
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE seq < \(first) AND outcome != 'refused'"), 2000,
                                    "it joined once the federation had accepted 2000 tokens")
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM clusters WHERE name = 'de' AND origin = 'joined with t-de'"), 1)
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM assignments WHERE trainer = 't-de' AND cluster = 'de'"), 1)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE trainer = 't-de' AND outcome != 'refused'"), 2000)
        // A mark the federation never reaches: the newcomer joins once everyone else is done.
        XCTAssertTrue(up.output.contains("trainer-t-late joins the federation (every other trainer finished before its join_at_tokens)"), up.output)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE trainer = 't-late' AND outcome != 'refused'"), 600)
    }

    func testALateSubscriberGetsASnapshotThenEveryLaterVersionOnce() throws {
        let f = try SmallFederation("""
            [aggregation]
            mode = "fedasync"
            server_optimizer = "sgd"
            [[trainer]]
            name = "t1"
            local_steps = 2
            tokens = 6000
            """)
        defer { f.scratch.remove() }
        let d = f.scratch.dir
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let trainer = try f.start("trainer", ["--name", "t1", "--threads", "1"])
        defer { for p in [trainer, aggregator, broker] { p.signal(SIGKILL) } }
        // Join late: after a few versions exist.
        let deadline = Date().addingTimeInterval(60)
        while f.version < 3, Date() < deadline { usleep(50_000) }
        let joinedAt = f.version
        XCTAssertGreaterThanOrEqual(joinedAt, 3)
        let subscriber = try f.start("subscribe", ["--out", d + "/releases", "--count", "6"])
        defer { subscriber.signal(SIGKILL) }
        XCTAssertTrue(subscriber.exits(by: Date().addingTimeInterval(60)), "subscriber did not receive 6 releases")
        let versions = subscriber.output.split(separator: "\n").compactMap { line -> Int? in
            line.hasPrefix("release v") ? Int(line.dropFirst("release v".count)) : nil
        }
        XCTAssertEqual(versions.count, 6, subscriber.output)
        XCTAssertGreaterThanOrEqual(versions.first ?? 0, joinedAt, "the first release is a snapshot of the state when it joined")
        XCTAssertEqual(versions, versions.sorted(), "in order")
        XCTAssertEqual(Set(versions).count, versions.count, "no version twice")
        // Consecutive: nothing missed between the snapshot and the stream (FedAsync: one version per update).
        XCTAssertEqual(versions.last! - versions.first!, versions.count - 1, "no version skipped: \(versions)")
        for v in versions { XCTAssertNoThrow(try Checkpoint.verifyChecksums(d + "/releases/v\(v)")) }
    }

    func testTrainersCarryOnThroughABrokerRestartWithoutLosingUpdates() throws {
        let trainer = { (name: String) in SmallFederation.trainer(name, "local_steps = 3", "tokens = 6000", "ack_timeout = 2.0") }
        let f = try SmallFederation(SmallFederation.fedbuff("max_staleness = 50") + trainer("a") + trainer("b"))
        defer { f.scratch.remove() }
        var broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let trainers = try ["a", "b"].map { try f.start("trainer", ["--name", $0, "--threads", "1"]) }
        let subscriber = try f.start("subscribe")
        defer { for p in trainers + [aggregator, broker, subscriber] { p.signal(SIGKILL) } }
        func updates() -> Int { f.ledger("SELECT COUNT(*) FROM updates WHERE outcome != 'refused'") }
        var deadline = Date().addingTimeInterval(60)
        while updates() < 4, Date() < deadline { usleep(50_000) }
        // The broker dies with messages in flight, and comes back a second later on the same ports.
        broker.signal(SIGKILL)
        broker.wait()
        let atKill = updates()
        usleep(1_000_000)
        let versionAtKill = f.version
        broker = try f.start("broker")
        XCTAssertTrue(SmallFederation.finish(trainers), "trainers finished after the broker restart")
        XCTAssertGreaterThan(updates(), atKill, "updates kept flowing after the broker came back")
        // The subscriber reconnected by itself: it holds a release newer than any before the kill,
        // up to the final version (fetched if its publication fell into the outage).
        let finalVersion = f.version
        deadline = Date().addingTimeInterval(20)
        func subscribed() -> [Int] {
            subscriber.output.split(separator: "\n").compactMap { line in
                line.range(of: "release v").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
            }
        }
        while subscribed().last ?? -1 < finalVersion, Date() < deadline { usleep(200_000) }
        XCTAssertGreaterThan(subscribed().last ?? -1, versionAtKill, subscriber.output)
        XCTAssertEqual(subscribed().last, finalVersion, "the subscriber caught up with the final version")
        XCTAssertEqual(subscribed(), subscribed().sorted(), "releases in order")
        aggregator.signal(SIGTERM)
        aggregator.wait()
        let ledger = try Ledger(path: f.ledgerPath)
        let logs = trainers.map(\.output).joined(separator: "\n")
        let acked = SmallFederation.acknowledgedIDs(in: logs)
        XCTAssertGreaterThan(acked.count, atKill)
        for id in acked { XCTAssertNotNil(try ledger.update(id: id), "acknowledged update \(id) missing") }
        // Each trainer trained its whole token budget: every finished update was delivered.
        for t in trainers { XCTAssertTrue(t.output.contains("stopped after"), t.output) }
    }

    func testSynchronousRoundsContinueWhenAParticipantDies() throws {
        let f = try SmallFederation("""
            [aggregation]
            mode = "sync"
            participants = 2
            server_optimizer = "sgd"
            server_learning_rate = 1.0
            trainer_timeout = 2.0
            [[trainer]]
            name = "a"
            local_steps = 2
            tokens = 4000
            ack_timeout = 2.0
            [[trainer]]
            name = "b"
            local_steps = 2
            tokens = 100000
            ack_timeout = 2.0
            """)
        defer { f.scratch.remove() }
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let a = try f.start("trainer", ["--name", "a", "--threads", "1"])
        let b = try f.start("trainer", ["--name", "b", "--threads", "1"])
        defer { for p in [a, b, aggregator, broker] { p.signal(SIGKILL) } }
        func version() -> Int { f.version }
        let deadline = Date().addingTimeInterval(60)
        while version() < 2, Date() < deadline { usleep(50_000) }
        XCTAssertGreaterThanOrEqual(version(), 2, "rounds complete with both participants")
        // b dies; after the timeout the rounds continue with a alone until a's budget is spent.
        b.signal(SIGKILL)
        let atDeath = version()
        XCTAssertTrue(a.exits(by: Date().addingTimeInterval(60)), "trainer a finished its budget although b died")
        XCTAssertGreaterThan(version(), atDeath + 1, "versions kept advancing after b died")
        aggregator.signal(SIGTERM)
        aggregator.wait()
        XCTAssertTrue(aggregator.output.contains("trainer b silent"), String(aggregator.output.suffix(3000)))
    }
}

/// A small federation's files: prepared data (one cluster, or English and German with
/// `twoClusters`), a small model, a topology on free ports.
struct SmallFederation {
    let scratch: Scratch
    let topology: String
    /// The broker's address for trainers.
    let trainersAddress: String
    var ledgerPath: String { scratch.dir + "/run/ledger.sqlite" }

    /// `body` is the topology's [aggregation] table and [[trainer]] entries. The default model
    /// is one layer of width 16; `twoClusters` uses two layers of width 32 on a larger vocabulary.
    init(_ body: String, twoClusters: Bool = false, embedding: Int = 16) throws {
        scratch = try Scratch()
        let data: String, model: String
        if twoClusters {
            data = try scratch.prepareData(vocab: 300, clusters: ["en": scratch.corpus, "de": try scratch.writeGermanVariant()])
            model = try scratch.writeModelConfig(vocab: 300)
        } else {
            data = try scratch.prepareData(vocab: 280, clusters: ["en": scratch.corpus])
            model = try scratch.writeModelConfig(layers: 1, embedding: embedding, context: 16, vocab: 280, batch: 2, training: "")
        }
        let port = Int.random(in: 20_000...32_000)  // below the ephemeral port range
        topology = scratch.dir + "/topology.toml"
        trainersAddress = "tcp://127.0.0.1:\(port)"
        try """
            run_directory = "\(scratch.dir)/run"
            model = "\(model)"
            data = "\(data)"
            [broker]
            trainers = "\(trainersAddress)"
            aggregator = "tcp://127.0.0.1:\(port + 1)"
            publish = "tcp://127.0.0.1:\(port + 2)"
            releases = "tcp://127.0.0.1:\(port + 3)"
            \(body)
            """.write(toFile: topology, atomically: true, encoding: .utf8)
    }

    /// An `[aggregation]` table: FedBuff with K = 2 and plain SGD at rate 1 as the outer step,
    /// then further keys, one TOML line each.
    static func fedbuff(_ keys: String...) -> String { fedbuff(keys) }

    static func fedbuff(_ keys: [String]) -> String {
        "[aggregation]\nmode = \"fedbuff\"\nbuffer_size = 2\nserver_optimizer = \"sgd\"\nserver_learning_rate = 1.0\n"
            + keys.map { $0 + "\n" }.joined()
    }

    /// Two organisations, trainers t-en and t-de, each with its own data cluster and cluster
    /// (`[clusters]` names en and de, plus `clusterKeys`), 6000 tokens each, H = 3.
    static func twoOrganisations(clusterKeys: String = "") throws -> SmallFederation {
        let trainer = { (name: String, cluster: String) in
            SmallFederation.trainer(name, "clusters = [\"\(cluster)\"]", "cluster = \"\(cluster)\"", "local_steps = 3", "tokens = 6000")
        }
        return try SmallFederation(fedbuff("checkpoint_every = 2", "[clusters]", "names = [\"en\", \"de\"]", clusterKeys)
                                   + trainer("t-en", "en") + trainer("t-de", "de"), twoClusters: true)
    }

    /// A `[[trainer]]` entry of a topology: its name and further keys, one TOML line each.
    static func trainer(_ name: String, _ keys: String...) -> String { trainer(name, keys) }

    static func trainer(_ name: String, _ keys: [String]) -> String {
        "\n[[trainer]]\nname = \"\(name)\"\n" + keys.map { $0 + "\n" }.joined()
    }

    func start(_ role: String, _ extra: [String] = []) throws -> FedLMProcess {
        try FedLMProcess([role, "--topology", topology] + extra)
    }

    /// Starts the broker, the aggregator and the named trainers, one compute thread each.
    func startFederation(trainers names: [String]) throws -> (broker: FedLMProcess, aggregator: FedLMProcess, trainers: [FedLMProcess]) {
        let broker = try start("broker")
        let aggregator = try start("aggregator", ["--threads", "1"])
        return (broker, aggregator, try names.map { try start("trainer", ["--name", $0, "--threads", "1"]) })
    }

    /// Waits up to `seconds` for every trainer to finish its budget, and says whether all did.
    static func finish(_ trainers: [FedLMProcess], within seconds: Double = 120) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        for t in trainers { t.exits(by: deadline) }
        return trainers.allSatisfy { !$0.process.isRunning }
    }

    /// A `[[region]]` table: its name and further keys, its own broker on four ports from
    /// `port`, FedBuff K = 2 with plain SGD at rate 1 and `aggregation` keys, and `trainers`
    /// (`trainer(...)` entries, made the region's).
    static func region(_ name: String, port: Int, keys: [String], aggregation: [String], trainers: [String]) -> String {
        "\n[[region]]\nname = \"\(name)\"\n" + keys.map { $0 + "\n" }.joined()
            + "[region.broker]\n" + ["trainers", "aggregator", "publish", "releases"].enumerated()
                .map { "\($0.element) = \"tcp://127.0.0.1:\(port + $0.offset)\"\n" }.joined()
            + fedbuff(aggregation).replacingOccurrences(of: "[aggregation]", with: "[region.aggregation]")
            + trainers.joined().replacingOccurrences(of: "[[trainer]]", with: "[[region.trainer]]")
    }

    /// Adds tables to the topology (before any process reads it).
    func append(_ text: String) throws {
        try (String(contentsOfFile: topology, encoding: .utf8) + text).write(toFile: topology, atomically: true, encoding: .utf8)
    }

    /// Waits up to `seconds` for `condition`; fails the test naming `what` if it never holds.
    static func waitFor(_ what: String, seconds: Double = 120, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition(), Date() < deadline { usleep(100_000) }
        XCTAssertTrue(condition(), "timed out waiting for \(what)")
    }

    /// An integer from the aggregator's ledger (0 while it does not exist yet).
    func ledger(_ sql: String) -> Int { Self.query(ledgerPath, sql) }

    /// An integer from a ledger file (0 while it does not exist yet).
    static func query(_ path: String, _ sql: String) -> Int {
        guard FileManager.default.fileExists(atPath: path), let db = try? SQLiteDatabase(path: path) else { return 0 }
        return (try? db.query(sql))?.first?[0].int ?? 0
    }

    var version: Int { ledger("SELECT COALESCE(MAX(version_after), 0) FROM updates") }

    /// The end of a run: each trainer must finish its budget within 240 s, then the aggregator
    /// is stopped (it must exit cleanly) and the broker. Returns `logs` followed by the trainers'
    /// and the aggregator's output, joined.
    static func finish(_ trainers: [(name: String, process: FedLMProcess)], aggregator: FedLMProcess, broker: FedLMProcess,
                       logs: [String], file: StaticString = #filePath, line: UInt = #line) -> String {
        var logs = logs
        for (name, p) in trainers {
            XCTAssertTrue(p.exits(by: Date().addingTimeInterval(240)), "\(name) did not finish", file: file, line: line)
            logs.append(p.output)
        }
        aggregator.signal(SIGTERM)
        XCTAssertEqual(aggregator.wait(), 0, aggregator.output, file: file, line: line)
        logs.append(aggregator.output)
        broker.signal(SIGTERM)
        broker.wait()
        return logs.joined(separator: "\n")
    }

    /// The update ids trainers logged as acknowledged ("... update <id> acknowledged ...").
    static func acknowledgedIDs(in logs: String) -> [String] {
        logs.split(separator: "\n").compactMap { line -> String? in
            guard let r = line.range(of: "update "), let end = line.range(of: " acknowledged") else { return nil }
            return String(line[r.upperBound..<end.lowerBound])
        }
    }
}
