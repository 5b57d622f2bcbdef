import FedLMLedger
import Foundation

/// What the dashboard and `/api/status` show: for each level of a federation (the top, each
/// region), its status and its curves, read from its ledger (read only, while the aggregator
/// writes). Built at most once per `refresh` seconds however many clients ask, so a crowd of
/// open dashboards costs the aggregator's machine one read of each ledger per interval; and at
/// most once per `costShare`⁻¹ times the last build's duration, so that the reads never take
/// more than that share of one core (each build reads only what the ledgers gained since the
/// last, `LedgerFollower`).
public final class DashboardData: @unchecked Sendable {
    /// A level: its name and its ledger's path.
    public struct Level: Sendable {
        public var name: String
        public var ledgerPath: String
        public init(name: String, ledgerPath: String) {
            self.name = name
            self.ledgerPath = ledgerPath
        }
    }

    struct Snapshot: Codable {
        struct LevelData: Codable {
            var name: String
            var status: LedgerStatus?
            var curves: LedgerCurves?
            /// Trainers in all, and heard from within `activeSeconds` (the status lists at most
            /// `shownTrainers`, the most recently heard first).
            var trainerCount: Int?
            var activeTrainers: Int?
            /// Why the level could not be read (no ledger yet, say).
            var problem: String?
        }
        var title: String
        var generatedAt: Double
        var levels: [LevelData]
    }

    public let title: String
    public let levels: [Level]
    public var refresh = 1.0
    /// The dashboard lists this many trainers at most (a federation may have thousands over its life).
    public var shownTrainers = 300
    public static let activeSeconds = 30.0
    public var costShare = 0.01
    private let lock = NSLock()
    private var cached: (at: Double, json: [UInt8], buildSeconds: Double)?
    private var ledgers: [String: Ledger] = [:]
    private var followers: [String: LedgerFollower] = [:]
    /// Snapshots built so far and the seconds they took (what the dashboard cost the machine).
    private var builds = 0
    private var buildSeconds = 0.0

    public init(title: String, levels: [Level]) {
        self.title = title
        self.levels = levels
    }

    /// Snapshots built and their seconds so far.
    public var cost: (builds: Int, seconds: Double) {
        lock.lock()
        defer { lock.unlock() }
        return (builds, buildSeconds)
    }

    /// The snapshot as JSON, at most `refresh` seconds old.
    public func json(now: Double = Date().timeIntervalSince1970) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        if let cached, now - cached.at < max(refresh, cached.buildSeconds / costShare) { return cached.json }
        let start = Date().timeIntervalSince1970
        let snapshot = Snapshot(title: title, generatedAt: now, levels: levels.map { read($0, now: now) })
        let json = (try? JSONEncoder().encode(snapshot)).map { Array($0) } ?? Array("{}".utf8)
        let seconds = Date().timeIntervalSince1970 - start
        cached = (now, json, seconds)
        builds += 1
        buildSeconds += seconds
        return json
    }

    private func read(_ level: Level, now: Double) -> Snapshot.LevelData {
        do {
            let ledger = try ledger(level.ledgerPath)
            var follower = followers[level.ledgerPath] ?? LedgerFollower()
            try follower.advance(ledger)
            followers[level.ledgerPath] = follower
            var status = try follower.status(ledger, now: now)
            let count = status.trainers.count, active = status.trainers.filter { $0.lastContactSeconds < Self.activeSeconds }.count
            if count > shownTrainers {
                status.trainers = Array(status.trainers.sorted { $0.lastContactSeconds < $1.lastContactSeconds }.prefix(shownTrainers))
            }
            return .init(name: level.name, status: status, curves: follower.curves(), trainerCount: count, activeTrainers: active)
        } catch {
            ledgers[level.ledgerPath] = nil
            followers[level.ledgerPath] = nil
            return .init(name: level.name, problem: "\(error)")
        }
    }

    /// One read-only connection per ledger, opened when the file exists.
    private func ledger(_ path: String) throws -> Ledger {
        if let l = ledgers[path] { return l }
        guard FileManager.default.fileExists(atPath: path) else { throw MonitoringError("\(path): no ledger yet (the aggregator has not started)") }
        let l = try Ledger.reading(path: path)
        ledgers[path] = l
        return l
    }
}
