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

/// Follows a ledger as it is written: each `advance` reads only the updates and metrics recorded
/// since the last, so a federation that runs for weeks (millions of updates) costs each refresh
/// of the dashboard what is new, not the whole history. It keeps what `status` and `curves` need:
/// per-trainer and overall tallies, refusals by kind, and the progress and loss curves. The
/// progress kept is thinned as it grows: older points every other one, the newest `exactTail`
/// all kept, so a loss evaluated now finds the tokens of its exact version. `Ledger.status()`
/// is a follower that reads everything once.
public struct LedgerFollower: Sendable {
    public static let exactTail = 2048
    public static let kept = 8192

    /// One trainer's accepted and refused updates so far.
    struct Tally {
        var accepted = 0, refused = 0, tokens = 0, stalenessSum = 0, clampedClaims = 0
        var firstAccepted: Double?, lastAccepted: Double?, lastReceived = 0.0

        mutating func accept(tokens n: Int, staleness: Int, at time: Double) {
            accepted += 1
            tokens += n
            stalenessSum += staleness
            firstAccepted = firstAccepted ?? time
            lastAccepted = time
        }
    }

    private var progress: [LedgerCurves.Progress] = []
    private var losses: [String: [LedgerCurves.Point]] = [:]
    private var tallies: [String: Tally] = [:]
    private var refusals: [String: Int] = [:]
    private var overall = Tally()
    private var version = 0
    private var lastUpdateSeq = 0
    private var lastMetricRow = 0

    public init() {}

    /// Reads what the ledger gained since the last call.
    public mutating func advance(_ ledger: Ledger) throws {
        for row in try ledger.database.query("""
            SELECT seq, trainer, outcome, tokens, staleness, received_at, version_after, reason, claimed_tokens FROM updates
            WHERE seq > ?1 ORDER BY seq
            """, [.init(lastUpdateSeq)]) {
            lastUpdateSeq = row[0].int ?? lastUpdateSeq
            let trainer = row[1].string ?? "", time = row[5].double ?? 0, tokens = row[3].int ?? 0
            version = max(version, row[6].int ?? 0)
            var t = tallies[trainer] ?? Tally()
            t.lastReceived = max(t.lastReceived, time)
            if row[2].string == Ledger.Outcome.refused.rawValue {
                t.refused += 1
                overall.refused += 1
                refusals[Ledger.reasonKind(row[7].string ?? "unknown"), default: 0] += 1
            } else {
                let staleness = row[4].int ?? 0
                t.accept(tokens: tokens, staleness: staleness, at: time)
                if row[8].int != nil { t.clampedClaims += 1 }
                overall.accept(tokens: tokens, staleness: staleness, at: time)
                progress.append(.init(time: time, version: row[6].int ?? 0, tokens: overall.tokens))
            }
            overall.lastReceived = max(overall.lastReceived, time)
            tallies[trainer] = t
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

    /// Where the run stands: the tallies so far, with what is cheap to read whole (the trainers'
    /// table, the newest checkpoint, the latest metrics).
    public func status(_ ledger: Ledger, now: Double = Date().timeIntervalSince1970) throws -> LedgerStatus {
        let checkpoint = try ledger.database.query("SELECT MAX(number) FROM versions").first?[0].int
        let adoptedVersion = try ledger.latestMetric("adopted_from_above").map { Int($0) }
        let trainers = try ledger.database.query("SELECT id, cluster, last_seen FROM trainers ORDER BY id").map { r -> LedgerStatus.Trainer in
            let id = r[0].string ?? "", t = tallies[id] ?? Tally()
            let span = (t.lastAccepted ?? 0) - (t.firstAccepted ?? 0)
            return .init(id: id, cluster: r[1].string, lastContactSeconds: max(0, now - max(r[2].double ?? now, t.lastReceived)),
                         accepted: t.accepted, refused: t.refused, tokens: t.tokens,
                         meanStaleness: t.accepted > 0 ? Double(t.stalenessSum) / Double(t.accepted) : 0,
                         tokensPerSecond: span > 0 ? Double(t.tokens) / span : nil, clampedClaims: t.clampedClaims)
        }
        func latest(prefix: String) throws -> [String: Double] {
            var out: [String: Double] = [:]
            for r in try ledger.database.query("""
                SELECT name, value FROM metrics m WHERE name LIKE ?1 || '%'
                AND time = (SELECT MAX(time) FROM metrics WHERE name = m.name)
                """, [.text(prefix)]) {
                if let name = r[0].string, let v = r[1].double { out[String(name.dropFirst(prefix.count))] = v }
            }
            return out
        }
        return LedgerStatus(version: max(version, adoptedVersion ?? 0), newestCheckpoint: checkpoint, accepted: overall.accepted,
                            refused: overall.refused, tokens: overall.tokens,
                            meanStaleness: overall.accepted > 0 ? Double(overall.stalenessSum) / Double(overall.accepted) : 0,
                            refusals: refusals, trainers: trainers, validationLoss: try latest(prefix: "validation_loss/"),
                            personalizedLoss: try latest(prefix: "personalized_loss/"), adoptedFromAbove: adoptedVersion,
                            lastUpdateSeconds: lastUpdateSeq > 0 ? max(0, now - overall.lastReceived) : nil)
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
