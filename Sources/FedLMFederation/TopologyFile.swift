import FedLMAggregation
import FedLMModel
import FedLMProtocol
import Foundation
import TOMLKit

/// Reading a topology file: every table and key checked, each refusal naming the key (the
/// reference of the keys is `Topology`'s documentation).
extension Topology {
    public static func load(path: String) throws -> Topology {
        func bad(_ why: String) -> FederationError { .badTopology("\(path): \(why)") }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw bad("cannot read the file") }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch { throw bad("not valid TOML: \(error)") }
        let root = TOMLReader(table, fail: bad)
        try root.allowOnly(["name", "run_directory", "model", "data", "broker", "aggregation", "trainer", "clusters", "security", "supervision", "wire",
                            "region", "monitoring"])
        // Relative paths are relative to the working directory (the repository root in the README).
        var t = Topology(path: path, name: try root.string("name") ?? "federation",
                         runDirectory: try root.string("run_directory") ?? "runs/federation",
                         modelConfigPath: try root.string("model") ?? { throw bad("'model' (a config path) is required") }(),
                         dataDirectory: try root.string("data") ?? { throw bad("'data' (a prepared data directory) is required") }(),
                         endpoints: BrokerEndpoints(), aggregation: AggregationConfig(), evaluateEvery: 5, trainers: [])
        if let b = try root.table("broker") {
            try b.allowOnly(["trainers", "aggregator", "publish", "releases"])
            if let v = try b.string("trainers") { t.endpoints.trainers = v }
            if let v = try b.string("aggregator") { t.endpoints.aggregator = v }
            if let v = try b.string("publish") { t.endpoints.publish = v }
            if let v = try b.string("releases") { t.endpoints.releases = v }
        }
        if let a = try root.table("aggregation") {
            let parsed = try AggregationConfig.parse(a)
            t.aggregation = parsed.config
            if let every = parsed.evaluateEvery { t.evaluateEvery = every }
        }
        if let st = try root.table("security") { try parseSecurity(st, into: &t) }
        if let sv = try root.table("supervision") { try parseSupervision(sv, into: &t) }
        if let w = try root.table("wire") { try parseWire(w, into: &t) }
        if let ct = try root.table("clusters") { try parseClusters(ct, into: &t) }
        if let mt = try root.table("monitoring") { t.monitoring = try parseMonitoring(mt) }
        if t.releaseSteps != nil, t.aggregation.clusters != nil {
            throw bad("'wire.release_steps' is for the global model; a federation with [clusters] sends whole releases")
        }
        let regionTables = try root.tables("region", "a list of [[region]] tables") ?? []
        let list = try root.tables("trainer", "a list of [[trainer]] tables") ?? []
        guard !list.isEmpty || !regionTables.isEmpty else { throw bad("at least one [[trainer]] (or [[region]]) is required") }
        t.trainers = try list.map { try parseTrainer($0, clusterNames: t.aggregation.clusters?.names) }
        t.regions = try regionTables.map { try parseRegion($0, above: t) }
        try checkLevels(t, bad)
        let members = t.trainers.count + t.regions.count
        if t.aggregation.mode == .sync, t.aggregation.participants > members {
            throw bad("'aggregation.participants' (\(t.aggregation.participants)) exceeds the \(members) trainers and regions")
        }
        return t
    }

    /// One `[[region]]`: a topology of its own below `above`, whose aggregator reports upward.
    static func parseRegion(_ rt: TOMLReader, above: Topology) throws -> Topology {
        let p = rt.prefix
        try rt.allowOnly(["name", "run_directory", "cluster", "upstream_every", "upstream_tokens", "upstream_seconds", "ack_timeout", "upstream", "broker",
                          "aggregation", "clusters", "trainer", "monitoring"])
        guard let name = try rt.string("name"), ClusterConfig.isValidName(name) else {
            throw rt.fail("'\(p)name' is required: letters, digits, '-', '_' and '.' (at most 64)")
        }
        var r = above
        r.name = above.name + "/" + name
        r.runDirectory = try rt.string("run_directory") ?? above.runDirectory + "/regions/" + name
        r.regions = []
        r.monitoring = try rt.table("monitoring").map(parseMonitoring)
        r.upstream = try parseUpstream(rt, region: name, above: above)
        // With [security], every level is secured: a region's broker, aggregator and trainers have
        // their own pairs and allow-list in <keys>/regions/<name>; its aggregator is the member
        // `region-<name>` of the level above with a pair in that level's directory.
        r.keysDirectory = above.keysDirectory.map { Self.regionKeysDirectory($0, region: name) }
        r.allowedKeys = r.keysDirectory.map { $0 + "/allowed.toml" }
        r.endpoints = try parseRegionBroker(rt)
        r.aggregation.clusters = nil
        if let a = try rt.table("aggregation") {
            let parsed = try AggregationConfig.parse(a)
            r.aggregation = parsed.config
            if let every = parsed.evaluateEvery { r.evaluateEvery = every }
        }
        if let ct = try rt.table("clusters") { try parseClusters(ct, into: &r) }
        guard let list = try rt.tables("trainer", "a list of [[\(p)trainer]] tables"), !list.isEmpty else {
            throw rt.fail("'\(p)trainer': a region needs at least one [[region.trainer]]")
        }
        r.trainers = try list.map { try parseTrainer($0, clusterNames: r.aggregation.clusters?.names) }
        if r.aggregation.mode == .sync, r.aggregation.participants > r.trainers.count {
            throw rt.fail("'\(p)aggregation.participants' (\(r.aggregation.participants)) exceeds the region's \(r.trainers.count) trainers")
        }
        return r
    }

    /// A region's link to the level above: its cadence (versions, tokens or seconds), the
    /// acknowledgement timeout, the address above, and its cluster there.
    private static func parseUpstream(_ rt: TOMLReader, region name: String, above: Topology) throws -> Upstream {
        let p = rt.prefix
        let every = try rt.int("upstream_every") ?? 4
        guard every >= 1 else { throw rt.fail("'\(p)upstream_every' must be >= 1") }
        let seconds = try rt.double("upstream_seconds")
        if let seconds, seconds <= 0 { throw rt.fail("'\(p)upstream_seconds' must be > 0") }
        let tokens = try rt.int("upstream_tokens")
        if let tokens, tokens < 1 { throw rt.fail("'\(p)upstream_tokens' must be >= 1") }
        if tokens != nil, try rt.int("upstream_every") != nil {
            throw rt.fail("'\(p)upstream_tokens' and '\(p)upstream_every' exclude each other (one cadence)")
        }
        let ackTimeout = try rt.double("ack_timeout") ?? 30
        guard ackTimeout > 0 else { throw rt.fail("'\(p)ack_timeout' must be > 0") }
        var endpoints = above.endpoints
        if let address = try rt.string("upstream") { endpoints.trainers = address }
        return Upstream(region: name, endpoints: endpoints, cluster: try parseRegionCluster(rt, region: name, above: above),
                        everyVersions: every, tokens: tokens, seconds: seconds, ackTimeout: ackTimeout, keysDirectory: above.keysDirectory)
    }

    /// The cluster a region's model is above: `cluster`, by default the region's name, when the
    /// level above has [clusters]; none otherwise.
    private static func parseRegionCluster(_ rt: TOMLReader, region name: String, above: Topology) throws -> String? {
        let p = rt.prefix
        let cluster = try rt.string("cluster")
        guard let names = above.aggregation.clusters?.names else {
            if cluster != nil { throw rt.fail("'\(p)cluster' needs a [clusters] table above") }
            return nil
        }
        let chosen = cluster ?? name
        guard names.contains(chosen) else {
            throw rt.fail("'\(p)cluster' is '\(chosen)', not one of the clusters above (\(names.joined(separator: ", "))); a region's personalized model up there is one of them")
        }
        return chosen
    }

    /// A region's own broker endpoints (`[region.broker]`, every one required).
    private static func parseRegionBroker(_ rt: TOMLReader) throws -> BrokerEndpoints {
        let p = rt.prefix
        guard let b = try rt.table("broker") else { throw rt.fail("'\(p)broker' is required: the region's own broker endpoints") }
        try b.allowOnly(["trainers", "aggregator", "publish", "releases"])
        func endpoint(_ key: String) throws -> String {
            guard let v = try b.string(key) else { throw b.fail("'\(p)broker.\(key)' is required") }
            return v
        }
        var e = BrokerEndpoints()
        e.trainers = try endpoint("trainers")
        e.aggregator = try endpoint("aggregator")
        e.publish = try endpoint("publish")
        e.releases = try endpoint("releases")
        return e
    }

    /// What must hold across the levels: unique names and endpoints, and what regions do not
    /// support yet.
    static func checkLevels(_ t: Topology, _ bad: (String) -> FederationError) throws {
        let names = t.allTrainers.map(\.name)
        if let twice = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw bad("trainer name '\(twice)' is used twice (names are unique across every level)")
        }
        let regionNames = t.regions.compactMap(\.upstream?.region)
        guard Set(regionNames).count == regionNames.count else { throw bad("region names must be unique") }
        if let clash = names.first(where: { n in t.regions.contains { $0.upstream?.trainerID == n } }) {
            throw bad("trainer name '\(clash)' is a region's id above; rename it")
        }
        let served = ([t] + t.regions).flatMap { [$0.monitoring?.aggregator, $0.monitoring?.broker].compactMap { $0 } }
        if let twice = Dictionary(grouping: served.map { "\($0.port)" }, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw bad("monitoring port \(twice) is used twice: every aggregator and broker serves on its own port")
        }
        guard !t.regions.isEmpty else { return }
        let endpoints = ([t] + t.regions).flatMap { [$0.endpoints.trainers, $0.endpoints.aggregator, $0.endpoints.publish, $0.endpoints.releases] }
        if let twice = Dictionary(grouping: endpoints, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw bad("endpoint \(twice) is used twice: every level has its own broker")
        }
        if t.releaseSteps != nil { throw bad("'wire.release_steps' does not work with [[region]] (regions adopt whole releases)") }
    }

    /// `[wire]`: encodings of updates and releases, overlap.
    static func parseWire(_ w: TOMLReader, into t: inout Topology) throws {
        try w.allowOnly(["updates", "releases", "density", "bits", "overlap", "release_steps", "step_density", "step_bits", "overlap_own",
                        "fetch_window"])
        func encoding(_ key: String, allowed: [TensorEncoding]) throws -> TensorEncoding {
            guard let name = try w.string(key) else { return .f32 }
            guard let e = TensorEncoding(configName: name), allowed.contains(e) else {
                throw w.fail("'wire.\(key)' is '\(name)', not one of \(allowed.map(\.configName).joined(separator: ", "))")
            }
            return e
        }
        t.updateCompression = Compression(try encoding("updates", allowed: TensorEncoding.allCases),
                                          density: try w.double("density") ?? 0.01, bits: try w.int("bits") ?? 2)
        if let problem = t.updateCompression.problem { throw w.fail("[wire]: \(problem)") }
        t.releaseCompression = Compression(try encoding("releases", allowed: [.f32, .f16, .bf16, .int8]))
        t.overlap = try w.bool("overlap") ?? false
        if let own = try w.double("overlap_own") {
            guard (0...1).contains(own) else { throw w.fail("'wire.overlap_own' is \(own), not between 0 and 1") }
            t.overlapOwnWeight = own
        }
        if let window = try w.int("fetch_window") {
            guard window >= 0 else { throw w.fail("'wire.fetch_window' is \(window), not a chunk count (0: whole releases)") }
            t.fetchWindow = window == 0 ? nil : window
        }
        if w.has("release_steps") {
            let steps = Compression(try encoding("release_steps", allowed: [.f16, .bf16, .int8, .topk]),
                                    density: try w.double("step_density") ?? 0.05, bits: try w.int("step_bits") ?? 4)
            if let problem = steps.problem { throw w.fail("[wire] release steps: \(problem)") }
            guard t.releaseCompression.encoding == .f32 else {
                throw w.fail("'wire.release_steps' needs whole releases in F32 (trainers must hold the published model exactly); remove 'wire.releases'")
            }
            t.releaseSteps = steps
        } else if w.has("step_density") || w.has("step_bits") {
            throw w.fail("'wire.step_density' and 'wire.step_bits' need 'wire.release_steps'")
        }
    }

    /// `[monitoring]`: the aggregator's and the broker's HTTP addresses and the clients allowed.
    /// A server reachable from other machines needs `allow` to say which.
    static func parseMonitoring(_ mt: TOMLReader) throws -> MonitoringConfig {
        let p = mt.prefix
        try mt.allowOnly(["aggregator", "broker", "allow"])
        var m = MonitoringConfig()
        func address(_ key: String) throws -> HTTPAddress? {
            try mt.string(key).map { text in
                switch HTTPAddress.parse(text) {
                case .success(let a): return a
                case .failure(let e): throw mt.fail("'\(p)\(key)': \(e)")
                }
            }
        }
        m.aggregator = try address("aggregator")
        m.broker = try address("broker")
        guard m.aggregator != nil || m.broker != nil else { throw mt.fail("'\(p)aggregator' or '\(p)broker' (an address to serve on) is required") }
        if let list = try mt.strings("allow", "a list of IP addresses or CIDR ranges") {
            m.allow = try list.map { text in
                switch AddressRange.parse(text) {
                case .success(let r): return r
                case .failure(let e): throw mt.fail("'\(p)allow': \(e)")
                }
            }
        } else if let open = [m.aggregator, m.broker].compactMap({ $0 }).first(where: { !$0.isLoopback }) {
            throw mt.fail("\(open) is reachable from other machines: list the clients that may read it in '\(p)allow' (only loopback may by default)")
        }
        return m
    }

    /// `[security]`: keys, allow-list, membership, suspension.
    static func parseSecurity(_ st: TOMLReader, into t: inout Topology) throws {
        try st.allowOnly(["keys", "allowed", "membership", "suspend_after", "suspension"])
        guard let keys = try st.string("keys") else { throw st.fail("'security.keys' (the directory of key pairs) is required") }
        t.keysDirectory = keys
        t.allowedKeys = try st.string("allowed") ?? keys + "/allowed.toml"
        if let m = try st.string("membership") {
            guard let membership = BrokerSecurity.Membership(rawValue: m) else { throw st.fail("'security.membership' is '\(m)', not closed or open") }
            t.membership = membership
        }
        if let n = try st.int("suspend_after") {
            guard n >= 0 else { throw st.fail("'security.suspend_after' must be >= 0 (0: never suspend)") }
            t.gate.suspendAfter = n == 0 ? .max : n
            if n == 0 { t.gate.suspendAfterStrays = .max }
        }
        if let d = try st.double("suspension") {
            guard d > 0 else { throw st.fail("'security.suspension' must be > 0 (seconds)") }
            t.gate.suspension = d
        }
    }

    /// `[supervision]`: what `fedlm up` does when a process dies, and the trainers' silence warning.
    static func parseSupervision(_ sv: TOMLReader, into t: inout Topology) throws {
        try sv.allowOnly(["on_failure", "max_restarts", "trainer_silence", "restart_delay", "max_restart_delay", "restart_window"])
        if let d = try sv.double("restart_delay") {
            guard d >= 0 else { throw sv.fail("'supervision.restart_delay' must be >= 0 (seconds)") }
            t.supervision.restartDelay = d
        }
        if let d = try sv.double("max_restart_delay") {
            guard d >= t.supervision.restartDelay else { throw sv.fail("'supervision.max_restart_delay' must be >= restart_delay") }
            t.supervision.maxRestartDelay = d
        }
        if let w = try sv.double("restart_window") {
            guard w > 0 else { throw sv.fail("'supervision.restart_window' must be > 0 (seconds)") }
            t.supervision.restartWindow = w
        }
        if let f = try sv.string("on_failure") {
            guard let onFailure = SupervisionPolicy.OnFailure(rawValue: f) else { throw sv.fail("'supervision.on_failure' is '\(f)', not restart or stop") }
            t.supervision.onFailure = onFailure
        }
        if let n = try sv.int("max_restarts") {
            guard n >= 0 else { throw sv.fail("'supervision.max_restarts' must be >= 0") }
            t.supervision.maxRestarts = n
        }
        if let s = try sv.double("trainer_silence") {
            guard s > 0 else { throw sv.fail("'supervision.trainer_silence' must be > 0 (seconds)") }
            t.supervision.trainerSilence = s
        }
    }

    /// `[clusters]`: personalized heads per data cluster (after `[aggregation]`: the heads' optimizer defaults to its).
    static func parseClusters(_ ct: TOMLReader, into t: inout Topology) throws {
        try ct.allowOnly(["names", "head", "reassign_every", "initial_noise", "share", "server_optimizer", "server_learning_rate",
                       "server_momentum", "adam_beta1", "adam_beta2", "delayed_period", "global", "share_conflicts",
                       "direction_decay"])
        guard let names = try ct.strings("names", "a non-empty list of names", nonEmpty: true) else {
            throw ct.fail("'clusters.names' must be a non-empty list of names")
        }
        for n in names where !ClusterConfig.isValidName(n) {
            throw ct.fail("cluster name '\(n)': use letters, digits, '-', '_' and '.' (at most 64)")
        }
        guard Set(names).count == names.count else { throw ct.fail("'clusters.names' has a name twice") }
        let head = try ct.strings("head", "a non-empty list of name patterns", nonEmpty: true)
        let noise = try ct.double("initial_noise") ?? 0
        guard noise >= 0 else { throw ct.fail("'clusters.initial_noise' must be >= 0") }
        let share = try ct.double("share") ?? 0
        guard share >= 0, share <= 1 else { throw ct.fail("'clusters.share' must be between 0 and 1") }
        let globalName = try ct.string("global") ?? ClusterConfig.GlobalHead.consensus.rawValue
        guard let global = ClusterConfig.GlobalHead(rawValue: globalName) else {
            throw ct.fail("'clusters.global' is '\(globalName)', not one of \(ClusterConfig.GlobalHead.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let conflictsName = try ct.string("share_conflicts") ?? ClusterConfig.ShareConflicts.keep.rawValue
        guard let conflicts = ClusterConfig.ShareConflicts(rawValue: conflictsName) else {
            throw ct.fail("'clusters.share_conflicts' is '\(conflictsName)', not one of \(ClusterConfig.ShareConflicts.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard conflicts == .keep || share > 0 else { throw ct.fail("'clusters.share_conflicts' = \"project\" needs 'clusters.share' > 0") }
        let decay = try ct.double("direction_decay") ?? 0.9
        guard decay >= 0, decay < 1 else { throw ct.fail("'clusters.direction_decay' must be in [0, 1)") }
        t.aggregation.clusters = ClusterConfig(names: names, headPatterns: head, initialNoise: noise, share: share,
                                               serverOptimizer: try ServerOptimizerKind.parse(ct, default: t.aggregation.serverOptimizer),
                                               global: global, shareConflicts: conflicts, directionDecay: decay)
        if let r = try ct.int("reassign_every") {
            guard r >= 1 else { throw ct.fail("'clusters.reassign_every' must be >= 1") }
            t.reassignEvery = r
        }
    }

    /// One `[[trainer]]`; with clusters its `cluster` must name one of `clusterNames` (or "auto").
    static func parseTrainer(_ tt: TOMLReader, clusterNames: [String]?) throws -> Trainer {
        let p = tt.prefix
        try tt.allowOnly(["name", "clusters", "local_steps", "time_budget", "tokens", "slowdown", "ack_timeout", "cluster", "attack",
                       "attack_scale", "fresh_base_wait", "train", "memory_budget", "micro_batch", "broker", "join_at_tokens", "claim_tokens"])
        var attack: TrainerAttack?
        if let kind = try tt.string("attack") {
            let scale = try tt.double("attack_scale") ?? 10
            guard scale > 0 else { throw tt.fail("'\(p)attack_scale' must be > 0") }
            switch kind {
            case "sign_flip": attack = .signFlip(scale: scale)
            case "noise": attack = .noise(scale: scale)
            case "nan": attack = .nan
            case let other: throw tt.fail("'\(p)attack' is '\(other)', not sign_flip, noise or nan")
            }
        }
        guard let name = try tt.string("name"), !name.isEmpty, !name.contains("/") else {
            throw tt.fail("'\(p)name' is required (non-empty, no '/')")
        }
        let clusters = try tt.strings("clusters", "a list of names")
        let steps = try tt.int("local_steps") ?? 20
        guard steps >= 1 else { throw tt.fail("'\(p)local_steps' must be >= 1") }
        let slowdown = try tt.double("slowdown") ?? 1
        guard slowdown >= 1 else { throw tt.fail("'\(p)slowdown' must be >= 1") }
        let freshBaseWait = try tt.double("fresh_base_wait") ?? 0
        let range = TrainerOptions.freshBaseWaitRange
        guard range.contains(freshBaseWait) else { throw tt.fail("'\(p)fresh_base_wait' must be between \(range.lowerBound) and \(range.upperBound)") }
        let joinAt = try tt.int("join_at_tokens")
        if let joinAt, joinAt < 1 { throw tt.fail("'\(p)join_at_tokens' must be >= 1 (tokens the federation accepted before it joins)") }
        let cluster = try tt.string("cluster")
        if let names = clusterNames {
            guard let cluster else { throw tt.fail("'\(p)cluster' is required with [clusters]: one of \(names.joined(separator: ", ")), or \"auto\"") }
            guard cluster == "auto" || names.contains(cluster) || (joinAt != nil && ClusterConfig.isValidName(cluster)) else {
                throw tt.fail("'\(p)cluster' is '\(cluster)', not one of \(names.joined(separator: ", ")) or \"auto\" (a trainer with join_at_tokens may name a new one)")
            }
        } else if cluster != nil {
            throw tt.fail("'\(p)cluster' needs a [clusters] table")
        }
        let train = try tt.strings("train", "a list of tensor patterns")
        let budget = try tt.string("memory_budget").map { text in
            do { return try TrainingMemory.parseBytes(text) } catch { throw tt.fail("'\(p)memory_budget': \(error)") }
        }
        guard train == nil || budget == nil else { throw tt.fail("'\(p)train' and '\(p)memory_budget' exclude each other") }
        let micro = try tt.int("micro_batch")
        if let micro, micro < 1 { throw tt.fail("'\(p)micro_batch' must be >= 1") }
        let claim = try tt.int("claim_tokens")
        if let claim, claim < 0 { throw tt.fail("'\(p)claim_tokens' must be >= 0") }
        var trainer = Trainer(name: name, clusters: clusters, localSteps: steps, timeBudget: try tt.double("time_budget"),
                                  tokens: try tt.int("tokens"), slowdown: slowdown, freshBaseWait: freshBaseWait,
                                  ackTimeout: try tt.double("ack_timeout") ?? 30, cluster: cluster == "auto" ? nil : cluster,
                                  attack: attack, train: train, memoryBudget: budget, microBatch: micro, broker: try tt.string("broker"),
                                  joinAtTokens: joinAt)
        trainer.claimTokens = claim
        return trainer
    }
}
