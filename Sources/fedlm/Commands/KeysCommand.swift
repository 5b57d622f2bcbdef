import ArgumentParser
import FedLMFederation
import FedLMZeroMQ
import Foundation

/// CURVE key pairs for a federation, and the broker's allow-list.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keys", abstract: "CURVE key pairs and the broker's allow-list.",
                                                    subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate key pairs (<dir>/<name>.public, <name>.secret readable by the owner only).",
            discussion: """
                With --topology: pairs for broker, aggregator, every trainer of the topology and one subscriber, in the
                topology's [security] keys directory, and an allow-list naming them by role. Revoke a key by deleting its
                line from the allow-list: the broker re-reads it on the next handshake.
                """)
        @Argument(help: "Names to generate pairs for (without --topology).") var names: [String] = []
        @Option(help: "Directory for the key files (without --topology).") var dir: String = "keys"
        @Option(help: "Generate everything a topology with [security] needs.") var topology: String?
        @Flag(help: "Replace existing key files.") var force = false

        func run() throws {
            var directory = dir
            var roles: [String: [String]]?
            var wanted = names
            if let topology {
                let t = try Topology.load(path: topology)
                guard let keys = t.keysDirectory else { throw ValidationError("\(topology) has no [security] table with keys = \"DIR\"") }
                directory = keys
                roles = ["trainers": t.trainers.map(\.name), "subscribers": ["subscriber"], "aggregators": ["aggregator"]]
                wanted = ["broker", "aggregator", "subscriber"] + t.trainers.map(\.name)
            }
            guard !wanted.isEmpty else { throw ValidationError("name the key pairs to generate, or give --topology") }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var publicKeys: [String: String] = [:]
            for name in wanted {
                guard !name.isEmpty, !name.contains("/") else { throw ValidationError("key name '\(name)' must be non-empty without '/'") }
                let prefix = directory + "/" + name
                if !force, FileManager.default.fileExists(atPath: prefix + ".secret") {
                    publicKeys[name] = try CurveKeyPair.load(prefix: prefix).publicKey
                    print("\(prefix): kept (exists; --force replaces it)")
                    continue
                }
                let pair = try CurveKeyPair.generate()
                try pair.save(prefix: prefix)
                publicKeys[name] = pair.publicKey
                print("\(prefix).public  \(pair.publicKey)")
            }
            if let roles, let t = topology.map({ try? Topology.load(path: $0) }), let allowed = t?.allowedKeys {
                func entries(_ role: String) -> [(String, String)] { roles[role]!.map { ($0, publicKeys[$0]!) } }
                let text = AllowList.text(trainers: entries("trainers"), subscribers: entries("subscribers"), aggregators: entries("aggregators"))
                try text.write(toFile: allowed, atomically: true, encoding: .utf8)
                print("allow-list: \(allowed) (each key bound to its name)")
            }
        }
    }
}
