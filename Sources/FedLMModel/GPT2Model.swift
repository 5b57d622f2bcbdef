import FedLMTensor
import Foundation

/// A GPT-2 language model (Hugging Face `GPT2LMHeadModel` semantics) with hand-written
/// backward passes.
///
/// Parameters and gradients are flat `ParameterVector`s addressed by Hugging Face names.
/// `lossAndGradients` runs the forward and backward pass over a batch and overwrites
/// `gradients` with d(mean loss)/d(parameters).
///
/// A model can train only part of its tensors (`trained`): `gradients` then holds only those
/// (packed), the backward pass stops at the lowest block that holds one, and no activations are
/// kept below it. Frozen tensors cost the forward pass only.
public final class GPT2Model: @unchecked Sendable {
    public let config: GPT2Config
    public let layout: ParameterLayout
    public let parameters: ParameterVector
    /// The tensors that get gradients (every tensor unless the model was made with a subset).
    public let trained: TensorSubset
    /// Gradients of the `trained` tensors, laid out by `trained.packed` (the model's own layout
    /// when every tensor trains).
    public let gradients: ParameterVector
    /// The lowest block the backward pass reaches (0 when the embeddings train).
    public let lowestTrainedBlock: Int
    private var plan: ActivationPlan?

    public init(config: GPT2Config, trained: TensorSubset? = nil) throws {
        try config.validate()
        self.config = config
        self.layout = ParameterLayout(config: config)
        self.parameters = ParameterVector(layout: layout)
        let subset = trained ?? .whole(layout)
        precondition(subset.model == layout, "the trained subset is of another model's layout")
        self.trained = subset
        let gradients = ParameterVector(layout: subset.isWhole ? layout : subset.packed)
        self.gradients = gradients
        self.lowestTrainedBlock = subset.lowestBlock(layers: config.layers)
        gradientPointers = Dictionary(uniqueKeysWithValues: gradients.layout.entries.map { ($0.name, gradients.pointer + $0.offset) })
    }

    /// Where each trained tensor's gradient lives.
    private let gradientPointers: [String: UnsafeMutablePointer<Float>]

    /// The gradient of a tensor, nil when it is frozen.
    private func gradient(_ name: String) -> UnsafeMutablePointer<Float>? { gradientPointers[name] }

    /// A model initialised as GPT-2 is: normal(0, 0.02) weights, residual projections scaled by
    /// 1/sqrt(2 * layers), zero biases, unit LayerNorm gains.
    public convenience init(config: GPT2Config, seed: UInt64) throws {
        try self.init(config: config)
        initialize(seed: seed)
    }

    public func initialize(seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        let residualStd = 0.02 / (2 * Double(config.layers)).squareRoot()
        for e in layout.entries {
            let values = parameters.values(e.name)
            if e.name.hasSuffix(".bias") {
                values.update(repeating: 0)
            } else if e.name.hasSuffix("ln_1.weight") || e.name.hasSuffix("ln_2.weight") || e.name.hasSuffix("ln_f.weight") {
                values.update(repeating: 1)
            } else {
                let std = e.name.hasSuffix("c_proj.weight") ? residualStd : 0.02
                for i in values.indices { values[i] = Float(rng.nextNormal() * std) }
            }
        }
    }

    /// Bytes of activation memory planned for the last batch shape (0 before the first pass).
    public var activationBytes: Int { plan?.bytes ?? 0 }

    private func plan(for batch: TokenBatch) -> ActivationPlan {
        if let p = plan, p.batch == batch.batch, p.sequence == batch.sequence { return p }
        plan = nil  // free the old plan before allocating the new one
        let p = ActivationPlan(config: config, batch: batch.batch, sequence: batch.sequence, storedFrom: lowestTrainedBlock)
        plan = p
        return p
    }

    /// Mean cross-entropy of the batch (forward only; gradients untouched).
    public func loss(_ batch: TokenBatch) throws -> Float {
        try batch.validate(for: config)
        let p = plan(for: batch)
        load(batch, into: p)
        forward(p)
        return CrossEntropy.forward(logits: p.logits.pointer, targets: p.targets, rows: p.rows,
                                    vocabulary: config.vocabulary, writeGradient: false).mean
    }

    /// Mean cross-entropy of the batch; overwrites `gradients` with its gradient, or adds it to
    /// them when `accumulating` (micro-batches of one step).
    @discardableResult
    public func lossAndGradients(_ batch: TokenBatch, accumulating: Bool = false) throws -> Float {
        try batch.validate(for: config)
        let p = plan(for: batch)
        load(batch, into: p)
        forward(p)
        let loss = CrossEntropy.forward(logits: p.logits.pointer, targets: p.targets, rows: p.rows,
                                        vocabulary: config.vocabulary, writeGradient: true).mean
        if !accumulating { gradients.zero() }
        backward(p)
        return loss
    }

    /// Bytes of activation memory a pass over (batch, sequence) plans, without running one.
    public func plannedActivationBytes(batch: Int, sequence: Int) -> Int {
        ActivationPlan.bytes(config: config, batch: batch, sequence: sequence, storedFrom: lowestTrainedBlock)
    }

    /// The same for a model of `config` training `trained`.
    public static func plannedActivationBytes(config: GPT2Config, trained: TensorSubset, batch: Int, sequence: Int) -> Int {
        ActivationPlan.bytes(config: config, batch: batch, sequence: sequence, storedFrom: trained.lowestBlock(layers: config.layers))
    }

    /// Logits of the last position of each sequence, [batch, vocabulary] (for sampling).
    public func lastLogits(_ batch: TokenBatch) throws -> [Float] {
        try batch.validate(for: config)
        let p = plan(for: batch)
        load(batch, into: p)
        forward(p)
        let v = config.vocabulary
        var out = [Float](repeating: 0, count: batch.batch * v)
        for b in 0..<batch.batch {
            let row = p.logits.pointer + ((b + 1) * batch.sequence - 1) * v
            for j in 0..<v { out[b * v + j] = row[j] }
        }
        return out
    }

    private func load(_ batch: TokenBatch, into p: ActivationPlan) {
        batch.inputs.withUnsafeBufferPointer { p.tokens.update(from: $0.baseAddress!, count: p.rows) }
        batch.targets.withUnsafeBufferPointer { p.targets.update(from: $0.baseAddress!, count: p.rows) }
    }

    // MARK: - Forward

    private var headWeight: String { config.tiedHead ? "transformer.wte.weight" : "lm_head.weight" }

    private func forward(_ p: ActivationPlan) {
        let w = parameters, c = config
        let n = p.rows, d = c.embedding, eps = c.layerNormEpsilon
        let shape = CausalSelfAttention.Shape(batch: p.batch, sequence: p.sequence, heads: c.heads,
                                              headDimension: c.headDimension)
        Embedding.forward(tokens: p.tokens, tokenTable: w.pointer("transformer.wte.weight"),
                          positionTable: w.pointer("transformer.wpe.weight"), out: p.residual[0].pointer,
                          batch: p.batch, sequence: p.sequence, dim: d)
        for l in 0..<c.layers {
            let a = p.layers[l], pre = "transformer.h.\(l)."
            let x = p.residual[l].pointer
            LayerNorm.forward(x: x, out: a.ln1Out.pointer, mean: a.ln1Mean.pointer, rstd: a.ln1Rstd.pointer,
                              gamma: w.pointer(pre + "ln_1.weight"), beta: w.pointer(pre + "ln_1.bias"),
                              rows: n, dim: d, epsilon: eps)
            Conv1D.forward(x: a.ln1Out.pointer, weight: w.pointer(pre + "attn.c_attn.weight"),
                           bias: w.pointer(pre + "attn.c_attn.bias"), out: a.qkv.pointer,
                           rows: n, inputs: d, outputs: 3 * d)
            CausalSelfAttention.forward(qkv: a.qkv.pointer, out: a.attention.pointer,
                                        probabilities: a.probabilities.pointer, shape: shape)
            Conv1D.forward(x: a.attention.pointer, weight: w.pointer(pre + "attn.c_proj.weight"),
                           bias: w.pointer(pre + "attn.c_proj.bias"), out: a.residualMid.pointer, residual: x,
                           rows: n, inputs: d, outputs: d)
            LayerNorm.forward(x: a.residualMid.pointer, out: a.ln2Out.pointer, mean: a.ln2Mean.pointer,
                              rstd: a.ln2Rstd.pointer, gamma: w.pointer(pre + "ln_2.weight"),
                              beta: w.pointer(pre + "ln_2.bias"), rows: n, dim: d, epsilon: eps)
            Conv1D.forward(x: a.ln2Out.pointer, weight: w.pointer(pre + "mlp.c_fc.weight"),
                           bias: w.pointer(pre + "mlp.c_fc.bias"), out: a.fc.pointer,
                           rows: n, inputs: d, outputs: 4 * d)
            GELU.forward(a.fc.pointer, out: a.gelu.pointer, count: n * 4 * d)
            Conv1D.forward(x: a.gelu.pointer, weight: w.pointer(pre + "mlp.c_proj.weight"),
                           bias: w.pointer(pre + "mlp.c_proj.bias"), out: p.residual[l + 1].pointer,
                           residual: a.residualMid.pointer, rows: n, inputs: 4 * d, outputs: d)
        }
        LayerNorm.forward(x: p.residual[c.layers].pointer, out: p.lnfOut.pointer, mean: p.lnfMean.pointer,
                          rstd: p.lnfRstd.pointer, gamma: w.pointer("transformer.ln_f.weight"),
                          beta: w.pointer("transformer.ln_f.bias"), rows: n, dim: d, epsilon: eps)
        // logits = ln_f(x) . head^T, head stored [vocabulary, d] like nn.Linear / nn.Embedding.
        Gemm.multiply(transposeB: true, m: n, n: c.vocabulary, k: d, a: p.lnfOut.pointer, lda: d,
                      b: w.pointer(headWeight), ldb: d, c: p.logits.pointer, ldc: c.vocabulary)
    }

    // MARK: - Backward

    /// Expects `p.logits` to hold d(loss)/d(logits); adds the trained tensors' gradients to
    /// `gradients` and stops below the lowest block that has one.
    private func backward(_ p: ActivationPlan) {
        let w = parameters, c = config
        let n = p.rows, d = c.embedding, v = c.vocabulary
        let shape = CausalSelfAttention.Shape(batch: p.batch, sequence: p.sequence, heads: c.heads,
                                              headDimension: c.headDimension)
        let dres = p.dResidual.pointer
        // Head: d(ln_f out) = dlogits . head; d(head) += dlogits^T . ln_f out.
        Gemm.multiply(m: n, n: d, k: v, a: p.logits.pointer, lda: v, b: w.pointer(headWeight), ldb: d,
                      c: p.dNarrow.pointer, ldc: d)
        if let dHead = gradient(headWeight) {
            Gemm.multiply(transposeA: true, m: v, n: d, k: n, a: p.logits.pointer, lda: v, b: p.lnfOut.pointer,
                          ldb: d, beta: 1, c: dHead, ldc: d)
        }
        p.dResidual.zero()
        LayerNorm.backward(dout: p.dNarrow.pointer, x: p.residual[c.layers].pointer, mean: p.lnfMean.pointer,
                           rstd: p.lnfRstd.pointer, gamma: w.pointer("transformer.ln_f.weight"), dx: dres,
                           dgamma: gradient("transformer.ln_f.weight"), dbeta: gradient("transformer.ln_f.bias"),
                           rows: n, dim: d, scratch: p.layerNormScratch.pointer)
        for l in stride(from: c.layers - 1, through: lowestTrainedBlock, by: -1) {
            let a = p.layers[l], pre = "transformer.h.\(l)."
            // MLP: residual[l+1] = mid + c_proj(gelu(c_fc(ln_2(mid)))).
            Conv1D.backward(dout: dres, x: a.gelu.pointer, weight: w.pointer(pre + "mlp.c_proj.weight"),
                            dx: p.dWide.pointer, dweight: gradient(pre + "mlp.c_proj.weight"),
                            dbias: gradient(pre + "mlp.c_proj.bias"), rows: n, inputs: 4 * d, outputs: d)
            GELU.backward(a.fc.pointer, grad: p.dWide.pointer, count: n * 4 * d)
            Conv1D.backward(dout: p.dWide.pointer, x: a.ln2Out.pointer, weight: w.pointer(pre + "mlp.c_fc.weight"),
                            dx: p.dNarrow.pointer, dweight: gradient(pre + "mlp.c_fc.weight"),
                            dbias: gradient(pre + "mlp.c_fc.bias"), rows: n, inputs: d, outputs: 4 * d)
            LayerNorm.backward(dout: p.dNarrow.pointer, x: a.residualMid.pointer, mean: a.ln2Mean.pointer,
                               rstd: a.ln2Rstd.pointer, gamma: w.pointer(pre + "ln_2.weight"), dx: dres,
                               dgamma: gradient(pre + "ln_2.weight"), dbeta: gradient(pre + "ln_2.bias"),
                               rows: n, dim: d, scratch: p.layerNormScratch.pointer)
            // Attention: mid = residual[l] + c_proj(attn(c_attn(ln_1(residual[l])))).
            Conv1D.backward(dout: dres, x: a.attention.pointer, weight: w.pointer(pre + "attn.c_proj.weight"),
                            dx: p.dNarrow2.pointer, dweight: gradient(pre + "attn.c_proj.weight"),
                            dbias: gradient(pre + "attn.c_proj.bias"), rows: n, inputs: d, outputs: d)
            CausalSelfAttention.backward(dout: p.dNarrow2.pointer, qkv: a.qkv.pointer,
                                         probabilities: a.probabilities.pointer, dqkv: p.dQKV.pointer,
                                         scratch: p.attentionScratch.pointer, shape: shape)
            Conv1D.backward(dout: p.dQKV.pointer, x: a.ln1Out.pointer, weight: w.pointer(pre + "attn.c_attn.weight"),
                            dx: p.dNarrow.pointer, dweight: gradient(pre + "attn.c_attn.weight"),
                            dbias: gradient(pre + "attn.c_attn.bias"), rows: n, inputs: d, outputs: 3 * d)
            LayerNorm.backward(dout: p.dNarrow.pointer, x: p.residual[l].pointer, mean: a.ln1Mean.pointer,
                               rstd: a.ln1Rstd.pointer, gamma: w.pointer(pre + "ln_1.weight"), dx: dres,
                               dgamma: gradient(pre + "ln_1.weight"), dbeta: gradient(pre + "ln_1.bias"),
                               rows: n, dim: d, scratch: p.layerNormScratch.pointer)
        }
        guard lowestTrainedBlock == 0 else { return }
        let dTokens = gradient("transformer.wte.weight"), dPositions = gradient("transformer.wpe.weight")
        guard dTokens != nil || dPositions != nil else { return }
        Embedding.backward(tokens: p.tokens, dout: dres, dTokenTable: dTokens, dPositionTable: dPositions,
                           batch: p.batch, sequence: p.sequence, dim: d)
    }
}
