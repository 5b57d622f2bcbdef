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
                topology's [security] keys directory, and an allow-list naming them by role; with [[region]]s, the same
                for each region in <keys>/regions/<name>, and at the top a pair region-<name> for each region's
                aggregator. Revoke a key by deleting its line from the allow-list: the broker re-reads it on the next
                handshake.
                """)
        @Argument(help: "Names to generate pairs for (without --topology).") var names: [String] = []
        @Option(help: "Directory for the key files (without --topology).") var dir: String = "keys"
        @Option(help: "Generate everything a topology with [security] needs.") var topology: String?
        @Flag(help: "Replace existing key files.") var force = false

        func run() throws {
            if let topology {
                let t = try Topology.load(path: topology)
                guard t.keysDirectory != nil else { throw ValidationError("\(topology) has no [security] table with keys = \"DIR\"") }
                // Every level: the top, then each region in its own directory below.
                for level in [t] + t.regions { try generateLevel(level) }
                return
            }
            guard !names.isEmpty else { throw ValidationError("name the key pairs to generate, or give --topology") }
            _ = try generate(names, in: dir)
        }

        /// One level's pairs (broker, aggregator, a subscriber, its trainers, and at the top each
        /// region's member key `region-<name>`) and its allow-list naming them by role.
        private func generateLevel(_ t: Topology) throws {
            guard let directory = t.keysDirectory, let allowed = t.allowedKeys else { return }
            let members = t.trainers.map(\.name) + t.regions.compactMap(\.upstream?.trainerID)
            if let region = t.upstream?.region { print("region \(region): \(directory)") }
            let publicKeys = try generate(["broker", "aggregator", "subscriber"] + members, in: directory)
            func entries(_ names: [String]) -> [(String, String)] { names.map { ($0, publicKeys[$0]!) } }
            let text = AllowList.text(trainers: entries(members), subscribers: entries(["subscriber"]), aggregators: entries(["aggregator"]))
            try text.write(toFile: allowed, atomically: true, encoding: .utf8)
            print("allow-list: \(allowed) (each key bound to its name)")
        }

        /// Generates (or keeps) the pairs `names` in `directory`; returns their public keys.
        private func generate(_ names: [String], in directory: String) throws -> [String: String] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var publicKeys: [String: String] = [:]
            for name in names {
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
            return publicKeys
        }
    }
}
