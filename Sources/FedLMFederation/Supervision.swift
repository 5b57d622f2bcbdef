/// How `fedlm up` keeps a federation's processes running (`[supervision]` in a topology).
public struct SupervisionPolicy: Equatable, Sendable {
    public enum OnFailure: String, Sendable, CaseIterable {
        /// Start a process that died again (the broker holds no state; the aggregator resumes
        /// its ledger and checkpoint; a trainer resends its pending update).
        case restart
        /// End the whole run, stopping every other process.
        case stop
    }
    public var onFailure = OnFailure.restart
    /// Restarts of one process (within `restartWindow`) before the run stops instead.
    public var maxRestarts = 3
    /// Seconds before a process is started again; each further restart within the window waits
    /// twice as long as the one before, up to `maxRestartDelay` (backoff).
    public var restartDelay = 1.0
    public var maxRestartDelay = 30.0
    /// A crash loop: more than `maxRestarts` failures of one process within this many seconds
    /// stops the run (nil: `maxRestarts` in the whole run).
    public var restartWindow: Double?
    /// Seconds a trainer waits for any word from the broker before it says it hears nothing.
    public var trainerSilence = 15.0
    public init() {}
}

/// The decisions of `fedlm up` about the processes it started: a state machine without I/O.
/// The caller reports each process that exited (with `waitpid`, so a dead process is noticed
/// whatever state it left); `Supervisor` answers with what to do.
///
/// A broker or aggregator that exits while the run goes on has failed, whatever its status; a
/// trainer that exits with status 0 has finished its token budget, any other exit is a failure.
/// A failure restarts the process (`on_failure = "restart"`) after a delay that doubles with each
/// further restart (`restart_delay`, up to `max_restart_delay`), at most `max_restarts` times
/// (within `restart_window` seconds, if set: a crash loop stops the run), or stops the run. The
/// run ends when every trainer has finished.
public struct Supervisor: Sendable {
    public enum Role: Sendable { case broker, aggregator, trainer }

    public enum Action: Equatable, Sendable {
        /// Start this process again after this many seconds.
        case restart(String, after: Double)
        /// Nothing to do (a trainer finished; others still train).
        case none
        /// Stop every process and end the run: `failure` nil when it finished normally.
        case stop(failure: String?)
    }

    public let policy: SupervisionPolicy
    private var roles: [String: Role]
    /// When each process was restarted.
    private var restarts: [String: [Double]] = [:]
    private var finished: Set<String> = []

    public init(policy: SupervisionPolicy, processes: [String: Role]) {
        self.policy = policy
        self.roles = processes
    }

    /// How often `name` was restarted.
    public func restartCount(_ name: String) -> Int { restarts[name, default: []].count }

    /// Process `name` exited at `now` (seconds): `status` its exit status, or nil if a signal
    /// ended it (`signal`).
    public mutating func exited(_ name: String, status: Int32?, signal: Int32? = nil, now: Double = 0) -> Action {
        guard let role = roles[name] else { return .none }
        if role == .trainer, status == 0 {
            finished.insert(name)
            let trainers = roles.filter { $0.value == .trainer }.keys
            return trainers.allSatisfy(finished.contains) ? .stop(failure: nil) : .none
        }
        let how = status.map { "exited with status \($0)" } ?? "was killed by signal \(signal ?? 0)"
        guard policy.onFailure == .restart else { return .stop(failure: "\(name) \(how); on_failure = \"stop\" ends the run") }
        let recent = restarts[name, default: []].filter { restart in policy.restartWindow.map { now - restart <= $0 } ?? true }
        guard recent.count < policy.maxRestarts else {
            if let window = policy.restartWindow {
                return .stop(failure: "\(name) \(how), a crash loop: \(recent.count + 1) failures within \(Int(window)) s (max_restarts, restart_window)")
            }
            return .stop(failure: "\(name) \(how), after \(policy.maxRestarts) restarts (max_restarts)")
        }
        restarts[name, default: []].append(now)
        return .restart(name, after: min(policy.maxRestartDelay, policy.restartDelay * Double(1 << min(recent.count, 20))))
    }
}
