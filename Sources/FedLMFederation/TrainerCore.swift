import FedLMProtocol

/// A trainer's protocol logic, without sockets, files or training: a state machine that takes
/// events (a message arrived, a quiet moment passed, a round was trained, a cluster's model was
/// evaluated) and answers with the actions the driver performs (send, send again, train a round,
/// evaluate, settle the update in flight, finish). `TrainerService` is the driver: it owns the
/// socket, the model and the pending-update file and does only what the actions say.
///
/// The life of a trainer: register (HELLO until WELCOME), with automatic clusters choose one
/// (IFCA, Ghosh et al. 2020: fetch every cluster's release, evaluate each on a fixed sample of
/// local data, join the lowest loss), deliver an update left from before a restart, then rounds
/// of fetch, train H local steps, deliver, until the token budget is spent. Each request is sent
/// again after its timeout without a word (`Request`); an update the aggregator has forgotten
/// the trainer for (`unknown_trainer`) is sent again after registering again.
///
/// With overlap (`[wire] overlap = true`, asynchronous modes) communication hides behind
/// training, as in Streaming DiLoCo (Douillard et al. 2025) and DiLoCo with eager updates (Kale
/// et al. 2025): when round r is trained, its update Δ_r and a FETCH go out and round r+1 starts
/// at once. At most one update is in flight and one more trained and held; a round starts only
/// when the previous update has gone out. The weights a round starts from (the merge rule):
///
/// - a release R newer than the one the trainer holds has arrived: S = R − λ·Δ_last, where
///   Δ_last is the trainer's latest pseudo-gradient, which R cannot contain yet (it was trained
///   while R was on its way), and λ (`overlap_own`) about the weight the aggregator will give it;
///   the trainer's own update stands in for its share of the aggregate until R includes it. The
///   round's base version is R's.
/// - no newer release: S = the weights the last round ended with (training continues locally);
///   the base version stays that of the last release, so the aggregator's staleness weighting
///   sees how far the trainer has moved from it.
public struct TrainerCore: Sendable {
    public let options: TrainerOptions
    /// Tokens per local step (batch x sequence).
    public let tokensPerStep: Int

    /// Where the trainer is.
    private enum State: Sendable {
        case idle
        case registering(Request)
        case choosing(Request, Choice)
        case fetching(Request, FetchPlan, asking: Int?)
        case training
        case delivering(Request)
        /// Overlap: training, sending and fetching at once (see the type's documentation).
        case overlapping(Overlap)
        case finished
    }

    /// What overlap is waiting for.
    private struct Overlap: Sendable {
        var training = false
        /// The update in flight's and the fetch's resend timers (nil: none outstanding).
        var update: Request?
        var fetch: Request?
        /// A trained update waiting for the one in flight to be settled.
        var held: String?
        /// The newest release held and not yet trained from.
        var fresh: ReleaseInfo?
        /// The release the trainer's weights derive from.
        var base: ReleaseInfo
        /// The newest version the trainer holds (a FETCH asks for a newer one).
        var newest: Int { fresh?.version ?? base.version }
    }

    /// An IFCA choice in progress: the clusters still to evaluate and the losses so far.
    private struct Choice: Sendable {
        var remaining: [String]
        var losses: [(String, Float)] = []
    }

    private var state = State.idle
    public private(set) var mode = "fedbuff"
    public private(set) var clusters: [String] = []
    /// The cluster the trainer trains in (nil: none, or not chosen yet).
    public private(set) var cluster: String?
    /// The update sent and not yet settled.
    public private(set) var updateInFlight: String?
    public private(set) var tokensTrained = 0
    public private(set) var rounds = 0
    private var mustChooseCluster: Bool
    private var lastBase: Int?
    private var lastRelease: ReleaseInfo?
    /// The global release the trainer holds exactly (the whole release, plus the steps since).
    public private(set) var holds: Int?
    private var lastBuffered = false
    private var lastRoundSeconds = 0.0
    private var stepSeconds = 0.0
    /// Seconds to wait for an answer before sending a registration or fetch again.
    public static let requestRetry = 5.0

    public init(options: TrainerOptions, tokensPerStep: Int) {
        self.options = options
        self.tokensPerStep = tokensPerStep
        cluster = options.automaticCluster ? nil : options.cluster
        mustChooseCluster = options.automaticCluster
    }

    public var isFinished: Bool { if case .finished = state { true } else { false } }
    /// Overlap is on and the aggregation is asynchronous (synchronous rounds wait by design).
    private var overlaps: Bool { options.overlap && mode != "sync" }

    // MARK: Events

    /// The trainer starts, with the id of an update left unacknowledged before a restart, if any.
    public mutating func start(now: Double, pendingUpdate: String? = nil) -> [Action] {
        updateInFlight = pendingUpdate
        return register(now: now)
    }

    /// The driver sent a HEARTBEAT to say it is alive while it trains. The aggregator answers
    /// each with a HEARTBEAT, which is also its answer to a FETCH when it has nothing newer: so
    /// that many HEARTBEATs are not taken for that answer (whichever arrive first: only how many
    /// matters).
    public mutating func sentAlive() { aliveUnanswered += 1 }
    private var aliveUnanswered = 0

    /// A whole message arrived from the broker.
    public mutating func received(_ message: Message, now: Double) -> [Action] {
        if case .heartbeat = message, aliveUnanswered > 0 {
            aliveUnanswered -= 1
            return []
        }
        if case .error(let e) = message, e.code == .unavailable {
            // No aggregator yet; the broker answers every message of a stream: again, at most twice a second.
            return withRequest { $0.unavailable(now: now) ? [.resend] : [] }
        }
        switch state {
        case .registering: return registering(message, now: now)
        case .choosing(_, let choice): return choosing(message, choice)
        case .fetching(_, let plan, let asking): return fetching(message, plan: plan, asking: asking, now: now)
        case .delivering: return delivering(message, now: now)
        case .overlapping(let o): return overlapping(message, o, now: now)
        case .idle, .training, .finished: return []
        }
    }

    /// Everything that had arrived has been handed in: with overlap, the moment to decide
    /// whether the next round can start (so that a release right behind an ACK is not missed).
    public mutating func drained(now: Double) -> [Action] {
        guard case .overlapping(var o) = state else { return [] }
        let actions = advance(&o, now: now)
        if case .overlapping = state { state = .overlapping(o) }
        return actions
    }

    /// Part of a streamed message arrived: the answer is on its way.
    public mutating func streaming(now: Double) {
        _ = withRequest { $0.streaming(now: now); return [] }
    }

    /// Nothing arrived for a moment.
    public mutating func quiet(now: Double) -> [Action] {
        let actions = withRequest { $0.silence(now: now) ? [.resend] : [] }
        if !actions.isEmpty { aliveUnanswered = 0 }  // answers lost on the way are not waited for
        return actions
    }

    /// The driver evaluated `cluster`'s release: its mean loss on the choice sample.
    public mutating func evaluated(cluster evaluated: String, loss: Float, now: Double) -> [Action] {
        guard case .choosing(_, var choice) = state, choice.remaining.first == evaluated else { return [] }
        choice.remaining.removeFirst()
        choice.losses.append((evaluated, loss))
        if let next = choice.remaining.first {
            state = .choosing(Request(sentAt: now, retry: Self.requestRetry), choice)
            return [.send(.fetch(Fetch(cluster: next)))]
        }
        let best = choice.losses.min { $0.1 < $1.1 }!.0
        var actions: [Action] = [.note(.clusterLosses(choice.losses.map(\.0), choice.losses.map(\.1), chosen: best))]
        mustChooseCluster = false
        guard best != cluster else { return actions + proceed(now: now) }
        if let cluster { actions.append(.note(.movedCluster(from: cluster, to: best))) }
        cluster = best
        return actions + register(now: now)
    }

    /// The driver trained the round and saved the update `updateID` (`tokens` in `steps` steps
    /// that took `seconds`, slowdown included).
    public mutating func trained(updateID: String, tokens: Int, steps: Int, seconds: Double, now: Double) -> [Action] {
        tokensTrained += tokens
        rounds += 1
        lastRoundSeconds = seconds
        stepSeconds = seconds / Double(max(1, steps))
        if choosesClusterAgain(round: rounds) { mustChooseCluster = true }
        switch state {
        case .training where overlaps, .overlapping:
            var o: Overlap
            if case .overlapping(let current) = state { o = current } else { o = Overlap(base: lastRelease!) }
            o.training = false
            o.held = updateID
            state = .overlapping(o)
            return []  // the driver hands in what arrived meanwhile, then `drained` decides
        case .training:
            updateInFlight = updateID
            return deliver(now: now)
        default:
            return []
        }
    }

    // MARK: Transitions

    private mutating func register(now: Double) -> [Action] {
        state = .registering(Request(sentAt: now, retry: Self.requestRetry))
        let assignment = cluster == nil ? nil : (options.automaticCluster ? "automatic" : "declared")
        return [.send(.hello(Hello(trainerID: options.id, cluster: cluster, assignment: assignment)))]
    }

    /// After registering or settling an update: choose a cluster, deliver, fetch, or finish.
    private mutating func proceed(now: Double) -> [Action] {
        if mustChooseCluster {
            guard let first = clusters.first else {
                state = .finished
                return [.fail("\(options.id): automatic cluster choice, but the federation has no clusters")]
            }
            state = .choosing(Request(sentAt: now, retry: Self.requestRetry), Choice(remaining: clusters))
            return [.send(.fetch(Fetch(cluster: first)))]
        }
        if updateInFlight == nil, let held = heldAfterRegistering {
            heldAfterRegistering = nil
            updateInFlight = held
        }
        if updateInFlight != nil { return deliver(now: now) }
        if tokensTrained >= (options.tokenBudget ?? .max) {
            state = .finished
            return [.finish]
        }
        let plan = fetchPlan(lastBuffered: lastBuffered, mode: mode, lastBase: lastBase, lastRoundSeconds: lastRoundSeconds, now: now)
        state = .fetching(Request(sentAt: now, retry: Self.requestRetry), plan, asking: plan.haveVersion)
        return [.send(fetch(cluster: cluster, newerThan: plan.haveVersion))]
    }

    private mutating func deliver(now: Double) -> [Action] {
        state = .delivering(Request(sentAt: now, retry: options.ackTimeout))
        return [.sendUpdate(updateInFlight!)]
    }

    // MARK: Release steps

    /// Takes a release into what the trainer holds: nil if it is a step from a version the
    /// trainer does not hold (it must fetch the whole release), false if more steps follow, true
    /// if the trainer now holds the version the answer ends at.
    private mutating func hold(_ info: ReleaseInfo) -> Bool? {
        guard let from = info.stepFrom else {
            holds = info.cluster == nil ? info.version : nil
            return true
        }
        guard from == holds else {
            holds = nil
            return nil
        }
        holds = info.version
        return info.version >= (info.through ?? info.version)
    }

    /// A FETCH for a version newer than `version` (nil: any), saying which global release the
    /// trainer holds when release steps are on.
    private func fetch(cluster: String?, newerThan version: Int?) -> Message {
        .fetch(Fetch(cluster: cluster, haveVersion: version, holds: options.asksForReleaseSteps ? holds : nil))
    }

    // MARK: Overlap

    private mutating func overlapping(_ message: Message, _ o: Overlap, now: Double) -> [Action] {
        var o = o
        var actions: [Action] = []
        switch message {
        case .release(let info, let payload) where o.fetch != nil:
            guard let held = hold(info) else {
                o.fetch = Request(sentAt: now, retry: Self.requestRetry)
                state = .overlapping(o)
                return [.send(fetch(cluster: cluster, newerThan: o.base.version))]
            }
            if held { o.fetch = nil } else { o.fetch?.streaming(now: now) }
            lastBase = info.version
            lastRelease = info
            o.fresh = info
            actions = [.hold(info, payload)]
        case .heartbeat where o.fetch != nil:
            o.fetch = nil  // nothing newer than the release the trainer holds
        default:
            guard let id = updateInFlight else { return [] }
            switch delivery(of: id, reply: message) {
            case .acknowledged(let ack):
                updateInFlight = nil
                o.update = nil
                if o.fetch != nil { o.fetch = Request(sentAt: now, retry: Self.requestRetry) }  // its answer comes next
                actions = [.settled(updateID: id, .acknowledged(ack))]
            case .refused(let e):
                updateInFlight = nil
                o.update = nil
                if o.fetch != nil { o.fetch = Request(sentAt: now, retry: Self.requestRetry) }
                actions = [.settled(updateID: id, .refused(e))]
            case .registerAgain:
                // The aggregator forgot this trainer: register, then deliver as without overlap.
                if let held = o.held, !o.training { heldAfterRegistering = held }
                return register(now: now)
            case .other:
                return []
            }
        }
        state = .overlapping(o)
        return actions
    }
    /// A held update to deliver once registered again.
    private var heldAfterRegistering: String?

    /// Sends the held update when nothing is in flight, finishes when the budget is spent and
    /// everything is settled, and starts the next round by the merge rule.
    private mutating func advance(_ o: inout Overlap, now: Double) -> [Action] {
        guard !o.training else { return [] }
        var actions: [Action] = []
        if updateInFlight == nil, let held = o.held {
            o.held = nil
            updateInFlight = held
            o.update = Request(sentAt: now, retry: options.ackTimeout)
            actions.append(.sendUpdate(held))
            if o.fetch == nil {
                o.fetch = Request(sentAt: now, retry: Self.requestRetry)
                actions.append(.send(fetch(cluster: cluster, newerThan: o.newest)))
            }
        }
        let spent = tokensTrained >= (options.tokenBudget ?? .max)
        if spent {
            guard updateInFlight == nil, o.held == nil else { return actions }
            state = .finished
            return actions + [.finish]
        }
        if mustChooseCluster {
            // Choosing needs the trainer's full attention: once everything is settled, as without overlap.
            guard updateInFlight == nil, o.held == nil, o.fetch == nil else { return actions }
            return actions + proceed(now: now)
        }
        guard o.held == nil else { return actions }
        let start: Start
        if let info = o.fresh {
            o.fresh = nil
            o.base = info
            start = .releaseMinusOwn
        } else {
            start = .local
        }
        o.training = true
        let steps = localSteps(stepSeconds: stepSeconds, tokensTrained: tokensTrained)
        return actions + [.train(Round(number: rounds + 1, release: o.base, start: start, steps: steps, cluster: cluster))]
    }

    private mutating func registering(_ message: Message, now: Double) -> [Action] {
        switch message {
        case .welcome(let w):
            mode = w.mode
            clusters = w.clusters ?? []
            return [.note(.registered(cluster: cluster))] + proceed(now: now)
        case .error(let e) where e.code == .unknownCluster:
            state = .finished
            return [.fail("\(options.id): \(e.detail)")]
        default:
            return []
        }
    }

    private func choosing(_ message: Message, _ choice: Choice) -> [Action] {
        guard case .release(let info, let payload) = message, let wanted = choice.remaining.first, info.cluster == wanted else { return [] }
        return [.evaluate(cluster: wanted, info, payload)]
    }

    private mutating func fetching(_ message: Message, plan: FetchPlan, asking: Int?, now: Double) -> [Action] {
        switch message {
        case .release(let info, let payload):
            guard let complete = hold(info) else {
                // A step from a version this trainer does not hold: the whole release instead.
                state = .fetching(Request(sentAt: now, retry: Self.requestRetry), plan, asking: nil)
                return [.send(.fetch(Fetch(cluster: cluster)))]
            }
            guard complete else {
                state = .fetching(Request(sentAt: now, retry: Self.requestRetry), plan, asking: asking)
                return [.hold(info, payload)]  // more steps follow
            }
            lastBase = info.version
            lastRelease = info
            state = .training
            let steps = localSteps(stepSeconds: stepSeconds, tokensTrained: tokensTrained)
            return [.hold(info, payload), .train(Round(number: rounds + 1, release: info, start: .release, steps: steps, cluster: cluster))]
        case .heartbeat:
            // The aggregator has nothing newer than `asking` yet.
            guard let waitingFor = asking else { return [] }
            let next = askAgain(plan, now: now)
            state = .fetching(Request(sentAt: now, retry: Self.requestRetry), plan, asking: next)
            let again = fetch(cluster: cluster, newerThan: next)
            return next == nil ? [.note(.noFreshVersion(after: waitingFor)), .send(again)] : [.sendAfter(seconds: 0.02, again)]
        default:
            return []
        }
    }

    private mutating func delivering(_ message: Message, now: Double) -> [Action] {
        guard let id = updateInFlight else { return [] }
        switch delivery(of: id, reply: message) {
        case .acknowledged(let ack):
            lastBuffered = ack.outcome == .buffered
            return settle(id, .acknowledged(ack), now: now)
        case .refused(let e):
            lastBuffered = false
            return settle(id, .refused(e), now: now)
        case .registerAgain:
            return register(now: now)
        case .other:
            return []
        }
    }

    private mutating func settle(_ id: String, _ settlement: Settlement, now: Double) -> [Action] {
        updateInFlight = nil
        return [.settled(updateID: id, settlement)] + proceed(now: now)
    }

    /// Applies `change` to the request awaiting an answer, if one is.
    private mutating func withRequest(_ change: (inout Request) -> [Action]) -> [Action] {
        switch state {
        case .registering(var r):
            defer { state = .registering(r) }
            return change(&r)
        case .choosing(var r, let c):
            defer { state = .choosing(r, c) }
            return change(&r)
        case .fetching(var r, let p, let a):
            defer { state = .fetching(r, p, asking: a) }
            return change(&r)
        case .delivering(var r):
            defer { state = .delivering(r) }
            return change(&r)
        case .overlapping(var o):
            var actions: [Action] = []
            if var r = o.update, let id = updateInFlight {
                if change(&r) == [.resend] { actions.append(.sendUpdate(id)) }
                o.update = r
            }
            // The FETCH went out behind the update and is answered after it: while the update is
            // in flight (a slow upload), silence says nothing about the FETCH.
            if var r = o.fetch, o.update == nil {
                if change(&r) == [.resend] { actions.append(.send(fetch(cluster: cluster, newerThan: o.newest))) }
                o.fetch = r
            }
            state = .overlapping(o)
            return actions
        case .idle, .training, .finished:
            return []
        }
    }
}
