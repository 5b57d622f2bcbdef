import FedLMModel
import FedLMTensor

/// FedBuff (Nguyen et al.): buffer K updates, each scaled by s(staleness), then apply their mean
/// through the server optimizer:  g = (1/K) sum_i s(tau_i) delta_i;  w <- opt(w, g).
/// With a robust combination the K scaled updates are kept apart and combined per coordinate by
/// median or trimmed mean instead; with `maxNorm`, each update is first clipped to that norm.
/// Partial updates are merged tensor by tensor: a tensor's mean is over the k_t <= K buffered
/// updates that carry it, g_t = (1/k_t) sum_(i carries t) s(tau_i,t) delta_i,t, and a tensor no
/// buffered update carries is not stepped at all. With `stalenessPerTensor`, tau_i,t counts only
/// the steps since update i's base that changed tensor t (`TensorStaleness`); else tau_i,t = tau_i.
public final class FedBuff: AggregationStrategy {
    public let bufferSize: Int
    public let weight: StalenessWeight
    public let maxStaleness: Int
    public let optimizer: ServerOptimizer
    public let combination: RobustCombination
    /// Updates with a larger L2 norm are scaled down to it (nil: no clipping).
    public let maxNorm: Double?
    /// Clipping plus Gaussian noise on each aggregate (nil: none).
    public let privacy: DifferentialPrivacy?
    /// Stale updates' conflicting parts shrunk against the server's recent direction (nil: off).
    public let correction: DirectionCorrection?
    /// Equal shares among senders over recent updates (nil: off).
    public private(set) var fairShare: FairShare?
    /// Updates against the server's recent direction count with weight 0 (nil: off).
    public let trust: UpdateTrust?
    /// The trust weight of the last update received (1 without `trust`).
    public private(set) var lastTrust = 1.0
    /// The noise's seed: secret to this aggregator, kept in its checkpoints so that a restart's
    /// replay adds exactly the noise the original run added.
    private var noiseSeed = UInt64.random(in: 0...UInt64.max)
    private var aggregates = 0
    private let buffer: ParameterVector
    /// The buffered updates one by one (robust combinations only).
    private let slots: [ParameterVector]
    /// For each tensor of the layout, how many buffered updates carry it.
    private var carriedCounts: [Int]
    /// For each slot, the tensors its update carries (nil: all).
    private var slotCarried: [TensorSubset?]
    public private(set) var buffered = 0
    /// A partial update's weight against a whole one's (`AggregationConfig.partialWeight`).
    public let partialWeight: Float
    /// Which tensors the recent steps changed (nil: staleness counted per model).
    public private(set) var tensorStaleness: TensorStaleness?
    public var name: String { "fedbuff" }

    public var stateVectors: [(name: String, vector: ParameterVector)] {
        [("buffer", buffer)] + slots.enumerated().map { ("slot\($0.offset)", $0.element) }
            + optimizer.stateVectors.map { ("optimizer.\($0.name)", $0.vector) }
            + (correction.map { [("direction", $0.direction)] } ?? [])
            + (trust.map { [("trust.direction", $0.direction)] } ?? [])
    }
    public var stateScalars: [String: Double] {
        var scalars = ["buffered": Double(buffered), "optimizer.steps": Double(optimizer.steps), "aggregates": Double(aggregates),
                       "noise.seed.high": Double(noiseSeed >> 32), "noise.seed.low": Double(noiseSeed & 0xFFFF_FFFF)]
        if let fairShare { scalars.merge(fairShare.scalars) { a, _ in a } }
        if let tensorStaleness { scalars.merge(tensorStaleness.scalars(prefix: "steps.")) { a, _ in a } }
        // Partial updates in the buffer: the counts that differ from `buffered`, and which
        // tensors each slot's update left out.
        for (i, k) in carriedCounts.enumerated() where combination == .mean && k != buffered { scalars["carried.\(i)"] = Double(k) }
        for (j, subset) in slotCarried.enumerated() where j < buffered {
            guard let subset else { continue }
            for i in buffer.layout.entries.indices where !subset.modelIndices.contains(i) { scalars["slot\(j).lacks.\(i)"] = 1 }
        }
        return scalars
    }
    public func restore(scalars: [String: Double]) {
        buffered = Int(scalars["buffered"] ?? 0)
        optimizer.restore(steps: Int(scalars["optimizer.steps"] ?? 0))
        aggregates = Int(scalars["aggregates"] ?? 0)
        if let high = scalars["noise.seed.high"], let low = scalars["noise.seed.low"] { noiseSeed = UInt64(high) << 32 | UInt64(low) }
        fairShare?.restore(scalars)
        tensorStaleness?.restore(scalars, prefix: "steps.", entries: buffer.layout.entries.count)
        carriedCounts = carriedCounts.indices.map { Int(scalars["carried.\($0)"] ?? Double(buffered)) }
        let entries = buffer.layout.entries.indices
        slotCarried = slotCarried.indices.map { j in
            let lacking = entries.filter { scalars["slot\(j).lacks.\($0)"] != nil }
            return lacking.isEmpty ? nil : TensorSubset(model: buffer.layout, indices: entries.filter { !lacking.contains($0) })
        }
    }

    public init(bufferSize: Int, weight: StalenessWeight = .inverseSquareRoot, maxStaleness: Int = 16,
                optimizer: ServerOptimizerKind, layout: ParameterLayout, combination: RobustCombination = .mean, maxNorm: Double? = nil,
                privacy: DifferentialPrivacy? = nil, directionDecay: Double? = nil, fairShareWindow: Int? = nil, trustDecay: Double? = nil,
                stalenessPerTensor: Bool = false, partialWeight: Double = 1) {
        self.partialWeight = Float(partialWeight)
        self.tensorStaleness = stalenessPerTensor ? TensorStaleness(window: maxStaleness) : nil
        precondition(trustDecay == nil || combination == .mean, "trust weights the mean of the buffer")
        self.trust = trustDecay.map { UpdateTrust(decay: Float($0), layout: layout) }
        precondition(privacy == nil || combination == .mean, "differential privacy adds noise to the mean of the buffer")
        precondition(directionDecay == nil || combination == .mean, "the direction correction works on the mean of the buffer")
        self.correction = directionDecay.map { DirectionCorrection(decay: Float($0), layout: layout) }
        self.fairShare = fairShareWindow.map { FairShare(window: $0) }
        self.privacy = privacy
        precondition(bufferSize >= 1)
        self.bufferSize = bufferSize
        self.weight = weight
        self.maxStaleness = maxStaleness
        self.optimizer = ServerOptimizer(optimizer, layout: layout)
        self.combination = combination
        self.maxNorm = maxNorm
        self.buffer = ParameterVector(layout: layout)
        self.slots = combination == .mean ? [] : (0..<bufferSize).map { _ in ParameterVector(layout: layout) }
        self.carriedCounts = [Int](repeating: 0, count: layout.entries.count)
        self.slotCarried = [TensorSubset?](repeating: nil, count: combination == .mean ? 0 : bufferSize)
    }

    public func receive(_ c: Contribution, model: ParameterVector) -> AggregationDecision {
        if let refusal = refusal(c, model: model) { return refusal }
        var s = Float(weight.weight(staleness: c.staleness))
        let delta = correction?.correct(c.delta, weight: s, carries: { c.carries(entry: $0) }) ?? c.delta
        if fairShare != nil { s *= fairShare!.weight(for: c.trainer) }
        if c.carried != nil { s *= partialWeight }
        lastTrust = trust?.weight(delta, over: c.ranges) ?? 1
        // Distrusted: it takes no slot, the buffer waits for K trusted updates.
        if lastTrust == 0 { return .buffered(count: buffered, needed: bufferSize) }
        if let bound = privacy?.clip ?? maxNorm {
            let norm = Double(GradientClipping.norm(delta))
            if norm > bound { s *= Float(bound / norm) }
        }
        let perTensor = tensorFactors(staleness: c.staleness)
        if combination != .mean {
            let slot = slots[buffered].pointer, d = delta.pointer
            if let perTensor {
                for (e, f) in zip(buffer.layout.entries, perTensor) { parallelFor(ranges: [e.range]) { r in for i in r { slot[i] = s * f * d[i] } } }
            } else {
                parallelFor(buffer.count, granularity: 4096) { r in for i in r { slot[i] = s * d[i] } }
            }
            slotCarried[buffered] = c.carried
            buffered += 1
            guard buffered == bufferSize else { return .buffered(count: buffered, needed: bufferSize) }
            let stepped = steppedRanges(slotCarried)
            recordStep(unchanged: unchangedEntries(slotCarried))
            combineSlots()
            optimizer.apply(buffer, scale: 1, to: model, over: stepped)
            buffer.zero()
            buffered = 0
            return .applied
        }
        if bufferSize == 1, privacy == nil, perTensor == nil {
            // Nothing to buffer: step with s * delta directly (one pass instead of three).
            optimizer.apply(delta, scale: s, to: model, over: c.carried.map { _ in c.ranges })
            correction?.record(delta, scale: s, over: c.carried.map { _ in c.ranges })
            trust?.record(delta, scale: s, over: c.carried.map { _ in c.ranges })
            recordStep(unchanged: unchangedEntries([c.carried]))
            return .applied
        }
        let b = buffer.pointer, d = delta.pointer
        forEachCarried(c, factors: perTensor) { r, f in for i in r { b[i] += s * f * d[i] } }
        for i in carriedCounts.indices where c.carries(entry: i) { carriedCounts[i] += 1 }
        buffered += 1
        guard buffered == bufferSize else { return .buffered(count: buffered, needed: bufferSize) }
        return stepWithBuffer(model: model)
    }

    /// The K-th update is in: noise (with privacy), then the server optimizer's step with the mean.
    private func stepWithBuffer(model: ParameterVector) -> AggregationDecision {
        let b = buffer.pointer
        if let privacy {
            // Gaussian noise on the sum, from a stream only this aggregator knows, one per aggregate.
            var rng = SeededGenerator(seed: noiseSeed &+ UInt64(aggregates) &* 0x9E37_79B9_7F4A_7C15)
            let sigma = Float(privacy.noiseMultiplier * privacy.clip)
            for i in 0..<buffer.count { b[i] += sigma * Float(rng.nextNormal()) }
        }
        aggregates += 1
        let partial = carriedCounts.contains { $0 != bufferSize }
        recordStep(unchanged: carriedCounts.indices.filter { carriedCounts[$0] == 0 })
        if partial { scaleToCarriedMeans() }
        optimizer.apply(buffer, scale: 1 / Float(bufferSize), to: model,
                        over: partial ? carriedRanges() : nil)
        correction?.record(buffer, scale: 1 / Float(bufferSize), over: partial ? carriedRanges() : nil)
        trust?.record(buffer, scale: 1 / Float(bufferSize), over: partial ? carriedRanges() : nil)
        buffer.zero()
        buffered = 0
        carriedCounts = carriedCounts.map { _ in 0 }
        return .applied
    }

    // MARK: Folding updates in as they stream

    /// Whether a whole update may be added to the buffer chunk by chunk while it arrives, so the
    /// aggregator never holds it whole (`AggregatorCore`'s streaming application): the plain
    /// mean of K > 1 updates, without clipping or noise (which need the whole update's norm).
    public var foldsWhileStreaming: Bool {
        combination == .mean && privacy == nil && maxNorm == nil && correction == nil && fairShare == nil && trust == nil && bufferSize > 1
    }

    /// Adds `sign` · s(staleness) · `values` to the buffer from element `offset` on (sign −1 takes
    /// a fold back out).
    public func fold(_ values: UnsafeBufferPointer<Float>, at offset: Int, staleness: Int, sign: Float = 1) {
        precondition(foldsWhileStreaming, "folding needs the mean of K > 1 updates without clipping or noise")
        let s = sign * Float(weight.weight(staleness: staleness)), b = buffer.pointer + offset, d = values.baseAddress!
        guard let factors = tensorFactors(staleness: staleness) else {
            return parallelFor(values.count, granularity: 16384) { r in for i in r { b[i] += s * d[i] } }
        }
        // Each tensor the piece overlaps, with its own factor (r relative to `offset`).
        let piece = offset..<(offset + values.count)
        for (e, f) in zip(buffer.layout.entries, factors) where e.range.overlaps(piece) {
            let part = e.range.clamped(to: piece)
            parallelFor(ranges: [(part.lowerBound - offset)..<(part.upperBound - offset)]) { r in for i in r { b[i] += s * f * d[i] } }
        }
    }

    /// Why an update of `staleness` would be refused, if it would (checked before and after folding).
    public func refusal(staleness: Int) -> String? {
        if staleness < 0 { return "base version is newer than the current model (staleness \(staleness))" }
        if staleness > maxStaleness { return "staleness \(staleness) exceeds the maximum of \(maxStaleness); fetch the latest release" }
        return nil
    }

    /// A whole update completely folded in counts as received: the buffer steps the model when
    /// it is the K-th.
    public func completeFolded(model: ParameterVector) -> AggregationDecision {
        for i in carriedCounts.indices { carriedCounts[i] += 1 }
        buffered += 1
        guard buffered == bufferSize else { return .buffered(count: buffered, needed: bufferSize) }
        return stepWithBuffer(model: model)
    }

    /// Whether the next update received completes the buffer (and so changes the version).
    public var nextCompletesBuffer: Bool { buffered + 1 == bufferSize }

    /// Makes the buffer K times each tensor's mean over the updates that carry it (so that the
    /// optimizer's 1/K gives the mean): tensor t is scaled by K / k_t.
    private func scaleToCarriedMeans() {
        for (e, k) in zip(buffer.layout.entries, carriedCounts) where k > 0 && k != bufferSize {
            let factor = Float(bufferSize) / Float(k), b = buffer.pointer
            parallelFor(ranges: [e.range]) { r in for i in r { b[i] *= factor } }
        }
    }

    // MARK: Staleness per tensor

    /// s(τ_t) / s(τ) for each tensor (`TensorStaleness`), or nil where every tensor's staleness
    /// is the version staleness τ (per-model staleness, or no recent step left a tensor unchanged).
    private func tensorFactors(staleness: Int) -> [Float]? {
        guard let tensorStaleness, !tensorStaleness.isUniform, staleness > 0 else { return nil }
        let whole = weight.weight(staleness: staleness)
        guard whole > 0 else { return nil }
        return tensorStaleness.staleness(entries: buffer.layout.entries.count, versionStaleness: staleness)
            .map { Float(weight.weight(staleness: $0) / whole) }
    }

    /// Runs `body` over the ranges of the tensors `c` carries, each with its factor (1 without).
    private func forEachCarried(_ c: Contribution, factors: [Float]?, _ body: (Range<Int>, Float) -> Void) {
        guard let factors else { return parallelFor(ranges: c.ranges) { body($0, 1) } }
        for (i, e) in buffer.layout.entries.enumerated() where c.carries(entry: i) {
            parallelFor(ranges: [e.range]) { body($0, factors[i]) }
        }
    }

    /// The entries none of `carried` carries (a nil in it: a whole update, which carries all).
    private func unchangedEntries(_ carried: [TensorSubset?]) -> [Int] {
        guard !carried.contains(where: { $0 == nil }) else { return [] }
        return buffer.layout.entries.indices.filter { i in !carried.contains { $0!.modelIndices.contains(i) } }
    }

    private func recordStep(unchanged: [Int]) { tensorStaleness?.record(unchanged: unchanged) }

    /// A new version that no step of this strategy made (a release adopted from above): every
    /// tensor changed.
    public func recordOutsideStep() { tensorStaleness?.record() }

    /// The tensors at least one buffered update carried.
    private func carriedRanges() -> [Range<Int>] {
        zip(buffer.layout.entries, carriedCounts).filter { $0.1 > 0 }.map { $0.0.range }
    }

    /// The tensors at least one of the slots' updates carried (nil: every tensor).
    private func steppedRanges(_ carried: [TensorSubset?]) -> [Range<Int>]? {
        guard carried.contains(where: { $0 != nil }) else { return nil }
        return buffer.layout.entries.enumerated().filter { i, _ in carried.contains { $0?.modelIndices.contains(i) ?? true } }.map { $0.1.range }
    }

    /// The robust combination into `buffer`, each tensor over the slots that carry it.
    private func combineSlots() {
        guard slotCarried.contains(where: { $0 != nil }) else { return combination.combine(slots, into: buffer) }
        for (i, e) in buffer.layout.entries.enumerated() {
            let carrying = slots.indices.filter { slotCarried[$0]?.modelIndices.contains(i) ?? true }.map { slots[$0] }
            if !carrying.isEmpty { combination.combine(carrying, range: e.range, into: buffer) }
        }
        slotCarried = slotCarried.map { _ in nil }
    }
}
