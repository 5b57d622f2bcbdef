/// Where each named parameter lives in the model's single flat parameter vector.
///
/// Names and shapes are Hugging Face `GPT2LMHeadModel`'s (Conv1D weights are [in, out]), so a
/// checkpoint maps one-to-one onto `transformers`. Keeping all parameters in one vector makes
/// the optimizer, gradient clipping and federated pseudo-gradients plain vector operations.
public struct ParameterLayout: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        /// AdamW applies weight decay to this tensor (matrices of linear layers; not biases,
        /// LayerNorm or embeddings).
        public let decays: Bool
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
    }

    public let entries: [Entry]
    public let totalCount: Int
    private let index: [String: Int]

    public init(config c: GPT2Config) {
        var entries: [Entry] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int], decays: Bool = false) {
            entries.append(Entry(name: name, shape: shape, offset: offset, decays: decays))
            offset += shape.reduce(1, *)
        }
        let d = c.embedding
        add("transformer.wte.weight", [c.vocabulary, d])
        add("transformer.wpe.weight", [c.context, d])
        for l in 0..<c.layers {
            let p = "transformer.h.\(l)."
            add(p + "ln_1.weight", [d])
            add(p + "ln_1.bias", [d])
            add(p + "attn.c_attn.weight", [d, 3 * d], decays: true)
            add(p + "attn.c_attn.bias", [3 * d])
            add(p + "attn.c_proj.weight", [d, d], decays: true)
            add(p + "attn.c_proj.bias", [d])
            add(p + "ln_2.weight", [d])
            add(p + "ln_2.bias", [d])
            add(p + "mlp.c_fc.weight", [d, 4 * d], decays: true)
            add(p + "mlp.c_fc.bias", [4 * d])
            add(p + "mlp.c_proj.weight", [4 * d, d], decays: true)
            add(p + "mlp.c_proj.bias", [d])
        }
        add("transformer.ln_f.weight", [d])
        add("transformer.ln_f.bias", [d])
        if !c.tiedHead { add("lm_head.weight", [c.vocabulary, d], decays: true) }
        self.entries = entries
        self.totalCount = offset
        self.index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
    }

    /// A layout of the given tensors packed one after another (e.g. a model's personalized head).
    public init(tensors: [(name: String, shape: [Int], decays: Bool)]) {
        var entries: [Entry] = []
        var offset = 0
        for t in tensors {
            entries.append(Entry(name: t.name, shape: t.shape, offset: offset, decays: t.decays))
            offset += t.shape.reduce(1, *)
        }
        self.entries = entries
        self.totalCount = offset
        self.index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
    }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    public subscript(name: String) -> Entry {
        guard let e = entry(name) else { preconditionFailure("no parameter named \(name)") }
        return e
    }

    public var names: [String] { entries.map(\.name) }
}

/// A flat vector laid out by a `ParameterLayout`: the model's weights, its gradients, or an
/// optimizer's moments.
public final class ParameterVector: @unchecked Sendable {
    public let layout: ParameterLayout
    public let storage: FloatBuffer

    public init(layout: ParameterLayout) {
        self.layout = layout
        self.storage = FloatBuffer(count: layout.totalCount)
    }

    /// Parameters held in `storage` (not copied), e.g. an update assembled there as it arrived.
    public init(layout: ParameterLayout, storage: FloatBuffer) {
        precondition(storage.count == layout.totalCount, "\(storage.count) values for a layout of \(layout.totalCount)")
        self.layout = layout
        self.storage = storage
    }

    public var pointer: UnsafeMutablePointer<Float> { storage.pointer }
    public var count: Int { layout.totalCount }

    /// Pointer to the first element of the named tensor.
    public func pointer(_ name: String) -> UnsafeMutablePointer<Float> { storage.pointer + layout[name].offset }

    public func values(_ name: String) -> UnsafeMutableBufferPointer<Float> {
        let e = layout[name]
        return UnsafeMutableBufferPointer(start: storage.pointer + e.offset, count: e.count)
    }

    public func copy(from other: ParameterVector) {
        precondition(other.layout == layout, "parameter layouts differ")
        storage.copy(from: other.storage)
    }

    public func zero() { storage.zero() }
}

import FedLMTensor
