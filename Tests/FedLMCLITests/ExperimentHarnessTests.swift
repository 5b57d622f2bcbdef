import Foundation
import XCTest

/// `fedlm experiment` end to end on a small spec: two federated variants (F32 and INT8 updates)
/// trained by `fedlm up` to the same token budget, and the report's table of bytes per trained
/// token both ways and against data-parallel training beside the held-out loss.
final class ExperimentHarnessTests: XCTestCase {
    func testTheReportPutsBytesPerTokenBesideTheLoss() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let data = try scratch.prepareData(vocab: 280, clusters: ["en": scratch.corpus])
        let model = try scratch.writeModelConfig(layers: 1, embedding: 16, context: 16, vocab: 280, batch: 2, training: "")
        let topology = scratch.dir + "/two.toml"
        try ("name = \"two\"\nmodel = \"\(model)\"\ndata = \"\(data)\"\n" + SmallFederation.fedbuff()
             + SmallFederation.trainer("a", "local_steps = 2") + SmallFederation.trainer("b", "local_steps = 2"))
            .write(toFile: topology, atomically: true, encoding: .utf8)
        let spec = scratch.dir + "/spec.toml"
        try """
            name = "bytes"
            run_directory = "\(scratch.dir)/run"
            model = "\(model)"
            data = "\(data)"
            tokens = 1280
            evaluate_every = 4
            time_limit = 120
            base_port = \(Int.random(in: 20_000...30_000))
            [[variant]]
            name = "f32"
            topology = "\(topology)"
            [[variant]]
            name = "int8"
            topology = "\(topology)"
            [variant.wire]
            updates = "int8"
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        let (status, output) = try FedLMProcess.run(["experiment", spec])
        XCTAssertEqual(status, 0, output)
        let report = try String(contentsOfFile: scratch.dir + "/run/results.md", encoding: .utf8)
        XCTAssertTrue(report.contains("## Bytes per trained token"), report)
        func row(_ variant: String) throws -> [Double] {
            let line = try XCTUnwrap(report.split(separator: "\n").first { $0.hasPrefix("| \(variant) |") && $0.contains("x |") }, report)
            return line.split(separator: "|").dropFirst().map { Double($0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "x", with: "")) ?? .nan }
        }
        let f32 = try row("f32"), int8 = try row("int8")
        // sent, received, fewer than data-parallel, loss
        XCTAssertGreaterThan(f32[0], 0)
        XCTAssertLessThan(int8[0], f32[0] / 2, "INT8 updates send fewer bytes per token: \(int8) against \(f32)")
        XCTAssertGreaterThan(int8[2], f32[2], "and beat data-parallel training by more")
        XCTAssertTrue(f32[3].isFinite && int8[3].isFinite, report)
    }
}
