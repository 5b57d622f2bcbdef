import Foundation

/// A child process started with `posix_spawn`, its output appended to a log file, reaped with
/// `waitpid` by whoever polls it: an exit is seen within one poll whatever the child left behind
/// (a process that aborted is a zombie until reaped, and looks alive to anyone who only asks
/// whether its pid exists).
final class ChildProcess {
    let name: String
    let pid: pid_t
    /// Exit status, or nil while running (and when a signal ended it: see `signal`).
    private(set) var status: Int32?
    private(set) var signal: Int32?
    private(set) var exited = false
    /// CPU seconds (user and system, all threads) it used, once it has exited.
    private(set) var cpuSeconds = 0.0

    /// The environment variable that tells a child in its own process group whose death it
    /// follows (`FedLM.main` asks the kernel for SIGTERM when that parent exits).
    static let parentVariable = "FEDLM_PARENT_PID"

    /// Starts `executable` with `arguments`, stdout and stderr appended to `log`. With
    /// `ownProcessGroup` the child gets a process group of its own, so a terminal's Ctrl-C reaches
    /// only this process, which then stops its children in the order it chooses; the child is
    /// told to stop when this process exits, however it exits.
    init(name: String, executable: String, arguments: [String], log: String, ownProcessGroup: Bool = false) throws {
        self.name = name
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var environment = ProcessInfo.processInfo.environment
        if ownProcessGroup {
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
            posix_spawnattr_setpgroup(&attributes, 0)
            environment[Self.parentVariable] = String(getpid())
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw RunFailure("cannot start \(name) (\(executable)): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// Reaps the child if it has exited; true once it has.
    @discardableResult
    func poll() -> Bool {
        guard !exited else { return true }
        var raw: Int32 = 0
        var usage = rusage()
        guard wait4(pid, &raw, WNOHANG, &usage) == pid else { return false }
        exited = true
        cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (the C macros do not import).
        if raw & 0x7f == 0 { status = (raw >> 8) & 0xff } else { signal = raw & 0x7f }
        return true
    }

    var isRunning: Bool { !poll() }

    func send(_ sig: Int32) { if !exited { kill(pid, sig) } }

    /// How it ended, in words.
    var ending: String {
        if let status { return "exited with status \(status)" }
        if let signal { return "was killed by signal \(signal)" }
        return "is running"
    }
}

/// Stops processes: SIGTERM (graceful), then SIGKILL for any still running after `grace`
/// seconds or as soon as `hurry()` says so (a second Ctrl-C); returns when all are reaped.
func stop(_ processes: [ChildProcess], grace: Double, hurry: () -> Bool = { false }) {
    processes.forEach { $0.send(SIGTERM) }
    let deadline = Date().addingTimeInterval(grace)
    while processes.contains(where: \.isRunning), Date() < deadline, !hurry() { usleep(50_000) }
    for p in processes where p.isRunning { p.send(SIGKILL) }
    while processes.contains(where: \.isRunning) { usleep(10_000) }
}
