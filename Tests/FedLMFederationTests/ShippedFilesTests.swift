import FedLMExperiment
import FedLMFederation
import FedLMModel
import Foundation
import XCTest

/// Every topology and config shipped in the repository loads, and the topologies' model
/// configs and trainer names are consistent.
final class ShippedFilesTests: XCTestCase {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func files(_ folder: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(folder).path)
            .filter { $0.hasSuffix(".toml") }.sorted().map { root.appendingPathComponent(folder).appendingPathComponent($0).path }
    }

    func testEveryShippedConfigAndTopologyLoads() throws {
        let configs = try files("Config") + files("Config/experiments")
        XCTAssertGreaterThanOrEqual(configs.count, 10)
        for c in configs { XCTAssertNoThrow(try ConfigFile.load(path: c), c) }
        // Deployments, and the standalone topologies of past experiments (run with `fedlm up`, budgets in them).
        let topologies = try files("Topologies") + files("Topologies/experiments/standalone")
        XCTAssertFalse(topologies.isEmpty)
        for t in topologies {
            let topology = try Topology.load(path: t)
            XCTAssertNoThrow(try ConfigFile.load(path: root.appendingPathComponent(topology.modelConfigPath).path), t)
            XCTAssertFalse(topology.allTrainers.isEmpty, t)
        }
        // Experiments: the specs load, and so do the topologies their variants use.
        var specs = 0
        for path in try files("Topologies/experiments") {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            if text.contains("[[variant]]") {
                let spec = try ExperimentSpec.load(path: path)
                XCTAssertNoThrow(try ConfigFile.load(path: root.appendingPathComponent(spec.model).path), path)
                for v in spec.variants {
                    if let t = v.topology { XCTAssertNoThrow(try Topology.load(path: root.appendingPathComponent(t).path), "\(path): \(t)") }
                }
                specs += 1
            } else {
                XCTAssertFalse(try Topology.load(path: path).trainers.isEmpty, path)
                XCTAssertFalse(text.split(separator: "\n").contains { $0.hasPrefix("tokens =") }, "\(path): the experiment's budget stops its runs")
            }
        }
        XCTAssertGreaterThanOrEqual(specs, 3)
    }

    func testClustersMayHaveTheirOwnServerOptimizer() throws {
        let path = NSTemporaryDirectory() + "heads-optimizer-\(getpid()).toml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let text = "model = \"m.toml\"\ndata = \"d\"\n[aggregation]\nserver_optimizer = \"nesterov\"\nserver_learning_rate = 0.5\n"
            + "[clusters]\nnames = [\"en\"]\nshare = 0.25\n%@[[trainer]]\nname = \"a\"\ncluster = \"en\"\n"
        try String(format: text, "server_optimizer = \"sgd\"\nserver_learning_rate = 1.0\n").write(toFile: path, atomically: true, encoding: .utf8)
        let own = try Topology.load(path: path).aggregation
        XCTAssertEqual(own.serverOptimizer, .nesterov(learningRate: 0.5, momentum: 0.9))
        XCTAssertEqual(own.clusters?.serverOptimizer, .sgd(learningRate: 1.0))
        XCTAssertEqual(own.clusters?.share, 0.25)
        try String(format: text, "").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertNil(try Topology.load(path: path).aggregation.clusters?.serverOptimizer, "heads use the aggregation's optimizer")
    }

    func testBadTopologiesAreRefusedNamingTheKey() throws {
        let path = NSTemporaryDirectory() + "bad-topology-\(getpid()).toml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func error(_ text: String) -> String {
            try? text.write(toFile: path, atomically: true, encoding: .utf8)
            do { _ = try Topology.load(path: path); return "no error" } catch { return "\(error)" }
        }
        let base = "model = \"m.toml\"\ndata = \"d\"\n"
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"fedavg\"\n[[trainer]]\nname = \"a\"").contains("aggregation.mode"))
        XCTAssertTrue(error(base + "[aggregation]\nbufer_size = 2\n[[trainer]]\nname = \"a\"").contains("aggregation.bufer_size"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\nslowdown = 0.5").contains("trainer[1].slowdown"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\n[[trainer]]\nname = \"a\"").contains("unique"))
        XCTAssertTrue(error(base).contains("[[trainer]]"))
        XCTAssertTrue(error("data = \"d\"\n[[trainer]]\nname = \"a\"").contains("'model'"))
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"sync\"\nparticipants = 3\n[[trainer]]\nname = \"a\"").contains("participants"))
        // Robust aggregation and attacks are checked by name too.
        XCTAssertTrue(error(base + "[aggregation]\ncombination = \"mode\"\n[[trainer]]\nname = \"a\"").contains("not mean, median or trimmed_mean"))
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"fedasync\"\ncombination = \"median\"\n[[trainer]]\nname = \"a\"").contains("applies to mode = \"fedbuff\" or \"sync\""))
        XCTAssertTrue(error(base + "[aggregation]\ncombination = \"trimmed_mean\"\ntrim_fraction = 0.5\n[[trainer]]\nname = \"a\"").contains("trim_fraction"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\nattack = \"ddos\"").contains("not sign_flip, noise or nan"))
        XCTAssertTrue(error(base + "[aggregation]\ncombination = \"median\"\ndp_clip = 1.0\n[[trainer]]\nname = \"a\"").contains("combination = \"mean\""))
        XCTAssertTrue(error(base + "[aggregation]\ndp_noise_multiplier = 1.0\n[[trainer]]\nname = \"a\"").contains("needs 'dp_clip'"))
        XCTAssertTrue(error(base + "[aggregation]\nmax_update_norm = 2.0\nnorm_policy = \"drop\"\n[[trainer]]\nname = \"a\"").contains("not clip or refuse"))
        XCTAssertTrue(error(base + "[aggregation]\nnorm_policy = \"refuse\"\n[[trainer]]\nname = \"a\"").contains("needs 'max_update_norm'"))
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"fedasync\"\nmax_update_norm = 2.0\n[[trainer]]\nname = \"a\"").contains("norm_policy = \"refuse\""))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\nfresh_base_wait = -1").contains("trainer[1].fresh_base_wait"))
        XCTAssertTrue(error(base + "[aggregation]\nkeep_checkpoints = 1\n[[trainer]]\nname = \"a\"").contains("keep_checkpoints' must be >= 2"))
        // [wire]: encodings, their settings and combinations, by name.
        let trainer = "\n[[trainer]]\nname = \"a\""
        XCTAssertTrue(error(base + "[wire]\nupdates = \"int4\"" + trainer).contains("'wire.updates' is 'int4', not one of f32, f16, bf16, int8, topk"))
        XCTAssertTrue(error(base + "[wire]\nreleases = \"topk\"" + trainer).contains("'wire.releases' is 'topk', not one of f32, f16, bf16, int8"))
        XCTAssertTrue(error(base + "[wire]\nupdates = \"topk\"\ndensity = 0.9" + trainer).contains("density 0.9 is not in (0, 0.5]"))
        XCTAssertTrue(error(base + "[wire]\nupdates = \"topk\"\nbits = 1" + trainer).contains("bits 1 is not between 2 and 8"))
        XCTAssertTrue(error(base + "[wire]\noverlap_own = 2" + trainer).contains("'wire.overlap_own' is 2.0, not between 0 and 1"))
        XCTAssertTrue(error(base + "[wire]\nstep_density = 0.1" + trainer).contains("need 'wire.release_steps'"))
        XCTAssertTrue(error(base + "[wire]\nrelease_steps = \"topk\"\nreleases = \"bf16\"" + trainer).contains("whole releases in F32"))
        XCTAssertTrue(error(base + "[wire]\nrelease_steps = \"topk\"\n[clusters]\nnames = [\"en\"]\n[[trainer]]\nname = \"a\"\ncluster = \"en\"")
                        .contains("a federation with [clusters] sends whole releases"))
        XCTAssertTrue(error(base + "[wire]\ncompression = \"zstd\"" + trainer).contains("unknown key 'wire.compression'"))
        // Clusters: names checked, every trainer's cluster declared and known (or "auto").
        let clusters = base + "[clusters]\nnames = [\"en\", \"de\"]\n"
        XCTAssertTrue(error(clusters + "[[trainer]]\nname = \"a\"\ncluster = \"fr\"").contains("'trainer[1].cluster' is 'fr', not one of en, de"))
        XCTAssertTrue(error(clusters + "[[trainer]]\nname = \"a\"").contains("'trainer[1].cluster' is required"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("needs a [clusters] table"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"a/b\"]\n[[trainer]]\nname = \"a\"\ncluster = \"auto\"").contains("cluster name 'a/b'"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nhead = \"lm_head.*\"\n[[trainer]]\nname = \"a\"\ncluster = \"auto\"").contains("clusters.head"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nserver_optimizer = \"lion\"\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.server_optimizer' is 'lion'"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nserver_learning_rate = 0\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.server_learning_rate' must be > 0"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nshare = 1.5\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.share' must be between 0 and 1"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nshare = \"half\"\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.share' must be a number"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nglobal = \"average\"\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.global' is 'average', not one of consensus, aggregate"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nshare = 0.2\nshare_conflicts = \"drop\"\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.share_conflicts' is 'drop', not one of keep, project"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nshare_conflicts = \"project\"\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("needs 'clusters.share' > 0"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\nshare = 0.2\nshare_conflicts = \"project\"\ndirection_decay = 1\n[[trainer]]\nname = \"a\"\ncluster = \"en\"").contains("'clusters.direction_decay' must be in [0, 1)"))
        // A trainer joining later may name a cluster that does not exist yet; nobody else may.
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\n[[trainer]]\nname = \"a\"\ncluster = \"it\"").contains("'trainer[1].cluster' is 'it'"))
        XCTAssertTrue(error(base + "[clusters]\nnames = [\"en\"]\n[[trainer]]\nname = \"a\"\ncluster = \"it\"\njoin_at_tokens = 100").contains("no error"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\njoin_at_tokens = 0").contains("'trainer[1].join_at_tokens' must be >= 1"))
        // The direction-aware staleness correction.
        XCTAssertTrue(error(base + "[aggregation]\nstaleness_correction = \"heloco\"\n[[trainer]]\nname = \"a\"").contains("'aggregation.staleness_correction' is 'heloco', not none or direction"))
        XCTAssertTrue(error(base + "[aggregation]\nstaleness_correction = \"direction\"\ndirection_decay = 1\n[[trainer]]\nname = \"a\"").contains("'aggregation.direction_decay' must be in [0, 1)"))
        XCTAssertTrue(error(base + "[aggregation]\ndirection_decay = 0.5\n[[trainer]]\nname = \"a\"").contains("needs staleness_correction"))
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"sync\"\nstaleness_correction = \"direction\"\n[[trainer]]\nname = \"a\"").contains("applies to mode = \"fedbuff\""))
        XCTAssertTrue(error(base + "[aggregation]\nfair_share_window = 0\n[[trainer]]\nname = \"a\"").contains("'aggregation.fair_share_window' must be >= 1"))
        XCTAssertTrue(error(base + "[aggregation]\ntrust = \"cosine\"\n[[trainer]]\nname = \"a\"").contains("'aggregation.trust' is 'cosine', not none or direction"))
        XCTAssertTrue(error(base + "[aggregation]\nmode = \"fedasync\"\ntrust = \"direction\"\n[[trainer]]\nname = \"a\"").contains("applies to mode = \"fedbuff\" or \"sync\" with combination = \"mean\""))
        XCTAssertTrue(error(base + "[aggregation]\ntrust_decay = 0.5\n[[trainer]]\nname = \"a\"").contains("'aggregation.trust_decay' needs trust = \"direction\""))
        XCTAssertTrue(error(base + "[aggregation]\ntrust = \"direction\"\ntrust_decay = 1\n[[trainer]]\nname = \"a\"").contains("'aggregation.trust_decay' must be in [0, 1)"))
        XCTAssertTrue(error(base + "[[trainer]]\nname = \"a\"\nclaim_tokens = -1").contains("'trainer[1].claim_tokens' must be >= 0"))
        XCTAssertTrue(error(base + "[aggregation]\nstaleness_scope = \"block\"\n[[trainer]]\nname = \"a\"").contains("'aggregation.staleness_scope' is 'block', not tensor or model"))
        XCTAssertTrue(error(base + "[aggregation]\npartial_weight = 0\n[[trainer]]\nname = \"a\"").contains("'aggregation.partial_weight' is 0.0, not in (0, 1]"))
        XCTAssertTrue(error(base + "[wire]\nfetch_window = -1\n[[trainer]]\nname = \"a\"").contains("'wire.fetch_window' is -1"))
        XCTAssertTrue(error(base + "[[region]]\nname = \"r\"\nupstream_every = 2\nupstream_tokens = 100\n[region.broker]\ntrainers = \"tcp://127.0.0.1:1\"").contains("exclude each other"))
    }

    func testMonitoringTablesAreCheckedNamingTheKey() throws {
        let path = NSTemporaryDirectory() + "monitoring-topology-\(getpid()).toml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func load(_ monitoring: String) -> Result<Topology, Error> {
            try? ("model = \"m.toml\"\ndata = \"d\"\n[[trainer]]\nname = \"a\"\n" + monitoring).write(toFile: path, atomically: true, encoding: .utf8)
            return Result { try Topology.load(path: path) }
        }
        func error(_ monitoring: String) -> String {
            if case .failure(let e) = load(monitoring) { return "\(e)" }
            return "no error"
        }
        XCTAssertNil(try load("").get().monitoring, "off by default")
        let m = try load("[monitoring]\naggregator = \"127.0.0.1:9464\"\nbroker = \"[::1]:9465\"").get().monitoring
        XCTAssertEqual(m?.aggregator, HTTPAddress(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(m?.broker?.url, "http://[::1]:9465")
        XCTAssertEqual(m?.allows("127.0.0.1"), true)
        XCTAssertEqual(m?.allows("::1"), true)
        XCTAssertEqual(m?.allows("10.0.0.5"), false, "loopback only by default")
        XCTAssertTrue(error("[monitoring]\naggregator = \"0.0.0.0:9464\"").contains("'monitoring.allow'"), "an open address needs an allow list")
        let open = try load("[monitoring]\naggregator = \"0.0.0.0:9464\"\nallow = [\"10.1.0.0/16\", \"192.168.1.7\"]").get().monitoring
        XCTAssertEqual(open?.allows("10.1.200.3"), true)
        XCTAssertEqual(open?.allows("::ffff:10.1.0.9"), true, "an IPv4 client on an IPv6 socket")
        XCTAssertEqual(open?.allows("10.2.0.1"), false)
        XCTAssertEqual(open?.allows("192.168.1.8"), false)
        XCTAssertTrue(error("[monitoring]\naggregator = \"localhost:9464\"").contains("'monitoring.aggregator'"))
        XCTAssertTrue(error("[monitoring]\naggregator = \"127.0.0.1\"").contains("has no port"))
        XCTAssertTrue(error("[monitoring]\nbroker = \"127.0.0.1:70000\"").contains("not 0-65535"))
        XCTAssertTrue(error("[monitoring]\nallow = [\"10.0.0.0/8\"]").contains("'monitoring.aggregator' or 'monitoring.broker'"))
        XCTAssertTrue(error("[monitoring]\naggregator = \"127.0.0.1:9464\"\nallow = [\"10.0.0.0/33\"]").contains("'monitoring.allow'"))
        XCTAssertTrue(error("[monitoring]\naggregator = \"127.0.0.1:9464\"\nbroker = \"127.0.0.1:9464\"").contains("port 9464 is used twice"))
        XCTAssertTrue(error("[monitoring]\ndashboard = \"127.0.0.1:9464\"").contains("unknown key 'monitoring.dashboard'"))
        // A region serves on addresses of its own.
        func region(_ port: Int) -> String {
            "[monitoring]\naggregator = \"127.0.0.1:9464\"\n[[region]]\nname = \"north\"\n[region.broker]\ntrainers = \"tcp://127.0.0.1:6001\"\n"
                + "aggregator = \"tcp://127.0.0.1:6002\"\npublish = \"tcp://127.0.0.1:6003\"\nreleases = \"tcp://127.0.0.1:6004\"\n"
                + "[region.monitoring]\naggregator = \"127.0.0.1:\(port)\"\n[[region.trainer]]\nname = \"b\"\n"
        }
        let regional = try load(region(9474)).get()
        XCTAssertEqual(try regional.level(region: "north").monitoring?.aggregator?.port, 9474)
        XCTAssertEqual(regional.monitoring?.aggregator?.port, 9464)
        XCTAssertTrue(error(region(9464)).contains("port 9464 is used twice"))
    }
}
