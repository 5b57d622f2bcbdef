import ArgumentParser
import FedLMModel
import FedLMTensor
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmarks that print figures (run them in release builds).",
        subcommands: [BenchTrainCommand.self, BenchSgemmCommand.self, BenchUpdateCommand.self, BenchAggregatorCommand.self, BenchLoadCommand.self,
                      BenchFloodCommand.self])
}

/// Measures the sgemm rate FedLM's own GEMM path reaches (same BLAS, same thread split).
enum SgemmPeak {
    /// GFLOP/s of C[m,n] = A[m,k] B[k,n], best of `seconds` of repeated calls.
    static func measure(m: Int, n: Int, k: Int, seconds: Double = 1.0) -> Double {
        let a = FloatBuffer(count: m * k), b = FloatBuffer(count: k * n), c = FloatBuffer(count: m * n)
        for i in 0..<a.count { a[i] = Float(i % 13) * 0.01 }
        for i in 0..<b.count { b[i] = Float(i % 7) * 0.01 }
        Gemm.multiply(m: m, n: n, k: k, a: a.pointer, lda: k, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
        var best = 0.0
        let start = now()
        // The buffers must outlive every call that uses their pointers.
        withExtendedLifetime((a, b, c)) {
            while now() - start < seconds {
                let t0 = now()
                Gemm.multiply(m: m, n: n, k: k, a: a.pointer, lda: k, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
                best = max(best, 2.0 * Double(m * n * k) / (now() - t0) / 1e9)
            }
        }
        return best
    }

    /// The peak over a few large, square-ish shapes.
    static func peak() -> Double {
        [(1024, 1024, 1024), (2048, 1024, 512), (4096, 768, 256)].map { measure(m: $0.0, n: $0.1, k: $0.2, seconds: 0.7) }.max()!
    }
}

struct BenchSgemmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sgemm", abstract: "sgemm GFLOP/s through FedLM's GEMM path.")

    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Option(help: "Seconds per shape.") var seconds: Double = 1

    func run() throws {
        if let threads { ComputeThreads.set(threads) }
        Runtime.announce()
        for (m, n, k) in [(1024, 1024, 1024), (4096, 768, 256), (4096, 4096, 256), (4096, 256, 1024), (256, 1024, 4096)] {
            let rate = SgemmPeak.measure(m: m, n: n, k: k, seconds: seconds)
            print(String(format: "sgemm %5d x %5d x %5d: %6.1f GFLOP/s", m, n, k, rate))
        }
    }
}

struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Full training steps (forward, backward, AdamW) on random tokens; prints tokens/s and GFLOP/s.")

    @Option(help: "Config preset (tiny, small, medium, gpt2-124m) or path to a TOML file.") var config: String = "small"
    @Option(help: "Batch size (default: the config's).") var batch: Int?
    @Option(help: "Sequence length (default: the model's context).") var sequence: Int?
    @Option(help: "Timed repetitions.") var reps: Int = 3
    @Option(help: "Seconds per timed repetition.") var repSeconds: Double = 8
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(help: "Print one JSON object instead of text.") var json = false

    func run() throws {
        if let threads { ComputeThreads.set(threads) }
        Runtime.announce()
        let file = try ConfigResolution.load(config)
        let c = file.model
        let b = batch ?? file.training.batchSize
        let t = sequence ?? c.context
        guard b > 0, t > 0, t <= c.context else { throw ValidationError("--batch and --sequence must be positive, sequence <= \(c.context)") }
        let model = try GPT2Model(config: c, seed: 1)
        let optimizer = AdamW(layout: model.layout, beta1: 0.9, beta2: 0.95, weightDecay: 0.1)
        var rng = SeededGenerator(seed: 2)
        let batches = (0..<4).map { _ in
            TokenBatch(batch: b, sequence: t,
                       inputs: (0..<(b * t)).map { _ in Int32(rng.next() % UInt64(c.vocabulary)) },
                       targets: (0..<(b * t)).map { _ in Int32(rng.next() % UInt64(c.vocabulary)) })
        }
        func step(_ i: Int) throws -> Float {
            let loss = try model.lossAndGradients(batches[i % 4])
            GradientClipping.clip(model.gradients, maxNorm: 1)
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: 3e-4)
            return loss
        }
        // Warm-up: at least 3 steps and 2 seconds.
        let firstLoss = try step(0)
        var i = 1
        let warm = now()
        while i < 4 || now() - warm < 2 { _ = try step(i); i += 1 }
        let perStep = (now() - warm) / Double(i - 1)
        let steps = max(3, Int(repSeconds / perStep))
        var rates: [Double] = []
        var lastLoss: Float = 0
        for r in 0..<reps {
            let t0 = now()
            for s in 0..<steps { lastLoss = try step(s) }
            let dt = now() - t0
            rates.append(Double(steps * b * t) / dt)
            if !json { print(String(format: "  rep %d: %d steps in %.2f s -> %.0f tokens/s", r, steps, dt, rates.last!)) }
        }
        // Phase split (median of a few steps): forward+loss alone, then the optimizer alone.
        var forwardTimes: [Double] = [], optimizerTimes: [Double] = [], stepTimes: [Double] = []
        for s in 0..<5 {
            var t0 = now()
            _ = try model.loss(batches[s % 4])
            forwardTimes.append(now() - t0)
            t0 = now()
            _ = try model.lossAndGradients(batches[s % 4])
            stepTimes.append(now() - t0)
            t0 = now()
            optimizer.update(parameters: model.parameters, gradients: model.gradients, learningRate: 3e-4)
            optimizerTimes.append(now() - t0)
        }
        let peak = SgemmPeak.peak()
        let flops = FlopCount(config: c, sequence: t)
        let tokensPerSecond = median(rates)
        let gflops = tokensPerSecond * flops.perToken / 1e9
        let rss = ResourceUsage.peakResidentBytes ?? 0
        let report: [String: Any] = [
            "config": config, "batch": b, "sequence": t, "threads": ComputeThreads.count,
            "blas_core": BLASRuntime.coreName, "parameters": c.parameterCount,
            "tokens_per_second_median": tokensPerSecond, "tokens_per_second": rates,
            "ms_per_step": 1000 * Double(b * t) / tokensPerSecond,
            "forward_ms": 1000 * median(forwardTimes), "backward_ms": 1000 * (median(stepTimes) - median(forwardTimes)),
            "optimizer_ms": 1000 * median(optimizerTimes),
            "mflop_per_token": flops.perToken / 1e6, "gflops": gflops, "sgemm_peak_gflops": peak,
            "fraction_of_peak": gflops / peak, "peak_rss_bytes": rss, "activation_bytes": model.activationBytes,
            "loss_first": firstLoss, "loss_last": lastLoss,
        ]
        if json {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print(String(format: """
            config %@  batch %d x %d  params %.2fM  threads %d  BLAS core %@
            tokens/s   %.0f median  [%.0f .. %.0f] over %d reps
            ms/step    %.1f   (forward %.1f, backward %.1f, AdamW %.1f)
            GFLOP/s    %.1f   (%.1f MFLOP/token: 6*N matmul + attention) = %.0f%% of measured sgemm peak %.1f
            memory     peak RSS %@, activations %@
            loss       %.3f -> %.3f
            """, config, b, t, Double(c.parameterCount) / 1e6, ComputeThreads.count, BLASRuntime.coreName,
                     tokensPerSecond, rates.min()!, rates.max()!, reps,
                     1000 * Double(b * t) / tokensPerSecond, 1000 * median(forwardTimes),
                     1000 * (median(stepTimes) - median(forwardTimes)), 1000 * median(optimizerTimes),
                     gflops, flops.perToken / 1e6, 100 * gflops / peak, peak,
                     formatBytes(rss), formatBytes(model.activationBytes), firstLoss, lastLoss))
    }
}

/// Training FLOPs per token, counted as PyTorch's reference benchmark counts them: 6 x the
/// parameters that take part in matmuls (all linear weights plus the d x V head), plus
/// 12 * layers * d * T for attention scores and values (full T x T, forward and backward).
struct FlopCount {
    let perToken: Double
    init(config c: GPT2Config, sequence: Int) {
        let d = Double(c.embedding), l = Double(c.layers)
        let matmul = l * 12 * d * d + d * Double(c.vocabulary)
        perToken = 6 * matmul + 12 * l * d * Double(sequence)
    }
}
