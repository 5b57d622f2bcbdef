import FedLMLedger
import Foundation

/// What the dashboard and `/api/status` show: for each level of a federation (the top, each
/// region), its status and its curves, read from its ledger (read only, while the aggregator
/// writes). Built at most once per `refresh` seconds however many clients ask, so a crowd of
/// open dashboards costs the aggregator's machine one read of each ledger per interval.
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
    private let lock = NSLock()
    private var cached: (at: Double, json: [UInt8])?
    private var ledgers: [String: Ledger] = [:]

    public init(title: String, levels: [Level]) {
        self.title = title
        self.levels = levels
    }

    /// The snapshot as JSON, at most `refresh` seconds old.
    public func json(now: Double = Date().timeIntervalSince1970) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        if let cached, now - cached.at < refresh { return cached.json }
        let snapshot = Snapshot(title: title, generatedAt: now, levels: levels.map { read($0, now: now) })
        let json = (try? JSONEncoder().encode(snapshot)).map { Array($0) } ?? Array("{}".utf8)
        cached = (now, json)
        return json
    }

    private func read(_ level: Level, now: Double) -> Snapshot.LevelData {
        do {
            let ledger = try ledger(level.ledgerPath)
            return .init(name: level.name, status: try ledger.status(now: now), curves: try ledger.curves())
        } catch {
            ledgers[level.ledgerPath] = nil
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
