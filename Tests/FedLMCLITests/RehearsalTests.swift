import FedLMFederation
import FedLMTestSupport
import Foundation
import XCTest

/// A rehearsal of a worldwide run with real processes: a secured federation of two regions, each
/// region's aggregator reaching the top through a relay that delays and paces its bytes (an
/// emulated long link: `FEDLM_REHEARSAL_RTT_MS`, `FEDLM_REHEARSAL_RATE_MBIT`), members
/// joining from invitation files (a Swift trainer and a PyTorch trainer on raw text), one member
/// revoked mid-run, and one region's uplink cut for a while (`FEDLM_REHEARSAL_CUT`, seconds;
/// `scripts/rehearsal` cuts it for a minute). The run finishes, the revoked member gets nothing
/// in after its revocation, and every acknowledged update is in its level's ledger exactly once.
final class RehearsalTests: XCTestCase {
    var cutSeconds: Double { Double(ProcessInfo.processInfo.environment["FEDLM_REHEARSAL_CUT"] ?? "") ?? 8 }
    var roundTripMs: Int { Int(ProcessInfo.processInfo.environment["FEDLM_REHEARSAL_RTT_MS"] ?? "") ?? 100 }
    var rateMbit: Int { Int(ProcessInfo.processInfo.environment["FEDLM_REHEARSAL_RATE_MBIT"] ?? "") ?? 100 }
    /// The regions' `ack_timeout` (seconds; the default 30 when unset).
    var ackTimeout: Double? { Double(ProcessInfo.processInfo.environment["FEDLM_REHEARSAL_ACK_TIMEOUT"] ?? "") }
    /// Each region's trainer trains through the cut and the revocation after it, so the south
    /// sends up again and the north's broker is still there to refuse the revoked key: about
    /// 700 tokens per second of the run (with every process on two cores), the cut plus 12 s.
    var regionTokens: Int { Int((cutSeconds + 12) * 700) }

    func testASecuredHierarchyWithInvitedMembersARevocationAndAnUplinkCutLosesNothing() throws {
        _ = try ClientPython.interpreter()  // skip or fail before anything starts
        let keys = NSTemporaryDirectory() + "fedlm-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let f = try SmallFederation("[security]\nkeys = \"\(keys)\"\n"
                                    + SmallFederation.fedbuff("durability = \"process\"", "max_staleness = 50"))
        defer { f.scratch.remove() }
        let port = Int(f.trainersAddress.split(separator: ":").last!)!
        let relayPorts = ["north": port + 12, "south": port + 13]
        try f.append(region("north", port: port + 4, upstream: relayPorts["north"]!, trainer: "n1")
                     + region("south", port: port + 8, upstream: relayPorts["south"]!, trainer: "s1"))
        let (generated, output) = try FedLMProcess.run(["keys", "generate", "--topology", f.topology])
        XCTAssertEqual(generated, 0, output)

        // Invitations: a Swift member in the north, a PyTorch member in the south, and one to be revoked.
        let text = try memberText(f)
        func invite(_ name: String, _ region: String, tokens: Int) throws -> String {
            let file = f.scratch.dir + "/\(name).invitation"
            let (status, output) = try FedLMProcess.run(["invite", "--topology", f.topology, "--region", region, "--name", name,
                                                         "--tokens", "\(tokens)", "--local-steps", "2", "--out", file])
            XCTAssertEqual(status, 0, output)
            return file
        }
        let swiftGuest = try invite("guest-swift", "north", tokens: 640)
        let torchGuest = try invite("guest-torch", "south", tokens: 256)
        let revokedGuest = try invite("guest-revoked", "north", tokens: 1_000_000)

        // The long links: each region's aggregator reaches the top broker through a delay relay.
        var relays = try relayPorts.mapValues { try startRelay(listen: $0, target: port) }
        defer { for r in relays.values where r.isRunning { r.terminate() } }
        let up = try FedLMProcess(["up", f.topology])
        defer { up.signal(SIGKILL) }
        let member = try FedLMProcess(["trainer", "--join", swiftGuest, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/guest-swift"])
        let revoked = try FedLMProcess(["trainer", "--join", revokedGuest, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/guest-revoked"])
        let torchLog = f.scratch.dir + "/guest-torch.log"
        let torch = try ClientPython.startTrainer(["--join", torchGuest, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/guest-torch"],
                                                  log: torchLog)
        defer {
            for p in [member, revoked] { p.signal(SIGKILL) }
            if torch.isRunning { torch.terminate() }
        }
        let north = f.scratch.dir + "/run/regions/north/ledger.sqlite", south = f.scratch.dir + "/run/regions/south/ledger.sqlite"
        func accepted(_ ledger: String, _ trainer: String) -> Int {
            SmallFederation.query(ledger, "SELECT COUNT(*) FROM updates WHERE trainer = '\(trainer)' AND outcome IN ('applied', 'buffered')")
        }

        // The south's uplink cut as soon as the south has reached the top (its trainer still has
        // most of its budget to train): its relay gone for a while, then back.
        SmallFederation.waitFor("the south to reach the top", seconds: 120) { f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'region-south'") >= 1 }
        relays["south"]!.terminate()
        relays["south"]!.waitUntilExit()
        let southAtCut = f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'region-south'")
        usleep(UInt32(cutSeconds * 1_000_000))
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'region-south'"), southAtCut, "nothing crossed the cut link")
        relays["south"] = try startRelay(listen: relayPorts["south"]!, target: port)

        // Revoked mid-run, once it has contributed: nothing more of it gets in.
        SmallFederation.waitFor("the member to be revoked contributing", seconds: 120) { accepted(north, "guest-revoked") >= 1 }
        let (status, revokeOutput) = try FedLMProcess.run(["invite", "--topology", f.topology, "--region", "north", "--revoke", "guest-revoked"])
        XCTAssertEqual(status, 0, revokeOutput)
        // The broker reads the allow-list once a second: from its first refusal of the revoked key on,
        // nothing more of the member gets in (an update it forwarded before may still land).
        let northBrokerLog = f.scratch.dir + "/run/logs/broker-north.log"
        func refusedRevoked() -> Bool {
            let log = (try? String(contentsOfFile: northBrokerLog, encoding: .utf8)) ?? ""
            return log.contains("no longer allowed") || log.contains("refused key")
        }
        SmallFederation.waitFor("the north broker to refuse the revoked key", seconds: 60, refusedRevoked)
        let atRevocation = accepted(north, "guest-revoked")

        XCTAssertTrue(member.exits(by: Date().addingTimeInterval(180)), member.output)
        XCTAssertEqual(member.wait(), 0, member.output)
        let deadline = Date().addingTimeInterval(240)
        while torch.isRunning, Date() < deadline { usleep(200_000) }
        let torchOutput = (try? String(contentsOfFile: torchLog, encoding: .utf8)) ?? "(no log at \(torchLog))"
        XCTAssertEqual(torch.isRunning ? -1 : torch.terminationStatus, 0, "PyTorch member:\n\(torchOutput)")
        XCTAssertTrue(up.exits(by: Date().addingTimeInterval(240)), up.output)
        XCTAssertEqual(up.wait(), 0, up.output)

        XCTAssertEqual(accepted(north, "guest-revoked"), atRevocation, "nothing of a revoked member after its revocation:\n\(revoked.output)")
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'region-south'"), southAtCut + 1,
                                    "the south sent up again after the cut")
        // Every acknowledged update in its level's ledger once: a trainer's acknowledged count is
        // its accepted rows (ids are unique in a ledger, so a resent update is one row).
        let top = f.ledgerPath
        for (name, state, ledger) in [("guest-swift", f.scratch.dir + "/guest-swift/state", north),
                                      ("guest-torch", f.scratch.dir + "/guest-torch/state", south),
                                      ("n1", f.scratch.dir + "/run/regions/north/trainers/n1", north),
                                      ("s1", f.scratch.dir + "/run/regions/south/trainers/s1", south),
                                      ("region-north", f.scratch.dir + "/run/regions/north/uplink", top),
                                      ("region-south", f.scratch.dir + "/run/regions/south/uplink", top)] {
            let stats = try acknowledged(state)
            XCTAssertGreaterThanOrEqual(stats, 1, "\(name) had updates acknowledged")
            XCTAssertEqual(accepted(ledger, name), stats, "\(name): acknowledged updates against its rows in the ledger")
        }
    }

    /// A region of one topology trainer whose aggregator reaches the top through `upstream`.
    func region(_ name: String, port: Int, upstream: Int, trainer: String) -> String {
        SmallFederation.region(name, port: port, keys: ["upstream_every = 2", "upstream = \"tcp://127.0.0.1:\(upstream)\""]
                                   + (ackTimeout.map { ["ack_timeout = \($0)"] } ?? []),
                               aggregation: ["max_staleness = 50", "durability = \"process\""],
                               trainers: [SmallFederation.trainer(trainer, "local_steps = 3", "tokens = \(regionTokens)")])
    }

    /// A member's own raw text (plain, and JSON lines).
    func memberText(_ f: SmallFederation) throws -> String {
        let dir = f.scratch.dir + "/member-text"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let corpus = try String(contentsOfFile: f.scratch.corpus, encoding: .utf8)
        try corpus.write(toFile: dir + "/a.txt", atomically: true, encoding: .utf8)
        try ([#"{"text": "the cat sat on the mat"}"#, #"{"text": "a second document of the member"}"#].joined(separator: "\n") + "\n")
            .write(toFile: dir + "/notes.jsonl", atomically: true, encoding: .utf8)
        return dir
    }

    /// `scripts/lib/wan_relay.py` from `listen` to `target` on loopback, with the rehearsal's round
    /// trip and bandwidth.
    func startRelay(listen: Int, target: Int) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [ReferencePython.packageRoot.appendingPathComponent("scripts/lib/wan_relay.py").path,
                       "127.0.0.1:\(listen)", "127.0.0.1:\(target)", "--rtt-ms", "\(roundTripMs)", "--rate-mbit", "\(rateMbit)", "--pace"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        usleep(300_000)
        return p
    }

    /// `updatesAcknowledged` of a trainer's `stats.json`.
    func acknowledged(_ state: String) throws -> Int {
        let data = try Data(contentsOf: URL(fileURLWithPath: state + "/stats.json"))
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], state)
        return try XCTUnwrap(json["updatesAcknowledged"] as? Int, "\(state)/stats.json: \(json)")
    }
}
