import FedLMTensor
import Foundation
import XCTest

/// The vectorised transcendental functions against libm.
final class VectorMathTests: XCTestCase {
    func testExpMatchesLibmAcrossTheUsefulRange() {
        var worst = 0.0
        var x: Float = -87
        while x < 88 {
            let v = SIMD8<Float>((0..<8).map { x + Float($0) * 0.013 })
            let ours = VectorMath.exp(v)
            for i in 0..<8 {
                let reference = Foundation.exp(Double(v[i]))
                let relative = abs(Double(ours[i]) - reference) / reference
                worst = max(worst, relative)
            }
            x += 0.37
        }
        XCTAssertLessThan(worst, 3e-7, "worst relative error of exp")
        XCTAssertEqual(VectorMath.exp(-200), 0, accuracy: 1e-37)
        XCTAssertEqual(VectorMath.exp(0), 1)
    }

    func testTanhMatchesLibm() {
        var worst = 0.0
        for i in -4000...4000 {
            let x = Float(i) * 0.005
            worst = max(worst, abs(Double(VectorMath.tanh(x)) - Foundation.tanh(Double(x))))
        }
        XCTAssertLessThan(worst, 2e-7, "worst absolute error of tanh")
        XCTAssertEqual(VectorMath.tanh(50), 1)
        XCTAssertEqual(VectorMath.tanh(-50), -1)
    }
}
