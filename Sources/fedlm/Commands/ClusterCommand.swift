import ArgumentParser
import FedLMAggregation
import FedLMCheckpoint
import FedLMFederation
import FedLMLedger
import FedLMModel
import Foundation

/// Clusters of a federation with personalized heads: create one while it runs, list clusters and
/// who trains where, export a cluster's model as a standalone checkpoint.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster",
        abstract: "Personalized-head clusters: create, list (with the trainers' assignments), export.",
        subcommands: [Create.self, List.self, Export.self])

    struct Federation: ParsableArguments {
        @Option(help: "The federation's topology (its run directory holds the ledger).") var topology: String

        func ledger() throws -> (Topology, Ledger) {
            let t = try Topology.load(path: topology)
            guard t.aggregation.clusters != nil else { throw ValidationError("\(topology) has no [clusters] table: its federation has one global model") }
            let path = t.runDirectory + "/ledger.sqlite"
            guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("no ledger at \(path): has the aggregator run?") }
            return (t, try Ledger(path: path))
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a cluster; its head starts from the global model's (a running aggregator picks it up within a second).")
        @Argument(help: "The new cluster's name.") var name: String
        @OptionGroup var federation: Federation

        func run() throws {
            guard ClusterConfig.isValidName(name) else { throw ValidationError("cluster name '\(name)': use letters, digits, '-', '_' and '.' (at most 64)") }
            let (_, ledger) = try federation.ledger()
            if try ledger.clusters().contains(name) { throw ValidationError("cluster \(name) exists") }
            try ledger.addCluster(name, origin: "cli")
            print("cluster \(name) created")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Clusters, and which trainers train in each (and how they got there).")
        @OptionGroup var federation: Federation

        func run() throws {
            let (_, ledger) = try federation.ledger()
            var current: [String: (cluster: String, how: String, moves: Int)] = [:]
            for a in try ledger.assignments() {
                let moves = (current[a.trainer]?.moves ?? -1) + 1
                current[a.trainer] = (a.cluster, a.how, moves)
            }
            for c in try ledger.clusters() {
                let members = current.filter { $0.value.cluster == c }.keys.sorted()
                    .map { t in "\(t) (\(current[t]!.how)\(current[t]!.moves > 0 ? ", moved \(current[t]!.moves)x" : ""))" }
                print("\(c): \(members.isEmpty ? "no trainers" : members.joined(separator: ", "))")
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a cluster's model (global trunk + its head, from the newest checkpoint) as a checkpoint transformers loads.")
        @Argument(help: "The cluster.") var name: String
        @OptionGroup var federation: Federation
        @Option(help: "Output directory.") var out: String

        func run() throws {
            let (_, ledger) = try federation.ledger()
            let models = try ClusterModels(ledger: ledger)
            try Checkpoint.save(model: try models.model(of: name), to: out)
            print("cluster \(name) at version \(models.checkpoint.number): its head over the global trunk -> \(out)")
        }
    }
}
