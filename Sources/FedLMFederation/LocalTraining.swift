import FedLMData
import FedLMModel
import FedLMProtocol
import FedLMTensor
import Foundation

/// A trainer's model, data and optimizer: loads releases, evaluates them for a cluster choice,
/// and trains a round of local AdamW steps into a pseudo-gradient (Photon, Sani et al. 2024:
/// Δ = θ_start − θ_end after H local steps, which the aggregator's outer optimizer treats as a
/// gradient).
///
/// A partial trainer (`TrainerOptions.trained`) trains some tensors only: its optimizer state,
/// start weights and pseudo-gradients cover those, and its updates carry only them.
final class LocalTraining: RoundWork {
    let options: TrainerOptions
    let data: TokenDataset
    let model: GPT2Model
    let step: TrainingStep
    let sequence: Int
    /// The model's tensors as they travel in releases (names and shapes).
    let specs: [TensorSpec]
    /// The tensors this trainer trains and its updates carry.
    let trained: TensorSubset
    /// The trained tensors as they travel in updates.
    let updateSpecs: [TensorSpec]
    /// The trained tensors' weights when the round started.
    private let start: ParameterVector
    /// Seeded from the training seed and the trainer's id (a stable hash), so a trainer's batches
    /// are the same on every run.
    private var rng: SeededGenerator
    /// IFCA's fixed sample of local data: the same batches for every evaluation, so losses compare.
    private var choiceSample: [TokenBatch]?

    var tokensPerStep: Int { options.training.batchSize * sequence }

    init(options o: TrainerOptions) throws {
        options = o
        data = try TokenDataset(directory: o.dataDirectory)
        for c in o.dataClusters ?? [] { try data.checkCluster(c) }
        trained = o.trained ?? .whole(ParameterLayout(config: o.modelConfig))
        model = try GPT2Model(config: o.modelConfig, trained: trained)
        sequence = o.training.sequenceLength ?? o.modelConfig.context
        step = TrainingStep(model: model, training: o.scheduledTraining)
        step.microBatch = o.microBatch
        start = ParameterVector(layout: trained.packed)
        specs = model.layout.entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
        updateSpecs = trained.packed.entries.map { TensorSpec(name: $0.name, shape: $0.shape) }
        rng = SeededGenerator(seed: o.training.seed, name: o.id)
    }

    var dataClusters: [String] { options.dataClusters ?? data.clusters }

    /// The release the trainer holds (the whole release, plus the release steps since).
    private var held: [Float] = []

    /// Keeps a release: a whole one replaces the held weights, a step is added to them.
    func hold(_ info: ReleaseInfo, _ payload: TensorPayload) throws {
        try payload.check(against: specs)
        if info.stepFrom == nil {
            held = payload.values
        } else {
            guard held.count == model.parameters.count else { throw FederationError.peer("a release step arrived before any release") }
            PublishedModel.add(payload, to: &held)
        }
    }

    private func loadHeld() {
        held.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
    }

    /// Checks a release against the model's tensors and loads it.
    func load(_ payload: TensorPayload) throws {
        try payload.check(against: specs)
        payload.values.withUnsafeBufferPointer { model.parameters.pointer.update(from: $0.baseAddress!, count: model.parameters.count) }
    }

    /// The mean loss of a release on the choice sample.
    func evaluate(_ payload: TensorPayload) throws -> Float {
        try load(payload)
        let sample = try choiceBatches()
        return try sample.map { try model.loss($0) }.reduce(0, +) / Float(sample.count)
    }

    private func choiceBatches() throws -> [TokenBatch] {
        if let choiceSample { return choiceSample }
        var sampleRNG = SeededGenerator(seed: options.training.seed &+ 77)
        let sample = try (0..<options.assignmentBatches).map { _ in
            try data.batch(.train, clusters: options.dataClusters, batch: options.training.batchSize, sequence: sequence, rng: &sampleRNG)
        }
        choiceSample = sample
        return sample
    }

    /// Seconds spent in training steps (for the compute utilisation).
    private(set) var trainingSeconds = 0.0
    /// The latest pseudo-gradient, for overlap's merge rule.
    private var lastDelta: [Float]?
    /// Error feedback: what lossy encodings left out of the updates sent so far.
    private var residual: [Float] = []

    /// Trains the round's local steps from the weights its `start` names and returns the
    /// pseudo-gradient; `alive` is called about once a second meanwhile.
    func train(_ round: TrainerCore.Round, updateID: String, alive: () -> Void) throws -> RoundResult {
        switch round.start {
        case .release:
            loadHeld()
        case .local:
            break
        case .releaseMinusOwn:
            loadHeld()
            if let own = lastDelta {
                Self.subtract(own, times: Float(options.overlapOwnWeight), from: model.parameters.pointer, trained: trained.isWhole ? nil : trained)
            }
        }
        trained.gather(from: model.parameters.pointer, into: start.pointer)
        let steps = round.steps
        let t0 = Date().timeIntervalSince1970
        var lastLoss: Float = 0, tokens = 0, lastAlive = t0
        for _ in 0..<steps {
            let batch = try data.batch(.train, clusters: options.dataClusters, batch: options.training.batchSize, sequence: sequence, rng: &rng)
            lastLoss = try step.run(batch).loss
            tokens += batch.inputs.count
            if Date().timeIntervalSince1970 - lastAlive > 1 {
                alive()
                lastAlive = Date().timeIntervalSince1970
            }
        }
        let elapsed = Date().timeIntervalSince1970 - t0
        trainingSeconds += elapsed
        if options.slowdown > 1 { Thread.sleep(forTimeInterval: elapsed * (options.slowdown - 1)) }
        var delta = pseudoGradient()
        lastDelta = delta
        if let attack = options.attack { Self.corrupt(&delta, attack, rng: &rng) }
        return RoundResult(delta: delta, tokens: tokens, seconds: Date().timeIntervalSince1970 - t0, lastLoss: lastLoss)
    }

    /// Overlap's merge rule on the weights: θ −= λ·Δ_own, where Δ_own holds the `trained`
    /// tensors packed (nil: every tensor, in the weights' order).
    static func subtract(_ own: [Float], times lambda: Float, from weights: UnsafeMutablePointer<Float>, trained: TensorSubset? = nil) {
        guard lambda != 0 else { return }
        guard let trained else {
            for i in own.indices { weights[i] -= lambda * own[i] }
            return
        }
        for (entry, range) in zip(trained.packed.entries, trained.modelRanges) {
            for k in 0..<range.count { weights[range.lowerBound + k] -= lambda * own[entry.offset + k] }
        }
    }

    /// The update's tensors as they travel: F32, or encoded with error feedback.
    func payload(of delta: [Float]) -> TensorPayload {
        guard options.compression.encoding != .f32 else { return TensorPayload(specs: updateSpecs, values: delta) }
        if residual.isEmpty { residual = [Float](repeating: 0, count: delta.count) }
        let encoded = delta.withUnsafeBufferPointer { d in
            residual.withUnsafeMutableBufferPointer { options.compression.encode(d, residual: $0) }
        }
        return TensorPayload(specs: updateSpecs, encoded: encoded)
    }

    /// Δ = start weights − end weights, of the trained tensors.
    private func pseudoGradient() -> [Float] {
        let before = start.pointer, after = model.parameters.pointer
        return [Float](unsafeUninitializedCapacity: trained.count) { out, initialized in
            for (entry, range) in zip(trained.packed.entries, trained.modelRanges) {
                for k in 0..<range.count { out[entry.offset + k] = before[entry.offset + k] - after[range.lowerBound + k] }
            }
            initialized = trained.count
        }
    }
}

extension LocalTraining {
    static func corrupt(_ delta: inout [Float], _ attack: TrainerAttack, rng: inout SeededGenerator) {
        switch attack {
        case .signFlip(let scale):
            for i in delta.indices { delta[i] *= -Float(scale) }
        case .noise(let scale):
            let rms = (delta.reduce(0) { $0 + Double($1) * Double($1) } / Double(max(delta.count, 1))).squareRoot()
            for i in delta.indices { delta[i] = Float(scale * rms * rng.nextNormal()) }
        case .nan:
            delta[Int(rng.next() % UInt64(delta.count))] = .nan
        }
    }
}

