import FedLMAggregation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation

/// Whether and how an update counts: the verdict on an id seen before, the checks every update
/// passes (known sender, staleness, norm), refusals recorded with their reason, the tokens it is
/// credited with, and the record and acknowledgement of an accepted one.
extension AggregatorCore {
    /// The verdict already given to an update id (a resend, or a replay): its ack repeated, or
    /// its refusal; nil for an id never seen.
    func earlierVerdict(_ info: UpdateInfo) throws -> Message? {
        guard let earlier = try ledger.update(id: info.updateID) else { return nil }
        if earlier.outcome == .refused {
            return .error(ErrorReply(code: .duplicate, detail: earlier.reason ?? "refused before", refersTo: info.updateID))
        }
        return .ack(Ack(updateID: info.updateID, outcome: .duplicate, version: earlier.versionAfter))
    }

    /// Records a refusal in the ledger (the model unchanged) and answers it with its reason.
    func refuse(_ info: UpdateInfo, _ e: ProtocolError, staleness: Int = 0, norm: Double = 0, now: Double) throws -> Message {
        try ledger.recordUpdate(.init(id: info.updateID, trainer: info.trainerID, cluster: info.cluster,
                                      baseVersion: info.baseVersion, staleness: staleness, weight: 0, norm: norm, tokens: info.tokens,
                                      outcome: .refused, versionAfter: version, deltaPath: nil, reason: e.description,
                                      receivedAt: now))
        log("refused update \(info.updateID) from \(info.trainerID): \(e)")
        return .error(ErrorReply(e, refersTo: info.updateID))
    }

    /// An UPDATE whose header was readable but whose content the decoder refused (non-finite
    /// values, another dtype, too many values: `ProtocolError.refusesContent`): recorded and
    /// answered like any other refusal, so the trainer learns which update was refused and why,
    /// and a resend gets the same answer.
    public func refuseUndecodable(_ info: UpdateInfo, _ e: ProtocolError, now: Double = Date().timeIntervalSince1970) throws -> Message {
        if let earlier = try earlierVerdict(info) { return earlier }
        return try refuse(info, e, now: now)
    }

    /// The answer to an update that needs no further look: the verdict on an id seen before, or
    /// UNKNOWN_TRAINER for a sender that has not said HELLO (nothing recorded: it registers and resends).
    func answerBeforeChecks(_ info: UpdateInfo) throws -> Message? {
        if let earlier = try earlierVerdict(info) { return earlier }
        guard knownTrainers[info.trainerID] != nil else {
            return .error(ErrorReply(code: .unknownTrainer, detail: "say HELLO first", refersTo: info.updateID))
        }
        return nil
    }

    /// Why an update `staleness` versions old is refused (nil: it is not).
    func stalenessRefusal(_ staleness: Int, strategyRefusal: String? = nil) -> ProtocolError? {
        if staleness > config.maxStaleness {
            return ProtocolError(.tooStale, "staleness \(staleness) exceeds \(config.maxStaleness); fetch the latest release")
        }
        return strategyRefusal.map { ProtocolError(.tooStale, $0) }
    }

    /// Why an update of this norm is refused under `norm_policy = "refuse"` (nil: it is not).
    func normRefusal(_ norm: Double) -> ProtocolError? {
        guard config.normPolicy == .refuse, let bound = config.maxUpdateNorm, norm > bound else { return nil }
        return ProtocolError(.normTooLarge, "update norm \(String(format: "%.4g", norm)) exceeds max_update_norm \(bound)")
    }

    /// Records an accepted update (applied or buffered) in the ledger, checkpoints when its
    /// cadence is due, and acknowledges it: the last steps of every update, whole or folded.
    func accept(_ info: UpdateInfo, credit: TokenClaimLimits.Credit, decision: AggregationDecision, staleness: Int, norm: Double,
                        deltaPath: String, now: Double, headStaleness: Int? = nil, headVersionAfter: Int? = nil) throws -> Message {
        let applied = decision == .applied
        try ledger.recordUpdate(.init(id: info.updateID, trainer: info.trainerID, cluster: info.cluster, baseVersion: info.baseVersion,
                                      staleness: staleness, weight: StalenessWeightOf(config).weight(staleness) * strategy.lastTrust,
                                      norm: norm, tokens: credit.tokens, outcome: applied ? .applied : .buffered,
                                      versionAfter: version, deltaPath: deltaPath, reason: nil, receivedAt: now,
                                      headStaleness: headStaleness, headVersionAfter: headVersionAfter,
                                      claimedTokens: credit.clamped ? info.tokens : nil))
        if strategy.lastTrust == 0 {
            log("update \(info.updateID) from \(info.trainerID) points against the federation's recent direction: counted with weight 0")
        }
        credited[info.trainerID, default: 0] += credit.tokens
        if let why = credit.reason {
            log("update \(info.updateID) from \(info.trainerID) claimed \(info.tokens) tokens, credited \(credit.tokens): \(why)")
            metrics.clampedClaim(trainer: info.trainerID)
        }
        if applied {
            rememberVersion()
            if version - lastCheckpointedVersion >= checkpointInterval { try checkpoint() }
        } else if let headVersionAfter, headVersionAfter % (checkpointInterval * 4) == 0 {
            // Heads also change between global versions (a buffered trunk update still moves its
            // head): checkpoint now and then so replays stay short.
            try checkpoint()
        }
        return .ack(Ack(updateID: info.updateID, outcome: applied ? .applied : .buffered, version: version))
    }

    /// What `info` is credited with under `tokenClaims`.
    func credit(_ info: UpdateInfo) -> TokenClaimLimits.Credit {
        guard let tokenClaims else { return .init(tokens: info.tokens, reason: nil) }
        return tokenClaims.credit(claimed: info.tokens, localSteps: info.localSteps, trainer: info.trainerID,
                                  creditedSoFar: credited[info.trainerID] ?? 0)
    }
}
