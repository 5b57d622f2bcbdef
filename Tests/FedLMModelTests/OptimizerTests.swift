import FedLMModel
import FedLMTensor
import Foundation
import XCTest

/// Optimizers and schedules on exact numbers, computed here independently in Double from the
/// published update rules (torch.optim.AdamW / SGD documentation).
final class OptimizerTests: XCTestCase {
    let config = GPT2Config(layers: 1, embedding: 4, heads: 1, context: 2, vocabulary: 3)

    func testAdamWMatchesTheTorchUpdateRuleIncludingSelectiveDecay() {
        let layout = ParameterLayout(config: config)
        let p = ParameterVector(layout: layout), g = ParameterVector(layout: layout)
        for i in 0..<p.count { p.pointer[i] = Float(i % 7) * 0.1 - 0.3; g.pointer[i] = Float(i % 5) * 0.02 - 0.04 }
        let start = p.storage.array.map(Double.init)
        let grads = [0, 1].map { step in (0..<g.count).map { Double(g.pointer[$0]) * (step == 0 ? 1 : -0.5) } }
        let adam = AdamW(layout: layout, beta1: 0.9, beta2: 0.95, epsilon: 1e-8, weightDecay: 0.1)
        let lr = 0.01
        // Reference in Double.
        var ref = start, m = [Double](repeating: 0, count: p.count), v = m
        for (t, grad) in grads.enumerated() {
            for e in layout.entries {
                for i in e.range {
                    if e.decays { ref[i] -= lr * 0.1 * ref[i] }
                    m[i] = 0.9 * m[i] + 0.1 * grad[i]
                    v[i] = 0.95 * v[i] + 0.05 * grad[i] * grad[i]
                    let mh = m[i] / (1 - pow(0.9, Double(t + 1))), vh = v[i] / (1 - pow(0.95, Double(t + 1)))
                    ref[i] -= lr * mh / (vh.squareRoot() + 1e-8)
                }
            }
        }
        for grad in grads {
            for i in 0..<g.count { g.pointer[i] = Float(grad[i]) }
            adam.update(parameters: p, gradients: g, learningRate: Float(lr))
        }
        for i in 0..<p.count { XCTAssertEqual(Double(p.pointer[i]), ref[i], accuracy: 1e-6, "parameter \(i)") }
        XCTAssertEqual(adam.step, 2)
        // Decay really is selective: a LayerNorm gain with zero gradient keeps its value, a
        // matrix entry with zero gradient shrinks.
        XCTAssertTrue(layout["transformer.h.0.attn.c_attn.weight"].decays)
        XCTAssertFalse(layout["transformer.h.0.ln_1.weight"].decays)
        XCTAssertFalse(layout["transformer.wte.weight"].decays)
        XCTAssertFalse(layout["transformer.h.0.attn.c_attn.bias"].decays)
    }

    func testSGDWithMomentumMatchesTheTorchUpdateRule() {
        let layout = ParameterLayout(config: config)
        let p = ParameterVector(layout: layout), g = ParameterVector(layout: layout)
        for i in 0..<p.count { p.pointer[i] = 1 }
        let sgd = SGD(layout: layout, momentum: 0.9, weightDecay: 0)
        for i in 0..<g.count { g.pointer[i] = 1 }
        sgd.update(parameters: p, gradients: g, learningRate: 0.1)  // b = 1, p = 0.9
        sgd.update(parameters: p, gradients: g, learningRate: 0.1)  // b = 1.9, p = 0.71
        for i in 0..<p.count { XCTAssertEqual(p.pointer[i], 0.71, accuracy: 1e-6) }
    }

    func testScheduleWarmsUpLinearlyThenDecaysByCosine() {
        let s = LearningRateSchedule(peak: 1, minimum: 0.1, warmupSteps: 10, maxSteps: 110)
        XCTAssertEqual(s.rate(at: 0), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.rate(at: 9), 1.0, accuracy: 1e-6)
        XCTAssertEqual(s.rate(at: 10), 1.0, accuracy: 1e-6)
        XCTAssertEqual(s.rate(at: 60), 0.55, accuracy: 1e-6)  // half-way: min + (peak - min) / 2
        XCTAssertEqual(s.rate(at: 110), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.rate(at: 500), 0.1, accuracy: 1e-6)
    }

    func testGlobalNormClippingScalesOnlyWhenAboveTheBound() {
        let layout = ParameterLayout(config: config)
        let g = ParameterVector(layout: layout)
        for i in 0..<g.count { g.pointer[i] = 0.5 }
        let expectedNorm = (0.25 * Double(g.count)).squareRoot()
        XCTAssertEqual(Double(GradientClipping.clip(g, maxNorm: 1)), expectedNorm, accuracy: 1e-4)
        XCTAssertEqual(GradientClipping.norm(g), 1, accuracy: 1e-4)
        let before = g.storage.array
        GradientClipping.clip(g, maxNorm: 10)
        XCTAssertEqual(g.storage.array, before)
    }
}
