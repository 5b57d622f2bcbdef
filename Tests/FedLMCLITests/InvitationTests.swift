import FedLMFederation
import FedLMTestSupport
import Foundation
import XCTest

/// Joining with one file: `fedlm invite` writes an invitation and adds the member's key to the
/// allow-list of a running broker; `fedlm trainer --join FILE --text PATH` tokenizes the member's
/// own text with the federation's tokenizer and trains until its budget is in the ledger. An
/// edited, expired or revoked invitation gets nothing in, each with a message saying why.
final class InvitationTests: XCTestCase {
    func testAMemberJoinsWithAnInvitationAndEditedExpiredOrRevokedOnesAreRefused() throws {
        let keys = NSTemporaryDirectory() + "fedlm-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let f = try SmallFederation("[security]\nkeys = \"\(keys)\"\n" + SmallFederation.fedbuff("durability = \"process\"")
                                    + SmallFederation.trainer("t1", "local_steps = 2", "tokens = 2000"))
        defer { f.scratch.remove() }
        let (generated, output) = try FedLMProcess.run(["keys", "generate", "--topology", f.topology])
        XCTAssertEqual(generated, 0, output)
        let broker = try f.start("broker"), aggregator = try f.start("aggregator", ["--threads", "1"])
        let t1 = try f.start("trainer", ["--name", "t1", "--threads", "1"])
        defer { for p in [broker, aggregator, t1] { p.signal(SIGKILL) } }
        // The member's own text: plain and gzip-compressed.
        let text = f.scratch.dir + "/member-text"
        try FileManager.default.createDirectory(atPath: text, withIntermediateDirectories: true)
        let corpus = try String(contentsOfFile: f.scratch.corpus, encoding: .utf8)
        try String(corpus.prefix(corpus.count / 2)).write(toFile: text + "/a.txt", atomically: true, encoding: .utf8)
        try String(corpus.suffix(corpus.count / 2)).write(toFile: text + "/b.txt", atomically: true, encoding: .utf8)
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzip.arguments = [text + "/b.txt"]
        try gzip.run()
        gzip.waitUntilExit()

        let invitation = f.scratch.dir + "/vol.invitation"
        let (invited, inviteOutput) = try FedLMProcess.run(["invite", "--topology", f.topology, "--name", "vol", "--tokens", "400",
                                                            "--local-steps", "2", "--out", invitation])
        XCTAssertEqual(invited, 0, inviteOutput)
        let mode = (try FileManager.default.attributesOfItem(atPath: invitation)[.posixPermissions] as? NSNumber)?.intValue
        XCTAssertEqual(mode, 0o600, "it holds a secret key")
        XCTAssertTrue(try String(contentsOfFile: keys + "/allowed.toml", encoding: .utf8).contains("\"vol\" = "))
        // The same name again is refused (the allow-list binds it already).
        XCTAssertNotEqual(try FedLMProcess.run(["invite", "--topology", f.topology, "--name", "vol", "--out", invitation + "2"]).0, 0)

        // An edited copy: refused as tampered, before anything connects.
        var edited = try String(contentsOfFile: invitation, encoding: .utf8)
        edited = edited.replacingOccurrences(of: "\"localSteps\" : 2", with: "\"localSteps\" : 200")
        try edited.write(toFile: invitation + ".edited", atomically: true, encoding: .utf8)
        let (status, message) = try FedLMProcess.run(["trainer", "--join", invitation + ".edited", "--text", text])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(message.contains("(tampered)"), message)

        // The real one: one command from the file to acknowledged updates.
        let member = try FedLMProcess(["trainer", "--join", invitation, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/vol"])
        defer { member.signal(SIGKILL) }
        guard member.exits(by: Date().addingTimeInterval(120)) else {
            return XCTFail("the member did not finish its budget: \(member.output)\nbroker: \(broker.output)")
        }
        XCTAssertEqual(member.wait(), 0, member.output)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'vol' AND outcome != 'refused'"), 1, member.output)
        // Its budget, to the step (batch 2 x 16 tokens: 13 steps).
        XCTAssertEqual(f.ledger("SELECT SUM(tokens) FROM updates WHERE trainer = 'vol' AND outcome != 'refused'"), 416)
        XCTAssertTrue(FileManager.default.fileExists(atPath: f.scratch.dir + "/vol/data/manifest.json"))

        // The PyTorch trainer joins from an invitation the same way (JSONL and gzip text here).
        try joinWithPyTorch(f, text: text)

        // An expired invitation.
        let short = f.scratch.dir + "/short.invitation"
        XCTAssertEqual(try FedLMProcess.run(["invite", "--topology", f.topology, "--name", "brief", "--valid-days", "0.00001", "--out", short]).0, 0)
        usleep(1_500_000)
        let (expiredStatus, expiredMessage) = try FedLMProcess.run(["trainer", "--join", short, "--text", text])
        XCTAssertNotEqual(expiredStatus, 0)
        XCTAssertTrue(expiredMessage.contains("(expired)"), expiredMessage)

        // Revoked: the key leaves the allow-list, and the member's handshakes are refused.
        let (revoked, revokeOutput) = try FedLMProcess.run(["invite", "--topology", f.topology, "--revoke", "vol"])
        XCTAssertEqual(revoked, 0, revokeOutput)
        XCTAssertFalse(try String(contentsOfFile: keys + "/allowed.toml", encoding: .utf8).contains("\"vol\""))
        let before = f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'vol'")
        let again = try FedLMProcess(["trainer", "--join", invitation, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/vol2"])
        defer { again.signal(SIGKILL) }
        SmallFederation.waitFor("the broker to refuse the revoked key", seconds: 30) { broker.output.contains("refused key") }
        XCTAssertEqual(f.ledger("SELECT COUNT(*) FROM updates WHERE trainer = 'vol'"), before, "nothing more from a revoked member")
    }

    /// `fedlm-torch-trainer --join FILE --text PATH...`: nothing else on its command line; an edited
    /// copy is refused as tampered.
    func joinWithPyTorch(_ f: SmallFederation, text: String) throws {
        _ = try ClientPython.interpreter()  // skip or fail before any federation starts
        let invitation = f.scratch.dir + "/torch.invitation"
        let (invited, output) = try FedLMProcess.run(["invite", "--topology", f.topology, "--name", "torch-vol", "--tokens", "256",
                                                      "--local-steps", "2", "--out", invitation])
        XCTAssertEqual(invited, 0, output)
        try ([#"{"text": "the cat sat on the mat"}"#, #"{"text": "a second document of the member"}"#].joined(separator: "\n") + "\n")
            .write(toFile: text + "/notes.jsonl", atomically: true, encoding: .utf8)
        func torch(_ file: String) throws -> (Int32, String) {
            let log = f.scratch.dir + "/torch-\(UInt32.random(in: 0...UInt32.max)).log"
            let p = try ClientPython.startTrainer(["--join", file, "--text", text, "--threads", "1", "--state", f.scratch.dir + "/torch-vol"],
                                                  log: log)
            let deadline = Date().addingTimeInterval(240)
            while p.isRunning, Date() < deadline { usleep(200_000) }
            if p.isRunning { p.terminate(); p.waitUntilExit() }
            return (p.terminationStatus, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        }
        var edited = try String(contentsOfFile: invitation, encoding: .utf8)
        edited = edited.replacingOccurrences(of: "torch-vol", with: "torch-vo1")
        try edited.write(toFile: invitation + ".edited", atomically: true, encoding: .utf8)
        let (refused, refusal) = try torch(invitation + ".edited")
        XCTAssertNotEqual(refused, 0)
        XCTAssertTrue(refusal.contains("(tampered)"), refusal)
        let (status, log) = try torch(invitation)
        XCTAssertEqual(status, 0, log)
        XCTAssertGreaterThanOrEqual(f.ledger("SELECT SUM(tokens) FROM updates WHERE trainer = 'torch-vol' AND outcome != 'refused'"), 256, log)
    }
}
