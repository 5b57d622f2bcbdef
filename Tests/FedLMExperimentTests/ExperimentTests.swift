import FedLMExperiment
import FedLMLedger
import Foundation
import XCTest

/// The experiment harness's parts: strict specs, learning curves read back from a real ledger
/// and a training CSV, time-to-target, and the SVG plots.
final class ExperimentTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "fedlm-exp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ text: String) throws -> String {
        let path = dir + "/spec-\(UInt32.random(in: 0...UInt32.max)).toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    let good = """
        name = "t"
        model = "Config/demo.toml"
        data = "d"
        tokens = 1000
        reference = "sync"
        [[variant]]
        name = "centralized"
        centralized = true
        [[variant]]
        name = "sync"
        topology = "Topologies/demo.toml"
        [variant.aggregation]
        mode = "sync"
        participants = 4
        """

    func testSpecsAreCheckedKeyByKey() throws {
        let spec = try ExperimentSpec.load(path: try write(good))
        XCTAssertEqual(spec.variants.map(\.name), ["centralized", "sync"])
        XCTAssertEqual(spec.runDirectory, "runs/experiments/t")
        XCTAssertTrue(spec.variants[1].aggregationOverrides?.contains("participants = 4") ?? false, spec.variants[1].aggregationOverrides ?? "")
        let local = try ExperimentSpec.load(path: try write(good + "\n[[variant]]\nname = \"alone\"\nlocal = true\ntopology = \"Topologies/demo.toml\"\n"))
        XCTAssertEqual(local.variants.map(\.local), [false, false, true])
        let tuned = try ExperimentSpec.load(path: try write(good.replacingOccurrences(of: "[variant.aggregation]", with: "local_steps = 5\n[variant.clusters]\nshare = 0.25\n[variant.aggregation]")))
        XCTAssertEqual(tuned.variants[1].localSteps, 5)
        XCTAssertTrue(tuned.variants[1].clusterOverrides?.contains("share = 0.25") ?? false, tuned.variants[1].clusterOverrides ?? "")
        // Another seed or corpus: the run directory says which, and the spec's own stays as it is.
        let other = spec.overriding(seed: 4321, data: "runs/confirm-data/shards")
        XCTAssertEqual(other.seed, 4321)
        XCTAssertEqual(other.data, "runs/confirm-data/shards")
        XCTAssertEqual(other.runDirectory, "runs/experiments/t-seed4321-confirm-data")
        XCTAssertEqual(spec.overriding(seed: spec.seed, data: "/data/mine").runDirectory, "runs/experiments/t-mine")
        XCTAssertEqual(spec.overriding(seed: nil, data: nil).runDirectory, spec.runDirectory)
        for (bad, why) in [
            (good.replacingOccurrences(of: "tokens = 1000", with: "tokns = 1000"), "unknown key 'tokns'"),
            (good.replacingOccurrences(of: "reference = \"sync\"", with: "reference = \"fast\""), "'reference' names no variant: fast"),
            (good.replacingOccurrences(of: "centralized = true", with: "centralized = true\ntopology = \"x\""), "either centralized = true or a topology"),
            (good.replacingOccurrences(of: "name = \"sync\"", with: "name = \"centralized\""), "variant names must be unique"),
            (good.replacingOccurrences(of: "centralized = true", with: "centralized = true\nlocal = true"), "'variant[1].local': needs the topology"),
            (good.replacingOccurrences(of: "name = \"sync\"", with: "name = \"sync\"\nlocal = true"), "'variant[2].aggregation': only a federated variant"),
            (good.replacingOccurrences(of: "name = \"sync\"", with: "name = \"sync\"\nlocal_steps = 0"), "'variant[2].local_steps' must be >= 1"),
            (good.replacingOccurrences(of: "centralized = true", with: "centralized = true\n[variant.clusters]\nshare = 1"), "'variant[1].clusters': only a federated variant"),
            (good.replacingOccurrences(of: "centralized = true", with: "centralized = \"yes\""), "'variant[1].centralized' must be true or false"),
        ] {
            XCTAssertThrowsError(try ExperimentSpec.load(path: try write(bad))) { XCTAssertTrue("\($0)".contains(why), "\($0)") }
        }
    }

    func testCurvesComeFromTheLedgerWithTokensAndTime() throws {
        let ledger = try Ledger(path: dir + "/ledger.sqlite", durable: false)
        let start = 1000.0
        for (i, t) in [1001.0, 1002.0, 1003.0, 1004.0].enumerated() {
            try ledger.recordUpdate(.init(id: "u\(i)", trainer: "t", cluster: nil, baseVersion: i, staleness: 0, weight: 1, norm: 1, tokens: 100,
                                          outcome: .applied, versionAfter: i + 1, deltaPath: nil, reason: nil, receivedAt: t))
        }
        for (v, time, en, de) in [(2, 1002.5, 6.0, 7.0), (4, 1004.5, 4.0, 5.0)] {
            try ledger.recordMetric("validation_loss/en", en, version: v, at: time)
            try ledger.recordMetric("validation_loss/de", de, version: v, at: time)
            try ledger.recordMetric("personalized_loss/en", en - 1, version: v, at: time)
        }
        let global = try LearningCurve.fromLedger(dir + "/ledger.sqlite", start: start, personalized: false)
        XCTAssertEqual(global.points.map(\.tokens), [200, 400])
        XCTAssertEqual(global.points.map(\.seconds), [2.5, 4.5])
        XCTAssertEqual(global.points.map(\.mean), [6.5, 4.5])
        let personal = try LearningCurve.fromLedger(dir + "/ledger.sqlite", start: start, personalized: true)
        XCTAssertEqual(personal.points.map(\.mean), [6.0, 4.0], "en's personalized loss replaces the global one")
        // Time to reach a loss: interpolated between evaluations; never reached: nil.
        XCTAssertEqual(try XCTUnwrap(global.secondsToReach(5.5)), 3.5, accuracy: 1e-9)
        XCTAssertNil(global.secondsToReach(4.0))
    }

    func testTrainingCSVAndPlots() throws {
        let csv = dir + "/validation.csv"
        try "step,tokens,seconds,en,de,mean\n0,0,1.0,8.0,8.2,8.1\n10,4096,5.0,6.0,6.2,6.1\n".write(toFile: csv, atomically: true, encoding: .utf8)
        let curve = try LearningCurve.fromTrainingCSV(csv, offset: 2)
        XCTAssertEqual(curve.points.map(\.tokens), [0, 4096])
        XCTAssertEqual(curve.points.map(\.seconds), [3.0, 7.0])
        XCTAssertEqual(curve.points[1].mean, 6.1, accuracy: 1e-9)
        let svg = SVGPlot(title: "en <loss>", xLabel: "tokens", yLabel: "loss",
                          series: [.init(name: "a", points: [(0, 8), (4096, 6)]), .init(name: "b", points: [(0, 8.5), (4096, 7)])]).render()
        XCTAssertTrue(svg.hasPrefix("<svg"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 2)
        XCTAssertTrue(svg.contains("en &lt;loss>"), "titles are escaped")
    }

    func testWorthJoiningComparesEachOrganisationWithTrainingAlone() {
        let w = WorthJoining(organisations: [.init(name: "en", clusters: ["en"]), .init(name: "es-it", clusters: ["es", "it"])],
                             alone: ["en": 5.0, "es-it": 4.0],
                             federated: [(variant: "heads", losses: ["en": 4.5, "es-it": 4.2]), (variant: "shared", losses: ["en": 4.9, "es-it": 3.9])],
                             pooled: ["en": 4.8, "es-it": 4.4])
        let heads = w.ratios(w.federated[0].losses)
        XCTAssertEqual(heads["en"]!, exp(0.5), accuracy: 1e-12, "perplexity alone / federated = exp(L_alone - L_federated)")
        XCTAssertEqual(heads["es-it"]!, exp(-0.2), accuracy: 1e-12)
        XCTAssertEqual(w.geometricMean(w.federated[0].losses)!, exp(0.15), accuracy: 1e-12)
        XCTAssertEqual(w.betterOffAlone(w.federated[0].losses), ["es-it"])
        XCTAssertEqual(w.betterOffAlone(w.federated[1].losses), [])
        let md = w.markdown()
        XCTAssertTrue(md.contains("| es-it | es+it | 4.000 | 4.200 | 0.82x | 3.900 | 1.11x | 4.400 |"), md)
        XCTAssertTrue(md.contains("- heads: better off alone: es-it."), md)
        XCTAssertTrue(md.contains("- shared: every organisation does better than alone (geometric mean 1.11x)."), md)
    }

    func testTokenSharesFollowSpeedInWholeBatches() {
        let shares = TokenShares.split(1_000_000, among: [("fast", 1), ("slow", 4), ("same", 1)], batchTokens: 2048)
        XCTAssertEqual(shares["fast"], shares["same"])
        XCTAssertEqual(shares.values.map { $0 % 2048 }, [0, 0, 0], "whole batches")
        XCTAssertEqual(Double(shares["fast"]!) / Double(shares["slow"]!), 4, accuracy: 0.05, "in proportion to speed")
        XCTAssertLessThanOrEqual(shares.values.reduce(0, +), 1_000_000)
        XCTAssertGreaterThan(shares.values.reduce(0, +), 1_000_000 - 3 * 2048)
    }
}
