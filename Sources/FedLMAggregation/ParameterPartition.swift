import FedLMModel

/// Splits a model's parameters by name into the shared trunk and the head that each data cluster
/// personalizes (WorldLM's partial personalization).
///
/// Patterns are globs on Hugging Face names (`*` matches anything) where `{last}` stands for the
/// index of the last transformer block. The default head is the last block, `ln_f`, and the LM
/// head when it is not tied to the token embedding (a tied head is the embedding, which stays
/// shared).
public struct ParameterPartition: Equatable, Sendable {
    /// The whole model's layout.
    public let model: ParameterLayout
    /// The head tensors, packed (offsets are the head vector's own).
    public let head: ParameterLayout
    /// For each head tensor, where it lives in the whole model's vector.
    public let modelRanges: [Range<Int>]
    public let patterns: [String]

    public static let defaultPatterns = ["transformer.h.{last}.*", "transformer.ln_f.*", "lm_head.*"]

    /// Selects the head by `patterns` (nil: the default). Every explicit pattern must match at
    /// least one tensor, so a typo is an error rather than a head silently smaller than meant.
    /// A head of every parameter (fully personal models) is refused unless `allowingEverything`:
    /// it makes sense only where clusters still learn from each other (`ClusterConfig.share`).
    public init(model: ParameterLayout, layers: Int, patterns: [String]? = nil, allowingEverything: Bool = false) throws {
        let explicit = patterns != nil
        let chosen = patterns ?? Self.defaultPatterns
        let expanded = chosen.map { $0.replacingOccurrences(of: "{last}", with: String(layers - 1)) }
        var selected: [ParameterLayout.Entry] = []
        for (pattern, glob) in zip(chosen, expanded) {
            let matches = model.entries.filter { Self.glob(glob, matches: $0.name) }
            if matches.isEmpty, explicit || pattern != "lm_head.*" {
                throw PartitionError("head pattern '\(pattern)' matches no parameter of the model")
            }
            for m in matches where !selected.contains(where: { $0.name == m.name }) { selected.append(m) }
        }
        guard !selected.isEmpty else { throw PartitionError("the head patterns select no parameters") }
        guard selected.count < model.entries.count || allowingEverything else {
            throw PartitionError("the head patterns select every parameter: nothing is shared (with clusters.share > 0 clusters still learn from each other)")
        }
        selected.sort { $0.offset < $1.offset }
        self.model = model
        self.head = ParameterLayout(tensors: selected.map { ($0.name, $0.shape, $0.decays) })
        self.modelRanges = selected.map(\.range)
        self.patterns = chosen
    }

    /// Is this tensor part of the head?
    public func isHead(_ name: String) -> Bool { head.entry(name) != nil }

    /// Copies the head tensors out of a whole-model vector.
    public func gatherHead(from whole: UnsafePointer<Float>, into head: ParameterVector) {
        for (entry, range) in zip(self.head.entries, modelRanges) {
            (head.pointer + entry.offset).update(from: whole + range.lowerBound, count: range.count)
        }
    }

    /// Writes head tensors into a whole-model vector (the rest is left as it is).
    public func scatterHead(_ head: ParameterVector, into whole: UnsafeMutablePointer<Float>) {
        for (entry, range) in zip(self.head.entries, modelRanges) {
            (whole + range.lowerBound).update(from: head.pointer + entry.offset, count: range.count)
        }
    }

    static func glob(_ pattern: String, matches name: String) -> Bool { TensorSubset.glob(pattern, matches: name) }
}

/// A head specification that does not fit the model.
public struct PartitionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
