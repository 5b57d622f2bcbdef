import FedLMData
import FedLMFederation
import FedLMTokenizer
import Foundation

/// What `fedlm trainer --join` prepares from an invitation: a member directory with the
/// federation's model config and tokenizer, the member's text tokenized into shards with that
/// tokenizer (prepared again only when the text changes), and the trainer's options and keys.
///
///     <dir>/model.toml, tokenizer.json   from the invitation
///     <dir>/data/                        the member's shards (one cluster: its cluster's name, or "text")
///     <dir>/state/                       the trainer's pending update and stats
struct MemberSetup {
    let invitation: Invitation
    let directory: String
    let text: [String]

    init(invitation: Invitation, directory: String?, text: [String]) throws {
        self.invitation = invitation
        self.directory = directory ?? "runs/members/" + invitation.member
        self.text = text
    }

    var dataDirectory: String { directory + "/data" }
    var clusterName: String { invitation.cluster ?? "text" }

    /// Writes the config and tokenizer, and tokenizes the text unless it already was (same files).
    func prepare() throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try invitation.modelConfig.write(toFile: directory + "/model.toml", atomically: true, encoding: .utf8)
        try invitation.tokenizer.write(toFile: directory + "/tokenizer.json", atomically: true, encoding: .utf8)
        let files = try TextInputs.files(text)
        let sources = ([clusterName, invitation.tokenizerSHA256] + files).joined(separator: "\n")
        let sourcesFile = directory + "/data-sources.txt"
        if fm.fileExists(atPath: dataDirectory + "/manifest.json"), (try? String(contentsOfFile: sourcesFile, encoding: .utf8)) == sources {
            return
        }
        try? fm.removeItem(atPath: dataDirectory)
        let tokenizer = try TokenizerFile.load(path: directory + "/tokenizer.json")
        var preparer = DataPreparer(tokenizer: tokenizer, tokenizerPath: directory + "/tokenizer.json", directory: dataDirectory)
        let manifest = try preparer.run(clusters: [(clusterName, files)]) { print($0) }
        for c in manifest.clusters { print("\(invitation.member): \(c.trainTokens) training + \(c.validationTokens) validation tokens of \(c.name)") }
        try sources.write(toFile: sourcesFile, atomically: true, encoding: .utf8)
    }

    /// The trainer's options, the broker's endpoints and the member's keys.
    func trainerOptions() throws -> (TrainerOptions, BrokerEndpoints, CurveClient) {
        let file = try ConfigResolution.load(directory + "/model.toml")
        var options = TrainerOptions(id: invitation.member, dataDirectory: dataDirectory, training: file.training, modelConfig: file.model,
                                     stateDirectory: directory + "/state")
        options.cluster = invitation.cluster
        options.maxLocalSteps = invitation.localSteps
        options.tokenBudget = invitation.tokens
        var endpoints = BrokerEndpoints()
        endpoints.trainers = invitation.broker
        return (options, endpoints, CurveClient(brokerKey: invitation.brokerPublicKey, keys: try invitation.keys))
    }
}
