/// Equal shares among senders over a window of recent updates, so that no sender dominates the
/// model while the others are slow or done (for example the top of a hierarchy, where one region
/// alone goes on after the others finished and would pull the model towards its data).
///
/// With R senders seen so far and an update from a sender that sent `count` of the last W
/// updates (this one included), the update's weight is multiplied by
///
///     m = min(1, W / (R · count))
///
/// While every sender sends its share (count ≈ W / R), m = 1 and nothing changes; a sender that
/// sent all of the last W updates gets 1 / R, as if averaged with the R − 1 senders that are
/// silent. Plain state (names and counts), saved with the strategy's scalars.
public struct FairShare: Equatable, Sendable {
    /// W: how many recent updates are counted.
    public let window: Int
    /// The senders of the last W updates, oldest first.
    private(set) var recent: [String] = []
    /// Every sender seen so far (R is its size).
    private(set) var seen: Set<String> = []

    public init(window: Int) {
        precondition(window >= 1, "the fair-share window must be at least 1")
        self.window = window
    }

    /// m for an update from `sender`, which is then counted among the recent ones.
    public mutating func weight(for sender: String) -> Float {
        seen.insert(sender)
        recent.append(sender)
        if recent.count > window { recent.removeFirst(recent.count - window) }
        let count = recent.filter { $0 == sender }.count
        return min(1, Float(window) / Float(seen.count * count))
    }

    /// Scalars for a checkpoint: "fair.seen.<sender>" and "fair.<i>.<sender>" (i: position).
    public var scalars: [String: Double] {
        var s: [String: Double] = [:]
        for name in seen { s["fair.seen." + name] = 1 }
        for (i, name) in recent.enumerated() { s["fair.\(i)." + name] = 1 }
        return s
    }

    public mutating func restore(_ scalars: [String: Double]) {
        seen = Set(scalars.keys.filter { $0.hasPrefix("fair.seen.") }.map { String($0.dropFirst("fair.seen.".count)) })
        let positions = scalars.keys.filter { $0.hasPrefix("fair.") && !$0.hasPrefix("fair.seen.") }.compactMap { key -> (Int, String)? in
            let rest = key.dropFirst("fair.".count)
            guard let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]) else { return nil }
            return (i, String(rest[rest.index(after: dot)...]))
        }
        recent = positions.sorted { $0.0 < $1.0 }.map(\.1)
    }
}
