import CFedLMRuntime
import FedLMTensor
import XCTest

final class BLASRuntimeTests: XCTestCase {
    func testCoreTypeFollowsCPUFeatures() {
        let avx2 = UInt32(FEDLM_CPU_AVX2 | FEDLM_CPU_FMA | FEDLM_CPU_OS_AVX | FEDLM_CPU_AVX)
        let avx512 = avx2 | UInt32(FEDLM_CPU_AVX512F | FEDLM_CPU_AVX512DQ | FEDLM_CPU_AVX512BW | FEDLM_CPU_AVX512VL
            | FEDLM_CPU_OS_AVX512)
        XCTAssertEqual(BLASRuntime.preferredCoreType(features: avx512), "SkylakeX")
        XCTAssertEqual(BLASRuntime.preferredCoreType(features: avx2), "Haswell")
        // AVX-512 in the CPU but not enabled by the OS: do not pick AVX-512 kernels.
        XCTAssertEqual(BLASRuntime.preferredCoreType(features: avx512 & ~UInt32(FEDLM_CPU_OS_AVX512)), "Haswell")
        XCTAssertNil(BLASRuntime.preferredCoreType(features: UInt32(FEDLM_CPU_SSE3)))
    }

    func testThisCPUReportsFeaturesConsistentWithItsCore() {
        let features = BLASRuntime.cpuFeatures
        #if arch(x86_64)
        XCTAssertNotEqual(features & UInt32(FEDLM_CPU_SSE3), 0, "every x86-64 CPU FedLM runs on has SSE3")
        #endif
        print("CPU features 0x\(String(features, radix: 16)); OpenBLAS core \(BLASRuntime.coreName); FedLM would pick \(BLASRuntime.preferredCoreType(features: features) ?? "nothing")")
    }
}
