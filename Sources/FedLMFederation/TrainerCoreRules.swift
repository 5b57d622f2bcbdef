import FedLMProtocol

/// The rules a trainer's core follows, each small enough to test on its own: when a request is
/// sent again, what a round fetches and how long it waits for a fresh version, when a trainer
/// chooses its cluster again, how many local steps fit its time budget, what an answer to an
/// update means.
extension TrainerCore {
    // MARK: Requests

    /// One request waiting for its answer: sent again after `retry` seconds without a word, at
    /// most twice a second while the broker says `unavailable`; a release still streaming in is
    /// an answer in progress.
    public struct Request: Sendable {
        public let retry: Double
        private var sentAt: Double

        public init(sentAt: Double, retry: Double) {
            self.sentAt = sentAt
            self.retry = retry
        }

        /// Nothing arrived: send again if the last send is older than `retry`.
        public mutating func silence(now: Double) -> Bool { resendIfOlder(than: retry, now: now) }

        /// The broker answered `unavailable` (no aggregator yet): send again, at most twice a second.
        public mutating func unavailable(now: Double) -> Bool { resendIfOlder(than: 0.5, now: now) }

        /// Part of a streamed answer arrived: the answer is on its way.
        public mutating func streaming(now: Double) { sentAt = now }

        private mutating func resendIfOlder(than seconds: Double, now: Double) -> Bool {
            guard now - sentAt > seconds else { return false }
            sentAt = now
            return true
        }
    }

    // MARK: Rounds

    /// What a round fetches: any release (`haveVersion` nil), or one newer than `haveVersion`,
    /// waited for until `waitUntil`.
    public struct FetchPlan: Equatable, Sendable {
        public var haveVersion: Int?
        public var waitUntil: Double
        public init(haveVersion: Int?, waitUntil: Double) {
            self.haveVersion = haveVersion
            self.waitUntil = waitUntil
        }
    }

    /// After an update the aggregator only buffered: in synchronous rounds wait for the round's
    /// next version; in an asynchronous mode with `freshBaseWait` f, wait for it at most f times
    /// the last round's time, then train on the version it has.
    public func fetchPlan(lastBuffered: Bool, mode: String, lastBase: Int?, lastRoundSeconds: Double, now: Double) -> FetchPlan {
        guard lastBuffered, let lastBase else { return FetchPlan(haveVersion: nil, waitUntil: .infinity) }
        if mode == "sync" { return FetchPlan(haveVersion: lastBase, waitUntil: .infinity) }
        guard options.freshBaseWait > 0, lastRoundSeconds > 0 else { return FetchPlan(haveVersion: nil, waitUntil: .infinity) }
        return FetchPlan(haveVersion: lastBase, waitUntil: now + options.freshBaseWait * lastRoundSeconds)
    }

    /// The aggregator has no newer version yet (it answered the FETCH with a heartbeat): ask again
    /// for a newer one, or, once the wait is over, for the one there is (nil).
    public func askAgain(_ plan: FetchPlan, now: Double) -> Int? { now >= plan.waitUntil ? nil : plan.haveVersion }

    /// With automatic clusters: choose again before this round (every `reassignEvery` rounds).
    public func choosesClusterAgain(round: Int) -> Bool {
        options.automaticCluster && round > 0 && round % max(1, options.reassignEvery) == 0
    }

    /// H for the next round: `maxLocalSteps`, fewer if the time budget at the measured step time
    /// allows fewer, and never past the token budget (at least one step).
    public func localSteps(stepSeconds: Double, tokensTrained: Int) -> Int {
        var h = options.maxLocalSteps
        if let budget = options.timeBudget, stepSeconds > 0 { h = max(1, min(options.maxLocalSteps, Int(budget / stepSeconds))) }
        if let total = options.tokenBudget { h = max(1, min(h, (total - tokensTrained) / max(1, tokensPerStep))) }
        return h
    }

    // MARK: Answers to an update

    public enum Delivery: Equatable, Sendable {
        /// Durable at the aggregator: the pending file may go.
        case acknowledged(Ack)
        /// The aggregator forgot this trainer (it restarted, or the trainer was silent): say
        /// HELLO again, then send the same update.
        case registerAgain
        /// Refused for good, with the reason.
        case refused(ErrorReply)
        /// Not about this update.
        case other
    }

    /// What `reply` means for the update `id` in flight.
    public func delivery(of id: String, reply: Message) -> Delivery {
        switch reply {
        case .ack(let a) where a.updateID == id: return .acknowledged(a)
        case .error(let e) where e.refersTo == id: return e.code == .unknownTrainer ? .registerAgain : .refused(e)
        default: return .other
        }
    }
}
