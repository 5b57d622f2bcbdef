import Foundation

/// What a trainer did, written to `<state directory>/stats.json` when it stops: for compute
/// utilisation (time in training steps over wall time) and bytes per trained token.
public struct TrainerStats: Codable, Equatable, Sendable {
    public static let file = "stats.json"
    public var tokens: Int
    public var updatesAcknowledged: Int
    public var trainingSeconds: Double
    public var wallSeconds: Double
    /// Every frame sent and received, resends included.
    public var bytesSent: Int
    public var bytesReceived: Int
    /// Bytes sent and received before the first round started (registering and the first
    /// whole release): a one-time cost of joining, which a long run spreads thin.
    public var joiningBytes: Int
    /// The process's peak resident memory (VmHWM), where /proc tells it.
    public var peakResidentBytes: Int?

    /// Bytes per token once joined: what every further round costs.
    public var bytesPerTokenAfterJoining: Double {
        tokens > 0 ? Double(bytesSent + bytesReceived - joiningBytes) / Double(tokens) : 0
    }

    public var utilisation: Double { wallSeconds > 0 ? trainingSeconds / wallSeconds : 0 }
    public var bytesPerToken: Double { tokens > 0 ? Double(bytesSent + bytesReceived) / Double(tokens) : 0 }

    public var summary: String {
        String(format: "trained %.1f s of %.1f s (%.0f%% compute); sent %d bytes, received %d (%.1f bytes per token, %.1f after joining); peak memory %d MiB",
               trainingSeconds, wallSeconds, 100 * utilisation, bytesSent, bytesReceived, bytesPerToken, bytesPerTokenAfterJoining,
               (peakResidentBytes ?? 0) >> 20)
    }

    public func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    public static func read(_ path: String) throws -> TrainerStats {
        try JSONDecoder().decode(TrainerStats.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
