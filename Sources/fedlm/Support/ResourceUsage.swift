import Foundation

/// Process memory figures from /proc (Linux).
enum ResourceUsage {
    /// Peak resident set size in bytes (VmHWM), or nil where /proc is unavailable.
    static var peakResidentBytes: Int? { statusField("VmHWM") }
    static var residentBytes: Int? { statusField("VmRSS") }

    private static func statusField(_ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }
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
