import Foundation

/// The aggregator's durable record (SQLite, WAL, synchronous=FULL): who trained, every update
/// and what became of it, every model version and its checkpoint, and metrics.
///
/// It is what makes restarts exact: an update id is recorded (with the file holding its
/// pseudo-gradient) before it is acknowledged, so after a crash the aggregator reloads the newest
/// good checkpoint and replays, in order, the updates recorded after it; an id already in the
/// ledger is never applied again.
public final class Ledger {
    /// What became of an update.
    public enum Outcome: String, Sendable, CaseIterable {
        /// Folded into the model (a new version).
        case applied
        /// Kept in the aggregation buffer, applied with the next version.
        case buffered
        /// Refused, with a reason; a resend of the id gets the same verdict.
        case refused
    }

    public struct UpdateRecord: Equatable, Sendable {
        public var seq: Int
        public var id: String
        public var trainer: String
        public var cluster: String?
        public var baseVersion: Int
        public var staleness: Int
        public var weight: Double
        public var norm: Double
        public var tokens: Int
        public var outcome: Outcome
        /// The global version right after this update.
        public var versionAfter: Int
        /// Where the pseudo-gradient is kept until a checkpoint covers it (nil once covered, or refused).
        public var deltaPath: String?
        public var reason: String?
        public var receivedAt: Double
        /// With personalized heads: the cluster head's staleness and its version right after.
        public var headStaleness: Int?
        public var headVersionAfter: Int?
        /// The tokens the sender claimed when more than its steps allow (`tokens` is what it was
        /// credited); nil when its claim was credited whole.
        public var claimedTokens: Int?

        public init(seq: Int = 0, id: String, trainer: String, cluster: String?, baseVersion: Int, staleness: Int, weight: Double,
                    norm: Double, tokens: Int, outcome: Outcome, versionAfter: Int, deltaPath: String?, reason: String?,
                    receivedAt: Double, headStaleness: Int? = nil, headVersionAfter: Int? = nil, claimedTokens: Int? = nil) {
            self.claimedTokens = claimedTokens
            self.headStaleness = headStaleness
            self.headVersionAfter = headVersionAfter
            self.seq = seq
            self.id = id
            self.trainer = trainer
            self.cluster = cluster
            self.baseVersion = baseVersion
            self.staleness = staleness
            self.weight = weight
            self.norm = norm
            self.tokens = tokens
            self.outcome = outcome
            self.versionAfter = versionAfter
            self.deltaPath = deltaPath
            self.reason = reason
            self.receivedAt = receivedAt
        }
    }

    public struct VersionRecord: Equatable, Sendable {
        public var number: Int
        public var checkpointPath: String
        public var sha256: String
        /// Updates up to this sequence number are in the checkpoint.
        public var lastUpdateSeq: Int
        public var createdAt: Double

        public init(number: Int, checkpointPath: String, sha256: String, lastUpdateSeq: Int, createdAt: Double) {
            self.number = number
            self.checkpointPath = checkpointPath
            self.sha256 = sha256
            self.lastUpdateSeq = lastUpdateSeq
            self.createdAt = createdAt
        }
    }

    public let database: SQLiteDatabase

    /// Opens an existing ledger to read it while its aggregator may be writing (nothing is
    /// created or changed).
    public static func reading(path: String) throws -> Ledger { Ledger(database: try SQLiteDatabase(path: path)) }

    private init(database: SQLiteDatabase) { self.database = database }

    /// `durable: false` commits without fsync (WAL with synchronous=NORMAL: safe against a killed
    /// process, not against a power cut).
    public init(path: String, durable: Bool = true) throws {
        database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=\(durable ? "FULL" : "NORMAL");")
        try database.execute("""
            CREATE TABLE IF NOT EXISTS trainers (
                id TEXT PRIMARY KEY, cluster TEXT, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
                updates INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS updates (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, trainer TEXT NOT NULL, cluster TEXT,
                base_version INTEGER NOT NULL, staleness INTEGER NOT NULL, weight REAL NOT NULL, norm REAL NOT NULL,
                tokens INTEGER NOT NULL, outcome TEXT NOT NULL, version_after INTEGER NOT NULL, delta_path TEXT,
                reason TEXT, received_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS versions (
                number INTEGER PRIMARY KEY, checkpoint_path TEXT NOT NULL, sha256 TEXT NOT NULL,
                last_update_seq INTEGER NOT NULL, created_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS metrics (
                time REAL NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS clusters (
                name TEXT PRIMARY KEY, created_at REAL NOT NULL, origin TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS assignments (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, trainer TEXT NOT NULL, cluster TEXT NOT NULL,
                previous TEXT, how TEXT NOT NULL, at REAL NOT NULL);
            """)
        // Columns added with personalized heads and bounded token claims (ledgers written before
        // them get them here).
        let columns = Set(try database.query("PRAGMA table_info(updates)").compactMap { $0[1].string })
        for column in ["head_staleness", "head_version_after", "claimed_tokens"] where !columns.contains(column) {
            try database.execute("ALTER TABLE updates ADD COLUMN \(column) INTEGER")
        }
        // For the latest and lowest value of a metric (status, the dashboard, keep_best); metrics
        // are written once per evaluation, so the index costs nothing on the update path.
        try database.execute("CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics (name, time)")
    }

    // MARK: Clusters

    /// Registers a data cluster (idempotent); `origin` says how it came to be (config, cli).
    public func addCluster(_ name: String, origin: String, at time: Double = Date().timeIntervalSince1970) throws {
        try database.query("INSERT OR IGNORE INTO clusters (name, created_at, origin) VALUES (?1, ?2, ?3)",
                           [.text(name), .real(time), .text(origin)])
    }

    /// Registered clusters, in order of creation.
    public func clusters() throws -> [String] {
        try database.query("SELECT name FROM clusters ORDER BY created_at, name").compactMap { $0[0].string }
    }

    /// Records that `trainer` now trains in `cluster` (`how`: declared or automatic), if that
    /// is a change (a first assignment or a move); returns whether it was.
    @discardableResult
    public func recordAssignment(trainer: String, cluster: String, how: String, at time: Double = Date().timeIntervalSince1970) throws -> Bool {
        let last = try database.query("SELECT cluster FROM assignments WHERE trainer = ?1 ORDER BY seq DESC LIMIT 1", [.text(trainer)])
            .first?[0].string
        guard last != cluster else { return false }
        try database.query("INSERT INTO assignments (trainer, cluster, previous, how, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                           [.text(trainer), .text(cluster), .init(last), .text(how), .real(time)])
        return true
    }

    /// Every assignment, oldest first: (trainer, cluster, previous cluster, how).
    public func assignments() throws -> [(trainer: String, cluster: String, previous: String?, how: String)] {
        try database.query("SELECT trainer, cluster, previous, how FROM assignments ORDER BY seq")
            .map { ($0[0].string!, $0[1].string!, $0[2].string, $0[3].string!) }
    }

    public func touchTrainer(_ id: String, cluster: String?, at time: Double = Date().timeIntervalSince1970) throws {
        try database.query("""
            INSERT INTO trainers (id, cluster, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
            ON CONFLICT(id) DO UPDATE SET last_seen = ?3, cluster = COALESCE(?2, cluster)
            """, [.text(id), .init(cluster), .real(time)])
    }

    public func trainerCount() throws -> Int { try database.query("SELECT COUNT(*) FROM trainers")[0][0].int ?? 0 }

    /// Records an update; fails (UNIQUE) if the id is already there, which callers check first.
    @discardableResult
    public func recordUpdate(_ r: UpdateRecord) throws -> Int {
        try database.transaction {
            try database.query("""
                INSERT INTO updates (id, trainer, cluster, base_version, staleness, weight, norm, tokens, outcome,
                                     version_after, delta_path, reason, received_at, head_staleness, head_version_after, claimed_tokens)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                """, [.text(r.id), .text(r.trainer), .init(r.cluster), .init(r.baseVersion), .init(r.staleness), .real(r.weight),
                      .real(r.norm), .init(r.tokens), .text(r.outcome.rawValue), .init(r.versionAfter), .init(r.deltaPath),
                      .init(r.reason), .real(r.receivedAt), .init(r.headStaleness), .init(r.headVersionAfter), .init(r.claimedTokens)])
            let seq = Int(database.lastInsertRowID)
            if r.outcome != .refused {
                try database.query("UPDATE trainers SET updates = updates + 1 WHERE id = ?1", [.text(r.trainer)])
            }
            return seq
        }
    }

    /// Tokens credited to each sender over its accepted (applied or buffered) updates.
    public func creditedTokens() throws -> [String: Int] {
        var out: [String: Int] = [:]
        for r in try database.query("SELECT trainer, SUM(tokens) FROM updates WHERE outcome != 'refused' GROUP BY trainer") {
            if let t = r[0].string, let n = r[1].int { out[t] = n }
        }
        return out
    }

    public func update(id: String) throws -> UpdateRecord? {
        try database.query(Self.updateColumns + " WHERE id = ?1", [.text(id)]).first.map(Self.update(row:))
    }

    /// Applied or buffered updates recorded after `seq`, in order (what a restart replays).
    public func updates(after seq: Int) throws -> [UpdateRecord] {
        try database.query(Self.updateColumns + " WHERE seq > ?1 AND outcome != 'refused' ORDER BY seq", [.init(seq)])
            .map(Self.update(row:))
    }

    public func updateCount(outcome: Outcome? = nil) throws -> Int {
        if let outcome {
            return try database.query("SELECT COUNT(*) FROM updates WHERE outcome = ?1", [.text(outcome.rawValue)])[0][0].int ?? 0
        }
        return try database.query("SELECT COUNT(*) FROM updates")[0][0].int ?? 0
    }

    public var lastUpdateSeq: Int {
        get throws { try database.query("SELECT COALESCE(MAX(seq), 0) FROM updates")[0][0].int ?? 0 }
    }

    /// Records a checkpointed version. Delta files are released (returned, for deletion) only
    /// once the version before this one covers them too, so that if the newest checkpoint turns
    /// out corrupt, the previous one plus the kept deltas still restore the exact state.
    @discardableResult
    public func recordVersion(_ v: VersionRecord) throws -> [String] {
        try database.transaction {
            let previous = try database.query("SELECT MAX(last_update_seq) FROM versions WHERE number < ?1", [.init(v.number)])
                .first?[0].int
            try database.query("""
                INSERT OR REPLACE INTO versions (number, checkpoint_path, sha256, last_update_seq, created_at)
                VALUES (?1, ?2, ?3, ?4, ?5)
                """, [.init(v.number), .text(v.checkpointPath), .text(v.sha256), .init(v.lastUpdateSeq), .real(v.createdAt)])
            guard let previous else { return [] }
            let covered = try database.query("SELECT delta_path FROM updates WHERE seq <= ?1 AND delta_path IS NOT NULL",
                                             [.init(previous)]).compactMap { $0[0].string }
            try database.query("UPDATE updates SET delta_path = NULL WHERE seq <= ?1", [.init(previous)])
            return covered
        }
    }

    /// The pseudo-gradient files a restart may still need for replay.
    public func referencedDeltaPaths() throws -> Set<String> {
        Set(try database.query("SELECT delta_path FROM updates WHERE delta_path IS NOT NULL").compactMap { $0[0].string })
    }

    /// Forgets all but the newest `keep` checkpointed versions; returns the forgotten ones (their
    /// directories are the caller's to delete).
    public func forgetVersions(keepingNewest keep: Int) throws -> [VersionRecord] {
        let old = Array(try versions().dropFirst(keep))
        guard let newestForgotten = old.first else { return [] }
        try database.query("DELETE FROM versions WHERE number <= ?1", [.init(newestForgotten.number)])
        return old
    }

    /// Checkpointed versions, newest first.
    public func versions() throws -> [VersionRecord] {
        try database.query("SELECT number, checkpoint_path, sha256, last_update_seq, created_at FROM versions ORDER BY number DESC")
            .map { VersionRecord(number: $0[0].int!, checkpointPath: $0[1].string!, sha256: $0[2].string!,
                                 lastUpdateSeq: $0[3].int!, createdAt: $0[4].double!) }
    }

    public func recordMetric(_ name: String, _ value: Double, version: Int, at time: Double = Date().timeIntervalSince1970) throws {
        try database.query("INSERT INTO metrics (time, version, name, value) VALUES (?1, ?2, ?3, ?4)",
                           [.real(time), .init(version), .text(name), .real(value)])
    }

    public func metrics(_ name: String) throws -> [(version: Int, value: Double)] {
        try database.query("SELECT version, value FROM metrics WHERE name = ?1 ORDER BY time", [.text(name)])
            .map { ($0[0].int!, $0[1].double!) }
    }

    // MARK: Summaries

    /// Where a run stands, for progress lines.
    public struct Summary: Equatable, Sendable {
        /// The newest global version an update produced.
        public var version: Int
        /// Applied or buffered updates, their tokens and mean staleness.
        public var accepted: Int
        public var acceptedTokens: Int
        public var meanStaleness: Double
        public var refused: Int
        public init(version: Int, accepted: Int, acceptedTokens: Int, meanStaleness: Double, refused: Int) {
            self.version = version
            self.accepted = accepted
            self.acceptedTokens = acceptedTokens
            self.meanStaleness = meanStaleness
            self.refused = refused
        }
    }

    public func summary() throws -> Summary {
        let version = try database.query("SELECT COALESCE(MAX(version_after), 0) FROM updates").first?[0].int ?? 0
        let accepted = try database.query(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(AVG(staleness), 0) FROM updates WHERE outcome != 'refused'").first
        return Summary(version: version, accepted: accepted?[0].int ?? 0, acceptedTokens: accepted?[1].int ?? 0,
                       meanStaleness: accepted?[2].double ?? 0, refused: try updateCount(outcome: .refused))
    }

    /// Tokens of the applied and buffered updates.
    public func acceptedTokens() throws -> Int {
        try database.query("SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE outcome != 'refused'").first?[0].int ?? 0
    }

    /// Ids of the applied and buffered updates.
    public func acceptedUpdateIDs() throws -> Set<String> {
        Set(try database.query("SELECT id FROM updates WHERE outcome != 'refused'").compactMap { $0[0].string })
    }

    /// How many applied or buffered updates `trainer` has.
    public func acceptedUpdateCount(trainer: String) throws -> Int {
        try database.query("SELECT COUNT(*) FROM updates WHERE trainer = ?1 AND outcome != 'refused'", [.text(trainer)]).first?[0].int ?? 0
    }

    /// The most applied or buffered updates any one trainer has (what bounds everyone's privacy loss).
    public func mostAcceptedUpdatesByOneTrainer() throws -> Int {
        try database.query("SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM updates WHERE outcome != 'refused' GROUP BY trainer)")
            .first?[0].int ?? 0
    }

    /// The lowest value recorded under `name` (nil: none yet).
    public func lowestMetric(_ name: String) throws -> Double? {
        try database.query("SELECT MIN(value) FROM metrics WHERE name = ?1", [.text(name)]).first?[0].double
    }

    /// The newest value recorded under `name` (nil: none yet).
    public func latestMetric(_ name: String) throws -> Double? {
        try database.query("SELECT value FROM metrics WHERE name = ?1 ORDER BY time DESC LIMIT 1", [.text(name)]).first?[0].double
    }

    /// The mean over the metrics named `<prefix>...` at the newest version any of them was
    /// recorded (e.g. every cluster's personalized loss at the last evaluation).
    public func latestMean(ofMetricsStartingWith prefix: String) throws -> Double? {
        let pattern = prefix.replacingOccurrences(of: "%", with: "") + "%"
        return try database.query("SELECT AVG(value) FROM metrics WHERE name LIKE ?1 AND version = (SELECT MAX(version) FROM metrics WHERE name LIKE ?1)",
                                   [.text(pattern)]).first?[0].double
    }

    /// One recorded evaluation: metric, value, when, at which version, and the tokens of the
    /// updates accepted by then.
    public struct Evaluation: Equatable, Sendable {
        public var version: Int
        public var time: Double
        public var name: String
        public var value: Double
        public var tokens: Int
    }

    /// Every metric named `<prefix>...` for each of `prefixes`, in time order.
    public func evaluations(prefixes: [String]) throws -> [Evaluation] {
        guard !prefixes.isEmpty else { return [] }
        let matches = prefixes.indices.map { "m.name LIKE ?\($0 + 1)" }.joined(separator: " OR ")
        return try database.query("""
            SELECT m.version, m.time, m.name, m.value,
                   (SELECT COALESCE(SUM(u.tokens), 0) FROM updates u WHERE u.outcome != 'refused' AND u.received_at <= m.time)
            FROM metrics m WHERE \(matches) ORDER BY m.time
            """, prefixes.map { .text($0 + "%") }).compactMap { r in
            guard let version = r[0].int, let time = r[1].double, let name = r[2].string, let value = r[3].double, let tokens = r[4].int else { return nil }
            return Evaluation(version: version, time: time, name: name, value: value, tokens: tokens)
        }
    }

    static let updateColumns = """
        SELECT seq, id, trainer, cluster, base_version, staleness, weight, norm, tokens, outcome, version_after,
               delta_path, reason, received_at, head_staleness, head_version_after, claimed_tokens FROM updates
        """

    static func update(row r: [SQLiteDatabase.Value]) -> UpdateRecord {
        UpdateRecord(seq: r[0].int!, id: r[1].string!, trainer: r[2].string!, cluster: r[3].string, baseVersion: r[4].int!,
                     staleness: r[5].int!, weight: r[6].double!, norm: r[7].double!, tokens: r[8].int!,
                     outcome: Outcome(rawValue: r[9].string!) ?? .refused,
                     versionAfter: r[10].int!, deltaPath: r[11].string, reason: r[12].string, receivedAt: r[13].double!,
                     headStaleness: r[14].int, headVersionAfter: r[15].int, claimedTokens: r[16].int)
    }
}
