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
        /// Accepted updates whose token claim exceeded what its steps allow (credited less).
        public var clampedClaims: Int = 0
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
        var follower = LedgerFollower()
        try follower.advance(self)
        return try follower.status(self, now: now)
    }

    /// "tooStale: staleness 9 exceeds 8; ..." -> "tooStale": a refusal's kind (its code), for counting.
    static func reasonKind(_ reason: String) -> String {
        guard let colon = reason.firstIndex(of: ":") else { return reason }
        return String(reason[..<colon])
    }
}
