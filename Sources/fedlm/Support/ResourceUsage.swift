import FedLMTensor
import Foundation

/// Process memory figures from /proc (Linux).
enum ResourceUsage {
    static var peakResidentBytes: Int? { ProcessMemory.peakResidentBytes }
    static var residentBytes: Int? { ProcessMemory.residentBytes }
}

func formatBytes(_ bytes: Int) -> String {
    String(format: "%.0f MiB", Double(bytes) / 1_048_576)
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    if s.isEmpty { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// CPU time used by this process's threads (Linux `/proc/self/task/*/schedstat`, nanoseconds),
/// to say where the time of a benchmark goes: libzmq's I/O threads or everything else.
struct ThreadCPU {
    /// Seconds per thread id, with the thread's name.
    private(set) var threads: [Int: (name: String, seconds: Double)] = [:]

    static func now() -> ThreadCPU {
        var sample = ThreadCPU()
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            guard let id = Int(task),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(task)/schedstat", encoding: .utf8),
                  let ns = stat.split(separator: " ").first.flatMap({ Double($0) }) else { continue }
            let name = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
            sample.threads[id] = (name.trimmingCharacters(in: .whitespacesAndNewlines), ns / 1e9)
        }
        return sample
    }

    /// CPU seconds since `earlier`: (libzmq I/O threads, all other threads). Threads that ended
    /// in between are not counted.
    func since(_ earlier: ThreadCPU) -> (zmq: Double, other: Double) {
        var zmq = 0.0, other = 0.0
        for (id, t) in threads {
            let d = t.seconds - (earlier.threads[id]?.seconds ?? 0)
            if t.name.hasPrefix("ZMQbg") { zmq += d } else { other += d }
        }
        return (zmq, other)
    }
}
