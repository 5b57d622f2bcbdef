import FedLMTensor

/// Every buffer one forward+backward pass needs for a given (batch, sequence) shape, allocated
/// once so that a training step allocates nothing. The model keeps the plan of the last shape
/// it ran and makes a new one only when the shape changes.
///
/// A model that trains only its upper blocks (`TensorSubset`) never runs backward below block
/// `storedFrom`, so the blocks below keep nothing: they share one block's buffers, and their
/// residual stream alternates between two buffers.
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
    /// The lowest block whose activations are kept for backward.
    let storedFrom: Int
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

    init(config c: GPT2Config, batch: Int, sequence: Int, storedFrom: Int = 0) {
        precondition((0...c.layers).contains(storedFrom), "storedFrom \(storedFrom) of \(c.layers) layers")
        self.batch = batch
        self.sequence = sequence
        self.storedFrom = storedFrom
        let n = batch * sequence, d = c.embedding
        func layer() -> Layer {
            Layer(ln1Mean: FloatBuffer(count: n), ln1Rstd: FloatBuffer(count: n), ln1Out: FloatBuffer(count: n * d),
                  qkv: FloatBuffer(count: n * 3 * d),
                  probabilities: FloatBuffer(count: batch * c.heads * sequence * sequence),
                  attention: FloatBuffer(count: n * d), residualMid: FloatBuffer(count: n * d),
                  ln2Mean: FloatBuffer(count: n), ln2Rstd: FloatBuffer(count: n), ln2Out: FloatBuffer(count: n * d),
                  fc: FloatBuffer(count: n * 4 * d), gelu: FloatBuffer(count: n * 4 * d))
        }
        // Below storedFrom: residual[l] alternates between two buffers (block l reads one and
        // writes the other), and every block uses the same scratch block.
        let rolling = storedFrom > 0 ? [FloatBuffer(count: n * d), FloatBuffer(count: n * d)] : []
        residual = (0...c.layers).map { l in l <= storedFrom && storedFrom > 0 ? rolling[l % 2] : FloatBuffer(count: n * d) }
        let shared = storedFrom > 0 ? layer() : nil
        layers = (0..<c.layers).map { l in l < storedFrom ? shared! : layer() }
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

    /// Bytes held by the plan (activations and gradient scratch; a buffer shared counted once).
    var bytes: Int {
        var buffers = residual
        for l in layers {
            buffers += [l.ln1Mean, l.ln1Rstd, l.ln1Out, l.qkv, l.probabilities, l.attention, l.residualMid,
                        l.ln2Mean, l.ln2Rstd, l.ln2Out, l.fc, l.gelu]
        }
        buffers += [lnfMean, lnfRstd, lnfOut, logits, dResidual, dWide, dQKV, dNarrow, dNarrow2, layerNormScratch,
                    attentionScratch]
        var seen = Set<ObjectIdentifier>()
        let total = buffers.filter { seen.insert(ObjectIdentifier($0)).inserted }.reduce(0) { $0 + $1.count }
        return total * 4 + 2 * rows * 4
    }

    /// The bytes a plan of this shape would hold, without allocating it.
    static func bytes(config c: GPT2Config, batch: Int, sequence: Int, storedFrom: Int, threads: Int = ComputeThreads.count) -> Int {
        let n = batch * sequence, d = c.embedding
        let block = 4 * n + 15 * n * d + batch * c.heads * sequence * sequence
        let keptBlocks = c.layers - storedFrom + (storedFrom > 0 ? 1 : 0)
        let residuals = (c.layers - storedFrom + 1) + (storedFrom > 0 ? 1 : 0)
        let top = 2 * n + n * d + n * c.vocabulary
        let scratch = n * d + 4 * n * d + 3 * n * d + 2 * n * d + threads * 2 * d + threads * CausalSelfAttention.blockSize * sequence
        return (keptBlocks * block + residuals * n * d + top + scratch) * 4 + 2 * n * 4
    }
}
