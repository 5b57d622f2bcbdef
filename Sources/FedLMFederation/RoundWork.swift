import FedLMProtocol
import FedLMZeroMQ

/// What a trainer's rounds are made of. `TrainerService` drives a `TrainerCore` and asks its work
/// to hold releases and to produce each round's pseudo-gradient: `LocalTraining` (H local AdamW
/// steps on the trainer's own data) or `RegionalRounds` (a regional aggregator's progress since
/// it adopted the release from above).
protocol RoundWork: AnyObject {
    /// Tokens one local step trains (the core's time budget turns seconds into steps with it).
    var tokensPerStep: Int { get }
    /// The data clusters it trains on (for the log).
    var dataClusters: [String] { get }
    /// Seconds spent producing updates (for the trainer's statistics).
    var trainingSeconds: Double { get }
    /// Keeps a release (whole, or a step from the one held).
    func hold(_ info: ReleaseInfo, _ payload: TensorPayload) throws
    /// The loss of a release on the work's own data (automatic cluster choice).
    func evaluate(_ payload: TensorPayload) throws -> Float
    /// Produces the round's pseudo-gradient Δ = θ_start − θ_end, to be sent as `updateID`;
    /// `alive` is called about once a second meanwhile.
    func train(_ round: TrainerCore.Round, updateID: String, alive: () -> Void) throws -> RoundResult
    /// The update's tensors as they travel.
    func payload(of delta: [Float]) -> TensorPayload
    /// The level above acknowledged or refused an update.
    func settled(_ id: String, _ settlement: TrainerCore.Settlement)
    /// An update the work knows to be unsettled though no pending file holds it (resent first).
    func restoredUpdate(codec: WireCodec) -> PendingUpdate?
}

extension RoundWork {
    func settled(_ id: String, _ settlement: TrainerCore.Settlement) {}
    func restoredUpdate(codec: WireCodec) -> PendingUpdate? { nil }
}

/// One round's outcome.
struct RoundResult {
    var delta: [Float]
    var tokens: Int
    /// Wall time of the round, artificial slowdown included.
    var seconds: Double
    /// The last local step's loss (nil where the round did no local steps).
    var lastLoss: Float?
}
