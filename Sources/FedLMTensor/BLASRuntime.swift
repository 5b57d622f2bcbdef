import CFedLMRuntime
import COpenBLAS
import Foundation

/// Makes sure OpenBLAS runs its fast kernels, and says which ones it runs.
///
/// OpenBLAS picks its kernels ("core type") once, when the library loads. Debian's 0.3.21 does
/// not know recent CPUs and falls back to the generic "Prescott" kernels, 4-5x slower than
/// what the CPU can do. OpenBLAS honours `OPENBLAS_CORETYPE`, but only at load time, so
/// `ensureFastKernels` chooses a core type from the CPU's own features and, if the library
/// already loaded with a slow one, re-executes the program with the variable set.
public enum BLASRuntime {
    /// The core type OpenBLAS runs, e.g. "Haswell", "SkylakeX", "Prescott".
    public static var coreName: String { String(cString: openblas_get_corename()) }
    /// OpenBLAS's build description, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64".
    public static var configuration: String { String(cString: openblas_get_config()) }

    /// OpenBLAS's fallback kernels: fine on the CPUs they were written for, slow on anything with AVX2.
    static let genericCores: Set<String> = ["prescott", "core2", "katmai", "coppermine", "northwood",
                                            "banias", "penryn", "dunnington", "nehalem", "atom", "unknown"]

    /// The best OpenBLAS core type for a CPU with `features` (a `fedlm_cpu_features()` bit set),
    /// or nil when the CPU has nothing better than the generic kernels.
    public static func preferredCoreType(features: UInt32) -> String? {
        func has(_ bits: Int32) -> Bool { features & UInt32(bits) == UInt32(bits) }
        let avx512 = Int32(FEDLM_CPU_AVX512F | FEDLM_CPU_AVX512DQ | FEDLM_CPU_AVX512BW | FEDLM_CPU_AVX512VL
            | FEDLM_CPU_OS_AVX512)
        let avx2 = Int32(FEDLM_CPU_AVX2 | FEDLM_CPU_FMA | FEDLM_CPU_OS_AVX)
        if has(avx512) { return "SkylakeX" }
        if has(avx2) { return "Haswell" }
        return nil
    }

    public static var cpuFeatures: UInt32 { fedlm_cpu_features() }

    /// What `ensureFastKernels` found and did, for the log.
    public enum KernelChoice: Equatable, Sendable {
        /// `OPENBLAS_CORETYPE` was set by the user or environment; FedLM leaves it alone.
        case setByEnvironment(String)
        /// OpenBLAS recognised the CPU by itself.
        case autoDetected(String)
        /// FedLM set `OPENBLAS_CORETYPE` and re-executed; OpenBLAS now runs this core.
        case chosenByFedLM(core: String, libraryFallback: String)
        /// The library runs generic kernels and the CPU offers nothing better.
        case generic(String)
    }

    static let reexecMarker = "FEDLM_BLAS_REEXEC_FROM"

    /// Call first thing in `main`. If OpenBLAS loaded its generic kernels on a CPU that has
    /// AVX2/AVX-512 and the user did not choose a core type, sets `OPENBLAS_CORETYPE` and
    /// replaces the process with a fresh copy of itself (same arguments), which then loads the
    /// fast kernels. Returns what it found; never returns in the re-exec case.
    @discardableResult
    public static func ensureFastKernels() -> KernelChoice {
        let env = ProcessInfo.processInfo.environment
        let core = coreName
        if let fallback = env[reexecMarker] {
            return .chosenByFedLM(core: core, libraryFallback: fallback)
        }
        if let set = env["OPENBLAS_CORETYPE"], !set.isEmpty {
            return .setByEnvironment(core)
        }
        // FEDLM_SIMULATE_GENERIC_BLAS=1 treats the loaded core as a generic fallback, so tests can
        // drive the re-exec path on machines whose CPU OpenBLAS does recognise.
        let simulate = env["FEDLM_SIMULATE_GENERIC_BLAS"] == "1"
        guard simulate || genericCores.contains(core.lowercased()) else { return .autoDetected(core) }
        guard let better = preferredCoreType(features: cpuFeatures) else { return .generic(core) }
        setenv("OPENBLAS_CORETYPE", better, 1)
        setenv(reexecMarker, core, 1)
        let args = CommandLine.arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cArgs.append(nil)
        execv("/proc/self/exe", &cArgs)
        // execv only returns on failure; carry on with the slow kernels rather than dying.
        unsetenv(reexecMarker)
        return .generic(core)
    }

    /// One line for the log, naming the core type and how it was chosen.
    public static func describe(_ choice: KernelChoice) -> String {
        switch choice {
        case .setByEnvironment(let core):
            return "OpenBLAS core \(core) (OPENBLAS_CORETYPE set by the environment)"
        case .autoDetected(let core):
            return "OpenBLAS core \(core) (detected by OpenBLAS)"
        case .chosenByFedLM(let core, let fallback):
            return "OpenBLAS core \(core) (chosen by FedLM from CPU features; OpenBLAS alone had picked the slow \(fallback) kernels)"
        case .generic(let core):
            return "OpenBLAS core \(core) (generic kernels: this CPU has no AVX2)"
        }
    }

    /// OpenBLAS runs single-threaded; FedLM splits its work across threads itself (see `Gemm`).
    public static func configureThreads() {
        openblas_set_num_threads(1)
    }
}
