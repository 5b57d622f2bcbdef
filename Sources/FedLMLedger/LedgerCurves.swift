import Foundation

/// The run's history for plots (the dashboard): how tokens and versions grew over time, and each
/// held-out loss against tokens and time.
public struct LedgerCurves: Codable, Equatable, Sendable {
    /// One moment of progress: accepted tokens so far and the version after an update.
    public struct Progress: Codable, Equatable, Sendable {
        public var time: Double
        public var version: Int
        public var tokens: Int
    }

    /// One evaluation: the loss of a model at a version, with the tokens accepted up to it.
    public struct Point: Codable, Equatable, Sendable {
        public var time: Double
        public var version: Int
        public var tokens: Int
        public var value: Double
    }

    public var progress: [Progress]
    /// By metric name: "validation_loss/<cluster>", "personalized_loss/<cluster>", "validation_loss".
    public var losses: [String: [Point]]
}

/// A ledger's curves, kept up to date by reading only what was written since the last read (a
/// federation that runs for weeks has millions of updates; each refresh costs what is new). The
/// progress kept is thinned as it grows: older points every other one, the newest
/// `exactTail` all kept, so a loss evaluated now finds the tokens of its exact version.
public final class CurveHistory: @unchecked Sendable {
    public static let exactTail = 2048
    public static let kept = 8192
    private var progress: [LedgerCurves.Progress] = []
    private var losses: [String: [LedgerCurves.Point]] = [:]
    private var lastUpdateSeq = 0
    private var lastMetricRow = 0
    private var tokens = 0

    public init() {}

    /// Reads what the ledger gained since the last call.
    public func advance(_ ledger: Ledger) throws {
        for row in try ledger.database.query("""
            SELECT seq, received_at, version_after, tokens FROM updates WHERE seq > ?1 AND outcome != 'refused' ORDER BY seq
            """, [.init(lastUpdateSeq)]) {
            lastUpdateSeq = row[0].int ?? lastUpdateSeq
            tokens += row[3].int ?? 0
            progress.append(.init(time: row[1].double ?? 0, version: row[2].int ?? 0, tokens: tokens))
        }
        if progress.count > Self.kept {
            let old = progress.count - Self.exactTail
            progress = stride(from: 0, to: old, by: 2).map { progress[$0] } + progress[old...]
        }
        for row in try ledger.database.query("""
            SELECT rowid, name, time, version, value FROM metrics
            WHERE rowid > ?1 AND (name LIKE 'validation_loss%' OR name LIKE 'personalized_loss/%') ORDER BY rowid
            """, [.init(lastMetricRow)]) {
            lastMetricRow = row[0].int ?? lastMetricRow
            guard let name = row[1].string else { continue }
            let version = row[3].int ?? 0
            losses[name, default: []].append(.init(time: row[2].double ?? 0, version: version, tokens: tokens(atVersion: version),
                                                   value: row[4].double ?? 0))
        }
    }

    /// The curves, each series thinned to at most `maxPoints` evenly spaced points (the last kept).
    public func curves(maxPoints: Int = 400) -> LedgerCurves {
        LedgerCurves(progress: Self.thin(progress, to: maxPoints), losses: losses.mapValues { Self.thin($0, to: maxPoints) })
    }

    /// Accepted tokens when the model reached `version`: the last progress point at or below it.
    func tokens(atVersion version: Int) -> Int {
        var low = 0, high = progress.count
        while low < high {
            let mid = (low + high) / 2
            if progress[mid].version <= version { low = mid + 1 } else { high = mid }
        }
        return low == 0 ? 0 : progress[low - 1].tokens
    }

    static func thin<T>(_ values: [T], to n: Int) -> [T] {
        guard values.count > n, n >= 2 else { return values }
        return (0..<n).map { values[$0 * (values.count - 1) / (n - 1)] }
    }
}
