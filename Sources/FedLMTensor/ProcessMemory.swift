import Foundation

/// This process's memory, from /proc/self/status (Linux): what memory budgets are checked against.
public enum ProcessMemory {
    /// Peak resident set size in bytes (VmHWM), or nil where /proc is unavailable.
    public static var peakResidentBytes: Int? { statusField("VmHWM") }
    /// Resident set size now (VmRSS).
    public static var residentBytes: Int? { statusField("VmRSS") }

    /// Peak and current resident set size in bytes of another process (nil once it has exited).
    public static func residentBytes(pid: Int32) -> (peak: Int, current: Int)? {
        guard let peak = statusField("VmHWM", process: "\(pid)"), let current = statusField("VmRSS", process: "\(pid)") else { return nil }
        return (peak, current)
    }

    /// A "Key:\t  123 kB" line of /proc/<process>/status in bytes (there is no space after the
    /// tab from 10 GB on).
    private static func statusField(_ key: String, process: String = "self") -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(process)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            let parts = line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" })
            if let first = parts.first, let kb = Int(first) { return kb * 1024 }
        }
        return nil
    }
}
