import FedLMProtocol

/// What the broker does with each message from the trainers' side before anything reaches the
/// aggregator: a state machine without I/O, one method per event, each returning what to do.
///
/// A message is forwarded only if
/// - it is protocol: marker, version, a type peers send, its frame count, a readable header, an
///   UPDATE layout within the limits, a CHUNK that continues its sender's stream
///   (`WireCodec.envelope`);
/// - with CURVE, its sender is who it says: the routing id, and the trainer id of a HELLO or
///   UPDATE, are names the allow-list binds to the connection's key (`BrokerSecurity.may`), and a
///   subscriber's key never registers as a trainer nor pushes;
/// - its sender is within its budget: at most `requestsInFlight` requests the aggregator has not
///   answered yet, and `bytesInFlight` bytes forwarded since it last answered (an update
///   streaming in counts its chunks). A budget whose requests go unanswered for `answerTimeout`
///   starts over (the aggregator restarted and lost them).
///
/// Everything else is refused: counted and reported once per peer per interval (`RefusalLog`),
/// answered with ERROR at most once per peer per `replyInterval` (a flood gets no flood of
/// replies), and dropped. A member that keeps sending what is not protocol (`suspendAfter`
/// refusals within `suspendWindow` seconds, or `suspendAfterStrays` stray CHUNKs, which an
/// honest trainer sends only after a refused stream) is suspended for `suspension` seconds: its
/// connection is closed, its key refused at the handshake, and anything else from it dropped.
public struct BrokerGate: Sendable {
    public struct Limits: Sendable {
        public var requestsInFlight = 8
        /// One update of the largest size the codec accepts, and some room besides.
        public var bytesInFlight = (256 << 20) * 4 + (4 << 20)
        public var answerTimeout = 30.0
        public var replyInterval = 1.0
        public var suspendAfter = 100
        public var suspendAfterStrays = 10_000
        public var suspendWindow = 10.0
        public var suspension = 60.0
        public init() {}
    }

    public enum Action: Equatable, Sendable {
        case forward
        /// Answer the sender with this ERROR, and drop the message.
        case refuse(ErrorReply)
        case drop
        /// Close the sender's connection and refuse its key until `until`; the text says why.
        case suspend(until: Double, why: String)
    }

    private struct Peer {
        var requests = 0
        var bytes = 0
        var waitingSince: Double?
        var stream: (next: Int, count: Int, chunkBytes: Int)?
        var lastReply = -Double.infinity
        var windowStart = -Double.infinity
        var violations = 0
        var strays = 0

        /// Forgets what is in flight: the aggregator will not answer it.
        mutating func clearBudget() {
            requests = 0
            bytes = 0
            waitingSince = nil
            stream = nil
        }

        /// Starts counting refusals afresh from `time`.
        mutating func startWindow(at time: Double) {
            windowStart = time
            violations = 0
            strays = 0
        }
    }

    public let codec: WireCodec
    public let security: BrokerSecurity?
    public let limits: Limits
    private var peers: [String: Peer] = [:]
    /// Suspended senders (their key, or routing id without CURVE) and until when.
    private var suspended: [String: Double] = [:]
    public private(set) var refusals: RefusalLog
    public private(set) var forwarded = 0
    private var lines: [String] = []

    public init(codec: WireCodec = WireCodec(), security: BrokerSecurity?, limits: Limits = Limits(), logInterval: Double = 10) {
        self.codec = codec
        self.security = security
        self.limits = limits
        refusals = RefusalLog(interval: logInterval)
    }

    // MARK: Events

    /// A message from `peer` (its routing id) arrived: `head` its first three frames, `frameSizes`
    /// the size of each of its frames, `member` who its key belongs to (nil without CURVE, or a
    /// key no longer allowed).
    public mutating func inbound(peer: String, head: [[UInt8]], frameSizes: [Int], member: Member?, now: Double) -> Action {
        let sender = member?.key ?? peer
        if let until = suspended[sender] {
            guard now >= until else { return dropped(peer, "suspended", "the sender is suspended", now: now, logged: false) }
            suspended[sender] = nil
        }
        var state = peers[peer] ?? Peer()
        defer { peers[peer] = state }
        if let since = state.waitingSince, now - since > limits.answerTimeout { state.clearBudget() }
        if now - state.windowStart > limits.suspendWindow { state.startWindow(at: now) }
        let action = decide(peer: peer, head: head, frameSizes: frameSizes, member: member, state: &state, now: now)
        guard state.violations >= limits.suspendAfter || state.strays >= limits.suspendAfterStrays else { return action }
        let why = "\(state.violations) refused messages and \(state.strays) stray CHUNKs within \(Int(limits.suspendWindow)) s"
        state.clearBudget()
        state.startWindow(at: -.infinity)
        suspended[sender] = now + limits.suspension
        lines.append("suspended \(peer)\(member.map { " (key \($0.key))" } ?? "") for \(Int(limits.suspension)) s after \(why): its connection is closed and its key refused until then")
        return .suspend(until: now + limits.suspension, why: why)
    }

    private mutating func decide(peer: String, head: [[UInt8]], frameSizes: [Int], member: Member?, state: inout Peer, now: Double) -> Action {
        let envelope: Envelope
        do { envelope = try codec.envelope(head: head, frameSizes: frameSizes) } catch let e as ProtocolError {
            state.stream = nil  // a broken message ends the stream it was part of, as at the aggregator
            return refuse(peer, &state, ErrorReply(e), now: now)
        } catch {
            return refuse(peer, &state, ErrorReply(code: .malformed, detail: "\(error)"), now: now)
        }
        if let refusal = identityRefusal(peer: peer, envelope, member) { return refuse(peer, &state, refusal, now: now) }
        let bytes = frameSizes.reduce(0, +)
        if case .chunk(let index, let count, let size) = envelope {
            guard let stream = state.stream else {
                state.strays += 1
                return dropped(peer, "strayChunk", "a CHUNK of no stream in progress", now: now)
            }
            guard index == stream.next, count == stream.count, size <= stream.chunkBytes else {
                state.stream = nil
                return refuse(peer, &state, ErrorReply(code: .malformed,
                    detail: "CHUNK \(index) of \(count) (\(size) bytes) arrived; expected chunk \(stream.next) of \(stream.count), at most \(stream.chunkBytes) bytes"),
                    now: now)
            }
        } else if envelope.isRequest, state.requests >= limits.requestsInFlight {
            return refuse(peer, &state, ErrorReply(code: .unavailable,
                detail: "\(state.requests) requests are waiting for the aggregator's answer; more are refused until it answers"), now: now)
        }
        guard state.bytes + bytes <= limits.bytesInFlight else {
            state.stream = nil
            return refuse(peer, &state, ErrorReply(code: .unavailable,
                detail: "\(state.bytes + bytes) bytes since the aggregator last answered exceed the budget of \(limits.bytesInFlight)"), now: now)
        }
        accept(envelope, bytes: bytes, into: &state, now: now)
        return .forward
    }

    /// The aggregator answered `peer` (a reply other than a stream's CHUNK went to it).
    public mutating func answered(peer: String, now: Double) {
        guard var state = peers[peer] else { return }
        state.requests = max(0, state.requests - 1)
        if state.requests == 0 {
            state.bytes = 0
            state.waitingSince = nil
        } else {
            state.waitingSince = now
        }
        peers[peer] = state
    }

    /// The aggregator went away or another took its place: nothing in flight will be answered.
    public mutating func aggregatorChanged() {
        for peer in peers.keys {
            peers[peer]!.clearBudget()
            peers[peer]!.startWindow(at: -.infinity)
        }
    }

    /// A peer silent long enough to be forgotten.
    public mutating func forget(peer: String) { peers[peer] = nil }

    /// Whether the sender with this key (or routing id, without CURVE) is suspended at `now`.
    public func isSuspended(_ sender: String, now: Double) -> Bool { (suspended[sender] ?? -.infinity) > now }

    /// The lines to log now: first refusals of each peer, and summaries of intervals that ended.
    public mutating func logLines(now: Double) -> [String] {
        defer { lines = [] }
        return lines + refusals.summaries(now: now)
    }

    // MARK: Parts

    /// Why the sender may not send this message, with CURVE: its key is no longer allowed, a
    /// subscriber pushes, or it speaks as a name its key is not bound to.
    private func identityRefusal(peer: String, _ envelope: Envelope, _ member: Member?) -> ErrorReply? {
        guard let security else { return nil }
        guard let member else { return ErrorReply(code: .forbidden, detail: "this connection's key is no longer allowed") }
        if member.role == .subscriber {
            switch envelope {
            case .update, .chunk: return ErrorReply(code: .forbidden, detail: "a subscriber's key may receive releases, not push updates")
            case .hello: return ErrorReply(code: .forbidden, detail: "a subscriber's key may receive releases, not register as a trainer")
            default: break
            }
        }
        guard security.may(member, use: peer) else {
            return ErrorReply(code: .forbidden, detail: "routing id '\(peer)' is not a name of this key (\(member.names.sorted().joined(separator: ", ")))")
        }
        if let claimed = envelope.trainerID, claimed != peer {
            return ErrorReply(code: .forbidden, detail: "trainer id '\(claimed)' on the connection of '\(peer)': a trainer speaks only as itself")
        }
        return nil
    }

    private mutating func accept(_ envelope: Envelope, bytes: Int, into state: inout Peer, now: Double) {
        forwarded += 1
        state.bytes += bytes
        if envelope.isRequest {
            state.requests += 1
            if state.waitingSince == nil { state.waitingSince = now }
        }
        switch envelope {
        case .update(_, let chunks, let chunkBytes):
            state.stream = chunks > 0 ? (0, chunks, chunkBytes) : nil
        case .chunk:
            state.stream!.next += 1
            if state.stream!.next == state.stream!.count { state.stream = nil }
        default: break
        }
    }

    private mutating func refuse(_ peer: String, _ state: inout Peer, _ reply: ErrorReply, now: Double) -> Action {
        state.violations += 1
        if let line = refusals.record(peer: peer, reason: reply.code.rawValue, detail: reply.detail, now: now) { lines.append(line) }
        guard now - state.lastReply >= limits.replyInterval else { return .drop }
        state.lastReply = now
        return .refuse(reply)
    }

    private mutating func dropped(_ peer: String, _ reason: String, _ detail: String, now: Double, logged: Bool = true) -> Action {
        if let line = refusals.record(peer: peer, reason: reason, detail: detail, now: now), logged { lines.append(line) }
        return .drop
    }
}
