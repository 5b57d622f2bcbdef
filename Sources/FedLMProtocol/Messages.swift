/// Message types of protocol version 2 (see PROTOCOL.md beside this file). CHUNK carries one
/// tensor chunk of a streamed RELEASE or UPDATE (`MessageStream`); it is not a `Message` itself.
public enum MessageType: UInt8, Sendable, CaseIterable {
    case hello = 1, welcome, fetch, release, update, ack, error, heartbeat, bye, chunk
}

/// trainer -> aggregator: register (or re-register after a reconnect).
public struct Hello: Codable, Equatable, Sendable {
    public var trainerID: String
    /// The data cluster the trainer trains in, or nil (no clusters, or not chosen yet: the
    /// WELCOME then lists the clusters to choose from).
    public var cluster: String?
    /// How the cluster was chosen: "declared" (by the trainer's operator) or "automatic" (the
    /// cluster whose model had the lowest loss on the trainer's data).
    public var assignment: String?
    public var software: String
    public init(trainerID: String, cluster: String? = nil, assignment: String? = nil, software: String = "fedlm") {
        self.trainerID = trainerID
        self.cluster = cluster
        self.assignment = assignment
        self.software = software
    }
}

/// aggregator -> trainer: accepted; how to behave.
public struct Welcome: Codable, Equatable, Sendable {
    public var trainerID: String
    public var cluster: String?
    public var heartbeatMilliseconds: Int
    public var maxStaleness: Int
    public var latestVersion: Int
    /// The aggregation mode: with "sync", a trainer whose update is buffered waits for the next
    /// version instead of training on the same one again.
    public var mode: String
    /// With personalized heads: every cluster there is (nil without clusters).
    public var clusters: [String]?
    public init(trainerID: String, cluster: String?, heartbeatMilliseconds: Int, maxStaleness: Int, latestVersion: Int,
                mode: String = "fedbuff", clusters: [String]? = nil) {
        self.trainerID = trainerID
        self.cluster = cluster
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.maxStaleness = maxStaleness
        self.latestVersion = latestVersion
        self.mode = mode
        self.clusters = clusters
    }
}

/// trainer or subscriber -> aggregator: send me the latest release (of my cluster), unless I
/// already have `haveVersion`.
public struct Fetch: Codable, Equatable, Sendable {
    public var cluster: String?
    public var haveVersion: Int?
    /// The version of the global release the sender holds exactly (as received): with release
    /// steps on, the aggregator may answer with the steps from it instead of the whole model.
    public var holds: Int?
    /// Windowed fetch: send the release stream's head and at most this many of its chunks, then
    /// wait for a FETCH that resumes it (nil: the whole stream at once).
    public var window: Int?
    /// Windowed fetch: continue the release stream whose head the sender holds, from a chunk on.
    public var resume: ResumePoint?
    public init(cluster: String? = nil, haveVersion: Int? = nil, holds: Int? = nil, window: Int? = nil, resume: ResumePoint? = nil) {
        self.cluster = cluster
        self.haveVersion = haveVersion
        self.holds = holds
        self.window = window
        self.resume = resume
    }
}

/// Where a windowed release stream stopped: its head, named by the CRC-32C of the head's header
/// frame (which lists every chunk's CRC-32C, so it changes with the release's content), and the
/// index of the next chunk wanted. The aggregator continues from `next` only while its current
/// release has that header; otherwise it starts the current release's stream afresh.
public struct ResumePoint: Codable, Equatable, Sendable {
    public var head: UInt32
    public var next: Int
    public init(head: UInt32, next: Int) {
        self.head = head
        self.next = next
    }
}

/// A model release: a complete set of weights at a version (the tensors follow as chunks).
public struct ReleaseInfo: Codable, Equatable, Sendable {
    /// The global (trunk) version.
    public var version: Int
    /// The cluster whose head this release carries (nil: the global model).
    public var cluster: String?
    /// That cluster head's own version.
    public var headVersion: Int?
    /// A release step: the tensors are a difference, to be added (binary32, element by
    /// element) to the weights of version `stepFrom` to give this version's exactly.
    public var stepFrom: Int?
    /// A release step: the version the steps sent in answer to one FETCH end at.
    public var through: Int?
    public init(version: Int, cluster: String? = nil, headVersion: Int? = nil, stepFrom: Int? = nil, through: Int? = nil) {
        self.version = version
        self.cluster = cluster
        self.headVersion = headVersion
        self.stepFrom = stepFrom
        self.through = through
    }
}

/// trainer -> aggregator: a pseudo-gradient (start weights minus end weights; tensors follow).
public struct UpdateInfo: Codable, Equatable, Sendable {
    /// Unique per update; the trainer resends the same id until it is acknowledged.
    public var updateID: String
    public var trainerID: String
    /// The release version the local steps started from.
    public var baseVersion: Int
    public var cluster: String?
    /// The head version of the cluster release the local steps started from.
    public var baseHeadVersion: Int?
    public var tokens: Int
    public var localSteps: Int
    public init(updateID: String, trainerID: String, baseVersion: Int, cluster: String? = nil, baseHeadVersion: Int? = nil,
                tokens: Int, localSteps: Int) {
        self.updateID = updateID
        self.trainerID = trainerID
        self.baseVersion = baseVersion
        self.cluster = cluster
        self.baseHeadVersion = baseHeadVersion
        self.tokens = tokens
        self.localSteps = localSteps
    }
}

/// aggregator -> trainer: the update is durable in the ledger (applied, buffered, or a duplicate
/// of one that was); the trainer may forget it.
public struct Ack: Codable, Equatable, Sendable {
    public enum Outcome: String, Codable, Sendable { case applied, buffered, duplicate }
    public var updateID: String
    public var outcome: Outcome
    /// The global version after this update.
    public var version: Int
    public init(updateID: String, outcome: Outcome, version: Int) {
        self.updateID = updateID
        self.outcome = outcome
        self.version = version
    }
}

/// A refusal: what it refers to (an update id, ...), the code, and a readable detail.
public struct ErrorReply: Codable, Equatable, Sendable {
    public var code: ProtocolError.Code
    public var detail: String
    public var refersTo: String?
    public init(code: ProtocolError.Code, detail: String, refersTo: String? = nil) {
        self.code = code
        self.detail = detail
        self.refersTo = refersTo
    }
    public init(_ e: ProtocolError, refersTo: String? = nil) { self.init(code: e.code, detail: e.detail, refersTo: refersTo) }
}

/// One protocol message.
public enum Message: Equatable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    case fetch(Fetch)
    case release(ReleaseInfo, TensorPayload)
    case update(UpdateInfo, TensorPayload)
    case ack(Ack)
    case error(ErrorReply)
    case heartbeat
    case bye(String)

    public var type: MessageType {
        switch self {
        case .hello: return .hello
        case .welcome: return .welcome
        case .fetch: return .fetch
        case .release: return .release
        case .update: return .update
        case .ack: return .ack
        case .error: return .error
        case .heartbeat: return .heartbeat
        case .bye: return .bye
        }
    }
}
