import FedLMTensor
import XCTest

final class ParallelTests: XCTestCase {
    func testChunksCoverTheRangeExactlyOnceOnGranularityBoundaries() {
        for count in [0, 1, 7, 64, 1000, 1023] {
            for parts in 1...5 {
                var covered = [Int](repeating: 0, count: count)
                for part in 0..<parts {
                    let r = chunk(part, of: parts, count: count, granularity: 16)
                    if part < parts - 1 { XCTAssertEqual(r.upperBound % 16 == 0 || r.upperBound == count, true) }
                    for i in r { covered[i] += 1 }
                }
                XCTAssertEqual(covered, [Int](repeating: 1, count: count), "count \(count) parts \(parts)")
            }
        }
    }

    func testEveryWorkerThreadFlushesDenormalsToZero() {
        // MXCSR is per thread: each worker must have FTZ/DAZ set, and a subnormal product must
        // come out as zero there.
        var flags = [Bool](repeating: false, count: 8)
        var products = [Float](repeating: 1, count: 8)
        let tiny: Float = 1e-30
        flags.withUnsafeMutableBufferPointer { f in
            products.withUnsafeMutableBufferPointer { p in
                parallel(parts: 8) { part in
                    f[part] = FlushToZero.isEnabled
                    p[part] = tiny * tiny * Float(part + 1)  // 1e-60: subnormal-or-zero territory
                }
            }
        }
        XCTAssertEqual(flags, [Bool](repeating: true, count: 8))
        XCTAssertEqual(products, [Float](repeating: 0, count: 8))
        // And a genuinely subnormal input is read as zero (DAZ) on every worker.
        var scaled = [Float](repeating: 1, count: 4)
        scaled.withUnsafeMutableBufferPointer { out in
            parallel(parts: 4) { part in
                let denormal = Float(bitPattern: 1)  // the smallest positive subnormal
                out[part] = denormal * 1e30
            }
        }
        XCTAssertEqual(scaled, [0, 0, 0, 0])
    }
}
