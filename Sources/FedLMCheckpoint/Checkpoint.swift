import FedLMHashing
import FedLMModel
import FedLMTensor
import Foundation

/// A checkpoint directory:
///
///     model.safetensors      weights under Hugging Face GPT-2 names (loads in transformers)
///     config.json            Hugging Face GPT2Config
///     optimizer.safetensors  optimizer state, "<state>.<parameter name>" (optional)
///     training_state.json    step, optimizer kind, data-sampler state (optional)
///     checksums.json         SHA-256 of each file above
///
/// The directory is written under a temporary name and renamed into place, so it exists
/// complete or not at all; loading verifies every checksum before trusting a byte.
public enum Checkpoint {
    public static let modelFile = "model.safetensors"
    public static let configFile = "config.json"
    public static let optimizerFile = "optimizer.safetensors"
    public static let stateFile = "training_state.json"
    public static let checksumFile = "checksums.json"

    /// Buffers Hugging Face keeps in a GPT-2 state dict that are not parameters (causal masks).
    static let ignorableTensorSuffixes = [".attn.bias", ".attn.masked_bias"]

    /// Progress that must survive a restart besides weights and optimizer moments.
    public struct TrainingState: Codable, Equatable, Sendable {
        public var step: Int
        public var optimizer: String
        public var tokensSeen: Int
        public var samplerState: [UInt64]?
        public var extra: [String: String]
        public init(step: Int, optimizer: String, tokensSeen: Int, samplerState: [UInt64]? = nil,
                    extra: [String: String] = [:]) {
            self.step = step
            self.optimizer = optimizer
            self.tokensSeen = tokensSeen
            self.samplerState = samplerState
            self.extra = extra
        }
    }

    /// Writes a complete checkpoint to `directory` atomically (replacing any older one there).
    /// `extraFiles` maps a file name in the checkpoint to a file to copy there (e.g. the
    /// tokenizer.json, so the directory is self-contained); they are checksummed like the rest.
    public static func save(model: GPT2Model, optimizer: (any Optimizer)? = nil, state: TrainingState? = nil,
                            extraFiles: [String: String] = [:], to directory: String) throws {
        let fm = FileManager.default
        let parent = (directory as NSString).deletingLastPathComponent
        if !parent.isEmpty { try? fm.createDirectory(atPath: parent, withIntermediateDirectories: true) }
        let staging = directory + ".partial-\(getpid())"
        try? fm.removeItem(atPath: staging)
        do { try fm.createDirectory(atPath: staging, withIntermediateDirectories: true) } catch {
            throw CheckpointError.io(path: staging, reason: "cannot create: \(error.localizedDescription)")
        }
        do {
            try writeVector(model.parameters, prefix: "", tiedHead: model.config.tiedHead,
                            to: staging + "/" + modelFile, metadata: ["format": "pt", "producer": "fedlm"])
            try AtomicFile.write(try HuggingFaceConfig(model.config).encoded(), to: staging + "/" + configFile)
            if let optimizer {
                try SafeTensors.write(tensorSources(of: optimizer.stateVectors), metadata: ["step": String(optimizer.step)],
                                      to: staging + "/" + optimizerFile)
            }
            if let state {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                try AtomicFile.write(try encoder.encode(state), to: staging + "/" + stateFile)
            }
            for (name, source) in extraFiles.sorted(by: { $0.key < $1.key }) {
                try copyFile(source, to: staging + "/" + name)
            }
            var sums: [String: String] = [:]
            for file in [modelFile, configFile, optimizerFile, stateFile] + extraFiles.keys.sorted()
                where fm.fileExists(atPath: staging + "/" + file) {
                sums[file] = try sha256(ofFile: staging + "/" + file)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try AtomicFile.write(try encoder.encode(sums), to: staging + "/" + checksumFile)
            AtomicFile.syncDirectory(staging)
            // Swap into place: rename is atomic for a fresh name; an existing checkpoint is moved
            // aside first and removed only after the new one is in place.
            var aside: String?
            if fm.fileExists(atPath: directory) {
                aside = directory + ".old-\(getpid())"
                try? fm.removeItem(atPath: aside!)
                guard rename(directory, aside!) == 0 else {
                    throw CheckpointError.io(path: directory, reason: "cannot move old checkpoint aside")
                }
            }
            guard rename(staging, directory) == 0 else {
                if let aside { rename(aside, directory) }
                throw CheckpointError.io(path: directory, reason: "rename: \(String(cString: strerror(errno)))")
            }
            AtomicFile.syncDirectory(containing: directory)
            if let aside { try? fm.removeItem(atPath: aside) }
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
    }

    /// Copies a file 1 MiB at a time (an aggregator's state file is as large as the model: it is
    /// never read whole into memory).
    static func copyFile(_ source: String, to destination: String) throws {
        guard let input = FileHandle(forReadingAtPath: source) else { throw CheckpointError.io(path: source, reason: "cannot read") }
        defer { try? input.close() }
        try AtomicFile.write(to: destination) { sink in
            while true {
                let chunk = input.readData(ofLength: 1 << 20)
                if chunk.isEmpty { break }
                try chunk.withUnsafeBytes { try sink.write($0) }
            }
        }
    }

    /// Writes a parameter vector as safetensors under Hugging Face names (`prefix` prepended).
    public static func writeVector(_ v: ParameterVector, prefix: String, tiedHead: Bool, to path: String,
                                   metadata: [String: String] = [:]) throws {
        try SafeTensors.write(tensorSources(of: v, prefix: prefix), metadata: metadata, to: path)
    }

    /// The tensors of a vector laid out like the model, named `prefix` + parameter name. The
    /// vector must stay alive until they are written.
    public static func tensorSources(of v: ParameterVector, prefix: String) -> [SafeTensors.Source] {
        v.layout.entries.map { e in
            SafeTensors.Source(name: prefix + e.name, dtype: .f32, shape: e.shape,
                               bytes: UnsafeRawBufferPointer(start: v.pointer + e.offset, count: e.count * 4))
        }
    }

    /// Named state vectors (optimizer moments, aggregation buffers) as tensors "<name>.<parameter>".
    public static func tensorSources(of vectors: [(name: String, vector: ParameterVector)]) -> [SafeTensors.Source] {
        vectors.flatMap { tensorSources(of: $0.vector, prefix: $0.name + ".") }
    }

    /// Fills each named state vector from tensors "<name>.<parameter>"; every one must be there
    /// with its exact shape.
    public static func readStateVectors(_ file: SafeTensorsFile, into vectors: [(name: String, vector: ParameterVector)]) throws {
        for (name, vector) in vectors { try copyTensors(from: file, into: vector, prefix: name + ".") }
    }

    static func copyTensors(from file: SafeTensorsFile, into v: ParameterVector, prefix: String) throws {
        for e in v.layout.entries { try file.copyFloats(prefix + e.name, shape: e.shape, into: v.pointer + e.offset) }
    }

    /// Reads a parameter vector: every tensor of the layout must be present with its exact shape;
    /// any other tensor (bar Hugging Face's attention-mask buffers) is an error.
    public static func readVector(_ file: SafeTensorsFile, into v: ParameterVector, prefix: String = "") throws {
        try copyTensors(from: file, into: v, prefix: prefix)
        let expected = Set(v.layout.entries.map { prefix + $0.name })
        for name in file.names where !expected.contains(name) {
            // A tied model may carry a copy of the head (some exporters write it); it must equal wte.
            if name == prefix + "lm_head.weight", v.layout.entry("lm_head.weight") == nil {
                let head = try file.floats(name)
                let wte = v.values("transformer.wte.weight")
                if head.count == wte.count, zip(head, wte).allSatisfy({ $0 == $1 }) { continue }
                throw CheckpointError.configMismatch(path: file.path,
                                                     reason: "lm_head.weight differs from transformer.wte.weight in a tied model")
            }
            if ignorableTensorSuffixes.contains(where: { name.hasSuffix($0) }) { continue }
            throw CheckpointError.unexpectedTensor(path: file.path, name: name)
        }
    }

    /// Loads a checkpoint's model (and, when given an optimizer, its state).
    public static func load(from directory: String, optimizer: (any Optimizer)? = nil) throws
        -> (model: GPT2Model, state: TrainingState?)
    {
        try verifyChecksums(directory)
        let hf = try HuggingFaceConfig.load(path: directory + "/" + configFile)
        let config = try hf.gpt2Config(path: directory + "/" + configFile)
        let model = try GPT2Model(config: config)
        let file = try SafeTensorsFile(path: directory + "/" + modelFile)
        try readVector(file, into: model.parameters)
        if let bad = firstNonFinite(model.parameters) {
            throw CheckpointError.malformed(path: file.path, reason: "tensor '\(bad)' holds NaN or infinity")
        }
        var state: TrainingState?
        let statePath = directory + "/" + stateFile
        if FileManager.default.fileExists(atPath: statePath) {
            do {
                state = try JSONDecoder().decode(TrainingState.self, from: Data(contentsOf: URL(fileURLWithPath: statePath)))
            } catch {
                throw CheckpointError.malformed(path: statePath, reason: "\(error)")
            }
        }
        if let optimizer {
            let optPath = directory + "/" + optimizerFile
            guard FileManager.default.fileExists(atPath: optPath) else {
                throw CheckpointError.io(path: optPath, reason: "no optimizer state in this checkpoint")
            }
            let optFile = try SafeTensorsFile(path: optPath)
            // The file holds every state vector ("exp_avg.<name>", "exp_avg_sq.<name>", ...).
            try readStateVectors(optFile, into: optimizer.stateVectors)
            guard let stepText = optFile.metadata["step"], let step = Int(stepText) else {
                throw CheckpointError.malformed(path: optPath, reason: "metadata has no optimizer step")
            }
            optimizer.restore(step: step)
        }
        return (model, state)
    }

    /// Checks every file listed in checksums.json against its SHA-256.
    public static func verifyChecksums(_ directory: String) throws {
        let path = directory + "/" + checksumFile
        guard FileManager.default.fileExists(atPath: directory) else {
            throw CheckpointError.io(path: directory, reason: "no such checkpoint directory")
        }
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)),
              let sums = try? JSONDecoder().decode([String: String].self, from: data) else {
            throw CheckpointError.malformed(path: path, reason: "missing or unreadable checksum list")
        }
        for file in [modelFile, configFile] where sums[file] == nil {
            throw CheckpointError.malformed(path: path, reason: "no checksum for \(file)")
        }
        for (file, expected) in sums.sorted(by: { $0.key < $1.key }) {
            let found = try sha256(ofFile: directory + "/" + file)
            guard found == expected else {
                throw CheckpointError.checksumMismatch(path: directory + "/" + file, expected: expected, found: found)
            }
        }
    }

    public static func sha256(ofFile path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CheckpointError.io(path: path, reason: "cannot open")
        }
        defer { try? handle.close() }
        let hasher = SHA256()
        while true {
            let chunk = handle.readData(ofLength: 1 << 20)
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    static func firstNonFinite(_ v: ParameterVector) -> String? {
        for e in v.layout.entries {
            let values = v.values(e.name)
            if values.contains(where: { !$0.isFinite }) { return e.name }
        }
        return nil
    }
}
