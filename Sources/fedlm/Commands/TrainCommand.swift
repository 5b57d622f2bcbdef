import ArgumentParser
import FedLMCheckpoint
import FedLMModel
import FedLMTensor
import Foundation

/// Centralized training on one machine, with periodic validation, atomic checkpoints and exact
/// resume (the data sampler's state is checkpointed with the weights and optimizer moments).
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model centrally on text (byte-level tokens) with checkpoints and exact resume.")

    @Option(help: "Config preset (tiny, small, ...) or TOML path.") var config: String = "tiny"
    @Option(parsing: .upToNextOption, help: "Text files or folders to train on (bytes are tokens).") var text: [String]
    @Option(help: "Optimizer steps (default: the config's max_steps).") var steps: Int?
    @Option(help: "Run directory: checkpoints go to <out>/checkpoint.") var out: String = "runs/train"
    @Option(help: "Checkpoint every N steps (0: only at the end).") var checkpointEvery: Int = 100
    @Option(help: "Validate every N steps.") var validateEvery: Int = 50
    @Flag(help: "Continue from <out>/checkpoint if it exists.") var resume = false
    @Option(help: "Bytes of sample text to print at the end (0: none).") var sampleBytes: Int = 200
    @Option(help: "Compute threads (default: all cores).") var threads: Int?

    func validate() throws {
        guard !text.isEmpty else { throw ValidationError("--text needs at least one file or folder") }
        if let steps, steps <= 0 { throw ValidationError("--steps must be positive") }
        guard checkpointEvery >= 0, validateEvery > 0 else { throw ValidationError("--checkpoint-every >= 0, --validate-every > 0") }
    }

    func run() throws {
        if let threads { ComputeThreads.set(threads) }
        Runtime.announce()
        var file = try ConfigResolution.load(config)
        // Bytes are tokens: the vocabulary must hold all 256 values.
        guard file.model.vocabulary >= 256 else {
            throw ValidationError("byte-level training needs vocab_size >= 256, the config has \(file.model.vocabulary)")
        }
        if let steps { file.training.maxSteps = steps }
        let training = file.training
        let seqLen = training.sequenceLength ?? file.model.context
        let corpus = try ByteCorpus.load(paths: text)
        guard corpus.validation.count > seqLen + 1 else {
            throw ValidationError("the text is too short: \(corpus.train.count + corpus.validation.count) bytes for sequence length \(seqLen)")
        }
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
        Runtime.logger.info("training \(config): \(file.model.parameterCount) parameters, \(corpus.train.count) training bytes, batch \(training.batchSize) x \(seqLen), \(training.maxSteps) steps")

        func validationLoss() throws -> Float {
            var vrng = SeededGenerator(seed: 99)  // the same windows every time, so curves compare
            var total: Float = 0
            for _ in 0..<4 {
                total += try model.loss(ByteCorpus.batch(from: corpus.validation, batch: training.batchSize,
                                                         sequence: seqLen, rng: &vrng))
            }
            return total / 4
        }
        func save() throws {
            try Checkpoint.save(model: model, optimizer: stepper.optimizer,
                                state: .init(step: stepper.step, optimizer: training.optimizer.rawValue,
                                             tokensSeen: tokensSeen, samplerState: rng.state),
                                to: checkpointDir)
        }

        StopSignal.install()
        let start = now()
        let firstStep = stepper.step
        var lastReport: TrainingStep.Report?
        if stepper.step == 0 { print(String(format: "step %5d  validation loss %.4f", 0, try validationLoss())) }
        while stepper.step < training.maxSteps, !StopSignal.requested {
            let batch = ByteCorpus.batch(from: corpus.train, batch: training.batchSize, sequence: seqLen, rng: &rng)
            lastReport = try stepper.run(batch)
            tokensSeen += batch.inputs.count
            let step = stepper.step
            let elapsed = now() - start
            let rate = Double((step - firstStep) * training.batchSize * seqLen) / elapsed
            let eta = Double(training.maxSteps - step) * elapsed / Double(step - firstStep)
            if isatty(1) != 0 {
                print(String(format: "\rstep %5d/%d  loss %.4f  lr %.2e  |g| %.2f  %.0f tok/s  ETA %.0fs   ", step,
                             training.maxSteps, lastReport!.loss, lastReport!.learningRate, lastReport!.gradientNorm,
                             rate, eta), terminator: "")
                fflush(nil)
            }
            if step % validateEvery == 0 || step == training.maxSteps {
                if isatty(1) != 0 { print("") }
                print(String(format: "step %5d  train loss %.4f  validation loss %.4f  %.0f tok/s", step,
                             lastReport!.loss, try validationLoss(), rate))
            }
            if checkpointEvery > 0, step % checkpointEvery == 0 { try save() }
        }
        if isatty(1) != 0 { print("") }
        try save()
        Runtime.logger.info("checkpoint written to \(checkpointDir) at step \(stepper.step)\(StopSignal.requested ? " (interrupted; --resume continues)" : "")")
        if sampleBytes > 0, !StopSignal.requested {
            let prompt = Array(corpus.validation.prefix(32)).map { Int32($0) }
            let generated = try Sampler.generate(model: model, prompt: prompt, tokens: sampleBytes, seed: 7)
            let text = String(decoding: generated.map { UInt8(clamping: $0) }, as: UTF8.self)
            print("--- sample after \"\(String(decoding: prompt.map { UInt8($0) }, as: UTF8.self))\" ---\n\(text)\n---")
        }
    }
}

/// SIGINT/SIGTERM set a flag that the training loop checks between steps, so an interrupted
/// run ends with a consistent checkpoint instead of dying mid-write.
enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    static var requested: Bool { flag != 0 }
    static func install() {
        signal(SIGINT) { _ in StopSignal.flag = 1 }
        signal(SIGTERM) { _ in StopSignal.flag = 1 }
    }
}
