import FedLMProtocol

/// A trainer's release fetches in windows: which FETCH to send as a release streams in. No I/O:
/// the session tells it what it sent and how the stream stands, and sends what it returns.
///
/// The aggregator answers a FETCH with `window` W with the stream's head and at most W chunks (a
/// head the trainer already holds continues its transfer). When half of the chunks asked for
/// are in, the next W are asked for (`ResumePoint`: the head's digest and the first chunk not
/// yet asked for), so at most 1.5 W
/// chunks are ever queued between the aggregator and the trainer, however large the model, and
/// the link stays busy. A chunk lost on the way shows as a gap (`StreamAssembler` with
/// `resumesReleases` drops what follows it): the stream is asked for again from the first
/// chunk missing, once per gap. A stream that stalls is resumed the same way when the trainer's
/// request timer fires. If the release changed meanwhile, the aggregator starts the new one.
public struct WindowedFetch: Equatable {
    public let window: Int
    /// The FETCH the trainer's core asked for (continuations repeat it with a resume point).
    private var request: Fetch?
    /// The stream being fetched: its head's digest, and the end of the chunks asked for.
    private var head: UInt32?
    private var askedThrough = 0
    /// The chunk a gap was last asked for again from (one request per gap).
    private var resumedAt: Int?
    /// The receiving assembler's gap count when it was last looked at (`more(after:)`).
    private var gapsSeen = 0

    public init(window: Int) {
        precondition(window >= 1, "a window of \(window) chunks")
        self.window = window
    }

    /// The core's FETCH as it goes out: with the window, from the start of a stream.
    public mutating func outgoing(_ fetch: Fetch) -> Fetch {
        var f = fetch
        f.window = window
        f.resume = nil
        request = f
        head = nil
        resumedAt = nil
        return f
    }

    /// After each message `assembler` took: the FETCH that asks for more of the release it is
    /// receiving, if one is due, and whether it asks again after a gap (a chunk lost on the way).
    public mutating func more(after assembler: StreamAssembler) -> (fetch: Fetch, afterGap: Bool)? {
        guard let p = assembler.releaseProgress else { return nil }
        let gap = assembler.gaps > gapsSeen
        gapsSeen = assembler.gaps
        return progress(head: p.head, received: p.received, count: p.count, gap: gap).map { ($0, gap) }
    }

    /// The request timer fired: ask again from the first chunk missing of the release
    /// `assembler` is receiving (nil: none of ours in progress, so the core's own request goes again).
    public mutating func stalled(_ assembler: StreamAssembler) -> Fetch? {
        guard let p = assembler.releaseProgress else { return nil }
        return stalled(head: p.head, received: p.received, count: p.count)
    }

    /// After each message of a release stream: the FETCH that asks for more, if one is due.
    /// `received` chunks of `count` are in; `gap` says a chunk arrived out of order.
    mutating func progress(head digest: UInt32, received: Int, count: Int, gap: Bool) -> Fetch? {
        if head != digest {
            // A new stream: the aggregator sent its head and the first window.
            head = digest
            askedThrough = min(count, window)
            resumedAt = nil
        }
        if gap {
            guard resumedAt != received else { return nil }
            resumedAt = received
            return continuation(from: received, count: count)
        }
        guard askedThrough < count, received >= askedThrough - window / 2 else { return nil }
        return continuation(from: askedThrough, count: count)
    }

    /// The request timer fired while a stream was in progress: ask again from the first chunk
    /// missing (nil: no stream in progress, so the core's own request goes again).
    mutating func stalled(head digest: UInt32, received: Int, count: Int) -> Fetch? {
        guard head == digest, received < count else { return nil }
        resumedAt = received
        return continuation(from: received, count: count)
    }

    private mutating func continuation(from next: Int, count: Int) -> Fetch? {
        guard var f = request, let head else { return nil }
        f.resume = ResumePoint(head: head, next: next)
        f.holds = nil  // a continuation wants chunks of this stream, not release steps
        f.window = window
        askedThrough = min(count, next + window)
        return f
    }
}
