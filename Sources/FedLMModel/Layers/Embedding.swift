import FedLMTensor

/// Token plus position embedding: x[b, t] = wte[token[b, t]] + wpe[t].
public enum Embedding {
    public static func forward(tokens: UnsafePointer<Int32>, tokenTable: UnsafePointer<Float>,
                               positionTable: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                               batch: Int, sequence: Int, dim: Int) {
        parallelFor(batch * sequence) { range in
            for n in range {
                let tok = tokenTable + Int(tokens[n]) * dim
                let pos = positionTable + (n % sequence) * dim
                let y = out + n * dim
                for i in 0..<dim { y[i] = tok[i] + pos[i] }
            }
        }
    }

    /// dwte[token] += dx; dwpe[t] += dx. Split over columns so threads never touch the same
    /// row of the tables, even when a token repeats.
    public static func backward(tokens: UnsafePointer<Int32>, dout: UnsafePointer<Float>,
                                dTokenTable: UnsafeMutablePointer<Float>?, dPositionTable: UnsafeMutablePointer<Float>?,
                                batch: Int, sequence: Int, dim: Int) {
        parallelFor(dim, granularity: 16) { cols in
            for n in 0..<(batch * sequence) {
                let g = dout + n * dim
                if let dTokenTable {
                    let tok = dTokenTable + Int(tokens[n]) * dim
                    for i in cols { tok[i] += g[i] }
                }
                if let dPositionTable {
                    let pos = dPositionTable + (n % sequence) * dim
                    for i in cols { pos[i] += g[i] }
                }
            }
        }
    }
}
