import FedLMAggregation
import FedLMFederation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation
import XCTest

/// Personalized heads per data cluster in the aggregator, on a real run directory: the trunk is
/// shared, each head moves only with its own cluster's updates, releases combine the two, bad
/// cluster names and stale heads are refused, and a restart restores every head exactly.
final class PersonalizedHeadsTests: XCTestCase {
    var dir = ""
    let modelConfig = GPT2Config(layers: 2, embedding: 8, heads: 2, context: 4, vocabulary: 11, tiedHead: false)
    var config: AggregationConfig {
        var c = AggregationConfig()
        c.mode = .fedbuff
        c.bufferSize = 1
        c.staleness = .constant
        c.serverOptimizer = .sgd(learningRate: 1)
        c.maxStaleness = 2
        c.checkpointEvery = 3
        c.durability = .process
        c.clusters = ClusterConfig(names: ["en", "code"])
        return c
    }

    override func setUp() { dir = NSTemporaryDirectory() + "fedlm-heads-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func core() throws -> AggregatorCore {
        try AggregatorCore(runDirectory: dir, config: config, initialModel: try GPT2Model(config: modelConfig, seed: 3))
    }

    func delta(_ n: Int, scale: Float) -> [Float] { (0..<n).map { Float(($0 * 7) % 11) * scale } }

    func update(_ id: String, _ core: AggregatorCore, cluster: String?, trainer: String = "t1", base: Int? = nil,
                baseHead: Int? = nil, values: [Float]) -> Message {
        .update(UpdateInfo(updateID: id, trainerID: trainer, baseVersion: base ?? core.version, cluster: cluster, baseHeadVersion: baseHead,
                           tokens: 64, localSteps: 2), TensorPayload(specs: core.specs, values: values))
    }

    func released(_ core: AggregatorCore, _ cluster: String?) -> (ReleaseInfo, [Float]) {
        guard case .release(let info, let p) = core.release(cluster: cluster) else { fatalError() }
        return (info, p.values)
    }

    func reply(_ d: [AggregatorCore.Action]) -> Message? {
        if case .reply(_, let m)? = d.first { return m }
        return nil
    }

    func testDefaultHeadIsTheLastBlockFinalNormAndUntiedLMHead() throws {
        let untied = try ParameterPartition(model: ParameterLayout(config: modelConfig), layers: 2)
        XCTAssertEqual(untied.head.names.filter { !$0.hasPrefix("transformer.h.1.") },
                       ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"])
        XCTAssertEqual(untied.head.names.filter { $0.hasPrefix("transformer.h.") }.count, 12, "every tensor of block 1")
        XCTAssertFalse(untied.isHead("transformer.h.0.attn.c_attn.weight"))
        // A tied head is the token embedding, which stays shared.
        var tiedConfig = modelConfig
        tiedConfig.tiedHead = true
        let tied = try ParameterPartition(model: ParameterLayout(config: tiedConfig), layers: 2)
        XCTAssertFalse(tied.head.names.contains("lm_head.weight"))
        XCTAssertFalse(tied.isHead("transformer.wte.weight"))
        // Explicit patterns must each match something.
        XCTAssertThrowsError(try ParameterPartition(model: ParameterLayout(config: modelConfig), layers: 2, patterns: ["lm_hed.*"])) {
            XCTAssertTrue("\($0)".contains("'lm_hed.*' matches no parameter"), "\($0)")
        }
        XCTAssertThrowsError(try ParameterPartition(model: ParameterLayout(config: modelConfig), layers: 2, patterns: ["*"])) {
            XCTAssertTrue("\($0)".contains("nothing is shared"), "\($0)")
        }
        let headOnly = try ParameterPartition(model: ParameterLayout(config: modelConfig), layers: 2, patterns: ["lm_head.*"])
        XCTAssertEqual(headOnly.head.names, ["lm_head.weight"])
    }

    func testTrunkIsSharedAndEachHeadMovesOnlyWithItsCluster() throws {
        var c = config
        c.clusters?.global = .aggregate
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        let layout = core.model.layout
        let partition = try ParameterPartition(model: layout, layers: 2)
        let initial = core.model.parameters.storage.array
        for (t, c) in [("t1", "en"), ("t2", "code")] { _ = try core.handle(.hello(Hello(trainerID: t, cluster: c)), from: t) }
        let d = delta(initial.count, scale: 0.01)
        let (_, beforeEN) = released(core, "en")
        XCTAssertEqual(beforeEN, initial, "a new cluster's head is the global head")
        XCTAssertEqual(reply(try core.handle(update("u1", core, cluster: "en", baseHead: 0, values: d), from: "t1")),
                       .ack(Ack(updateID: "u1", outcome: .applied, version: 1)))
        let (infoEN, en) = released(core, "en")
        let (infoCode, code) = released(core, "code")
        let (_, global) = released(core, nil)
        XCTAssertEqual(infoEN.headVersion, 1)
        XCTAssertEqual(infoCode.headVersion, 0)
        for i in 0..<initial.count {
            XCTAssertEqual(global[i], initial[i] - d[i], "with global = aggregate, the global model takes every update whole")
            if partition.modelRanges.contains(where: { $0.contains(i) }) {
                XCTAssertEqual(en[i], initial[i] - d[i], "en's head moved with en's update")
                XCTAssertEqual(code[i], initial[i], "code's head did not")
            } else {
                XCTAssertEqual(en[i], global[i], "trunk shared")
                XCTAssertEqual(code[i], global[i], "trunk shared")
            }
        }
        // Refusals: an unknown cluster (at HELLO, FETCH and UPDATE), an update without one, a too-stale head.
        guard case .error(let e)? = reply(try core.handle(.hello(Hello(trainerID: "t3", cluster: "klingon")), from: "t3")) else { return XCTFail() }
        XCTAssertEqual(e.code, .unknownCluster)
        XCTAssertTrue(e.detail.contains("no cluster named 'klingon' (there are: code, en)"), e.detail)
        guard case .error(let f)? = reply(try core.handle(.fetch(Fetch(cluster: "klingon")), from: "t1")) else { return XCTFail() }
        XCTAssertEqual(f.code, .unknownCluster)
        guard case .error(let g)? = reply(try core.handle(update("u2", core, cluster: nil, values: d), from: "t1")) else { return XCTFail() }
        XCTAssertEqual(g.code, .unknownCluster)
        for i in 0..<3 { _ = try core.handle(update("s\(i)", core, cluster: "en", baseHead: nil, values: d), from: "t1") }
        guard case .error(let h)? = reply(try core.handle(update("u3", core, cluster: "en", base: core.version, baseHead: 0, values: d), from: "t1")) else {
            return XCTFail()
        }
        XCTAssertEqual(h.code, .tooStale)
        XCTAssertTrue(h.detail.contains("cluster en's head staleness 4"), h.detail)
        XCTAssertEqual(try core.ledger.assignments().map(\.cluster), ["en", "code"])
    }

    func testWithShareEveryHeadTakesThatFractionOfTheOtherClustersUpdates() throws {
        var c = config
        c.clusters = ClusterConfig(names: ["en", "code", "de"], headPatterns: ["*"], share: 0.25)
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        let initial = core.model.parameters.storage.array
        for (t, cl) in [("t1", "en"), ("t2", "code")] { _ = try core.handle(.hello(Hello(trainerID: t, cluster: cl)), from: t) }
        let d = delta(initial.count, scale: 0.01), e = delta(initial.count, scale: -0.02)
        let keysBefore = ["en", "code", "de"].map { core.releaseKey(cluster: $0) }
        _ = try core.handle(update("u1", core, cluster: "en", baseHead: 0, values: d), from: "t1")
        _ = try core.handle(update("u2", core, cluster: "code", trainer: "t2", baseHead: 0, values: e), from: "t2")
        let en = released(core, "en"), code = released(core, "code"), de = released(core, "de")
        // Three clusters, weights 1 (own) and 0.25 (each other): own 1/1.5, each other 0.25/1.5.
        let own: Float = 1 / (1 + 2 * 0.25)
        for i in 0..<initial.count {
            // Sums in the order the aggregator applies them, so the comparison is exact.
            let dd = d[i] * own, ee = e[i] * own
            XCTAssertEqual(en.1[i], (initial[i] - dd) - 0.25 * ee, "en: two thirds of its own update, a sixth of code's")
            XCTAssertEqual(code.1[i], (initial[i] - 0.25 * dd) - ee, "code: a sixth of en's, two thirds of its own")
            XCTAssertEqual(de.1[i], (initial[i] - 0.25 * dd) - 0.25 * ee, "de, without trainers: a sixth of each")
        }
        XCTAssertEqual(own * (1 + 2 * 0.25), 1, accuracy: 1e-6, "a round of one update per cluster moves each head by a weighted mean")
        XCTAssertEqual([en.0.headVersion, code.0.headVersion, de.0.headVersion], [1, 1, 0], "a head's version counts its own cluster's updates")
        XCTAssertEqual(core.heads!.heads["de"]!.shared, 2)
        XCTAssertTrue(zip(keysBefore, ["en", "code", "de"].map { core.releaseKey(cluster: $0) }).allSatisfy { $0 != $1 },
                      "every release changed, so subscribers get the shared steps")
        // Shared steps are replayed after a restart like the updates they come from.
        let expected = ["en", "code", "de"].map { released(core, $0).1.map(\.bitPattern) }
        let reopened = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        XCTAssertEqual(["en", "code", "de"].map { released(reopened, $0).1.map(\.bitPattern) }, expected)
        XCTAssertEqual(reopened.heads!.heads["de"]!.shared, 2)
        // A head of every parameter needs share > 0: otherwise nothing would be shared at all.
        c.clusters = ClusterConfig(names: ["en"], headPatterns: ["*"], share: 0)
        defer { try? FileManager.default.removeItem(atPath: dir + "-2") }
        XCTAssertThrowsError(try AggregatorCore(runDirectory: dir + "-2", config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))) {
            XCTAssertTrue("\($0)".contains("nothing is shared"), "\($0)")
        }
    }

    /// With `global = consensus` (the default) the global model's head is the mean of the
    /// clusters' heads at each global version; under `share` with SGD at rate 1 an update Δ from
    /// any cluster moves that mean by exactly Δ / n. A cluster added later starts from it (the
    /// mean stays), and a restart replays it bit for bit.
    func testConsensusGlobalIsTheMeanOfTheClustersModels() throws {
        var c = config
        c.clusters = ClusterConfig(names: ["en", "code", "de"], headPatterns: ["*"], share: 0.25)
        XCTAssertEqual(c.clusters?.global, .consensus, "the default")
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        let initial = core.model.parameters.storage.array
        for (t, cl) in [("t1", "en"), ("t2", "code")] { _ = try core.handle(.hello(Hello(trainerID: t, cluster: cl)), from: t) }
        let d = delta(initial.count, scale: 0.01), e = delta(initial.count, scale: -0.02)
        _ = try core.handle(update("u1", core, cluster: "en", baseHead: 0, values: d), from: "t1")
        _ = try core.handle(update("u2", core, cluster: "code", trainer: "t2", baseHead: 0, values: e), from: "t2")
        let models = ["code", "de", "en"].map { released(core, $0).1 }
        let global = released(core, nil).1
        for i in 0..<initial.count {
            XCTAssertEqual(global[i], (models[0][i] + models[1][i] + models[2][i]) * (1 / Float(3)), "the mean of the three clusters' models")
            XCTAssertEqual(global[i], initial[i] - (d[i] + e[i]) / 3, accuracy: 1e-6, "each update moved the mean by a third of itself")
        }
        // A cluster created now starts from the consensus, which it leaves where it was.
        try core.addCluster("it", origin: "test")
        XCTAssertEqual(released(core, "it").1, global)
        _ = try core.handle(.hello(Hello(trainerID: "t3", cluster: "it")), from: "t3")
        _ = try core.handle(update("u3", core, cluster: "it", trainer: "t3", baseHead: 0, values: d), from: "t3")
        let after = released(core, nil).1
        for i in 0..<initial.count { XCTAssertEqual(after[i], global[i] - d[i] / 4, accuracy: 1e-6, "four clusters now: a quarter") }
        let expected = ["code", "de", "en", "it", ""].map { released(core, $0.isEmpty ? nil : $0).1.map(\.bitPattern) }
        let reopened = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        XCTAssertEqual(["code", "de", "en", "it", ""].map { released(reopened, $0.isEmpty ? nil : $0).1.map(\.bitPattern) }, expected,
                       "replayed bit for bit")
    }

    /// With `share_conflicts = "project"` a head takes in another cluster's update tensor by tensor
    /// without its component against the head's own direction (an EMA of its own updates):
    /// a conflicting tensor comes in without that component (here: nothing), an agreeing one whole,
    /// and the orthogonal part of a partly conflicting one is kept. Checked against the projection
    /// computed here in Double; the direction is restored after a restart, bit for bit.
    func testProjectedShareLeavesOutWhatConflictsWithTheHeadsOwnDirection() throws {
        var c = config
        c.clusters = ClusterConfig(names: ["en", "code"], headPatterns: ["*"], share: 0.5, shareConflicts: .project, directionDecay: 0.5)
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        let initial = core.model.parameters.storage.array
        for (t, cl) in [("t1", "en"), ("t2", "code")] { _ = try core.handle(.hello(Hello(trainerID: t, cluster: cl)), from: t) }
        let d = delta(initial.count, scale: 0.01)
        // Tensor k of code's update: against en's (k % 3 == 0), along it (1), against it plus an orthogonal part (2).
        var ranges: [Range<Int>] = [], start = 0
        for spec in core.specs { let n = spec.shape.reduce(1, *); ranges.append(start..<start + n); start += n }
        var e = [Float](repeating: 0, count: initial.count), orthogonal = e
        for (k, r) in ranges.enumerated() {
            switch k % 3 {
            case 0: for i in r { e[i] = -d[i] }
            case 1: for i in r { e[i] = d[i] }
            default:
                let v = r.map { Double(($0 * 5) % 13) - 6 }, dd = r.map { Double(d[$0]) }
                let k = zip(v, dd).map { $0 * $1 }.reduce(0, +) / dd.map { $0 * $0 }.reduce(0, +)
                for (j, i) in r.enumerated() { orthogonal[i] = Float(v[j] - k * dd[j]) * 0.01; e[i] = -d[i] + orthogonal[i] }
            }
        }
        _ = try core.handle(update("u1", core, cluster: "en", baseHead: 0, values: d), from: "t1")
        let codeAfterFirst = released(core, "code").1
        _ = try core.handle(update("u2", core, cluster: "code", trainer: "t2", baseHead: 0, values: e), from: "t2")
        let en = released(core, "en").1, code = released(core, "code").1
        let own: Float = 1 / 1.5
        for (k, r) in ranges.enumerated() {
            for i in r {
                // code's direction was still zero: it took all of en's update.
                XCTAssertEqual(codeAfterFirst[i], initial[i] - 0.5 * own * d[i], accuracy: 1e-6)
                XCTAssertEqual(code[i], codeAfterFirst[i] - own * e[i], accuracy: 1e-6, "its own update, whole")
                let taken: Float = [0, d[i], orthogonal[i]][k % 3]
                XCTAssertEqual(en[i], initial[i] - own * d[i] - 0.5 * own * taken, accuracy: 1e-6, "tensor \(k) (case \(k % 3))")
            }
        }
        // Two more updates cross the checkpoint (every 3 versions); a restart restores and replays the directions.
        _ = try core.handle(update("u3", core, cluster: "en", baseHead: 1, values: e), from: "t1")
        _ = try core.handle(update("u4", core, cluster: "code", trainer: "t2", baseHead: 1, values: d), from: "t2")
        let expected = ["en", "code"].map { released(core, $0).1.map(\.bitPattern) }
        let reopened = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 3))
        XCTAssertEqual(["en", "code"].map { released(reopened, $0).1.map(\.bitPattern) }, expected, "replayed bit for bit")
        XCTAssertEqual(reopened.heads!.heads["en"]!.direction!.direction.storage.array.map(\.bitPattern),
                       core.heads!.heads["en"]!.direction!.direction.storage.array.map(\.bitPattern))
    }

    func testRestartRestoresEveryHeadAndNewClustersStartFromTheGlobalHead() throws {
        var expected: [String: [Float]] = [:]
        do {
            let core = try core()
            for (t, c) in [("t1", "en"), ("t2", "code")] { _ = try core.handle(.hello(Hello(trainerID: t, cluster: c)), from: t) }
            let n = core.model.parameters.count
            for i in 0..<7 {  // checkpoints every 3 versions: the last updates are replayed
                let (t, c) = i % 3 == 2 ? ("t2", "code") : ("t1", "en")
                _ = try core.handle(update("u\(i)", core, cluster: c, trainer: t, baseHead: core.heads!.heads[c]!.version,
                                           values: delta(n, scale: 0.001 * Float(i + 1))), from: t)
            }
            try core.addCluster("de", origin: "test")
            for c in ["en", "code", "de", ""] { expected[c] = released(core, c.isEmpty ? nil : c).1 }
            let partition = try ParameterPartition(model: core.model.layout, layers: 2)
            let globalHead = ParameterVector(layout: partition.head), deHead = ParameterVector(layout: partition.head)
            partition.gatherHead(from: core.model.parameters.pointer, into: globalHead)
            partition.gatherHead(from: expected["de"]!, into: deHead)
            XCTAssertEqual(deHead.storage.array, globalHead.storage.array, "a new cluster starts from the global head")
        }
        let reopened = try core()
        XCTAssertEqual(reopened.heads?.names, ["code", "de", "en"])
        for c in ["en", "code", "de", ""] {
            XCTAssertEqual(released(reopened, c.isEmpty ? nil : c).1.map(\.bitPattern), expected[c]!.map(\.bitPattern), "cluster '\(c)'")
        }
        XCTAssertEqual(try reopened.ledger.clusters().sorted(), ["code", "de", "en"])
    }
}
