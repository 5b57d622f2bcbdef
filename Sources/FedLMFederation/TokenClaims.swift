/// The most tokens an update may be credited with, whatever its sender claims.
///
/// An update's data weight (FedAvg's n_k, the weight of its pseudo-gradient in the mean) and the
/// ledger's credit are the tokens its sender trained. A sender cannot have trained more than its
/// local steps times the federation's batch and sequence, nor more local steps than its topology
/// entry allows (`local_steps`; the level's largest for a sender the topology does not name), nor,
/// over the run, much more than its budget (`tokens`, with one round of slack). A claim above that
/// is credited at the bound, and the ledger keeps the claim beside the credit:
///
///     credited = min(claimed, min(steps, max_steps) · batch · sequence, budget + slack - credited so far)
///
/// A region's aggregator sends what its region trained, over many trainers' steps: only its
/// budget (the sum of its trainers' budgets, when each has one) bounds it.
public struct TokenClaimLimits: Equatable, Sendable {
    /// Tokens one local step trains: the federation's batch times its sequence length.
    public var tokensPerStep: Int
    /// The most local steps each named sender may claim (its topology `local_steps`).
    public var maxSteps: [String: Int]
    /// For senders the topology does not name.
    public var defaultMaxSteps: Int
    /// Each sender's token budget, where the topology gives one.
    public var budgets: [String: Int]
    /// Senders that are regions below: no step bound, only their budget.
    public var regions: Set<String>

    public init(tokensPerStep: Int, maxSteps: [String: Int] = [:], defaultMaxSteps: Int, budgets: [String: Int] = [:],
                regions: Set<String> = []) {
        precondition(tokensPerStep > 0 && defaultMaxSteps > 0)
        self.tokensPerStep = tokensPerStep
        self.maxSteps = maxSteps
        self.defaultMaxSteps = defaultMaxSteps
        self.budgets = budgets
        self.regions = regions
    }

    /// What an update is credited with.
    public struct Credit: Equatable, Sendable {
        public var tokens: Int
        /// Why the claim was cut (nil: credited whole).
        public var reason: String?
        public var clamped: Bool { reason != nil }
        public init(tokens: Int, reason: String?) {
            self.tokens = tokens
            self.reason = reason
        }
    }

    /// The credit for an update of `trainer` claiming `claimed` tokens over `localSteps` steps,
    /// when it has been credited `creditedSoFar` tokens before.
    public func credit(claimed: Int, localSteps: Int, trainer: String, creditedSoFar: Int) -> Credit {
        var tokens = max(0, claimed)
        var reason: String?
        let stepsAllowed = maxSteps[trainer] ?? defaultMaxSteps
        if !regions.contains(trainer) {
            let steps = min(max(0, localSteps), stepsAllowed)
            if tokens > steps * tokensPerStep {
                tokens = steps * tokensPerStep
                reason = "\(localSteps) local steps (at most \(stepsAllowed)) of \(tokensPerStep) tokens allow \(tokens)"
            }
        }
        if let budget = budgets[trainer] {
            let slack = regions.contains(trainer) ? budget / 20 : stepsAllowed * tokensPerStep
            let left = max(0, budget + slack - creditedSoFar)
            if tokens > left {
                tokens = left
                reason = "its budget of \(budget) tokens (+\(slack)) leaves \(left) after \(creditedSoFar) credited"
            }
        }
        return Credit(tokens: tokens, reason: reason)
    }
}

extension TokenClaimLimits {
    /// The limits of one level of a topology (`Topology.level(region:)`) under a model and
    /// training config: its trainers' `local_steps` and `tokens`, its regions' budgets.
    public init(level t: Topology, batchSize: Int, sequence: Int) {
        let steps = Dictionary(t.trainers.map { ($0.name, $0.localSteps) }, uniquingKeysWith: max)
        var budgets = Dictionary(t.trainers.compactMap { tr in tr.tokens.map { (tr.name, $0) } }, uniquingKeysWith: max)
        var regionNames: Set<String> = []
        for r in t.regions {
            guard let id = r.upstream?.trainerID else { continue }
            regionNames.insert(id)
            let own = r.trainers.map(\.tokens)
            if !own.isEmpty, own.allSatisfy({ $0 != nil }) { budgets[id] = own.compactMap { $0 }.reduce(0, +) }
        }
        self.init(tokensPerStep: batchSize * sequence, maxSteps: steps, defaultMaxSteps: steps.values.max() ?? 20, budgets: budgets,
                  regions: regionNames)
    }
}
