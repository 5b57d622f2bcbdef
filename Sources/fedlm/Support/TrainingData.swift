import FedLMData
import FedLMModel
import FedLMTensor

/// Where training windows and validation sets come from: raw bytes of text files (tokens are
/// bytes) or a prepared data directory (token shards per cluster).
protocol TrainingData {
    var summary: String { get }
    /// The smallest vocabulary a model needs for these tokens.
    var vocabularySize: Int { get }
    /// A tokenizer.json to ship inside checkpoints, if the data has one.
    var tokenizerFile: String? { get }
    func trainBatch(batch: Int, sequence: Int, rng: inout SeededGenerator) throws -> TokenBatch
    /// Fixed validation batches per cluster (the same on every call).
    func validationSets(batch: Int, sequence: Int, maxBatches: Int) throws -> [(name: String, batches: [TokenBatch])]
}

struct ByteData: TrainingData {
    let corpus: ByteCorpus
    var summary: String { "\(corpus.train.count) training bytes (byte-level tokens)" }
    var vocabularySize: Int { 256 }
    var tokenizerFile: String? { nil }

    func trainBatch(batch: Int, sequence: Int, rng: inout SeededGenerator) throws -> TokenBatch {
        ByteCorpus.batch(from: corpus.train, batch: batch, sequence: sequence, rng: &rng)
    }

    func validationSets(batch: Int, sequence: Int, maxBatches: Int) throws -> [(name: String, batches: [TokenBatch])] {
        var rng = SeededGenerator(seed: 99)  // the same windows every time, so curves compare
        return [("text", (0..<maxBatches).map { _ in ByteCorpus.batch(from: corpus.validation, batch: batch, sequence: sequence, rng: &rng) })]
    }
}

struct PreparedData: TrainingData {
    let dataset: TokenDataset
    /// The clusters training windows come from (nil: every cluster, weighted by size).
    var trainingClusters: [String]? = nil
    var summary: String {
        dataset.manifest.clusters.filter { trainingClusters?.contains($0.name) ?? true }
            .map { "\($0.name) \($0.trainTokens)" }.joined(separator: ", ") + " training tokens"
    }
    var vocabularySize: Int { dataset.vocabularySize }
    var tokenizerFile: String? { dataset.tokenizerPath }

    func trainBatch(batch: Int, sequence: Int, rng: inout SeededGenerator) throws -> TokenBatch {
        try dataset.batch(.train, clusters: trainingClusters, batch: batch, sequence: sequence, rng: &rng)
    }

    func validationSets(batch: Int, sequence: Int, maxBatches: Int) throws -> [(name: String, batches: [TokenBatch])] {
        try dataset.clusters.map { ($0, try dataset.validationBatches($0, batch: batch, sequence: sequence, maxBatches: maxBatches)) }
            .filter { !$0.1.isEmpty }
    }
}

/// Token-weighted mean loss of a model over batches.
func meanLoss(_ model: GPT2Model, _ batches: [TokenBatch]) throws -> Float {
    var total = 0.0, count = 0
    for b in batches {
        total += Double(try model.loss(b)) * Double(b.inputs.count)
        count += b.inputs.count
    }
    return count == 0 ? .nan : Float(total / Double(count))
}
