import ArgumentParser
import FedLMAggregation
import FedLMData
import FedLMFederation
import FedLMModel
import FedLMMonitoring
import FedLMTensor
import FedLMZeroMQ
import Foundation
import Logging
import ServiceLifecycle

/// Runs one service (and its monitoring server, if any) until SIGINT/SIGTERM, then shuts them
/// down gracefully. A service that ends by itself (a trainer that finished its token budget)
/// ends the process with status 0; one that fails, with status 1.
func runService(_ service: any Service, monitoring: MonitoringServer? = nil, label: String) async throws {
    let services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)]
        + (monitoring.map { [.init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup)] } ?? [])
    let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: label)))
    try await group.run()
}

struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "broker",
        abstract: "Run the broker: routes trainers to the aggregator and relays model releases (holds no model state).")
    @OptionGroup var logging: LoggingOptions
    @Option(help: "Take the endpoints from this topology.") var topology: String?
    @Option(help: "With --topology: the broker of this [[region]] (default: the top level's).") var region: String?
    @Option(help: "ROUTER for trainers and subscribers.") var trainers: String?
    @Option(help: "ROUTER for the aggregator.") var aggregator: String?
    @Option(help: "XSUB the aggregator publishes releases to.") var publish: String?
    @Option(help: "XPUB subscribers receive releases from.") var releases: String?

    func run() async throws {
        let t = try topology.map { try Topology.load(path: $0).level(region: region) }
        var e = t?.endpoints ?? BrokerEndpoints()
        if let trainers { e.trainers = trainers }
        if let aggregator { e.aggregator = aggregator }
        if let publish { e.publish = publish }
        if let releases { e.releases = releases }
        var security: BrokerSecurity?
        if let keys = t?.keysDirectory, let allowed = t?.allowedKeys {
            security = BrokerSecurity(keys: try CurveKeyPair.load(prefix: keys + "/broker"), allowed: try AllowList(path: allowed),
                                      membership: t?.membership ?? .closed)
        }
        var gate = t?.gate ?? BrokerGate.Limits()
        if let t {
            // Room for one whole update of the federation's model in flight per member.
            let modelBytes = try ConfigResolution.load(t.modelConfigPath).model.parameterCount * 4
            gate.bytesInFlight = max(gate.bytesInFlight, modelBytes + (4 << 20))
        }
        let broker = BrokerService(endpoints: e, security: security, gateLimits: gate)
        try await runService(broker, monitoring: try RoleMonitoring.broker(t, service: broker), label: "fedlm.broker")
    }
}

struct AggregatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "aggregator",
        abstract: "Run the aggregator: owns the global model, applies updates as they arrive, publishes releases; resumes its run directory.")
    @OptionGroup var logging: LoggingOptions
    @Option(help: "Topology file (run directory, model, data, aggregation, endpoints).") var topology: String
    @Option(help: "The aggregator of this [[region]]: it aggregates the region's trainers and reports to the level above as one trainer.")
    var region: String?
    @Option(help: "Compute threads (default: all cores).") var threads: Int?

    func run() async throws {
        if let threads { ComputeThreads.set(max(1, threads)) }
        Runtime.announce()
        let t = try Topology.load(path: topology).level(region: region)
        let file = try ConfigResolution.load(t.modelConfigPath)
        let logger = Logger(label: "fedlm.aggregator")
        let resuming = FileManager.default.fileExists(atPath: t.runDirectory + "/ledger.sqlite")
        let start = Date().timeIntervalSince1970
        let core = try AggregatorCore(runDirectory: t.runDirectory, config: t.aggregation,
                                      initialModel: try GPT2Model(config: file.model, seed: file.training.seed)) { logger.info("\($0)") }
        let monitoring = try RoleMonitoring.aggregator(t, core: core)
        if resuming { core.metrics.restored(seconds: Date().timeIntervalSince1970 - start) }
        core.tokenClaims = TokenClaimLimits(level: t, batchSize: file.training.batchSize,
                                            sequence: file.training.sequenceLength ?? file.model.context)
        core.releaseCompression = t.releaseCompression
        core.releaseSteps = t.releaseSteps
        let service = AggregatorService(core: core, endpoints: t.endpoints, logger: logger)
        service.curve = try t.keysDirectory.map { try CurveClient.load(directory: $0, name: "aggregator") }
        let data = PreparedData(dataset: try TokenDataset(directory: t.dataDirectory))
        let sets = try data.validationSets(batch: 8, sequence: file.training.sequenceLength ?? file.model.context, maxBatches: 2)
        let byName = Dictionary(uniqueKeysWithValues: sets.map { ($0.name, $0.batches) })
        service.validationClusters = sets.map(\.name)
        service.evaluate = { model, cluster in try meanLoss(model, byName[cluster] ?? []) }
        service.evaluateEvery = t.evaluateEvery
        if let up = t.upstream {
            let options = TrainerOptions(uplinkOf: t, upstream: up, training: file.training, modelConfig: file.model)
            // Secured: up there it is the member region-<name>, with its pair in that level's keys.
            let curve = try up.keysDirectory.map { try CurveClient.load(directory: $0, name: up.trainerID) }
            service.attachUplink(options: options, endpoints: up.endpoints, tokens: up.tokens, seconds: up.seconds, curve: curve)
        }
        try await runService(service, monitoring: monitoring, label: "fedlm.aggregator")
    }
}

struct TrainerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trainer",
        abstract: "Run a trainer: fetch the latest release, train H local steps on its own data, send the pseudo-gradient, repeat.")
    @OptionGroup var logging: LoggingOptions
    @Option(help: "Topology file; with --name, takes everything from the trainer's entry.") var topology: String?
    @Option(help: "The trainer's name in the topology, or its id.") var name: String?
    @Option(help: "Broker address for trainers (without --topology).") var broker: String?
    @Option(help: "Prepared data directory (without --topology).") var data: String?
    @Option(help: "Model and local training config (without --topology).") var config: String = "tiny"
    @Option(help: "Clusters of the data to train on, comma-separated (default: all).") var clusters: String?
    @Option(help: "With personalized heads: the cluster to train in, or 'auto' to choose by lowest loss (IFCA).") var cluster: String?
    @Option(help: "Seconds of local training per update; H adapts to the measured speed.") var timeBudget: Double?
    @Option(help: "H: local steps per update (upper bound with --time-budget).") var maxLocalSteps: Int = 20
    @Option(help: "Stop after this many tokens.") var tokens: Int?
    @Option(help: "Asynchronous modes: after a buffered update, wait up to this fraction of the last round's time for the next version (default 0: never wait).")
    var freshBaseWait: Double?
    @Option(help: "Directory for the trainer's pending update (resent after a restart).") var state: String?
    @Option(help: "Compute threads (default: all cores; `fedlm up` gives each process one).") var threads: Int?
    @Option(help: "CURVE key pair prefix (<prefix>.public, <prefix>.secret), without --topology.") var key: String?
    @Option(help: "The broker's public key file, with --key.") var brokerKey: String?
    @Option(help: "Train only the most of the model that fits this much memory (e.g. 300MiB, 1.5GiB): a partial trainer.") var memoryBudget: String?
    @Option(help: "Train only the tensors matching these comma-separated globs (e.g. 'transformer.h.5.*,transformer.ln_f.*').") var train: String?
    @Option(help: "Sequences per forward/backward pass; gradients are accumulated over the batch.") var microBatch: Int?
    @Option(help: "Seconds before an unacknowledged update is sent again (default: the topology's, else 30).") var ackTimeout: Double?
    @Option(help: "Fetch releases this many 1 MiB chunks at a time, 0 for whole releases (default: the topology's fetch_window, else 64).")
    var fetchWindow: Int?
    @Option(help: "Join with an invitation file (`fedlm invite`): broker, keys, model, tokenizer and recipe come from it.") var join: String?
    @Option(parsing: .upToNextOption, help: "With --join: the member's text (files or folders; .txt, .jsonl, .gz), tokenized with the federation's tokenizer.")
    var text: [String] = []

    func validate() throws {
        if join != nil {
            guard topology == nil, broker == nil, data == nil, key == nil else {
                throw ValidationError("--join takes the broker, data and keys from the invitation: leave out --topology, --broker, --data and --key")
            }
            guard !text.isEmpty else { throw ValidationError("--join needs --text PATH... (the member's own text)") }
        } else if !text.isEmpty {
            throw ValidationError("--text goes with --join")
        }
    }

    func run() async throws {
        if let threads { ComputeThreads.set(max(1, threads)) }
        Runtime.announce()
        var endpoints = BrokerEndpoints()
        var options: TrainerOptions
        var keysDirectory: String?
        var topologyEntry: Topology.Trainer?
        var invitedKeys: CurveClient?
        if let join {
            let member = try MemberSetup(invitation: try Invitation.read(path: join), directory: state, text: text)
            try member.prepare()
            (options, endpoints, invitedKeys) = try member.trainerOptions()
        } else if let topology {
            let top = try Topology.load(path: topology)
            guard let name, let t = top.level(ofTrainer: name), let entry = t.trainers.first(where: { $0.name == name }) else {
                throw ValidationError("--name must be one of: \(top.allTrainers.map(\.name).joined(separator: ", "))")
            }
            keysDirectory = t.keysDirectory
            topologyEntry = entry
            let file = try ConfigResolution.load(t.modelConfigPath)
            endpoints = t.endpoints
            if let address = entry.broker { endpoints.trainers = address }
            options = TrainerOptions(entry: entry, level: t, training: file.training, modelConfig: file.model, stateDirectory: state)
        } else {
            guard let broker, let data else { throw ValidationError("give --topology and --name, or --broker and --data") }
            let file = try ConfigResolution.load(config)
            endpoints.trainers = broker
            let id = name ?? "trainer-\(ProcessInfo.processInfo.hostName)-\(getpid())"
            options = TrainerOptions(id: id, dataDirectory: data, training: file.training, modelConfig: file.model,
                                     stateDirectory: state ?? "runs/trainers/" + id)
            options.dataClusters = clusters?.split(separator: ",").map(String.init)
            options.cluster = cluster == "auto" ? nil : cluster
            options.automaticCluster = cluster == "auto"
            options.maxLocalSteps = maxLocalSteps
            options.timeBudget = timeBudget
            options.tokenBudget = tokens
        }
        if let freshBaseWait {
            let range = TrainerOptions.freshBaseWaitRange
            guard range.contains(freshBaseWait) else {
                throw ValidationError("--fresh-base-wait must be between \(range.lowerBound) and \(range.upperBound)")
            }
            options.freshBaseWait = freshBaseWait
        }
        if let ackTimeout {
            guard ackTimeout > 0 else { throw ValidationError("--ack-timeout must be positive") }
            options.ackTimeout = ackTimeout
        }
        if let fetchWindow {
            guard fetchWindow >= 0 else { throw ValidationError("--fetch-window \(fetchWindow): a chunk count, or 0 for whole releases") }
            options.fetchWindow = fetchWindow == 0 ? nil : fetchWindow
        }
        try choosePart(&options, entry: topologyEntry)
        guard options.maxLocalSteps >= 1 else { throw ValidationError("--max-local-steps must be >= 1") }
        let service = TrainerService(options: options, endpoints: endpoints)
        if let invitedKeys {
            service.curve = invitedKeys
        } else if let keysDirectory {
            service.curve = try CurveClient.load(directory: keysDirectory, name: options.id)
        } else if let key {
            guard let brokerKey else { throw ValidationError("--key needs --broker-key (the broker's public key file)") }
            service.curve = try CurveClient.load(prefix: key, brokerKeyFile: brokerKey)
        }
        try await runService(service, label: "fedlm.trainer")
    }

    /// The part of the model this trainer trains: the command line's choice, else its topology
    /// entry's.
    private func choosePart(_ options: inout TrainerOptions, entry: Topology.Trainer?) throws {
        let patterns = train.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? entry?.train
        let budget = try memoryBudget.map { text in
            do { return try TrainingMemory.parseBytes(text) } catch { throw ValidationError("--memory-budget: \(error)") }
        } ?? (train == nil ? entry?.memoryBudget : nil)
        do {
            if let plan = try options.choosePart(patterns: patterns, memoryBudget: budget, microBatch: microBatch ?? entry?.microBatch) {
                FileHandle.standardError.write("[\(options.id)] memory budget \(TrainingMemory.mebibytes(budget!)): training \(plan)\n".data(using: .utf8)!)
            }
        } catch let e as SubsetError { throw ValidationError(e.description) }
    }
}

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "subscribe",
        abstract: "Receive model releases as they are published (a snapshot of the latest first), optionally saving each.")
    @OptionGroup var logging: LoggingOptions
    @Option(help: "Topology (for the endpoints and the model config).") var topology: String?
    @Option(help: "Broker address for trainers (snapshot requests), without --topology.") var broker: String?
    @Option(help: "Broker address for releases, without --topology.") var releases: String?
    @Option(help: "Model config, without --topology.") var config: String = "tiny"
    @Option(help: "Write each release to <out>/v<N> (a checkpoint transformers loads).") var out: String?
    @Option(help: "Follow this cluster's releases (its personalized model) instead of the global model's.") var cluster: String?
    @Option(help: "CURVE key pair prefix, when the broker requires keys (the subscriber's key must be in its allow-list).") var key: String?
    @Option(help: "The broker's public key file (default: <keys>/broker.public of the topology).") var brokerKey: String?
    @Option(help: "Stop after this many releases.") var count: Int?
    @Option(help: "Fetch the snapshot this many 1 MiB chunks at a time (default: the topology's fetch_window, else 64).") var fetchWindow: Int?

    func validate() throws {
        if let fetchWindow, fetchWindow < 1 { throw ValidationError("--fetch-window \(fetchWindow): a chunk count of at least 1") }
    }

    func run() async throws {
        var endpoints = BrokerEndpoints()
        var modelConfig = try ConfigResolution.load(config).model
        let t = try topology.map { try Topology.load(path: $0) }
        if let t {
            endpoints = t.endpoints
            modelConfig = try ConfigResolution.load(t.modelConfigPath).model
        }
        if let broker { endpoints.trainers = broker }
        if let releases { endpoints.releases = releases }
        let service = SubscriberService(endpoints: endpoints, modelConfig: modelConfig, outDirectory: out)
        service.cluster = cluster
        if let key {
            guard let brokerPublic = brokerKey ?? t?.keysDirectory.map({ $0 + "/broker.public" }) else {
                throw ValidationError("--key needs --broker-key or a topology with [security]")
            }
            service.curve = try CurveClient.load(prefix: key, brokerKeyFile: brokerPublic)
        }
        service.maxReleases = count
        service.fetchWindow = fetchWindow ?? t?.fetchWindow ?? TrainerOptions.defaultFetchWindow ?? 64
        service.onRelease = { print("release v\($0)") }
        try await runService(service, label: "fedlm.subscriber")
    }
}
