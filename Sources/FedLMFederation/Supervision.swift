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
    /// Restarts of one process before the run stops instead.
    public var maxRestarts = 3
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
/// A failure restarts the process (`on_failure = "restart"`, at most `max_restarts` times each)
/// or stops the run. The run ends when every trainer has finished.
public struct Supervisor: Sendable {
    public enum Role: Sendable { case broker, aggregator, trainer }

    public enum Action: Equatable, Sendable {
        /// Start this process again.
        case restart(String)
        /// Nothing to do (a trainer finished; others still train).
        case none
        /// Stop every process and end the run: `failure` nil when it finished normally.
        case stop(failure: String?)
    }

    public let policy: SupervisionPolicy
    private var roles: [String: Role]
    private var restarts: [String: Int] = [:]
    private var finished: Set<String> = []

    public init(policy: SupervisionPolicy, processes: [String: Role]) {
        self.policy = policy
        self.roles = processes
    }

    /// How often `name` was restarted.
    public func restartCount(_ name: String) -> Int { restarts[name, default: 0] }

    /// Process `name` exited: `status` its exit status, or nil if a signal ended it (`signal`).
    public mutating func exited(_ name: String, status: Int32?, signal: Int32? = nil) -> Action {
        guard let role = roles[name] else { return .none }
        if role == .trainer, status == 0 {
            finished.insert(name)
            let trainers = roles.filter { $0.value == .trainer }.keys
            return trainers.allSatisfy(finished.contains) ? .stop(failure: nil) : .none
        }
        let how = status.map { "exited with status \($0)" } ?? "was killed by signal \(signal ?? 0)"
        guard policy.onFailure == .restart else { return .stop(failure: "\(name) \(how); on_failure = \"stop\" ends the run") }
        guard restarts[name, default: 0] < policy.maxRestarts else {
            return .stop(failure: "\(name) \(how), after \(policy.maxRestarts) restarts (max_restarts)")
        }
        restarts[name, default: 0] += 1
        return .restart(name)
    }
}
