import FedLMFederation
import FedLMProtocol

/// The scripted exchanges `fedlm conformance` puts a trainer through, as a state machine without
/// sockets or processes: each message from the client is an event, and the answer is what to do
/// (let the real aggregator handle it, answer otherwise, stay silent, restart the client). The
/// rules checked are PROTOCOL.md's "A trainer's conversation".
///
/// The script, in order: the first FETCH is refused `unavailable`; the second is answered with a
/// release whose first chunk is corrupt; the first update is left unanswered, its resend gets a
/// broken-transfer ERROR (no `refersTo`), and its next resend is acknowledged; the second update
/// is refused for good (`tooStale`, `refersTo` its id); the third gets `unknownTrainer` (as from
/// an aggregator that forgot the trainer after silence), so the client must say HELLO and send it
/// again; the fourth is left unanswered and the client is killed and restarted; then the real
/// aggregator answers everything until the client finishes its budget.
public struct ConformanceScript {
    public enum Action: Equatable {
        /// Let the aggregator handle the message and send its answer.
        case handle
        /// Answer with this message instead.
        case reply(Message)
        /// Answer a FETCH with a release whose first chunk has a wrong checksum.
        case sendCorruptRelease
        /// Say nothing.
        case ignore
        /// Kill the client (SIGKILL) and start it again.
        case restartClient
    }

    /// One rule and what became of it.
    public struct Check: Equatable {
        public let rule: String
        public var passed: Bool?
        public var detail: String
    }

    private enum Stage: Equatable {
        case joining
        case firstFetch, secondFetch
        case serving
        case expectingHello
    }

    private var stage = Stage.joining
    private let trainerID: String
    private var checks: [String: Check] = [:]
    private var order: [String] = []
    /// Distinct update ids in the order they first arrived, and how often each was sent.
    private var updates: [String] = []
    private var deliveries: [String: Int] = [:]
    private var acknowledged = Set<String>()
    private var refused = Set<String>()
    private var restartedWith: String?
    private var awaitingFirstUpdateAfterRestart = false
    /// While the client trains (a release sent, no update yet): when it last said anything.
    private var trainingSince: Double?
    private var lastHeard = 0.0
    private var longestSilence = 0.0

    public static let rules: [(String, String)] = [
        ("hello", "says HELLO first, with its routing id as trainerID"),
        ("fetch-again", "fetches again after ERROR unavailable"),
        ("corrupt-release", "drops a release with a corrupt chunk and fetches again"),
        ("heartbeat", "sends a message at least every 5 s while it trains"),
        ("resend-unanswered", "resends an unanswered update with the same id"),
        ("resend-broken", "resends an update whose transfer broke (ERROR without refersTo)"),
        ("acknowledged", "never resends an acknowledged update"),
        ("refused", "never resends an update refused for good (ERROR with refersTo)"),
        ("hello-again", "says HELLO again after ERROR unknownTrainer, then resends the update"),
        ("pending", "resends its unacknowledged update first after a restart"),
        ("accepted", "its updates pass the aggregator's checks (names, shapes, finite values)"),
        ("protocol", "every message it sends is protocol version 2"),
    ]

    public init(trainerID: String) {
        self.trainerID = trainerID
        for (key, rule) in Self.rules {
            checks[key] = Check(rule: rule, passed: nil, detail: "not reached")
            order.append(key)
        }
        checks["protocol"]!.passed = true
        checks["protocol"]!.detail = ""
        checks["acknowledged"]!.detail = "no update was acknowledged"
    }

    public var results: [Check] { order.map { checks[$0]! } }

    private mutating func pass(_ key: String, _ detail: String = "") {
        if checks[key]!.passed == nil { checks[key]!.passed = true; checks[key]!.detail = detail }
    }

    private mutating func fail(_ key: String, _ detail: String) {
        checks[key]!.passed = false
        checks[key]!.detail = detail
    }

    /// A message the client sent that does not decode.
    public mutating func brokeProtocol(_ why: String) { fail("protocol", why) }

    /// The client's message from routing id `peer`.
    public mutating func received(_ message: Message, from peer: String, now: Double) -> Action {
        noteSilence(now: now)
        if case .hello(let h) = message {
            if stage == .joining {
                if h.trainerID == peer && peer == trainerID { pass("hello") } else {
                    fail("hello", "trainerID '\(h.trainerID)' from routing id '\(peer)', expected '\(trainerID)' for both")
                }
                stage = restartedWith == nil ? .firstFetch : .serving
            } else if stage == .expectingHello {
                pass("hello-again")
                stage = .serving
            }
            return .handle
        }
        if stage == .joining {
            fail("hello", "its first message was \(message.type), not HELLO")
            stage = .firstFetch
        }
        switch message {
        case .fetch:
            return fetch()
        case .update(let info, _):
            trainingSince = nil
            return update(info.updateID)
        default:
            return .handle
        }
    }

    private mutating func fetch() -> Action {
        switch stage {
        case .firstFetch:
            stage = .secondFetch
            return .reply(.error(ErrorReply(code: .unavailable, detail: "conformance: no release yet, fetch again")))
        case .secondFetch:
            pass("fetch-again")
            stage = .serving
            return .sendCorruptRelease
        default:
            if checks["corrupt-release"]!.passed == nil { pass("corrupt-release") }
            return .handle
        }
    }

    private mutating func update(_ id: String) -> Action {
        if acknowledged.contains(id) { fail("acknowledged", "update \(id) was sent again after its ACK") }
        if refused.contains(id) { fail("refused", "update \(id) was sent again after its final refusal") }
        if awaitingFirstUpdateAfterRestart {
            awaitingFirstUpdateAfterRestart = false
            if id == restartedWith { pass("pending", "update \(id)") } else {
                fail("pending", "after the restart it sent update \(id), not its pending \(restartedWith ?? "?")")
            }
            return .handle
        }
        if deliveries[id] == nil { updates.append(id) }
        deliveries[id, default: 0] += 1
        let n = deliveries[id]!
        switch updates.firstIndex(of: id)! {
        case 0 where n == 1:
            return .ignore
        case 0 where n == 2:
            pass("resend-unanswered")
            return .reply(.error(ErrorReply(code: .badChecksum, detail: "conformance: chunk 0 arrived broken")))
        case 0:
            pass("resend-broken")
            return .handle
        case 1:
            refused.insert(id)
            return .reply(.error(ErrorReply(code: .tooStale, detail: "conformance: refused for good", refersTo: id)))
        case 2 where n == 1:
            stage = .expectingHello
            return .reply(.error(ErrorReply(code: .unknownTrainer, detail: "conformance: say HELLO first", refersTo: id)))
        case 2:
            if stage == .expectingHello { fail("hello-again", "it sent update \(id) again without a HELLO first") }
            return .handle
        case 3 where restartedWith == nil:
            restartedWith = id
            awaitingFirstUpdateAfterRestart = true
            stage = .joining
            return .restartClient
        default:
            return .handle
        }
    }

    /// The aggregator acknowledged (or refused) an update the script let through.
    public mutating func answered(_ reply: Message) {
        switch reply {
        case .ack(let a):
            acknowledged.insert(a.updateID)
            pass("accepted")
            if checks["acknowledged"]!.passed == nil { checks["acknowledged"]!.detail = "" }
        case .error(let e) where e.refersTo != nil && !refused.contains(e.refersTo!):
            fail("accepted", "the aggregator refused update \(e.refersTo!): \(e.code): \(e.detail)")
        default:
            break
        }
    }

    /// A release went to the client: it trains from now until its next update.
    public mutating func releaseSent(now: Double) {
        trainingSince = now
        lastHeard = now
    }

    private mutating func noteSilence(now: Double) {
        if trainingSince != nil { longestSilence = max(longestSilence, now - lastHeard) }
        lastHeard = now
    }

    /// The client ended; `status` is its exit status. Settles the rules that are about the whole run.
    public mutating func finished(status: Int32) {
        if checks["acknowledged"]!.passed == nil, !acknowledged.isEmpty { pass("acknowledged") }
        if checks["refused"]!.passed == nil, !refused.isEmpty { pass("refused") }
        if longestSilence > 5 { fail("heartbeat", String(format: "silent for %.1f s while training", longestSilence)) } else if !updates.isEmpty {
            pass("heartbeat", String(format: "longest silence %.1f s", longestSilence))
        }
        if status != 0 { checks["protocol"]!.detail += (checks["protocol"]!.detail.isEmpty ? "" : "; ") + "the client exited with status \(status)" }
    }
}
