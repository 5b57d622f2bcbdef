import Foundation

/// A snapshot of one aggregator's run from its ledger (`fedlm status`): its version and
/// checkpoint, updates accepted and refused (by reason), each trainer's last contact, updates,
/// tokens, staleness and speed, and the latest held-out loss per data cluster.
public struct LedgerStatus: Codable, Equatable, Sendable {
    public struct Trainer: Codable, Equatable, Sendable {
        public var id: String
        public var cluster: String?
        /// Seconds since its last HELLO or update.
        public var lastContactSeconds: Double
        public var accepted: Int
        public var refused: Int
        public var tokens: Int
        public var meanStaleness: Double
        /// Tokens per second over the span of its accepted updates (nil with fewer than two).
        public var tokensPerSecond: Double?
    }

    public var version: Int
    public var newestCheckpoint: Int?
    public var accepted: Int
    public var refused: Int
    public var tokens: Int
    public var meanStaleness: Double
    /// Refused updates by kind (the refusal's code: tooStale, normTooLarge, nonFinite, ...).
    public var refusals: [String: Int]
    public var trainers: [Trainer]
    /// The latest validation loss of the global model per data cluster ("validation_loss/<c>").
    public var validationLoss: [String: Double]
    /// The latest loss of each cluster's own model ("personalized_loss/<c>").
    public var personalizedLoss: [String: Double]
    /// The latest version adopted from the level above (a regional aggregator's ledger).
    public var adoptedFromAbove: Int?
    /// Seconds since the newest update was received.
    public var lastUpdateSeconds: Double?
}

extension Ledger {
    /// Where the run stands now, from the ledger alone (works while the aggregator runs, or after).
    public func status(now: Double = Date().timeIntervalSince1970) throws -> LedgerStatus {
        let s = try summary()
        let checkpoint = try database.query("SELECT MAX(number) FROM versions").first?[0].int
        let adoptedVersion = try database.query("SELECT COALESCE(MAX(version), 0) FROM metrics WHERE name = 'adopted_from_above'").first?[0].int ?? 0
        var refusals: [String: Int] = [:]
        for row in try database.query("SELECT reason FROM updates WHERE outcome = 'refused'") {
            refusals[Self.reasonKind(row[0].string ?? "unknown"), default: 0] += 1
        }
        let trainers = try database.query("""
            SELECT t.id, t.cluster, MAX(t.last_seen, COALESCE(MAX(u.received_at), 0)),
                   SUM(CASE WHEN u.outcome != 'refused' THEN 1 ELSE 0 END), SUM(CASE WHEN u.outcome = 'refused' THEN 1 ELSE 0 END),
                   COALESCE(SUM(CASE WHEN u.outcome != 'refused' THEN u.tokens ELSE 0 END), 0),
                   COALESCE(AVG(CASE WHEN u.outcome != 'refused' THEN u.staleness END), 0),
                   MIN(CASE WHEN u.outcome != 'refused' THEN u.received_at END), MAX(CASE WHEN u.outcome != 'refused' THEN u.received_at END)
            FROM trainers t LEFT JOIN updates u ON u.trainer = t.id GROUP BY t.id ORDER BY t.id
            """).map { r -> LedgerStatus.Trainer in
            let tokens = r[5].int ?? 0
            let span = (r[8].double ?? 0) - (r[7].double ?? 0)
            return .init(id: r[0].string ?? "", cluster: r[1].string, lastContactSeconds: max(0, now - (r[2].double ?? now)),
                         accepted: r[3].int ?? 0, refused: r[4].int ?? 0, tokens: tokens, meanStaleness: r[6].double ?? 0,
                         tokensPerSecond: span > 0 ? Double(tokens) / span : nil)
        }
        func latest(prefix: String) throws -> [String: Double] {
            var out: [String: Double] = [:]
            for r in try database.query("""
                SELECT name, value FROM metrics m WHERE name LIKE ?1 || '%'
                AND time = (SELECT MAX(time) FROM metrics WHERE name = m.name)
                """, [.text(prefix)]) {
                if let name = r[0].string, let v = r[1].double { out[String(name.dropFirst(prefix.count))] = v }
            }
            return out
        }
        let lastUpdate = try database.query("SELECT MAX(received_at) FROM updates").first?[0].double
        return LedgerStatus(version: max(s.version, adoptedVersion), newestCheckpoint: checkpoint, accepted: s.accepted, refused: s.refused,
                            tokens: s.acceptedTokens, meanStaleness: s.meanStaleness, refusals: refusals, trainers: trainers,
                            validationLoss: try latest(prefix: "validation_loss/"), personalizedLoss: try latest(prefix: "personalized_loss/"),
                            adoptedFromAbove: try latestMetric("adopted_from_above").map { Int($0) },
                            lastUpdateSeconds: lastUpdate.map { max(0, now - $0) })
    }

    /// "tooStale: staleness 9 exceeds 8; ..." -> "tooStale": a refusal's kind (its code), for counting.
    static func reasonKind(_ reason: String) -> String {
        guard let colon = reason.firstIndex(of: ":") else { return reason }
        return String(reason[..<colon])
    }
}
