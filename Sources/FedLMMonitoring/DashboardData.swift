import FedLMLedger
import Foundation

/// What the dashboard and `/api/status` show: for each level of a federation (the top, each
/// region), its status and its curves, read from its ledger (read only, while the aggregator
/// writes). Built at most once per `refresh` seconds however many clients ask, so a crowd of
/// open dashboards costs the aggregator's machine one read of each ledger per interval; and at
/// most once per `costShare`⁻¹ times the last build's duration, so that the reads never take
/// more than that share of one core, however large the ledgers grow (the curves are read
/// incrementally, `CurveHistory`; the status is a full read of the ledger).
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
    public var costShare = 0.02
    private let lock = NSLock()
    private var cached: (at: Double, json: [UInt8], buildSeconds: Double)?
    private var ledgers: [String: Ledger] = [:]
    private var histories: [String: CurveHistory] = [:]

    public init(title: String, levels: [Level]) {
        self.title = title
        self.levels = levels
    }

    /// The snapshot as JSON, at most `refresh` seconds old.
    public func json(now: Double = Date().timeIntervalSince1970) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        if let cached, now - cached.at < max(refresh, cached.buildSeconds / costShare) { return cached.json }
        let start = Date().timeIntervalSince1970
        let snapshot = Snapshot(title: title, generatedAt: now, levels: levels.map { read($0, now: now) })
        let json = (try? JSONEncoder().encode(snapshot)).map { Array($0) } ?? Array("{}".utf8)
        cached = (now, json, Date().timeIntervalSince1970 - start)
        return json
    }

    private func read(_ level: Level, now: Double) -> Snapshot.LevelData {
        do {
            let ledger = try ledger(level.ledgerPath)
            let history = histories[level.ledgerPath] ?? CurveHistory()
            histories[level.ledgerPath] = history
            try history.advance(ledger)
            return .init(name: level.name, status: try ledger.status(now: now), curves: history.curves())
        } catch {
            ledgers[level.ledgerPath] = nil
            histories[level.ledgerPath] = nil
            return .init(name: level.name, problem: "\(error)")
        }
    }

    /// One read-only connection per ledger, opened when the file exists.
    private func ledger(_ path: String) throws -> Ledger {
        if let l = ledgers[path] { return l }
        guard FileManager.default.fileExists(atPath: path) else { throw DashboardError("\(path): no ledger yet (the aggregator has not started)") }
        let l = try Ledger.reading(path: path)
        ledgers[path] = l
        return l
    }
}

struct DashboardError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
