import FedLMLedger
import Foundation
import XCTest

final class LedgerTests: XCTestCase {
    var path = ""
    override func setUp() { path = NSTemporaryDirectory() + "ledger-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sqlite" }
    override func tearDown() {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    func record(_ id: String, outcome: Ledger.Outcome = .applied, version: Int, delta: String? = nil) -> Ledger.UpdateRecord {
        Ledger.UpdateRecord(seq: 0, id: id, trainer: "t1", cluster: "en", baseVersion: version - 1, staleness: 0, weight: 1,
                            norm: 0.5, tokens: 100, outcome: outcome, versionAfter: version, deltaPath: delta, reason: nil,
                            receivedAt: 1)
    }

    func testUpdatesAreUniqueByIDAndReplayInOrder() throws {
        let ledger = try Ledger(path: path)
        try ledger.touchTrainer("t1", cluster: "en")
        let s1 = try ledger.recordUpdate(record("u1", version: 1, delta: "d/u1"))
        let s2 = try ledger.recordUpdate(record("u2", outcome: .refused, version: 1))
        let s3 = try ledger.recordUpdate(record("u3", outcome: .buffered, version: 1, delta: "d/u3"))
        XCTAssertLessThan(s1, s2)
        XCTAssertLessThan(s2, s3)
        XCTAssertThrowsError(try ledger.recordUpdate(record("u1", version: 9)), "an id is recorded once")
        XCTAssertEqual(try ledger.update(id: "u1")?.versionAfter, 1)
        XCTAssertNil(try ledger.update(id: "nope"))
        XCTAssertEqual(try ledger.updates(after: 0).map(\.id), ["u1", "u3"], "refused updates are not replayed")
        XCTAssertEqual(try ledger.updates(after: s1).map(\.id), ["u3"])
        XCTAssertEqual(try ledger.database.query("SELECT updates FROM trainers WHERE id = 't1'")[0][0].int, 2)
    }

    func testAVersionCoversEarlierDeltasAndEverythingSurvivesReopening() throws {
        do {
            let ledger = try Ledger(path: path)
            try ledger.touchTrainer("t1", cluster: nil)
            try ledger.recordUpdate(record("u1", version: 1, delta: "d/u1"))
            let s2 = try ledger.recordUpdate(record("u2", version: 2, delta: "d/u2"))
            try ledger.recordUpdate(record("u3", version: 3, delta: "d/u3"))
            let s1 = try ledger.database.query("SELECT seq FROM updates WHERE id = 'u1'")[0][0].int!
            // The first version releases nothing; the next releases what the first covered.
            XCTAssertEqual(try ledger.recordVersion(.init(number: 1, checkpointPath: "ck/v1", sha256: "aa", lastUpdateSeq: s1, createdAt: 4)), [])
            let covered = try ledger.recordVersion(.init(number: 2, checkpointPath: "ck/v2", sha256: "ab", lastUpdateSeq: s2, createdAt: 5))
            XCTAssertEqual(Set(covered), ["d/u1"])
            try ledger.recordMetric("validation_loss", 4.2, version: 2)
        }
        let reopened = try Ledger(path: path)
        XCTAssertEqual(try reopened.versions().map(\.number), [2, 1])
        XCTAssertEqual(try reopened.updates(after: reopened.versions()[0].lastUpdateSeq).map(\.id), ["u3"])
        XCTAssertEqual(try reopened.update(id: "u3")?.deltaPath, "d/u3")
        XCTAssertEqual(try reopened.update(id: "u2")?.deltaPath, "d/u2", "kept until a second checkpoint covers it")
        XCTAssertNil(try reopened.update(id: "u1")?.deltaPath)
        XCTAssertEqual(try reopened.metrics("validation_loss").first?.value, 4.2)
        XCTAssertEqual(try reopened.database.query("PRAGMA journal_mode")[0][0].string, "wal")
    }

    func testAFailedTransactionLeavesNothingBehind() throws {
        let ledger = try Ledger(path: path)
        struct Boom: Error {}
        XCTAssertThrowsError(try ledger.database.transaction {
            try ledger.database.query("INSERT INTO metrics VALUES (1, 1, 'x', 1)")
            throw Boom()
        })
        XCTAssertEqual(try ledger.database.query("SELECT COUNT(*) FROM metrics")[0][0].int, 0)
        XCTAssertThrowsError(try ledger.database.query("SELECT nope FROM nowhere")) {
            XCTAssertTrue("\($0)".contains("nowhere"), "\($0)")
        }
    }
}

extension LedgerTests {
    /// The typed summaries the progress line, experiments, benchmarks and learning curves read,
    /// on exact numbers, through a second connection opened for reading.
    func testSummariesOfUpdatesAndMetricsOnExactNumbers() throws {
        let ledger = try Ledger(path: path)
        func update(_ id: String, _ trainer: String, _ outcome: Ledger.Outcome, version: Int, staleness: Int, tokens: Int, at time: Double) throws {
            try ledger.recordUpdate(Ledger.UpdateRecord(id: id, trainer: trainer, cluster: nil, baseVersion: 0, staleness: staleness, weight: 1,
                                                        norm: 1, tokens: tokens, outcome: outcome, versionAfter: version, deltaPath: nil,
                                                        reason: outcome == .refused ? "tooStale" : nil, receivedAt: time))
        }
        try update("a1", "a", .applied, version: 1, staleness: 0, tokens: 100, at: 10)
        try update("b1", "b", .buffered, version: 1, staleness: 2, tokens: 50, at: 11)
        try update("a2", "a", .applied, version: 2, staleness: 1, tokens: 100, at: 20)
        try update("b2", "b", .refused, version: 2, staleness: 9, tokens: 70, at: 21)
        try ledger.recordMetric("validation_loss", 5.0, version: 1, at: 12)
        try ledger.recordMetric("validation_loss/en", 4.0, version: 1, at: 12)
        try ledger.recordMetric("validation_loss", 4.5, version: 2, at: 22)
        try ledger.recordMetric("personalized_loss/en", 3.0, version: 1, at: 12)
        try ledger.recordMetric("personalized_loss/en", 2.0, version: 2, at: 22)
        try ledger.recordMetric("personalized_loss/de", 4.0, version: 2, at: 22)

        let reader = try Ledger.reading(path: path)
        XCTAssertEqual(try reader.summary(), Ledger.Summary(version: 2, accepted: 3, acceptedTokens: 250, meanStaleness: 1, refused: 1))
        XCTAssertEqual(try reader.acceptedTokens(), 250)
        XCTAssertEqual(try reader.acceptedUpdateIDs(), ["a1", "b1", "a2"])
        XCTAssertEqual(try reader.mostAcceptedUpdatesByOneTrainer(), 2)
        XCTAssertEqual(try reader.latestMetric("validation_loss"), 4.5)
        XCTAssertNil(try reader.latestMetric("nothing"))
        XCTAssertEqual(try reader.latestMean(ofMetricsStartingWith: "personalized_loss/"), 3.0, "the mean at version 2: (2 + 4) / 2")
        let evaluations = try reader.evaluations(prefixes: ["validation_loss/", "personalized_loss/"])
        XCTAssertEqual(evaluations.map(\.name), ["validation_loss/en", "personalized_loss/en", "personalized_loss/en", "personalized_loss/de"])
        XCTAssertEqual(evaluations.map(\.tokens), [150, 150, 250, 250], "tokens accepted by each evaluation's time")
        XCTAssertEqual(try reader.updateCount(outcome: .buffered), 1)
        XCTAssertEqual(try reader.update(id: "b2")?.outcome, .refused)
    }
}
