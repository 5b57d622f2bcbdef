import Dispatch
import Foundation

/// How many threads FedLM's kernels split their work over (default: the active cores).
///
/// OpenBLAS itself runs single-threaded; FedLM splits every GEMM and elementwise kernel over
/// these threads instead, so OpenBLAS's spinning worker threads never compete with ours for
/// the cores, and the split (hence every floating-point sum) is deterministic.
public enum ComputeThreads {
    nonisolated(unsafe) private static var configured: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    public static var count: Int { configured }
    public static func set(_ n: Int) {
        precondition(n >= 1, "thread count must be at least 1")
        configured = n
    }
}

/// Runs `body(part, partCount)` for every part in `0..<partCount` concurrently, each on a thread
/// with flush-to-zero enabled. The calling thread takes part of the work.
@inline(__always)
public func parallel(parts: Int = ComputeThreads.count, _ body: (Int) -> Void) {
    if parts <= 1 {
        FlushToZero.enable()
        body(0)
        return
    }
    WorkerPool.shared.run(parts: parts, body)
}

/// Splits `0..<count` into `ComputeThreads.count` contiguous ranges (aligned to `granularity`)
/// and runs `body` on each concurrently.
@inline(__always)
public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Range<Int>) -> Void) {
    let parts = min(ComputeThreads.count, max(1, count / max(granularity, 1)))
    if parts <= 1 {
        FlushToZero.enable()
        body(0..<count)
        return
    }
    parallel(parts: parts) { part in
        body(chunk(part, of: parts, count: count, granularity: granularity))
    }
}

/// The `part`-th of `parts` contiguous ranges covering `0..<count`, boundaries on multiples
/// of `granularity` (the last range takes the remainder).
@inline(__always)
public func chunk(_ part: Int, of parts: Int, count: Int, granularity: Int = 1) -> Range<Int> {
    let units = (count + granularity - 1) / granularity
    let lo = min(count, (units * part / parts) * granularity)
    let hi = part == parts - 1 ? count : min(count, (units * (part + 1) / parts) * granularity)
    return lo..<hi
}

