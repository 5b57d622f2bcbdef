import FedLMProtocol
import FedLMZeroMQ
import Foundation

/// A regional aggregator's rounds as one trainer of the level above (WorldLM, Iacob et al. 2024:
/// federations of federations). Its "local training" is its region's federation: a round adopts
/// the release from above, lets the region advance `round.steps` versions (or `seconds`), and
/// sends what the region learned meanwhile as one pseudo-gradient,
///
///     Δ = A − S,
///
/// where A is the release adopted (the anchor) and S the regional model now. Adopting the next
/// release G from above moves the regional model R to
///
///     R ← G + (R − S)   if the level above acknowledged Δ (it holds the region's work up to S),
///     R ← G + (R − A)   if it refused Δ or none was sent (everything since A is carried over),
///
/// so every part of the region's progress reaches the level above in exactly one acknowledged
/// update, however long the uplink was cut: during an outage the region keeps training, its
/// update waits (resent under the same id), and the work done meanwhile travels in the next.
/// The state that makes this hold across crashes is `UplinkState`; the regional model's own
/// changes are versions in the regional ledger, each adoption checkpointed at once.
final class RegionalRounds: RoundWork {
    /// When a round ends and its update goes up: after `versions` regional versions (the
    /// round's steps), or once the region accepted `tokens` tokens since its last update, or
    /// after `seconds` with at least one version, whichever comes first.
    struct Cadence: Sendable, Equatable {
        var tokens: Int?
        var seconds: Double?
    }

    let region: AggregatorService
    let options: TrainerOptions
    let cadence: Cadence
    let statePath: String
    let specs: [TensorSpec]
    private var state: UplinkState
    /// The regional version the round in progress started from (after the latest adoption).
    private var startVersion: Int
    private var lastSettlement: (id: String, acknowledged: Bool)?
    /// The latest adoption carried work the level above has not acknowledged (sent once more
    /// when the region stops).
    private var carried = true
    private(set) var trainingSeconds = 0.0
    let isStopped: () -> Bool

    var tokensPerStep: Int { 1 }
    var dataClusters: [String] { ["its region's trainers"] }

    init(region: AggregatorService, options: TrainerOptions, cadence: Cadence, isStopped: @escaping () -> Bool) throws {
        self.region = region
        self.options = options
        self.cadence = cadence
        self.isStopped = isStopped
        statePath = options.stateDirectory + "/state.safetensors"
        try FileManager.default.createDirectory(atPath: options.stateDirectory, withIntermediateDirectories: true)
        let path = statePath
        (state, startVersion, specs) = try region.withCore { core in
            let count = core.model.parameters.count
            var s: UplinkState
            if let saved = try UplinkState.load(from: path, count: count) {
                s = saved
                try Self.finishAdoption(&s, core: core, path: path)
            } else {
                // The levels start from the same initial model (one config, one seed): until the
                // first release from above arrives, the region's progress is counted from its own.
                s = UplinkState(anchor: Array(core.model.parameters.storage.buffer), anchorVersion: 0)
                try s.save(to: path)
            }
            return (s, core.version, core.specs)
        }
    }

    /// An adoption a crash interrupted (the state file says so, the regional model has not moved):
    /// moves the model now, exactly as it would have.
    private static func finishAdoption(_ s: inout UplinkState, core: AggregatorCore, path: String) throws {
        guard let target = s.adoptedVersion, let reference = s.reference else { return }
        if core.version < target {
            guard core.version == target - 1 else {
                throw FederationError.replayDiverged("the uplink was adopting as version \(target), the region is at \(core.version)")
            }
            try core.adopt(from: s.anchorVersion) { Self.carry(into: $0, release: s.anchor, reference: reference, count: s.anchor.count) }
        }
        s.reference = nil
        s.adoptedVersion = nil
        try s.save(to: path)
    }

    /// Whether the regional model holds work beyond `reference` (R − reference is not zero).
    private static func differs(_ r: UnsafeMutableBufferPointer<Float>, _ reference: [Float]) -> Bool {
        zip(r, reference).contains { $0 != $1 }
    }

    /// R ← G + (R − reference), in place.
    private static func carry(into r: UnsafeMutablePointer<Float>, release g: [Float], reference: [Float], count: Int) {
        for i in 0..<count { r[i] = g[i] + (r[i] - reference[i]) }
    }

    func hold(_ info: ReleaseInfo, _ payload: TensorPayload) throws {
        guard info.stepFrom == nil else { throw FederationError.peer("the level above sent a release step; regions adopt whole releases") }
        try payload.check(against: specs)
        let acknowledged = lastSettlement.map { $0.acknowledged && $0.id == state.pendingUpdate } ?? false
        // A stopping region whose work is all acknowledged (nothing since the update sent)
        // keeps its own model, which serves its region; the release is adopted when it starts again.
        if isStopped(), acknowledged, let sent = state.sent,
           !region.withCore({ Self.differs($0.model.parameters.storage.buffer, sent) }) { throw UplinkStopped() }
        let release = payload.values
        let path = statePath
        try region.withCore { core in
            var s = state
            s.reference = acknowledged ? (s.sent ?? s.anchor) : s.anchor
            if !acknowledged { s.reportedTokens -= s.pendingTokens }
            s.anchor = release
            s.anchorVersion = info.version
            s.anchorHeadVersion = info.headVersion
            s.sent = nil
            s.pendingUpdate = nil
            s.pendingTokens = 0
            s.adoptedVersion = core.version + 1
            carried = Self.differs(core.model.parameters.storage.buffer, s.reference!)
            try s.save(to: path)
            try Self.finishAdoption(&s, core: core, path: path)
            state = s
            startVersion = core.version
        }
        lastSettlement = nil
        region.logger.info("adopted version \(info.version) from above\(info.cluster.map { " (\($0))" } ?? "") as regional version \(startVersion)\(acknowledged ? "" : ", carrying everything since the previous one")")
    }

    func evaluate(_ payload: TensorPayload) throws -> Float {
        throw FederationError.peer("a region declares its cluster above; it does not choose one by loss")
    }

    /// Waits until the region has advanced `round.steps` versions (or `seconds` passed and it
    /// advanced at all), then takes Δ = A − S and records it before it is sent. When the region
    /// stops, what it learned since the last update is sent at once (the stop waits for it).
    func train(_ round: TrainerCore.Round, updateID: String, alive: () -> Void) throws -> RoundResult {
        let started = Date().timeIntervalSince1970
        var lastAlive = started
        while true {
            let now = Date().timeIntervalSince1970
            let advanced = region.withCore { $0.version } - startVersion
            if isStopped() {
                guard advanced > 0 || carried else { throw UplinkStopped() }
                break
            }
            if advanced > 0, try roundIsDone(advanced: advanced, of: round.steps, elapsed: now - started) { break }
            if now - lastAlive >= 1 {
                alive()
                lastAlive = now
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let path = statePath
        let (delta, tokens) = try region.withCore { core -> ([Float], Int) in
            var s = state
            let sent = Array(core.model.parameters.storage.buffer)
            let delta = zip(s.anchor, sent).map { $0 - $1 }
            let tokens = max(0, try core.ledger.acceptedTokens() - s.reportedTokens)
            s.sent = sent
            s.pendingUpdate = updateID
            s.pendingTokens = tokens
            s.reportedTokens += tokens
            try s.save(to: path)
            state = s
            return (delta, tokens)
        }
        let seconds = Date().timeIntervalSince1970 - started
        trainingSeconds += seconds
        return RoundResult(delta: delta, tokens: tokens, seconds: seconds, lastLoss: nil)
    }

    /// Whether the region has advanced enough for an update up (`cadence`).
    private func roundIsDone(advanced: Int, of versions: Int, elapsed: Double) throws -> Bool {
        if let tokens = cadence.tokens {
            if try region.withCore({ try $0.ledger.acceptedTokens() }) - state.reportedTokens >= tokens { return true }
        } else if advanced >= versions {
            return true
        }
        return cadence.seconds.map { elapsed >= $0 } ?? false
    }

    /// F32, or a lossless-enough encoding without error feedback (an update rebuilt after a crash
    /// must be the one sent before it).
    func payload(of delta: [Float]) -> TensorPayload {
        switch options.compression.encoding {
        case .f16, .bf16, .int8: return TensorPayload(specs: specs, encoded: delta.withUnsafeBufferPointer { options.compression.encode($0) })
        default: return TensorPayload(specs: specs, values: delta)
        }
    }

    func settled(_ id: String, _ settlement: TrainerCore.Settlement) {
        if case .acknowledged = settlement { lastSettlement = (id, true) } else { lastSettlement = (id, false) }
    }

    /// The update in flight when the process stopped, rebuilt from A and S under its id.
    func restoredUpdate(codec: WireCodec) -> PendingUpdate? {
        guard let id = state.pendingUpdate, let sent = state.sent else { return nil }
        let delta = zip(state.anchor, sent).map { $0 - $1 }
        let info = UpdateInfo(updateID: id, trainerID: options.id, baseVersion: state.anchorVersion, cluster: options.cluster,
                              baseHeadVersion: state.anchorHeadVersion, tokens: state.pendingTokens, localSteps: options.maxLocalSteps)
        return PendingUpdate(id: id, frames: SharedFrames(.update(info, payload(of: delta)), codec: codec))
    }
}

/// The regional aggregator stopped while its uplink waited for the region.
struct UplinkStopped: Error {}
