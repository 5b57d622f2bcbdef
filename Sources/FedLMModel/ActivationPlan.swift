import FedLMTensor

/// Every buffer one forward+backward pass needs for a given (batch, sequence) shape, allocated
/// once so that a training step allocates nothing. The model keeps the plan of the last shape
/// it ran and makes a new one only when the shape changes.
final class ActivationPlan {
    struct Layer {
        let ln1Mean, ln1Rstd, ln1Out: FloatBuffer
        let qkv: FloatBuffer
        let probabilities: FloatBuffer
        let attention: FloatBuffer
        let residualMid: FloatBuffer
        let ln2Mean, ln2Rstd, ln2Out: FloatBuffer
        let fc: FloatBuffer
        let gelu: FloatBuffer
    }

    let batch: Int
    let sequence: Int
    var rows: Int { batch * sequence }

    /// residual[l] is the input of block l; residual[layers] the output of the last block.
    let residual: [FloatBuffer]
    let layers: [Layer]
    let lnfMean, lnfRstd, lnfOut: FloatBuffer
    let logits: FloatBuffer
    let tokens: UnsafeMutablePointer<Int32>
    let targets: UnsafeMutablePointer<Int32>

    // Gradient scratch, reused by every layer on the way back.
    let dResidual: FloatBuffer
    let dWide: FloatBuffer  // [rows, 4d]
    let dQKV: FloatBuffer  // [rows, 3d]
    let dNarrow: FloatBuffer  // [rows, d]
    let dNarrow2: FloatBuffer  // [rows, d]
    let layerNormScratch: FloatBuffer
    let attentionScratch: FloatBuffer

    init(config c: GPT2Config, batch: Int, sequence: Int) {
        self.batch = batch
        self.sequence = sequence
        let n = batch * sequence, d = c.embedding
        residual = (0...c.layers).map { _ in FloatBuffer(count: n * d) }
        layers = (0..<c.layers).map { _ in
            Layer(ln1Mean: FloatBuffer(count: n), ln1Rstd: FloatBuffer(count: n), ln1Out: FloatBuffer(count: n * d),
                  qkv: FloatBuffer(count: n * 3 * d),
                  probabilities: FloatBuffer(count: batch * c.heads * sequence * sequence),
                  attention: FloatBuffer(count: n * d), residualMid: FloatBuffer(count: n * d),
                  ln2Mean: FloatBuffer(count: n), ln2Rstd: FloatBuffer(count: n), ln2Out: FloatBuffer(count: n * d),
                  fc: FloatBuffer(count: n * 4 * d), gelu: FloatBuffer(count: n * 4 * d))
        }
        lnfMean = FloatBuffer(count: n)
        lnfRstd = FloatBuffer(count: n)
        lnfOut = FloatBuffer(count: n * d)
        logits = FloatBuffer(count: n * c.vocabulary)
        tokens = .allocate(capacity: n)
        targets = .allocate(capacity: n)
        dResidual = FloatBuffer(count: n * d)
        dWide = FloatBuffer(count: n * 4 * d)
        dQKV = FloatBuffer(count: n * 3 * d)
        dNarrow = FloatBuffer(count: n * d)
        dNarrow2 = FloatBuffer(count: n * d)
        let threads = ComputeThreads.count
        layerNormScratch = FloatBuffer(count: threads * 2 * d)
        attentionScratch = FloatBuffer(count: threads * CausalSelfAttention.blockSize * sequence)
    }

    deinit {
        tokens.deallocate()
        targets.deallocate()
    }

    /// Bytes held by the plan (activations and gradient scratch).
    var bytes: Int {
        var total = residual.reduce(0) { $0 + $1.count }
        for l in layers {
            total += [l.ln1Mean, l.ln1Rstd, l.ln1Out, l.qkv, l.probabilities, l.attention, l.residualMid,
                      l.ln2Mean, l.ln2Rstd, l.ln2Out, l.fc, l.gelu].reduce(0) { $0 + $1.count }
        }
        total += [lnfMean, lnfRstd, lnfOut, logits, dResidual, dWide, dQKV, dNarrow, dNarrow2, layerNormScratch,
                  attentionScratch].reduce(0) { $0 + $1.count }
        return total * 4 + 2 * rows * 4
    }
}
