import CoreMetrics
import FedLMFederation
import FedLMLedger
import FedLMMonitoring
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest

/// The monitoring server over real loopback HTTP: what it serves, to whom, and that it is read only.
final class MonitoringServerTests: XCTestCase {
    /// A server on a free loopback port, run until the test ends.
    private func serve(allow: [String] = ["127.0.0.1"], metrics: PrometheusMetrics? = PrometheusMetrics(),
                       dashboard: DashboardData? = nil) async throws -> (url: String, task: Task<Void, Error>, server: MonitoringServer) {
        let port = UInt16.random(in: 33_000...40_000)
        let access = MonitoringConfig(allow: try allow.map { try AddressRange.parse($0).get() })
        let server = try MonitoringServer(address: HTTPAddress(host: "127.0.0.1", port: port), access: access, metrics: metrics, dashboard: dashboard)
        let task = Task { try await server.run() }
        try await server.waitUntilListening()
        return ("http://127.0.0.1:\(port)", task, server)
    }

    private func get(_ url: String, method: String = "GET", headers: [String: String] = [:]) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: url)!)
        request.httpMethod = method
        for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as! HTTPURLResponse).statusCode, String(decoding: data, as: UTF8.self))
    }

    func testMetricsRecordedThroughSwiftMetricsAppearInThePrometheusExposition() async throws {
        let metrics = PrometheusMetrics()
        let aggregator = AggregatorMetrics(factory: metrics.factory)
        aggregator.updateAnswered(outcome: "applied", staleness: 3, bytes: 5000, seconds: 0.02)
        aggregator.updateAnswered(outcome: "refused", reason: "tooStale", staleness: 9, bytes: 5000, seconds: 0.01)
        aggregator.version(7)
        aggregator.validationLoss(4.25, cluster: "en")
        let s = try await serve(metrics: metrics)
        defer { s.task.cancel() }
        let (status, body) = try await get(s.url + "/metrics")
        XCTAssertEqual(status, 200)
        XCTAssertTrue(body.contains(#"fedlm_aggregator_updates_total{outcome="applied",reason=""} 1"#), body)
        XCTAssertTrue(body.contains(#"fedlm_aggregator_updates_total{outcome="refused",reason="tooStale"} 1"#), body)
        XCTAssertTrue(body.contains(#"fedlm_aggregator_update_staleness_bucket{le="3.0"} 1"#), "staleness 3 falls in the bucket le=3: \(body)")
        XCTAssertTrue(body.contains(#"fedlm_aggregator_version{cluster=""} 7"#), body)
        XCTAssertTrue(body.contains(#"fedlm_aggregator_validation_loss{cluster="en"} 4.25"#), body)
        XCTAssertFalse(body.contains(AggregatorMetrics.Name.dpEpsilon), "no epsilon without differential privacy")
    }

    func testLabelValuesStayBoundedWhateverPeersSend() async throws {
        let metrics = PrometheusMetrics()
        let aggregator = AggregatorMetrics(factory: metrics.factory)
        for i in 0..<500 { aggregator.version(i, cluster: "c\(i)") }
        let body = String(decoding: metrics.exposition(), as: UTF8.self)
        let series = body.split(separator: "\n").filter { $0.hasPrefix(AggregatorMetrics.Name.version + "{") }
        XCTAssertLessThanOrEqual(series.count, 65, "at most 64 clusters and 'other'")
        XCTAssertTrue(body.contains(#"fedlm_aggregator_version{cluster="other"} 499"#), body)
    }

    func testOnlyAllowedAddressesMayReadAndAForwardedHeaderDoesNotHelp() async throws {
        let s = try await serve(allow: ["10.0.0.0/8"])
        defer { s.task.cancel() }
        let plain = try await get(s.url + "/metrics")
        XCTAssertEqual(plain.status, 403, "a loopback client outside the allowed range")
        let forged = try await get(s.url + "/metrics", headers: ["X-Forwarded-For": "10.1.2.3"])
        XCTAssertEqual(forged.status, 403, "the socket's address decides, never a header")
    }

    func testTheServerIsReadOnlyAndNamesWhatItServes() async throws {
        let s = try await serve()
        defer { s.task.cancel() }
        let post = try await get(s.url + "/metrics", method: "POST")
        XCTAssertEqual(post.status, 405)
        let missing = try await get(s.url + "/api/status")
        XCTAssertEqual(missing.status, 404, "a broker's server has no dashboard")
        XCTAssertTrue(missing.body.contains("/metrics"), missing.body)
    }

    func testStatusAPIReadsTheLedgerWhileItIsWritten() async throws {
        let dir = NSTemporaryDirectory() + "fedlm-monitoring-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ledger = try Ledger(path: dir + "/ledger.sqlite")
        try ledger.touchTrainer("t1", cluster: "en")
        for i in 0..<4 {
            _ = try ledger.recordUpdate(.init(id: "u\(i)", trainer: "t1", cluster: "en", baseVersion: i, staleness: 0, weight: 1, norm: 1,
                                              tokens: 100, outcome: .applied, versionAfter: i + 1, deltaPath: nil, reason: nil,
                                              receivedAt: 1000 + Double(i)))
            try ledger.recordMetric("validation_loss/en", 5 - Double(i), version: i + 1, at: 1000 + Double(i))
        }
        let data = DashboardData(title: "t", levels: [.init(name: "top", ledgerPath: dir + "/ledger.sqlite"),
                                                       .init(name: "region r", ledgerPath: dir + "/missing/ledger.sqlite")])
        data.refresh = 0
        data.costShare = 1
        let s = try await serve(dashboard: data)
        defer { s.task.cancel() }
        let (status, body) = try await get(s.url + "/api/status")
        XCTAssertEqual(status, 200)
        let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as! [String: Any]
        let levels = json["levels"] as! [[String: Any]]
        XCTAssertEqual(levels.count, 2)
        let status0 = levels[0]["status"] as! [String: Any]
        XCTAssertEqual(status0["version"] as? Int, 4)
        let curve = ((levels[0]["curves"] as! [String: Any])["losses"] as! [String: Any])["validation_loss/en"] as! [[String: Any]]
        XCTAssertEqual(curve.map { $0["tokens"] as? Int }, [100, 200, 300, 400], "each loss at the tokens accepted up to its version")
        XCTAssertEqual(curve.map { $0["value"] as? Double }, [5, 4, 3, 2])
        XCTAssertNotNil(levels[1]["problem"], "a level without a ledger says so instead of failing the page")
        // Written while served: the next snapshot sees it.
        _ = try ledger.recordUpdate(.init(id: "u4", trainer: "t1", cluster: "en", baseVersion: 4, staleness: 0, weight: 1, norm: 1, tokens: 100,
                                          outcome: .applied, versionAfter: 5, deltaPath: nil, reason: nil, receivedAt: 1005))
        try ledger.recordMetric("validation_loss/en", 1.5, version: 5, at: 1005)
        let again = try JSONSerialization.jsonObject(with: Data(try await get(s.url + "/api/status").body.utf8)) as! [String: Any]
        let level = (again["levels"] as! [[String: Any]])[0]
        XCTAssertEqual((level["status"] as! [String: Any])["version"] as? Int, 5)
        let curves = level["curves"] as! [String: Any]
        XCTAssertEqual((curves["progress"] as! [[String: Any]]).map { $0["tokens"] as? Int }, [100, 200, 300, 400, 500], "read on from where it was")
        XCTAssertEqual(((curves["losses"] as! [String: Any])["validation_loss/en"] as! [[String: Any]]).last?["tokens"] as? Int, 500)
        let page = try await get(s.url + "/")
        XCTAssertEqual(page.status, 200)
        XCTAssertTrue(page.body.contains("api/status"), "the page polls the status API")
    }

    func testTheFollowerThinsOldProgressKeepsTheNewestExactAndTalliesLikeAFullRead() throws {
        let dir = NSTemporaryDirectory() + "fedlm-curves-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ledger = try Ledger(path: dir + "/ledger.sqlite", durable: false)
        var history = LedgerFollower()
        try ledger.touchTrainer("t", cluster: nil, at: 0)
        let n = LedgerFollower.kept + 500
        for i in 0..<n {
            _ = try ledger.recordUpdate(.init(id: "u\(i)", trainer: "t", cluster: nil, baseVersion: i, staleness: 0, weight: 1, norm: 1, tokens: 10,
                                              outcome: i % 7 == 3 ? .refused : .applied, versionAfter: i + 1, deltaPath: nil, reason: nil, receivedAt: Double(i)))
            if i == n / 2 { try history.advance(ledger) }
        }
        try ledger.recordMetric("validation_loss/x", 2, version: n, at: Double(n))
        try history.advance(ledger)
        let accepted = (0..<n).filter { $0 % 7 != 3 }.count
        let progress = history.curves(maxPoints: .max).progress
        XCTAssertLessThanOrEqual(progress.count, LedgerFollower.kept, "old points thinned")
        XCTAssertEqual(progress.last?.tokens, accepted * 10, "every accepted token counted once across the two reads")
        XCTAssertEqual(progress.map(\.tokens), progress.map(\.tokens).sorted(), "cumulative")
        XCTAssertEqual(history.curves().losses["validation_loss/x"]?.first?.tokens, accepted * 10)
        XCTAssertEqual(history.curves(maxPoints: 400).progress.count, 400)
        let followed = try history.status(ledger, now: Double(n)), full = try ledger.status(now: Double(n))
        XCTAssertEqual(followed, full, "read in two steps or at once, the same status")
        XCTAssertEqual(full.accepted, accepted)
        XCTAssertEqual(full.refused, n - accepted)
        XCTAssertEqual(full.trainers.first?.tokens, accepted * 10)
    }
}
