import FedLMLedger
import Foundation
import XCTest

/// A federation of federations as it runs: a top broker and aggregator, two regions each with
/// its own broker, aggregator and two trainers, all separate processes over TCP loopback. A
/// regional aggregator and then the top aggregator are SIGKILLed and restarted, and the top
/// broker is stopped for a while (the regions' uplink cut) and started again. The top keeps a
/// personalized model per region (`[clusters]` named after the regions).
final class HierarchyTests: XCTestCase {
    func testRegionsTrainThroughKillsAtBothLevelsAndAnUplinkOutageAndEveryTokenReachesTheTopOnce() throws {
        let trainer = { (name: String) in SmallFederation.trainer(name, "local_steps = 3", "tokens = 14000", "ack_timeout = 2.0") }
        let f = try SmallFederation(SmallFederation.fedbuff("max_staleness = 50", "checkpoint_every = 2", "durability = \"process\"",
                                                                    "[clusters]", "names = [\"north\", \"south\"]"))
        defer { f.scratch.remove() }
        let port = Int(f.trainersAddress.split(separator: ":").last!)!
        func region(_ name: String, _ offset: Int, cadence: String, trainers: [String]) -> String {
            SmallFederation.region(name, port: port + offset, keys: [cadence, "ack_timeout = 2.0"],
                                   aggregation: ["max_staleness = 50", "checkpoint_every = 3", "durability = \"process\""],
                                   trainers: trainers.map { trainer($0) })
        }
        // North sends up every two regional versions; south once it accepted 384 tokens (two
        // versions of two 96-token updates each) since its last update.
        try f.append(region("north", 4, cadence: "upstream_every = 2", trainers: ["n1", "n2"])
                     + region("south", 8, cadence: "upstream_tokens = 384", trainers: ["s1", "s2"]))
        let regions = ["north", "south"]
        var topBroker = try f.start("broker")
        let regionBrokers = try regions.map { try f.start("broker", ["--region", $0]) }
        var top = try f.start("aggregator", ["--threads", "1"])
        var regional = try Dictionary(uniqueKeysWithValues: regions.map { ($0, try f.start("aggregator", ["--region", $0, "--threads", "1"])) })
        let trainers = try ["n1", "n2", "s1", "s2"].map { ($0, try f.start("trainer", ["--name", $0, "--threads", "1"])) }
        var logs: [String] = []
        defer { for p in trainers.map(\.1) + regional.values + regionBrokers + [top, topBroker] { p.signal(SIGKILL) } }
        func topCount(_ sql: String) -> Int { f.ledger(sql) }
        func regionCount(_ name: String, _ sql: String) -> Int { SmallFederation.query(f.scratch.dir + "/run/regions/\(name)/ledger.sqlite", sql) }
        func sentUp(_ name: String) -> Int { topCount("SELECT COUNT(*) FROM updates WHERE trainer = 'region-\(name)' AND outcome != 'refused'") }

        // A regional aggregator dies once its region has sent two updates up; it resumes.
        SmallFederation.waitFor("north's first updates above") { sentUp("north") >= 2 }
        regional["north"]!.signal(SIGKILL)
        regional["north"]!.wait()
        logs.append(regional["north"]!.output)
        regional["north"] = try f.start("aggregator", ["--region", "north", "--threads", "1"])

        // The top aggregator dies once the restarted region delivered more; it resumes.
        let northBefore = sentUp("north")
        SmallFederation.waitFor("north's updates after its restart") { sentUp("north") > northBefore }
        top.signal(SIGKILL)
        top.wait()
        logs.append(top.output)
        top = try f.start("aggregator", ["--threads", "1"])

        // The uplink is cut: the top broker stops for 8 s. The regions keep training meanwhile.
        SmallFederation.waitFor("updates after the top's restart") { sentUp("south") >= 3 }
        topBroker.signal(SIGTERM)
        topBroker.wait()
        let regionalAtCut = regions.map { regionCount($0, "SELECT COALESCE(MAX(version_after), 0) FROM updates") }
        let topAtCut = topCount("SELECT COUNT(*) FROM updates")
        func regionalVersions() -> [Int] { regions.map { regionCount($0, "SELECT COALESCE(MAX(version_after), 0) FROM updates") } }
        SmallFederation.waitFor("every region training on while the uplink is cut") {
            zip(regionalAtCut, regionalVersions()).allSatisfy { $1 > $0 }
        }
        let regionalAfterCut = regionalVersions()
        XCTAssertEqual(topCount("SELECT COUNT(*) FROM updates"), topAtCut, "nothing reached the top while its broker was down")
        for (before, after) in zip(regionalAtCut, regionalAfterCut) {
            XCTAssertGreaterThan(after, before, "a region kept training while its uplink was cut")
        }
        topBroker = try f.start("broker")

        // Trainers finish; the regions send what is left up as they stop; then the top stops.
        for (name, p) in trainers {
            XCTAssertTrue(p.exits(by: Date().addingTimeInterval(240)), "\(name) did not finish")
            logs.append(p.output)
        }
        for name in regions {
            regional[name]!.signal(SIGTERM)
            XCTAssertEqual(regional[name]!.wait(), 0, regional[name]!.output)
            logs.append(regional[name]!.output)
        }
        top.signal(SIGTERM)
        XCTAssertEqual(top.wait(), 0, top.output)
        logs.append(top.output)
        let allLogs = logs.joined(separator: "\n")
        XCTAssertEqual(allLogs.components(separatedBy: "restored v").count - 1, 2, "both restarted aggregators restored their state")

        // Every acknowledged update is in the ledger of the level that acknowledged it, never refused.
        let acked = SmallFederation.acknowledgedIDs(in: allLogs)
        let topLedger = try Ledger(path: f.ledgerPath)
        let regionLedgers = try Dictionary(uniqueKeysWithValues: regions.map { ($0, try Ledger(path: f.scratch.dir + "/run/regions/\($0)/ledger.sqlite")) })
        XCTAssertGreaterThan(acked.filter { $0.hasPrefix("region-") }.count, 6)
        for id in acked {
            let ledger = id.hasPrefix("region-north") ? topLedger : id.hasPrefix("region-south") ? topLedger
                : id.hasPrefix("n") ? regionLedgers["north"]! : regionLedgers["south"]!
            let record = try ledger.update(id: id)
            XCTAssertTrue(record.map { $0.outcome != .refused } == true, "acknowledged update \(id): \(String(describing: record?.outcome))")
        }
        // Every token each region accepted reached the top exactly once: nothing lost in the
        // kills or the outage, nothing counted twice by a resend.
        for name in regions {
            let regionTokens = try regionLedgers[name]!.acceptedTokens()
            let topTokens = topCount("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE trainer = 'region-\(name)' AND outcome != 'refused'")
            XCTAssertGreaterThanOrEqual(regionTokens, 28000, "\(name)'s trainers' budgets all accepted in the region")
            XCTAssertEqual(topTokens, regionTokens, "\(name)'s tokens at the top")
            XCTAssertGreaterThan(try regionLedgers[name]!.metrics("adopted_from_above").count, 2, "\(name) adopted releases from above")
            XCTAssertEqual(topCount("SELECT COUNT(*) FROM updates WHERE trainer = 'region-\(name)' AND (cluster IS NULL OR cluster != '\(name)')"), 0,
                           "\(name)'s updates went to its own personalized model above")
        }
        XCTAssertLessThanOrEqual(topCount("SELECT COUNT(*) FROM updates WHERE trainer = 'region-south' AND outcome != 'refused' AND tokens < 384"), 1,
                                 "south sent up every 384 tokens (only its last update, at its stop, may carry fewer)")
        let ids = try topLedger.database.query("SELECT id FROM updates").compactMap { $0[0].string }
        XCTAssertEqual(ids.count, Set(ids).count, "each update recorded once at the top")
        // `fedlm status` shows both levels from their ledgers: the regions as trainers above,
        // their own trainers below, the same counts as the ledgers.
        let (status, out) = try FedLMProcess.run(["status", f.topology, "--json"])
        XCTAssertEqual(status, 0, out)
        let levels = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], out)
        XCTAssertEqual(levels.map { $0["name"] as? String }, ["top", "region north", "region south"])
        func trainersAt(_ level: [String: Any]) -> [String: [String: Any]] {
            let list = (level["status"] as? [String: Any])?["trainers"] as? [[String: Any]] ?? []
            return Dictionary(uniqueKeysWithValues: list.map { ($0["id"] as? String ?? "", $0) })
        }
        XCTAssertEqual(Set(trainersAt(levels[0]).keys), ["region-north", "region-south"])
        XCTAssertEqual(trainersAt(levels[0])["region-north"]?["accepted"] as? Int, sentUp("north"))
        XCTAssertEqual(Set(trainersAt(levels[1]).keys), ["n1", "n2"])
        XCTAssertEqual((levels[2]["status"] as? [String: Any])?["tokens"] as? Int, try regionLedgers["south"]!.acceptedTokens())
        let (textStatus, text) = try FedLMProcess.run(["status", f.topology])
        XCTAssertEqual(textStatus, 0, text)
        XCTAssertTrue(text.contains("region north") && text.contains("adopted version"), text)
        print("hierarchy: \(sentUp("north")) + \(sentUp("south")) regional updates at the top, versions \(regionalAfterCut) during the cut")
    }

    /// CURVE at every level: `fedlm keys generate --topology` makes each level's pairs and
    /// allow-list (a region's in <keys>/regions/<name>, its aggregator's member key region-<name>
    /// at the top), `fedlm up` runs the secured hierarchy to the end, and a region's trainer key
    /// gets nothing at the top (keys work only at their level).
    func testASecuredHierarchyRunsUnderUpAndKeysWorkOnlyAtTheirLevel() throws {
        let keys = NSTemporaryDirectory() + "fedlm-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let f = try SmallFederation("[security]\nkeys = \"\(keys)\"\n" + SmallFederation.fedbuff("durability = \"process\""))
        defer { f.scratch.remove() }
        let port = Int(f.trainersAddress.split(separator: ":").last!)!
        let trainers = ["n1", "n2"].map { SmallFederation.trainer($0, "local_steps = 3", "tokens = 3000") }
        try f.append(SmallFederation.region("north", port: port + 4, keys: ["upstream_every = 2"], aggregation: ["durability = \"process\""],
                                            trainers: trainers))
        let (generated, output) = try FedLMProcess.run(["keys", "generate", "--topology", f.topology])
        XCTAssertEqual(generated, 0, output)
        let fm = FileManager.default
        for file in ["broker", "aggregator", "region-north"].map({ "\(keys)/\($0).secret" })
            + ["broker", "aggregator", "n1", "n2"].map({ "\(keys)/regions/north/\($0).secret" }) + ["\(keys)/allowed.toml", "\(keys)/regions/north/allowed.toml"] {
            XCTAssertTrue(fm.fileExists(atPath: file), "\(file): \(output)")
        }
        XCTAssertFalse(fm.fileExists(atPath: "\(keys)/n1.secret"), "a region's trainer has no key at the top")
        let up = try FedLMProcess(["up", f.topology])
        defer { up.signal(SIGKILL) }
        XCTAssertTrue(up.exits(by: Date().addingTimeInterval(240)), up.output)
        XCTAssertEqual(up.wait(), 0, up.output)
        let logs = f.scratch.dir + "/run/logs/"
        for broker in ["broker", "broker-north"] {
            let log = (try? String(contentsOfFile: logs + broker + ".log", encoding: .utf8)) ?? ""
            XCTAssertTrue(log.contains("CURVE on every socket"), "\(broker): \(log)")
        }
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'region-north' AND outcome != 'refused'"), 1,
                                    "the region reached the top as its member region-north")
        XCTAssertEqual(SmallFederation.query(f.scratch.dir + "/run/regions/north/ledger.sqlite",
                                             "SELECT COUNT(DISTINCT trainer) FROM updates WHERE outcome != 'refused'"), 2)

        // A region's trainer key at the top broker: refused at the handshake, nothing recorded.
        let topBroker = try f.start("broker")
        let topAggregator = try f.start("aggregator", ["--threads", "1"])
        defer { for p in [topBroker, topAggregator] { p.signal(SIGKILL) } }
        let before = f.ledger("SELECT COUNT(*) FROM updates")
        let wrongLevel = try FedLMProcess(["trainer", "--broker", f.trainersAddress, "--data", f.scratch.dir + "/data",
                                           "--config", f.scratch.dir + "/model.toml", "--name", "n1", "--max-local-steps", "1",
                                           "--tokens", "200", "--threads", "1", "--state", f.scratch.dir + "/n1-above",
                                           "--key", keys + "/regions/north/n1", "--broker-key", keys + "/broker.public"])
        defer { wrongLevel.signal(SIGKILL) }
        SmallFederation.waitFor("the top broker to refuse the region's key", seconds: 30) {
            (try? String(contentsOfFile: f.scratch.dir + "/run/logs/broker.log", encoding: .utf8))?.contains("refused key") == true
                || topBroker.output.contains("refused key")
        }
        XCTAssertFalse(wrongLevel.output.contains("registered"), wrongLevel.output)
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates"), before, "nothing from a key of another level")
    }

}
