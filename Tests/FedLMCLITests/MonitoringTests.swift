import FedLMLedger
import FedLMTestSupport
import Foundation
import XCTest

/// A running federation (broker, aggregator and two trainers as processes) watched as an operator
/// would: a real Prometheus server (Debian's `prometheus`) scrapes the aggregator's and the
/// broker's `/metrics`, and a real headless browser (Debian's `chromium`) loads the aggregator's
/// dashboard, runs its script and draws the curves; its screenshot is kept in
/// `runs/test-artifacts/dashboard.png`.
final class MonitoringTests: XCTestCase {
    func testPrometheusAndAHeadlessBrowserWatchARunningFederation() throws {
        let prometheus = try Self.tool("prometheus")
        let chromium = try Self.tool("chromium")
        let trainer = { (name: String, cluster: String) in
            SmallFederation.trainer(name, "clusters = [\"\(cluster)\"]", "cluster = \"\(cluster)\"", "local_steps = 3", "tokens = 60000")
        }
        let f = try SmallFederation(SmallFederation.fedbuff("evaluate_every = 2", "checkpoint_every = 4", "keep_best = true",
                                                            "[clusters]", "names = [\"en\", \"de\"]") + trainer("t-en", "en") + trainer("t-de", "de"),
                                    twoClusters: true)
        defer { f.scratch.remove() }
        let port = Int.random(in: 33_000...40_000)
        let (aggregatorURL, brokerURL, prometheusURL) = ("127.0.0.1:\(port)", "127.0.0.1:\(port + 1)", "127.0.0.1:\(port + 2)")
        try f.append("\n[monitoring]\naggregator = \"\(aggregatorURL)\"\nbroker = \"\(brokerURL)\"\n")
        let broker = try f.start("broker")
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        let trainers = try ["t-en", "t-de"].map { try f.start("trainer", ["--name", $0, "--threads", "1"]) }
        let subscriber = try f.start("subscribe")
        try """
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: aggregator
                static_configs: [{targets: ["\(aggregatorURL)"]}]
              - job_name: broker
                static_configs: [{targets: ["\(brokerURL)"]}]
            """.write(toFile: f.scratch.dir + "/prometheus.yml", atomically: true, encoding: .utf8)
        let server = try FedLMProcess(["--config.file=\(f.scratch.dir)/prometheus.yml", "--storage.tsdb.path=\(f.scratch.dir)/tsdb",
                                       "--web.listen-address=\(prometheusURL)"], executable: prometheus)
        defer { for p in trainers + [aggregator, broker, server, subscriber] { p.signal(SIGKILL) } }

        // Prometheus scrapes both; the updates counter it stores grows while the trainers train.
        func query(_ promql: String) -> Double? {
            let q = promql.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
            guard let json = Self.get("http://\(prometheusURL)/api/v1/query?query=\(q)"),
                  let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                  let result = (object["data"] as? [String: Any])?["result"] as? [[String: Any]],
                  let value = result.first?["value"] as? [Any], let text = value.last as? String else { return nil }
            return Double(text)
        }
        SmallFederation.waitFor("Prometheus to scrape both targets", seconds: 60) { query("sum(up)") == 2 }
        SmallFederation.waitFor("accepted updates in Prometheus") { (query("sum(fedlm_aggregator_updates_total{outcome=~\"applied|buffered\"})") ?? 0) >= 2 }
        let first = query("sum(fedlm_aggregator_updates_total{outcome=~\"applied|buffered\"})") ?? 0
        SmallFederation.waitFor("the updates counter to grow in Prometheus") {
            (query("sum(fedlm_aggregator_updates_total{outcome=~\"applied|buffered\"})") ?? 0) > first
        }
        SmallFederation.waitFor("the broker's counters in Prometheus") { (query("fedlm_broker_forwarded_total") ?? 0) > 0 }
        XCTAssertEqual(query("fedlm_aggregator_trainers_connected"), 2)
        XCTAssertEqual(query("fedlm_broker_aggregator_connected"), 1)
        SmallFederation.waitFor("the subscriber in Prometheus", seconds: 30) { (query("fedlm_broker_subscribers_connected") ?? 0) >= 1 }
        XCTAssertGreaterThan(query("sum(fedlm_broker_bytes_total{direction=\"in\",side=\"members\"})") ?? 0, 0)
        SmallFederation.waitFor("a held-out loss per cluster in Prometheus") { query("count(fedlm_aggregator_validation_loss)") == 2 }
        XCTAssertGreaterThan(query("histogram_quantile(0.5, rate(fedlm_aggregator_update_receive_to_ack_seconds_bucket[1m]))") ?? 0, 0)

        // The dashboard, loaded by a real browser from the running aggregator, draws a loss curve
        // per cluster (each with at least two evaluations), the trainers, and keeps polling.
        SmallFederation.waitFor("two evaluations of each cluster's global and own model") {
            f.ledger("SELECT COUNT(*) FROM (SELECT name FROM metrics WHERE name LIKE '%_loss/%' GROUP BY name HAVING COUNT(*) >= 2)") == 4
        }
        let profile = f.scratch.dir + "/chromium"
        let browser = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=\(profile)",
                       "--window-size=1100,1300", "--virtual-time-budget=7000"]
        let dom = try Self.run(chromium, browser + ["--dump-dom", "http://\(aggregatorURL)/"])
        let curves = Self.matches(#"class="curve"[^>]*data-series="([^"]+)"[^>]*data-points="(\d+)""#, in: dom)
        let drawn = Dictionary(curves.map { ($0[0], Int($0[1]) ?? 0) }, uniquingKeysWith: max)
        XCTAssertGreaterThanOrEqual(drawn["global model on en"] ?? 0, 2, "the en loss curve: \(drawn)")
        XCTAssertGreaterThanOrEqual(drawn["global model on de"] ?? 0, 2, "the de loss curve: \(drawn)")
        XCTAssertGreaterThanOrEqual(drawn["own model of en"] ?? 0, 2, "en's own model: \(drawn)")
        XCTAssertGreaterThanOrEqual(drawn["tokens"] ?? 0, 2, "tokens over time: \(drawn)")
        XCTAssertEqual(Self.matches(#"<tr class="trainer">"#, in: dom).count, 2, "one row per trainer")
        XCTAssertTrue(dom.contains(">t-en<") && dom.contains(">t-de<"), "the trainers by name")
        let polls = Int(Self.matches(#"data-updates="(\d+)""#, in: dom).first?.first ?? "0") ?? 0
        XCTAssertGreaterThanOrEqual(polls, 2, "the page polls the status again and again")
        let artifacts = ReferenceRoot.path + "/runs/test-artifacts"
        try FileManager.default.createDirectory(atPath: artifacts, withIntermediateDirectories: true)
        let screenshot = artifacts + "/dashboard.png"
        try? FileManager.default.removeItem(atPath: screenshot)
        _ = try Self.run(chromium, browser + ["--screenshot=\(screenshot)", "http://\(aggregatorURL)/"])
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47], "a PNG")
        XCTAssertGreaterThan(png.count, 20_000, "a page with content, not a blank one")

        // keep_best: each cluster's best own model so far, and the best global model, are kept
        // as checkpoints naming the version and loss of the lowest evaluation in the ledger.
        for (name, metric) in [("global", "validation_loss"), ("en", "personalized_loss/en"), ("de", "personalized_loss/de")] {
            let state = f.scratch.dir + "/run/best/\(name)/training_state.json"
            guard let data = FileManager.default.contents(atPath: state),
                  let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let extra = json["extra"] as? [String: String], let loss = extra["loss"].flatMap(Double.init) else {
                XCTFail("no best checkpoint for \(name) at \(state)")
                continue
            }
            let (lowest, version) = Self.lowest(metric, in: f.ledgerPath)
            XCTAssertEqual(loss, lowest, accuracy: 1e-4, "\(name): the loss of the lowest evaluation")
            XCTAssertEqual(json["step"] as? Int, version, "\(name): the version of the lowest evaluation")
            XCTAssertEqual(extra["best_by"], metric)
            XCTAssertTrue(FileManager.default.fileExists(atPath: f.scratch.dir + "/run/best/\(name)/model.safetensors"))
        }
    }

    /// A monitoring address already taken ends the aggregator with a message naming it (the
    /// aggregator's loop stops too, nothing hangs); with a free one, SIGTERM stops both cleanly.
    func testAnAggregatorWhoseMonitoringAddressIsTakenSaysSoAndStops() throws {
        let f = try SmallFederation(SmallFederation.fedbuff() + SmallFederation.trainer("t", "tokens = 1000"))
        defer { f.scratch.remove() }
        let taken = LoopbackListener()
        defer { taken.close() }
        let port = taken.port
        try f.append("\n[monitoring]\naggregator = \"127.0.0.1:\(port)\"\n")
        let failing = try f.start("aggregator", ["--threads", "1"])
        XCTAssertTrue(failing.exits(by: Date().addingTimeInterval(30)), "the aggregator ends")
        XCTAssertEqual(failing.wait(), 1)
        XCTAssertTrue(failing.output.contains("monitoring cannot serve on 127.0.0.1:\(port)"), failing.output)

        let free = port + 1 > 65_000 ? port - 1 : port + 1
        try String(contentsOfFile: f.topology, encoding: .utf8).replacingOccurrences(of: ":\(port)\"", with: ":\(free)\"")
            .write(toFile: f.topology, atomically: true, encoding: .utf8)
        let aggregator = try f.start("aggregator", ["--threads", "1"])
        SmallFederation.waitFor("its metrics", seconds: 30) { Self.get("http://127.0.0.1:\(free)/metrics") != nil }
        aggregator.signal(SIGTERM)
        XCTAssertTrue(aggregator.exits(by: Date().addingTimeInterval(20)), "SIGTERM stops the aggregator and its server")
        XCTAssertEqual(aggregator.wait(), 0)
        XCTAssertTrue(aggregator.output.contains("aggregator stopped"), aggregator.output)
    }

    /// The lowest value of a metric in a ledger, and its version.
    static func lowest(_ metric: String, in ledger: String) -> (Double, Int) {
        guard let db = try? SQLiteDatabase(path: ledger),
              let row = try? db.query("SELECT value, version FROM metrics WHERE name = ?1 ORDER BY value LIMIT 1", [.text(metric)]).first else {
            return (.nan, -1)
        }
        return (row[0].double ?? .nan, row[1].int ?? -1)
    }

    /// A program from Debian's packages; the test command installs them and sets
    /// FEDLM_REQUIRE_MONITORING_TOOLS=1, so in CI a missing one fails instead of skipping.
    static func tool(_ name: String) throws -> String {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: dir + "/" + name) { return dir + "/" + name }
        if ProcessInfo.processInfo.environment["FEDLM_REQUIRE_MONITORING_TOOLS"] == "1" {
            XCTFail("FEDLM_REQUIRE_MONITORING_TOOLS=1 but \(name) is not installed")
        }
        throw XCTSkip("\(name) is not installed; the README's test command installs it")
    }

    /// Runs a program to its end (at most 90 s) and returns its standard output.
    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let killer = DispatchWorkItem { if p.isRunning { p.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 90, execute: killer)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        killer.cancel()
        return String(decoding: data, as: UTF8.self)
    }

    /// A GET's body, or nil (not reachable yet).
    static func get(_ url: String) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-sf", "--max-time", "5", url]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }

    /// The capture groups of every match of `pattern`.
    static func matches(_ pattern: String, in text: String) -> [[String]] {
        let regex = try! NSRegularExpression(pattern: pattern)
        return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { m in
            (1..<m.numberOfRanges).map { i in Range(m.range(at: i), in: text).map { String(text[$0]) } ?? "" }
        }
    }
}

/// The package's root directory (test artifacts go under its runs/).
enum ReferenceRoot {
    static var path: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }
}
