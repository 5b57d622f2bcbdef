import CFedLMRuntime
import Foundation
import Synchronization

/// Persistent compute threads that run the parts of one `parallel` call.
///
/// A training step issues a few hundred short parallel kernels. Waking a sleeping thread costs
/// tens of microseconds per kernel (futex wake plus scheduling), which is several percent of a
/// `tiny` step. These workers spin for a short while after each kernel, so the next one starts
/// at once, and park on a condition variable only when no work comes. Each worker enables
/// flush-to-zero once, at start.
///
/// One caller at a time owns the pool; a nested or concurrent `run` does its parts serially on
/// the calling thread (same results, since every kernel's partition is fixed).
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool(workers: max(0, ProcessInfo.processInfo.activeProcessorCount - 1))

    let workerCount: Int
    private let generation = Atomic<Int>(0)
    private let remaining = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private var job: UnsafeRawPointer?  // points at the current (Int) -> Void, valid during run
    private var parts = 0
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var sleepers = 0

    /// Spin iterations before a worker parks (~50-100 microseconds).
    private let spinLimit = 20_000

    init(workers: Int) {
        workerCount = workers
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        for index in 0..<workers {
            let thread = Thread { [unowned self] in self.workerLoop(index) }
            thread.name = "fedlm-compute-\(index + 1)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Runs body(0..<parts), part 0 on the calling thread. Returns when all parts are done.
    func run(parts: Int, _ body: (Int) -> Void) {
        guard parts > 1, workerCount > 0,
              busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            FlushToZero.enable()
            for part in 0..<parts { body(part) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        let active = min(parts, workerCount + 1)
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { pointer in
                job = UnsafeRawPointer(pointer)
                self.parts = active
                remaining.store(active - 1, ordering: .relaxed)
                generation.add(1, ordering: .releasing)
                pthread_mutex_lock(&mutex)
                if sleepers > 0 { pthread_cond_broadcast(&condition) }
                pthread_mutex_unlock(&mutex)
                FlushToZero.enable()
                body(0)
                // More parts than threads: the caller takes the surplus.
                if parts > active { for part in active..<parts { body(part) } }
                while remaining.load(ordering: .acquiring) > 0 { spinHint() }
                job = nil
            }
        }
    }

    private func workerLoop(_ index: Int) {
        FlushToZero.enable()
        var seen = 0
        while true {
            var spins = 0
            var current = generation.load(ordering: .acquiring)
            while current == seen {
                spins += 1
                if spins < spinLimit {
                    spinHint()
                } else {
                    pthread_mutex_lock(&mutex)
                    sleepers += 1
                    while generation.load(ordering: .acquiring) == seen { pthread_cond_wait(&condition, &mutex) }
                    sleepers -= 1
                    pthread_mutex_unlock(&mutex)
                }
                current = generation.load(ordering: .acquiring)
            }
            seen = current
            let part = index + 1
            if part < parts, let job {
                job.assumingMemoryBound(to: ((Int) -> Void).self).pointee(part)
                remaining.subtract(1, ordering: .releasing)
            }
        }
    }
}

@inline(__always)
func spinHint() { fedlm_cpu_relax() }
