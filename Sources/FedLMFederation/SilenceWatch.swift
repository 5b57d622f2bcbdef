import FedLMProtocol

/// When a trainer has heard nothing from the broker for `warnAfter` seconds while waiting for an
/// answer, and when that silence ends.
public struct SilenceWatch: Sendable {
    public enum Change: Equatable, Sendable {
        case began(since: Double)
        case ended(seconds: Double)
    }

    public let warnAfter: Double
    private var lastHeard: Double
    private var waitingSince: Double
    private var silentSince: Double?

    public init(warnAfter: Double, now: Double) {
        self.warnAfter = warnAfter
        lastHeard = now
        waitingSince = now
    }

    /// A request went out: the silence counts from here at the earliest.
    public mutating func waiting(since now: Double) { waitingSince = now }

    public mutating func heard(now: Double) -> Change? {
        lastHeard = now
        guard let since = silentSince else { return nil }
        silentSince = nil
        return .ended(seconds: now - since)
    }

    public mutating func quiet(now: Double) -> Change? {
        let since = max(lastHeard, waitingSince)
        guard silentSince == nil, now - since > warnAfter else { return nil }
        silentSince = since
        return .began(since: since)
    }
}
