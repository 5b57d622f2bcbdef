/// Staleness counted tensor by tensor: how many of the server's steps since an update's base
/// version changed each tensor, rather than how many versions passed.
///
/// With partial trainers (which train and send only some tensors, e.g. the top blocks), a step
/// made of their updates moves only those tensors, yet advances the version for everyone. Counted
/// per model, a full trainer's update that started four such steps ago is weighted
/// s(4) = 1/sqrt(5) everywhere, although its lower blocks are exactly as fresh as at its base.
/// Counted per tensor, tensor t of an update with version staleness τ has
///
///     τ_t = τ − #{ the last τ steps that left t unchanged },
///
/// and is weighted s(τ_t): the same as per model when every step moves every tensor (updates of
/// whole models only), and no down-weighting of parts that nothing else moved. FedBuff
/// (Nguyen et al., 2022) weights whole updates by s(τ); HeteroFL (Diao et al., 2021) averages each
/// parameter over the clients that hold it; this weights each over how far it really lags.
///
/// A plain value: the most recent `window` steps, each as the tensors (layout entries) it left
/// unchanged. Steps further back than the window count as having moved every tensor.
public struct TensorStaleness: Equatable, Sendable {
    /// How many steps are remembered (an aggregator refuses updates staler than this anyway).
    public let window: Int
    /// The newest `window` steps, oldest first: the entries each left unchanged.
    private var unchanged: [[Int]] = []

    public init(window: Int) {
        precondition(window >= 0, "a window of \(window) steps")
        self.window = window
    }

    /// Records a step that changed every entry but `unchanged` (empty: a step of the whole model,
    /// including versions that come from elsewhere, such as a release adopted from above).
    public mutating func record(unchanged entries: [Int] = []) {
        guard window > 0 else { return }
        unchanged.append(entries.sorted())
        if unchanged.count > window { unchanged.removeFirst(unchanged.count - window) }
    }

    /// Whether some remembered step left a tensor unchanged (when none did, every tensor's
    /// staleness is the version staleness).
    public var isUniform: Bool { unchanged.allSatisfy(\.isEmpty) }

    /// The staleness of `entry` for an update whose version staleness is `staleness`.
    public func staleness(of entry: Int, versionStaleness staleness: Int) -> Int {
        guard staleness > 0 else { return staleness }
        let skipped = unchanged.suffix(staleness).reduce(0) { $0 + ($1.contains(entry) ? 1 : 0) }
        return staleness - skipped
    }

    /// Each of `entries` entries' staleness for an update whose version staleness is `staleness`.
    public func staleness(entries: Int, versionStaleness staleness: Int) -> [Int] {
        (0..<entries).map { self.staleness(of: $0, versionStaleness: staleness) }
    }

    // MARK: Checkpoints

    /// The history as checkpoint scalars: "<prefix>count", and "<prefix><k>.unchanged.<entry>" = 1
    /// for each entry step k (0 = oldest) left unchanged.
    public func scalars(prefix: String) -> [String: Double] {
        var s = [prefix + "count": Double(unchanged.count)]
        for (k, entries) in unchanged.enumerated() {
            for e in entries { s["\(prefix)\(k).unchanged.\(e)"] = 1 }
        }
        return s
    }

    /// Restores what `scalars(prefix:)` wrote for a layout of `entries` entries (none written:
    /// an empty history, as a checkpoint from before this record was kept).
    public mutating func restore(_ scalars: [String: Double], prefix: String, entries: Int) {
        let saved = Int(scalars[prefix + "count"] ?? 0)
        unchanged = (max(0, saved - window)..<saved).map { k in (0..<entries).filter { scalars["\(prefix)\(k).unchanged.\($0)"] != nil } }
    }
}
