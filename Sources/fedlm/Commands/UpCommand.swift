import ArgumentParser
import FedLMData
import FedLMFederation
import FedLMLedger
import Foundation

/// Starts a whole federation on this machine from a topology, as separate processes.
struct UpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "up",
        abstract: "Start broker, aggregator and trainers of a topology as separate processes; show progress; stop all on Ctrl-C.",
        discussion: "Leaves the run directory: ledger.sqlite, checkpoints/, logs/ (one log per process). Rerunning resumes it; --fresh starts over.")

    @Argument(help: "Topology file, e.g. Topologies/demo.toml.") var topology: String
    @Flag(help: "Delete the run directory first.") var fresh = false

    func run() throws {
        let t = try Topology.load(path: topology)
        // Fail before starting anything if the model config or the prepared data is not there.
        _ = try ConfigResolution.load(t.modelConfigPath)
        let manifest = try DataManifest.load(directory: t.dataDirectory)
        for trainer in t.trainers {
            for c in trainer.clusters ?? [] where !manifest.clusters.contains(where: { $0.name == c }) {
                throw RunFailure("\(topology): trainer \(trainer.name) names cluster '\(c)', which \(t.dataDirectory) does not have (it has: \(manifest.clusters.map(\.name).joined(separator: ", ")))")
            }
        }
        let fm = FileManager.default
        if fresh { try? fm.removeItem(atPath: t.runDirectory) }
        let logs = t.runDirectory + "/logs"
        try fm.createDirectory(atPath: logs, withIntermediateDirectories: true)
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        var children: [(name: String, process: Process)] = []
        func spawn(_ name: String, _ arguments: [String]) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: me)
            p.arguments = arguments
            let log = logs + "/\(name).log"
            _ = fm.createFile(atPath: log, contents: nil)
            let handle = FileHandle(forWritingAtPath: log)!
            handle.seekToEndOfFile()
            p.standardOutput = handle
            p.standardError = handle
            try p.run()
            children.append((name, p))
            return p
        }
        StopSignal.install()
        func stopAll(_ list: [(name: String, process: Process)]) {
            for c in list where c.process.isRunning { c.process.terminate() }  // SIGTERM: graceful
            for c in list { c.process.waitUntilExit() }
        }
        print("federation \(t.name): \(t.trainers.count) trainers, \(t.aggregation.mode.rawValue); logs in \(logs)")
        let broker = try spawn("broker", ["broker", "--topology", topology])
        Thread.sleep(forTimeInterval: 0.3)
        // Several processes share this machine: one compute thread each, so no process spins
        // waiting for a core another one holds.
        let aggregator = try spawn("aggregator", ["aggregator", "--topology", topology, "--threads", "1"])
        let trainers = try t.trainers.map {
            try spawn("trainer-\($0.name)", ["trainer", "--topology", topology, "--name", $0.name, "--threads", "1"])
        }
        let totalTokens = t.trainers.compactMap(\.tokens).reduce(0, +)
        let start = Date()
        var lastLine = Date.distantPast
        let tty = isatty(1) != 0
        var failure: String?
        while !StopSignal.requested {
            Thread.sleep(forTimeInterval: 0.5)
            for (name, p) in [("broker", broker), ("aggregator", aggregator)] where !p.isRunning {
                failure = "\(name) exited with status \(p.terminationStatus); see \(logs)/\(name).log"
            }
            if failure != nil { break }
            if trainers.allSatisfy({ !$0.isRunning }) { break }
            if Date().timeIntervalSince(lastLine) >= (tty ? 1 : 10) {
                lastLine = Date()
                let line = Progress.line(runDirectory: t.runDirectory, elapsed: Date().timeIntervalSince(start), totalTokens: totalTokens)
                if tty { print("\r" + line + "   ", terminator: ""); fflush(nil) } else { print(line) }
            }
        }
        if tty { print("") }
        if StopSignal.requested { print("stopping (Ctrl-C) ...") }
        stopAll(children.filter { $0.name.hasPrefix("trainer") })
        stopAll(children.filter { $0.name == "aggregator" })
        stopAll(children.filter { $0.name == "broker" })
        print(Progress.line(runDirectory: t.runDirectory, elapsed: Date().timeIntervalSince(start), totalTokens: totalTokens))
        print("run directory: \(t.runDirectory) (ledger.sqlite, checkpoints/, logs/)")
        if let failure { throw RunFailure(failure) }
    }
}

/// One progress line from the ledger: version, updates/s, staleness, validation loss (and the
/// clusters' own models' mean loss), ETA.
enum Progress {
    static func line(runDirectory: String, elapsed: Double, totalTokens: Int) -> String {
        guard FileManager.default.fileExists(atPath: runDirectory + "/ledger.sqlite"),
              let db = try? SQLiteDatabase(path: runDirectory + "/ledger.sqlite") else { return "waiting for the aggregator ..." }
        let version = (try? db.query("SELECT COALESCE(MAX(version_after), 0) FROM updates"))?.first?[0].int ?? 0
        let accepted = (try? db.query("SELECT COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(AVG(staleness), 0) FROM updates WHERE outcome != 'refused'"))?.first
        let refused = (try? db.query("SELECT COUNT(*) FROM updates WHERE outcome = 'refused'"))?.first?[0].int ?? 0
        let loss = (try? db.query("SELECT value FROM metrics WHERE name = 'validation_loss' ORDER BY time DESC LIMIT 1"))?.first?[0].double
        let updates = accepted?[0].int ?? 0, tokens = accepted?[1].int ?? 0, staleness = accepted?[2].double ?? 0
        var s = String(format: "%5.0fs  version %d  updates %d (%.2f/s, %d refused)  mean staleness %.2f  tokens %d", elapsed, version,
                       updates, Double(updates) / max(elapsed, 1), refused, staleness, tokens)
        // With personalized clusters: the mean over clusters of each one's own model's loss first.
        let own = (try? db.query("SELECT AVG(value) FROM metrics WHERE name LIKE 'personalized_loss/%' "
            + "AND version = (SELECT MAX(version) FROM metrics WHERE name LIKE 'personalized_loss/%')"))?.first?[0].double
        switch (own, loss) {
        case let (own?, global?): s += String(format: "  validation loss: clusters' own models %.4f, global model %.4f", own, global)
        case let (nil, global?): s += String(format: "  validation loss %.4f", global)
        default: break
        }
        if totalTokens > 0, tokens > 0 {
            s += String(format: "  ETA %.0fs", max(0, Double(totalTokens - tokens) * elapsed / Double(tokens)))
        }
        return s
    }
}

/// A failure while running (not a usage mistake): printed without the usage text.
struct RunFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
