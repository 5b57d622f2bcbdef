import FedLMAggregation
import FedLMFederation
import FedLMTools
import FedLMModel
import Foundation
import XCTest

/// Many simulated trainers through a real broker and aggregator on TCP loopback for a few
/// seconds: every update is acknowledged and every acknowledged update is in the ledger.
/// (Throughput, latency percentiles and memory over time: `fedlm bench load`.)
final class LoadTests: XCTestCase {
    func testNoUpdateIsLostUnderManyConcurrentTrainers() throws {
        let dir = NSTemporaryDirectory() + "fedlm-load-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let aggregation = LoadGenerator.aggregation(durability: .process, checkpointEvery: 20)
        let endpoints = BrokerEndpoints.loopback()
        let core = try AggregatorCore(runDirectory: dir, config: aggregation,
                                      initialModel: try GPT2Model(config: GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 16), seed: 1))
        let services: [BlockingService] = [BrokerService(endpoints: endpoints), AggregatorService(core: core, endpoints: endpoints)]
        let threads = services.map { s in Thread { try? s.runBlocking() } }
        threads.forEach { $0.start() }
        let report = try LoadGenerator(endpoints: endpoints, trainers: 60, specs: core.specs, seconds: 3).run()
        services.forEach { $0.stop() }
        XCTAssertTrue(Thread.join(threads, timeout: 60), "the services stopped")
        XCTAssertGreaterThan(report.sent, 100)
        XCTAssertEqual(report.acknowledged, report.sent, "every update acknowledged")
        XCTAssertEqual(report.unacknowledged, 0)
        let recorded = Set(try core.ledger.database.query("SELECT id FROM updates WHERE outcome != 'refused'").compactMap { $0[0].string })
        XCTAssertEqual(report.acknowledgedIDs.subtracting(recorded), [], "every acknowledged update is in the ledger")
        XCTAssertEqual(recorded.count, report.acknowledged)
        XCTAssertEqual(report.latencies.count, report.acknowledged)
    }

    /// The generator's constant-memory latency histogram agrees with exact percentiles to 2%.
    func testLatencyHistogramPercentilesMatchTheSortedValues() {
        var rng = SystemRandomNumberGenerator()
        let values = (0..<5000).map { _ in exp(Double.random(in: log(1e-4)...log(2.0), using: &rng)) }
        var a = LatencyHistogram(), b = LatencyHistogram()
        for (i, v) in values.enumerated() { if i % 2 == 0 { a.record(v) } else { b.record(v) } }
        a.merge(b)
        let sorted = values.sorted()
        XCTAssertEqual(a.count, values.count)
        for p in [0.0, 0.1, 0.5, 0.9, 0.95, 0.99] {
            let exact = sorted[Int(Double(sorted.count - 1) * p)]
            XCTAssertEqual(a.percentile(p), exact, accuracy: exact * 0.021, "p\(p)")
        }
        XCTAssertEqual(a.percentile(1), sorted.last!)
        XCTAssertTrue(LatencyHistogram().percentile(0.5).isNaN)
    }
}
