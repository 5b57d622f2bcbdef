import Foundation

/// The aggregator's durable record (SQLite, WAL, synchronous=FULL): who trained, every update
/// and what became of it, every model version and its checkpoint, and metrics.
///
/// It is what makes restarts exact: an update id is recorded (with the file holding its
/// pseudo-gradient) before it is acknowledged, so after a crash the aggregator reloads the newest
/// good checkpoint and replays, in order, the updates recorded after it; an id already in the
/// ledger is never applied again.
public final class Ledger {
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
        /// applied, buffered or refused
        public var outcome: String
        /// The global version right after this update.
        public var versionAfter: Int
        /// Where the pseudo-gradient is kept until a checkpoint covers it (nil once covered, or refused).
        public var deltaPath: String?
        public var reason: String?
        public var receivedAt: Double
        /// With personalized heads: the cluster head's staleness and its version right after.
        public var headStaleness: Int?
        public var headVersionAfter: Int?

        public init(seq: Int = 0, id: String, trainer: String, cluster: String?, baseVersion: Int, staleness: Int, weight: Double,
                    norm: Double, tokens: Int, outcome: String, versionAfter: Int, deltaPath: String?, reason: String?,
                    receivedAt: Double, headStaleness: Int? = nil, headVersionAfter: Int? = nil) {
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
        // Columns added with personalized heads (ledgers written before them get them here).
        let columns = Set(try database.query("PRAGMA table_info(updates)").compactMap { $0[1].string })
        for column in ["head_staleness", "head_version_after"] where !columns.contains(column) {
            try database.execute("ALTER TABLE updates ADD COLUMN \(column) INTEGER")
        }
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
                                     version_after, delta_path, reason, received_at, head_staleness, head_version_after)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                """, [.text(r.id), .text(r.trainer), .init(r.cluster), .init(r.baseVersion), .init(r.staleness), .real(r.weight),
                      .real(r.norm), .init(r.tokens), .text(r.outcome), .init(r.versionAfter), .init(r.deltaPath),
                      .init(r.reason), .real(r.receivedAt), .init(r.headStaleness), .init(r.headVersionAfter)])
            let seq = Int(database.lastInsertRowID)
            if r.outcome != "refused" {
                try database.query("UPDATE trainers SET updates = updates + 1 WHERE id = ?1", [.text(r.trainer)])
            }
            return seq
        }
    }

    public func update(id: String) throws -> UpdateRecord? {
        try database.query(Self.updateColumns + " WHERE id = ?1", [.text(id)]).first.map(Self.update(row:))
    }

    /// Applied or buffered updates recorded after `seq`, in order (what a restart replays).
    public func updates(after seq: Int) throws -> [UpdateRecord] {
        try database.query(Self.updateColumns + " WHERE seq > ?1 AND outcome != 'refused' ORDER BY seq", [.init(seq)])
            .map(Self.update(row:))
    }

    public func updateCount(outcome: String? = nil) throws -> Int {
        if let outcome {
            return try database.query("SELECT COUNT(*) FROM updates WHERE outcome = ?1", [.text(outcome)])[0][0].int ?? 0
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

    static let updateColumns = """
        SELECT seq, id, trainer, cluster, base_version, staleness, weight, norm, tokens, outcome, version_after,
               delta_path, reason, received_at, head_staleness, head_version_after FROM updates
        """

    static func update(row r: [SQLiteDatabase.Value]) -> UpdateRecord {
        UpdateRecord(seq: r[0].int!, id: r[1].string!, trainer: r[2].string!, cluster: r[3].string, baseVersion: r[4].int!,
                     staleness: r[5].int!, weight: r[6].double!, norm: r[7].double!, tokens: r[8].int!, outcome: r[9].string!,
                     versionAfter: r[10].int!, deltaPath: r[11].string, reason: r[12].string, receivedAt: r[13].double!,
                     headStaleness: r[14].int, headVersionAfter: r[15].int)
    }
}
