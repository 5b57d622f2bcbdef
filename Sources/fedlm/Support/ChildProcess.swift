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

    /// Starts `executable` with `arguments`, stdout and stderr appended to `log`.
    init(name: String, executable: String, arguments: [String], log: String) throws {
        self.name = name
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, nil, argv, environ)
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
