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
    @OptionGroup var logging: LoggingOptions

    func run() throws {
        let t = try Topology.load(path: topology)
        // Fail before starting anything if the model config or the prepared data is not there.
        _ = try ConfigResolution.load(t.modelConfigPath)
        let manifest = try DataManifest.load(directory: t.dataDirectory)
        for trainer in t.allTrainers {
            for c in trainer.clusters ?? [] where !manifest.clusters.contains(where: { $0.name == c }) {
                throw RunFailure("\(topology): trainer \(trainer.name) names cluster '\(c)', which \(t.dataDirectory) does not have (it has: \(manifest.clusters.map(\.name).joined(separator: ", ")))")
            }
        }
        let fm = FileManager.default
        if fresh { for directory in [t.runDirectory] + t.regions.map(\.runDirectory) { try? fm.removeItem(atPath: directory) } }
        let logs = t.runDirectory + "/logs"
        try fm.createDirectory(atPath: logs, withIntermediateDirectories: true)
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        // Several processes share this machine: one compute thread each, so no process spins
        // waiting for a core another one holds.
        // Brokers first, then aggregators (regions' after the top's), then trainers of every level.
        let regions = t.regions.compactMap(\.upstream?.region)
        var commands: [(name: String, role: Supervisor.Role, arguments: [String])] = [("broker", .broker, ["broker", "--topology", topology])]
        commands += regions.map { ("broker-\($0)", .broker, ["broker", "--topology", topology, "--region", $0]) }
        commands.append(("aggregator", .aggregator, ["aggregator", "--topology", topology, "--threads", "1"]))
        commands += regions.map { ("aggregator-\($0)", .aggregator, ["aggregator", "--topology", topology, "--region", $0, "--threads", "1"]) }
        commands += t.allTrainers.map { ("trainer-\($0.name)", .trainer, ["trainer", "--topology", topology, "--name", $0.name, "--threads", "1"]) }
        commands = commands.map { ($0.name, $0.role, $0.arguments + logging.arguments) }
        var supervisor = Supervisor(policy: t.supervision, processes: Dictionary(uniqueKeysWithValues: commands.map { ($0.name, $0.role) }))
        var running: [String: ChildProcess] = [:]
        var due: [String: Date] = [:]  // restarts waiting for their backoff
        func start(_ name: String) throws {
            let command = commands.first { $0.name == name }!
            running[name] = try ChildProcess(name: name, executable: me, arguments: command.arguments, log: logs + "/\(name).log",
                                             ownProcessGroup: true)
        }
        StopSignal.install()
        let shape = regions.isEmpty ? "\(t.trainers.count) trainers" : "\(t.allTrainers.count) trainers in \(regions.count) regions" + (t.trainers.isEmpty ? "" : " and at the top")
        print("federation \(t.name): \(shape), \(t.aggregation.mode.rawValue); logs in \(logs); a process that dies is \(t.supervision.onFailure == .restart ? "restarted (at most \(t.supervision.maxRestarts) times)" : "the end of the run")")
        let totalTokens = t.allTrainers.compactMap(\.tokens).reduce(0, +)
        let startTime = Date()
        var lastLine = Date.distantPast
        let tty = isatty(1) != 0
        var failure: String?
        var finished = false
        for level in [t] + t.regions {
            guard let m = level.monitoring else { continue }
            let name = level.upstream.map { "region \($0.region)" } ?? "federation"
            if let a = m.aggregator { print("\(name): dashboard at \(a.url)/, metrics at \(a.url)/metrics") }
            if let b = m.broker { print("\(name): broker metrics at \(b.url)/metrics") }
        }
        func say(_ line: String) { print((tty ? "\r" : "") + line) }
        // Whatever goes wrong in here (a process that cannot be started), everything started is stopped below.
        do {
            for (name, role, _) in commands where role == .broker { try start(name) }
            Thread.sleep(forTimeInterval: 0.3)
            var joiners = Joiners(t)
            for (name, role, _) in commands where role != .broker && !joiners.waiting(name) { try start(name) }
            supervise: while !StopSignal.requested {
                Thread.sleep(forTimeInterval: 0.25)
                // A newcomer whose mark can no longer be reached (every other trainer is done) joins now.
                let othersDone = due.isEmpty && !running.keys.contains { $0.hasPrefix("trainer-") }
                for name in try joiners.due(othersDone: othersDone) {
                    say("\(name) joins the federation" + (othersDone ? " (every other trainer finished before its join_at_tokens)" : ""))
                    due[name] = Date().addingTimeInterval(Joiners.clusterAdoption)
                }
                for (name, at) in due where at <= Date() {
                    due[name] = nil
                    try start(name)
                }
                for (name, process) in running.sorted(by: { $0.key < $1.key }) where process.poll() {
                    running[name] = nil
                    switch supervisor.exited(name, status: process.status, signal: process.signal, now: Date().timeIntervalSince(startTime)) {
                    case .none:
                        say("\(name) finished")
                    case .restart(let again, let delay):
                        say("\(name) \(process.ending); restarting it in \(String(format: "%g", delay)) s (\(supervisor.restartCount(again)) of \(t.supervision.maxRestarts)); see \(logs)/\(name).log")
                        due[again] = Date().addingTimeInterval(delay)
                    case .stop(let why):
                        failure = why.map { "\($0); see \(logs)/\(name).log" }
                        finished = why == nil
                        if let why { say("\(why): stopping the federation") }
                        break supervise
                    }
                }
                if Date().timeIntervalSince(lastLine) >= (tty ? 1 : 10) {
                    lastLine = Date()
                    let line = Progress.line(runDirectory: t.runDirectory, elapsed: Date().timeIntervalSince(startTime), totalTokens: totalTokens)
                        + Progress.regions(t) + Progress.silentTrainers(t)
                    if tty { print("\r" + line + "   ", terminator: ""); fflush(nil) } else { print(line) }
                }
            }
        } catch {
            failure = "\(error)"
        }
        if tty { print("") }
        if StopSignal.requested { print("stopping (Ctrl-C: again to kill at once) ...") } else if finished { print("every trainer finished its budget") }
        // Trainers first (they finish their round's bookkeeping), then the regions' aggregators
        // (each sends what its region learned since its last update up), then the top's
        // (checkpoint), then the brokers.
        let hurry = { StopSignal.count > 1 }
        stop(running.values.filter { $0.name.hasPrefix("trainer") }, grace: 10, hurry: hurry)
        stop(running.values.filter { $0.name.hasPrefix("aggregator-") }, grace: 70, hurry: hurry)
        stop(running.values.filter { $0.name == "aggregator" }, grace: 10, hurry: hurry)
        stop(running.values.filter { $0.name.hasPrefix("broker") }, grace: 5, hurry: hurry)
        print(Progress.line(runDirectory: t.runDirectory, elapsed: Date().timeIntervalSince(startTime), totalTokens: totalTokens) + Progress.regions(t))
        print("run directory: \(t.runDirectory) (ledger.sqlite, checkpoints/, logs/)")
        if let failure { throw RunFailure(failure) }
    }
}

/// Trainers that join a federation under way (`join_at_tokens`): each is started once its level's
/// ledger has accepted that many tokens; a cluster it names that does not exist yet is created
/// first (from the global model, as `fedlm cluster create` does).
struct Joiners {
    /// Seconds between creating a cluster and starting its trainer: the aggregator adopts new
    /// clusters from its ledger every half second.
    static let clusterAdoption = 1.5
    private var pending: [(trainer: Topology.Trainer, level: Topology)]

    init(_ t: Topology) {
        pending = ([t] + t.regions).flatMap { level in level.trainers.filter { $0.joinAtTokens != nil }.map { ($0, level) } }
    }

    func waiting(_ process: String) -> Bool { pending.contains { "trainer-" + $0.trainer.name == process } }

    /// The processes whose time has come (all of them when `othersDone`), their clusters created.
    mutating func due(othersDone: Bool) throws -> [String] {
        var ready: [(trainer: Topology.Trainer, level: Topology)] = []
        pending.removeAll { trainer, level in
            if othersDone {
                ready.append((trainer, level))
                return true
            }
            let path = level.runDirectory + "/ledger.sqlite"
            guard FileManager.default.fileExists(atPath: path),
                  let tokens = try? Ledger.reading(path: path).acceptedTokens(), tokens >= trainer.joinAtTokens! else { return false }
            ready.append((trainer, level))
            return true
        }
        for (trainer, level) in ready {
            guard level.aggregation.clusters != nil, let cluster = trainer.cluster else { continue }
            let ledger = try Ledger(path: level.runDirectory + "/ledger.sqlite")
            if try !ledger.clusters().contains(cluster) { try ledger.addCluster(cluster, origin: "joined with \(trainer.name)") }
        }
        return ready.map { "trainer-" + $0.trainer.name }
    }
}

/// One progress line from the ledger: version, updates/s, staleness, validation loss (and the
/// clusters' own models' mean loss), ETA.
enum Progress {
    static func line(runDirectory: String, elapsed: Double, totalTokens: Int) -> String {
        guard FileManager.default.fileExists(atPath: runDirectory + "/ledger.sqlite"),
              let ledger = try? Ledger.reading(path: runDirectory + "/ledger.sqlite"), let summary = try? ledger.summary() else {
            return "waiting for the aggregator ..."
        }
        let loss = (try? ledger.latestMetric("validation_loss")) ?? nil
        let tokens = summary.acceptedTokens
        var s = String(format: "%5.0fs  version %d  updates %d (%.2f/s, %d refused)  mean staleness %.2f  tokens %d", elapsed, summary.version,
                       summary.accepted, Double(summary.accepted) / max(elapsed, 1), summary.refused, summary.meanStaleness, tokens)
        // With personalized clusters: the mean over clusters of each one's own model's loss first.
        let own = (try? ledger.latestMean(ofMetricsStartingWith: "personalized_loss/")) ?? nil
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

    /// "  | north v14 (adopted 6, 3 sent up, loss 5.1234)" for each region: its own version, the
    /// latest version it adopted from above, its updates the level above accepted, its
    /// model's validation loss; "" without regions.
    static func regions(_ t: Topology) -> String {
        let above = try? Ledger.reading(path: t.runDirectory + "/ledger.sqlite")
        return t.regions.map { r in
            let name = r.upstream!.region
            guard let ledger = try? Ledger.reading(path: r.runDirectory + "/ledger.sqlite"), let summary = try? ledger.summary() else {
                return "  | \(name) starting"
            }
            var s = "  | \(name) v\(summary.version)"
            if let adopted = (try? ledger.latestMetric("adopted_from_above")) ?? nil { s += " (adopted \(Int(adopted))" } else { s += " (nothing adopted" }
            let sent = (try? above?.acceptedUpdateCount(trainer: r.upstream!.trainerID)) ?? 0
            s += ", \(sent) sent up)"
            if let loss = (try? ledger.latestMetric("validation_loss")) ?? nil { s += String(format: " loss %.4f", loss) }
            return s
        }.joined()
    }

    /// "  no word from the broker: en 21s, de 20s" for the trainers (at every level) that have said so
    /// (`TrainerService` keeps `<state>/silent-since` while it hears nothing), or "".
    static func silentTrainers(_ t: Topology, now: Double = Date().timeIntervalSince1970) -> String {
        let silent = ([t] + t.regions).flatMap { level in level.trainers.map { (level.runDirectory, $0.name) } }.compactMap { runDirectory, name -> String? in
            guard let text = try? String(contentsOfFile: runDirectory + "/trainers/\(name)/" + TrainerService.silenceFile, encoding: .utf8),
                  let since = Double(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
            return "\(name) \(Int(now - since))s"
        }
        return silent.isEmpty ? "" : "  no word from the broker: " + silent.joined(separator: ", ")
    }
}

/// A failure while running (not a usage mistake): printed without the usage text.
struct RunFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
