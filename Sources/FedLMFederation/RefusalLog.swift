/// Refusals counted per peer and reported once per peer per interval, not once per message: a
/// member flooding thousands of bad messages a second costs a line when it starts and a summary
/// line per interval while it goes on.
public struct RefusalLog: Sendable {
    public let interval: Double
    private struct Window {
        var since: Double
        var counts: [String: Int] = [:]
    }
    private var windows: [String: Window] = [:]
    /// Refusals ever counted, by reason.
    public private(set) var totals: [String: Int] = [:]

    public init(interval: Double = 10) { self.interval = interval }

    public var total: Int { totals.values.reduce(0, +) }

    /// Counts one refusal of `peer`'s message for `reason`; returns the line to log now when it is
    /// the first from this peer in its interval (nil: counted, reported in the summary).
    public mutating func record(peer: String, reason: String, detail: String, now: Double) -> String? {
        totals[reason, default: 0] += 1
        if windows[peer] != nil {
            windows[peer]!.counts[reason, default: 0] += 1
            return nil
        }
        windows[peer] = Window(since: now)
        return "refused a message from \(peer): \(reason): \(detail) (further refusals of this peer are summed up every \(Int(interval)) s)"
    }

    /// One line per peer whose interval has ended with refusals after its first, and closes those
    /// intervals.
    public mutating func summaries(now: Double) -> [String] {
        var lines: [String] = []
        for (peer, window) in windows.sorted(by: { $0.key < $1.key }) where now - window.since >= interval {
            windows[peer] = nil
            let more = window.counts.values.reduce(0, +)
            guard more > 0 else { continue }
            let reasons = window.counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            lines.append("refused \(more) more messages from \(peer) in \(Int(now - window.since)) s (\(reasons))")
        }
        return lines
    }
}
