import ArgumentParser
import FedLMFederation
import FedLMZeroMQ
import Foundation

/// `fedlm invite`: one file that lets a new member join with one command.
struct InviteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "invite",
        abstract: "Write an invitation file for a new member (its key pair added to the allow-list), or revoke one.",
        discussion: """
            The file holds the broker's address and public key, the member's key pair, the model config, the tokenizer
            and the recipe; the member joins with `fedlm trainer --join FILE --text PATH...`. The broker picks the new key
            up within a second, without a restart. --revoke NAME deletes the member's keys from the allow-list.
            """)
    @Option(help: "The federation's topology (with [security]).") var topology: String
    @Option(help: "With --topology: a region's level instead of the top.") var region: String?
    @Option(help: "The new member's name (its trainer id).") var name: String?
    @Option(help: "With personalized clusters: the cluster it trains in.") var cluster: String?
    @Option(help: "Its token budget.") var tokens: Int?
    @Option(help: "H: local steps per update (default: the level's largest local_steps, else 20).") var localSteps: Int?
    @Option(help: "The broker's address as the member reaches it (default: the topology's trainers endpoint).") var broker: String?
    @Option(help: "Days the invitation is valid.") var validDays: Double = 7
    @Option(help: "Where to write the invitation (readable by its owner only: it holds a secret key).") var out: String?
    @Option(help: "Revoke the member of this name instead: its keys leave the allow-list.") var revoke: String?

    func validate() throws {
        if revoke != nil {
            guard name == nil, out == nil else { throw ValidationError("--revoke takes no --name or --out") }
            return
        }
        guard let name, !name.isEmpty, !name.contains("/") else { throw ValidationError("--name is required (non-empty, without '/')") }
        guard out != nil else { throw ValidationError("--out FILE is required") }
        guard validDays > 0 else { throw ValidationError("--valid-days must be > 0") }
        if let tokens, tokens < 1 { throw ValidationError("--tokens must be >= 1") }
        if let localSteps, localSteps < 1 { throw ValidationError("--local-steps must be >= 1") }
    }

    func run() throws {
        let t = try Topology.load(path: topology).level(region: region)
        guard let keys = t.keysDirectory, let allowed = t.allowedKeys else {
            throw ValidationError("\(topology): invitations need [security] (the member joins with a key of its own)")
        }
        if let revoke {
            let removed = try AllowList.revoke(revoke, inFile: allowed)
            print("revoked \(revoke): \(removed.count) key\(removed.count == 1 ? "" : "s") removed from \(allowed)")
            return
        }
        let invitation = try make(t, keysDirectory: keys)
        // The file first, under a temporary name; then the allow-list; then the file in place.
        let staged = out! + ".staged"
        try invitation.write(to: staged)
        do { try AllowList.addTrainer(invitation.member, key: invitation.publicKey, toFile: allowed) } catch {
            try? FileManager.default.removeItem(atPath: staged)
            throw error
        }
        guard rename(staged, out!) == 0 else { throw ValidationError("cannot write \(out!): \(String(cString: strerror(errno)))") }
        try (invitation.publicKey + "\n").write(toFile: keys + "/" + invitation.member + ".public", atomically: true, encoding: .utf8)
        let until = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(invitation.expires)))
        print("invitation for \(invitation.member): \(out!) (valid until \(until)); its key is in \(allowed)")
        print("the member joins with: fedlm trainer --join \(out!) --text PATH...")
    }

    private func make(_ t: Topology, keysDirectory keys: String) throws -> Invitation {
        let name = name!
        guard !t.trainers.contains(where: { $0.name == name }) else {
            throw ValidationError("\(name) is a trainer of the topology already; choose another name")
        }
        if let names = t.aggregation.clusters?.names {
            guard let cluster, names.contains(cluster) else {
                throw ValidationError("--cluster is required with this federation's clusters: one of \(names.joined(separator: ", "))")
            }
        } else if cluster != nil {
            throw ValidationError("--cluster: this federation has no [clusters]")
        }
        let levelSteps = t.trainers.map(\.localSteps).max() ?? 20
        if let localSteps, localSteps > levelSteps {
            throw ValidationError("--local-steps \(localSteps) exceeds the level's largest local_steps (\(levelSteps)): the aggregator credits a member it does not know at most that many steps' tokens")
        }
        let configPath = ConfigResolution.resolve(t.modelConfigPath)
        let tokenizerPath = t.dataDirectory + "/tokenizer.json"
        guard let modelConfig = try? String(contentsOfFile: configPath, encoding: .utf8) else {
            throw ValidationError("cannot read the model config \(configPath)")
        }
        _ = try ConfigResolution.load(configPath)
        guard let tokenizer = try? String(contentsOfFile: tokenizerPath, encoding: .utf8) else {
            throw ValidationError("cannot read the federation's tokenizer \(tokenizerPath) (prepare its data first)")
        }
        let now = Int(Date().timeIntervalSince1970)
        return Invitation(federation: t.name, member: name, cluster: cluster, tokens: tokens,
                          localSteps: localSteps ?? levelSteps,
                          broker: BrokerEndpoints.connectable(broker ?? t.endpoints.trainers),
                          brokerPublicKey: try CurveKeyPair.readKey(keys + "/broker.public"), keys: try CurveKeyPair.generate(),
                          modelConfig: modelConfig, tokenizer: tokenizer, issued: now, expires: now + Int(validDays * 86_400))
    }
}
