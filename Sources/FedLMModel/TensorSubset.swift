/// Some of a model's tensors, packed one after another in the model's order: the part of the
/// model a partial trainer trains, and the tensors a partial update carries.
///
/// A trainer that cannot afford to train the whole model trains a subset (its gradients and
/// optimizer state exist only for the subset), and the aggregator merges each tensor among the
/// updates that carry it.
public struct TensorSubset: Equatable, Sendable {
    /// The whole model's layout.
    public let model: ParameterLayout
    /// The chosen tensors, packed (offsets are the subset's own).
    public let packed: ParameterLayout
    /// For each chosen tensor, its index in `model.entries`, increasing.
    public let modelIndices: [Int]

    /// The tensors at `indices` of `model.entries` (sorted and deduplicated here).
    public init(model: ParameterLayout, indices: some Sequence<Int>) {
        let sorted = Array(Set(indices)).sorted()
        precondition(sorted.allSatisfy { model.entries.indices.contains($0) }, "tensor index out of range")
        self.model = model
        self.modelIndices = sorted
        self.packed = ParameterLayout(tensors: sorted.map { (model.entries[$0].name, model.entries[$0].shape, model.entries[$0].decays) })
    }

    /// Every tensor of `model`.
    public static func whole(_ model: ParameterLayout) -> TensorSubset {
        TensorSubset(model: model, indices: model.entries.indices)
    }

    /// The tensors matching any of `patterns`: globs on Hugging Face names (`*` matches
    /// anything), where `{last}` stands for the last transformer block's index. Every pattern must
    /// match a tensor, so that a typo is an error rather than a smaller part than meant.
    public init(model: ParameterLayout, patterns: [String], layers: Int) throws {
        var indices: [Int] = []
        for pattern in patterns {
            let glob = pattern.replacingOccurrences(of: "{last}", with: String(layers - 1))
            let matches = model.entries.indices.filter { Self.glob(glob, matches: model.entries[$0].name) }
            guard !matches.isEmpty else { throw SubsetError("pattern '\(pattern)' matches no tensor of the model") }
            indices += matches
        }
        self.init(model: model, indices: indices)
    }

    public var isWhole: Bool { modelIndices.count == model.entries.count }
    public var count: Int { packed.totalCount }
    public var names: [String] { packed.names }

    /// For each chosen tensor, where it lives in the whole model's vector.
    public var modelRanges: [Range<Int>] { modelIndices.map { model.entries[$0].range } }

    public func contains(_ name: String) -> Bool { packed.entry(name) != nil }

    /// The chosen tensors of a whole-model vector, packed into `out` (`count` values).
    public func gather(from whole: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        for (entry, range) in zip(packed.entries, modelRanges) {
            (out + entry.offset).update(from: whole + range.lowerBound, count: range.count)
        }
    }

    /// Packed values written to their places in a whole-model vector (the rest untouched).
    public func scatter(_ values: UnsafePointer<Float>, into whole: UnsafeMutablePointer<Float>) {
        for (entry, range) in zip(packed.entries, modelRanges) {
            (whole + range.lowerBound).update(from: values + entry.offset, count: range.count)
        }
    }

    /// The lowest transformer block a backward pass must reach to produce this subset's
    /// gradients: 0 when an embedding is chosen, `layers` when only tensors above the blocks are.
    public func lowestBlock(layers: Int) -> Int {
        var lowest = layers
        for name in names {
            if name.hasPrefix("transformer.wte.") || name.hasPrefix("transformer.wpe.") { return 0 }
            if let block = Self.block(of: name) { lowest = min(lowest, block) }
        }
        return lowest
    }

    /// The block index of a `transformer.h.N.` tensor.
    public static func block(of name: String) -> Int? {
        guard name.hasPrefix("transformer.h.") else { return nil }
        return Int(name.dropFirst("transformer.h.".count).prefix { $0.isNumber })
    }

    /// Glob matching of tensor names: `*` matches any run of characters.
    public static func glob(_ pattern: String, matches name: String) -> Bool {
        let p = Array(pattern.utf8), n = Array(name.utf8)
        var pi = 0, ni = 0, star = -1, mark = 0
        while ni < n.count {
            if pi < p.count, p[pi] != UInt8(ascii: "*"), p[pi] == n[ni] {
                pi += 1; ni += 1
            } else if pi < p.count, p[pi] == UInt8(ascii: "*") {
                star = pi; mark = ni; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ni = mark
            } else {
                return false
            }
        }
        while pi < p.count, p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}

/// Tensor names or patterns that do not fit the model.
public struct SubsetError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
