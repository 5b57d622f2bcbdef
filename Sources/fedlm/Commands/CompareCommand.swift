import ArgumentParser
import FedLMData
import FedLMExperiment
import FedLMFederation
import FedLMLedger
import Foundation

/// Would each organisation of a finished federation have done better alone? Trains each
/// trainer's model alone (its own clusters, its own token budget, the same model and local
/// settings) and one model on all the text pooled (the sum of the budgets), then prints, per
/// organisation, its held-out loss alone, with the federation's model that serves it (its
/// cluster's release, or the global model) and pooled, with the perplexity ratio alone / federated.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "compare",
        abstract: "Compare each organisation of a federation that ran with training alone and with all data pooled.")

    @Argument(help: "The topology that ran (its trainers' token budgets and its run directory's newest checkpoint are used).") var topology: String
    @Option(help: "Where the runs alone and pooled go (default: <run_directory>/compare).") var out: String?
    @Flag(help: "Leave out the pooled run.") var noPooled = false

    func run() throws {
        Runtime.announce()
        let t = try Topology.load(path: topology)
        var budgets: [String: Int] = [:]
        for trainer in t.trainers {
            guard let tokens = trainer.tokens else {
                throw RunFailure("\(topology): trainer '\(trainer.name)' has no 'tokens': compare trains it alone on its own budget")
            }
            budgets[trainer.name] = tokens
        }
        let ledgerPath = t.runDirectory + "/ledger.sqlite"
        guard FileManager.default.fileExists(atPath: ledgerPath) else {
            throw RunFailure("\(ledgerPath) does not exist: run the federation first (fedlm up \(topology))")
        }
        let dir = out ?? t.runDirectory + "/compare"
        let dataset = try TokenDataset(directory: t.dataDirectory)
        let validation = try OrganisationRuns.validation(dataset, modelPath: t.modelConfigPath)
        let ledger = try Ledger(path: ledgerPath)
        let models = try ClusterModels(ledger: ledger)
        let federated = try OrganisationRuns.federatedLosses(t, models: models, clusters: try OrganisationRuns.finalClusters(ledger),
                                                             global: try models.global(), validation: validation)
        var alone: [String: Double] = [:]
        for trainer in t.trainers {
            print("==> \(trainer.name) alone: \(budgets[trainer.name]!) tokens on \((trainer.clusters ?? dataset.clusters).joined(separator: ", "))")
            let model = try OrganisationRuns.train(modelPath: t.modelConfigPath, data: t.dataDirectory, clusters: trainer.clusters,
                                                   tokens: budgets[trainer.name]!, out: dir + "/alone-" + trainer.name)
            alone[trainer.name] = try OrganisationRuns.loss(model, clusters: trainer.clusters, validation: validation)
        }
        var pooled: [String: Double]?
        if !noPooled {
            let total = budgets.values.reduce(0, +)
            print("==> everything pooled: \(total) tokens")
            let model = try OrganisationRuns.train(modelPath: t.modelConfigPath, data: t.dataDirectory, clusters: nil, tokens: total, out: dir + "/pooled")
            pooled = try Dictionary(uniqueKeysWithValues: t.trainers.map { ($0.name, try OrganisationRuns.loss(model, clusters: $0.clusters, validation: validation)) })
        }
        let worth = WorthJoining(organisations: t.trainers.map { .init(name: $0.name, clusters: $0.clusters ?? dataset.clusters) },
                                 alone: alone, federated: [(variant: "federated", losses: federated)], pooled: pooled)
        let table = worth.markdown()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try table.write(toFile: dir + "/compare.md", atomically: true, encoding: .utf8)
        print("\nHeld-out loss on each organisation's own data (4 x 8 windows per cluster):\n")
        print(table)
    }
}
