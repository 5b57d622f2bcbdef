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

extension Ledger {
    /// The history, each series thinned to at most `maxPoints` evenly spaced points (the last kept).
    public func curves(maxPoints: Int = 400) throws -> LedgerCurves {
        let progress = try database.query("""
            SELECT received_at, version_after, SUM(tokens) OVER (ORDER BY seq) FROM updates WHERE outcome != 'refused' ORDER BY seq
            """).map { LedgerCurves.Progress(time: $0[0].double ?? 0, version: $0[1].int ?? 0, tokens: $0[2].int ?? 0) }
        var losses: [String: [LedgerCurves.Point]] = [:]
        for row in try database.query("""
            SELECT name, time, version, value FROM metrics
            WHERE name LIKE 'validation_loss%' OR name LIKE 'personalized_loss/%' ORDER BY time
            """) {
            guard let name = row[0].string else { continue }
            let version = row[2].int ?? 0
            losses[name, default: []].append(.init(time: row[1].double ?? 0, version: version,
                                                   tokens: Self.tokens(atVersion: version, in: progress), value: row[3].double ?? 0))
        }
        return LedgerCurves(progress: Self.thin(progress, to: maxPoints), losses: losses.mapValues { Self.thin($0, to: maxPoints) })
    }

    /// Accepted tokens when the model reached `version`: the last progress point at or below it.
    static func tokens(atVersion version: Int, in progress: [LedgerCurves.Progress]) -> Int {
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
