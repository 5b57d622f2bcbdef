import ArgumentParser
import FedLMCheckpoint
import FedLMData
import FedLMModel
import FedLMTensor
import Foundation

/// Centralized training on one machine, with periodic validation, atomic checkpoints and exact
/// resume (the data sampler's state is checkpointed with the weights and optimizer moments).
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model centrally, with per-cluster validation, atomic checkpoints and exact resume.")

    @Option(help: "Config preset (tiny, small, ...) or TOML path.") var config: String = "tiny"
    @Option(help: "Prepared data directory (`fedlm data prepare`).") var data: String?
    @Option(help: "Train only on these data clusters (comma-separated; default: all). Validation still covers every cluster.")
    var clusters: String?
    @Option(parsing: .upToNextOption, help: "Or: text files or folders, with bytes as tokens.") var text: [String] = []
    @Option(help: "Stop after this many training tokens (sets the step count from the batch shape).") var tokens: Int?
    @Option(help: "Optimizer steps (default: the config's max_steps).") var steps: Int?
    @Option(help: "Run directory: checkpoints go to <out>/checkpoint.") var out: String = "runs/train"
    @Option(help: "Checkpoint every N steps (0: only at the end).") var checkpointEvery: Int = 100
    @Option(help: "Validate every N steps.") var validateEvery: Int = 50
    @Option(help: "Validation batches per cluster.") var validationBatches: Int = 4
    @Flag(help: "Continue from <out>/checkpoint if it exists.") var resume = false
    @Option(help: "Tokens of sample text to print at the end (0: none).") var sampleBytes: Int = 200
    @Option(help: "Compute threads (default: all cores).") var threads: Int?

    func validate() throws {
        guard (data == nil) != text.isEmpty else { throw ValidationError("give either --data DIR or --text FILES") }
        if clusters != nil, data == nil { throw ValidationError("--clusters selects clusters of --data DIR") }
        if let clusters, clusterList(clusters).isEmpty { throw ValidationError("--clusters names no cluster") }
        if let steps, steps <= 0 { throw ValidationError("--steps must be positive") }
        if let tokens, tokens <= 0 { throw ValidationError("--tokens must be positive") }
        if steps != nil, tokens != nil { throw ValidationError("give --steps or --tokens, not both") }
        guard checkpointEvery >= 0, validateEvery > 0 else { throw ValidationError("--checkpoint-every >= 0, --validate-every > 0") }
    }

    func clusterList(_ s: String) -> [String] { s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }

    func run() throws {
        if let threads { ComputeThreads.set(threads) }
        Runtime.announce()
        var file = try ConfigResolution.load(config)
        let source: TrainingData
        if let data {
            let dataset = try TokenDataset(directory: data)
            let chosen = clusters.map(clusterList)
            for c in chosen ?? [] { try dataset.checkCluster(c) }
            source = PreparedData(dataset: dataset, trainingClusters: chosen)
        } else {
            source = ByteData(corpus: try ByteCorpus.load(paths: text))
        }
        guard file.model.vocabulary >= source.vocabularySize else {
            throw ValidationError("the data needs vocab_size >= \(source.vocabularySize), the config has \(file.model.vocabulary)")
        }
        let seqLen = file.training.sequenceLength ?? file.model.context
        if let steps { file.training.maxSteps = steps }
        if let tokens { file.training.maxSteps = max(1, tokens / (file.training.batchSize * seqLen)) }
        let training = file.training
        let validationSets = try source.validationSets(batch: training.batchSize, sequence: seqLen, maxBatches: validationBatches)
        guard !validationSets.isEmpty else { throw ValidationError("the data has no validation windows of \(seqLen + 1) tokens") }
        let checkpointDir = out + "/checkpoint"
        var model = try GPT2Model(config: file.model, seed: training.seed)
        var stepper = TrainingStep(model: model, training: training)
        var rng = SeededGenerator(seed: training.seed &+ 1)
        var tokensSeen = 0
        if resume, FileManager.default.fileExists(atPath: checkpointDir) {
            let optimizer = makeOptimizer(training, layout: ParameterLayout(config: file.model))
            let loaded = try Checkpoint.load(from: checkpointDir, optimizer: optimizer)
            guard loaded.model.config == file.model else {
                throw ValidationError("\(checkpointDir) holds a different model shape than \(config)")
            }
            model = loaded.model
            stepper = TrainingStep(model: model, optimizer: optimizer, schedule: LearningRateSchedule(training),
                                   gradientClip: training.gradientClip)
            if let state = loaded.state, let s = state.samplerState { rng.state = s; tokensSeen = state.tokensSeen }
            Runtime.logger.info("resumed from \(checkpointDir) at step \(stepper.step)")
        }
        Runtime.logger.info("training \(config): \(file.model.parameterCount) parameters; \(source.summary); batch \(training.batchSize) x \(seqLen), \(training.maxSteps) steps")

        // The validation curve goes to <out>/validation.csv: step, tokens, seconds of training
        // (validation time excluded), one column per cluster, mean.
        let curvePath = out + "/validation.csv"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: curvePath) || stepper.step == 0 {
            try (["step", "tokens", "seconds"] + validationSets.map(\.name) + ["mean"]).joined(separator: ",")
                .appending("\n").write(toFile: curvePath, atomically: true, encoding: .utf8)
        }
        var validationSeconds = 0.0
        func validate(_ step: Int, trainLoss: Float?, rate: Double) throws {
            let validationStart = now()
            defer { validationSeconds += now() - validationStart }
            let losses = try validationSets.map { try meanLoss(model, $0.batches) }
            let mean = losses.reduce(0, +) / Float(losses.count)
            if isatty(1) != 0 { print("") }
            var line = String(format: "step %5d", step)
            if let trainLoss { line += String(format: "  train %.4f", trainLoss) }
            line += "  validation " + zip(validationSets, losses).map { String(format: "%@ %.4f", $0.name, $1) }.joined(separator: " ")
            if losses.count > 1 { line += String(format: "  mean %.4f", mean) }
            if rate > 0 { line += String(format: "  %.0f tok/s", rate) }
            print(line)
            let row = ["\(step)", "\(tokensSeen)", String(format: "%.1f", validationStart - start - validationSeconds)] + (losses + [mean]).map { String(format: "%.5f", $0) }
            if let handle = FileHandle(forWritingAtPath: curvePath) {
                handle.seekToEndOfFile()
                handle.write((row.joined(separator: ",") + "\n").data(using: .utf8)!)
                try? handle.close()
            }
        }
        func save() throws {
            try Checkpoint.save(model: model, optimizer: stepper.optimizer,
                                state: .init(step: stepper.step, optimizer: training.optimizer.rawValue,
                                             tokensSeen: tokensSeen, samplerState: rng.state),
                                extraFiles: source.tokenizerFile.map { ["tokenizer.json": $0] } ?? [:],
                                to: checkpointDir)
        }

        StopSignal.install()
        let start = now()
        let firstStep = stepper.step
        var lastReport: TrainingStep.Report?
        if stepper.step == 0 { try validate(0, trainLoss: nil, rate: 0) }
        while stepper.step < training.maxSteps, !StopSignal.requested {
            let batch = try source.trainBatch(batch: training.batchSize, sequence: seqLen, rng: &rng)
            lastReport = try stepper.run(batch)
            tokensSeen += batch.inputs.count
            let step = stepper.step
            let elapsed = now() - start - validationSeconds
            let rate = Double((step - firstStep) * training.batchSize * seqLen) / elapsed
            let eta = Double(training.maxSteps - step) * elapsed / Double(step - firstStep)
            if isatty(1) != 0 {
                print(String(format: "\rstep %5d/%d  loss %.4f  lr %.2e  |g| %.2f  %.0f tok/s  ETA %.0fs   ", step,
                             training.maxSteps, lastReport!.loss, lastReport!.learningRate, lastReport!.gradientNorm,
                             rate, eta), terminator: "")
                fflush(nil)
            }
            if step % validateEvery == 0 || step == training.maxSteps { try validate(step, trainLoss: lastReport!.loss, rate: rate) }
            if checkpointEvery > 0, step % checkpointEvery == 0 { try save() }
        }
        if isatty(1) != 0 { print("") }
        try save()
        Runtime.logger.info("checkpoint written to \(checkpointDir) at step \(stepper.step)\(StopSignal.requested ? " (interrupted; --resume continues)" : "")")
        if sampleBytes > 0, !StopSignal.requested {
            let text = try SampleText.generate(model: model, tokenizerFile: source.tokenizerFile, prompt: "The ",
                                               tokens: sampleBytes, temperature: 0.8, topK: 40, seed: 7)
            print("--- sample ---\n\(text)\n---")
        }
    }
}

/// SIGINT/SIGTERM set a flag that the training loop checks between steps, so an interrupted
/// run ends with a consistent checkpoint instead of dying mid-write.
enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    static var requested: Bool { flag != 0 }
    /// Signals received so far (a second Ctrl-C: stop at once).
    static var count: Int { Int(flag) }
    static func install() {
        signal(SIGINT) { _ in StopSignal.flag += 1 }
        signal(SIGTERM) { _ in StopSignal.flag += 1 }
    }
}
