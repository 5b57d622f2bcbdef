import FedLMAggregation
import FedLMCheckpoint
import FedLMFederation
import FedLMLedger
import FedLMModel
import FedLMProtocol
import Foundation
import XCTest

/// The aggregator's logic without sockets, on a real run directory (SQLite ledger, checkpoints).
final class AggregatorCoreTests: XCTestCase {
    var dir = ""
    let modelConfig = GPT2Config(layers: 1, embedding: 8, heads: 2, context: 4, vocabulary: 11)
    var config: AggregationConfig {
        var c = AggregationConfig()
        c.mode = .fedbuff
        c.bufferSize = 2
        c.maxStaleness = 3
        c.checkpointEvery = 3
        return c
    }

    override func setUp() { dir = NSTemporaryDirectory() + "fedlm-agg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func core(_ config: AggregationConfig? = nil) throws -> AggregatorCore {
        try AggregatorCore(runDirectory: dir, config: config ?? self.config, initialModel: try GPT2Model(config: modelConfig, seed: 1))
    }

    func update(_ id: String, base: Int, scale: Float, specs: [TensorSpec], trainer: String = "t1") -> Message {
        let n = specs.reduce(0) { $0 + $1.count }
        return .update(UpdateInfo(updateID: id, trainerID: trainer, baseVersion: base, tokens: 64, localSteps: 4),
                       TensorPayload(specs: specs, values: (0..<n).map { Float($0 % 7) * scale }))
    }

    func reply(_ d: [AggregatorCore.Action]) -> Message? {
        if case .reply(_, let m)? = d.first { return m }
        return nil
    }

    func testUpdatesAreAcknowledgedDedupedAndRefusedWithReasons() throws {
        let c = try core()
        let u = update("u1", base: 0, scale: 0.01, specs: c.specs)
        guard case .error(let e)? = reply(try c.handle(u, from: "peer")) else { return XCTFail() }
        XCTAssertEqual(e.code, .unknownTrainer)
        guard case .welcome(let w)? = reply(try c.handle(.hello(Hello(trainerID: "t1")), from: "peer")) else { return XCTFail() }
        XCTAssertEqual(w.latestVersion, 0)
        XCTAssertEqual(reply(try c.handle(u, from: "peer")), .ack(Ack(updateID: "u1", outcome: .buffered, version: 0)))
        XCTAssertEqual(reply(try c.handle(update("u2", base: 0, scale: 0.02, specs: c.specs), from: "peer")),
                       .ack(Ack(updateID: "u2", outcome: .applied, version: 1)))
        // The same id again: acknowledged as a duplicate, not applied.
        let before = c.model.parameters.storage.array
        XCTAssertEqual(reply(try c.handle(update("u2", base: 0, scale: 0.02, specs: c.specs), from: "peer")),
                       .ack(Ack(updateID: "u2", outcome: .duplicate, version: 1)))
        XCTAssertEqual(c.model.parameters.storage.array, before)
        // Wrong shapes and too stale: refused, recorded, model untouched.
        let wrong = [TensorSpec(name: "transformer.wte.weight", shape: [8, 11])]
        guard case .error(let shape)? = reply(try c.handle(.update(UpdateInfo(updateID: "u3", trainerID: "t1", baseVersion: 1, tokens: 1, localSteps: 1),
                                                                    TensorPayload(specs: wrong, values: [Float](repeating: 0, count: 88))), from: "peer"))
        else { return XCTFail() }
        XCTAssertEqual(shape.code, .shapeMismatch)
        for i in 0..<8 { _ = try c.handle(update("f\(i)", base: c.version, scale: 0.001, specs: c.specs), from: "peer") }
        guard case .error(let stale)? = reply(try c.handle(update("old", base: 0, scale: 0.01, specs: c.specs), from: "peer")) else {
            return XCTFail()
        }
        XCTAssertEqual(stale.code, .tooStale)
        XCTAssertEqual(try c.ledger.updateCount(outcome: .refused), 2)
        XCTAssertEqual(c.model.parameters.storage.array.allSatisfy(\.isFinite), true)
    }

    func testPartialUpdatesAreMergedRecordedAndReplayedBitForBit() throws {
        var expected: [Float] = []
        var specs: [TensorSpec] = []
        let top = ["transformer.ln_f.weight", "transformer.ln_f.bias"]
        do {
            let c = try core()
            specs = c.specs
            let partial = specs.filter { top.contains($0.name) || $0.name.hasPrefix("transformer.h.0.mlp.") }
            _ = try c.handle(.hello(Hello(trainerID: "t1")), from: "p")
            let before = c.model.parameters.storage.array
            XCTAssertEqual(reply(try c.handle(update("p1", base: 0, scale: 0.01, specs: partial), from: "p")),
                           .ack(Ack(updateID: "p1", outcome: .buffered, version: 0)))
            XCTAssertEqual(reply(try c.handle(update("p2", base: 0, scale: 0.02, specs: partial), from: "p")),
                           .ack(Ack(updateID: "p2", outcome: .applied, version: 1)))
            // Only the carried tensors moved.
            let after = c.model.parameters.storage.array
            for e in c.model.layout.entries {
                let moved = e.range.contains { before[$0] != after[$0] }
                XCTAssertEqual(moved, partial.contains { $0.name == e.name }, e.name)
            }
            // A whole update and a partial one in the same buffer, then one left buffered.
            _ = try c.handle(update("w1", base: 1, scale: 0.01, specs: specs), from: "p")
            _ = try c.handle(update("p3", base: 1, scale: 0.03, specs: partial), from: "p")
            _ = try c.handle(update("p4", base: 2, scale: 0.03, specs: partial), from: "p")
            XCTAssertEqual(c.version, 2)
            XCTAssertEqual(try c.ledger.updateCount(outcome: .applied) + c.ledger.updateCount(outcome: .buffered), 5)
            expected = c.model.parameters.storage.array
        }
        // A restart replays the partial updates after the checkpoint, the buffered one included.
        let reopened = try core()
        XCTAssertEqual(reopened.version, 2)
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), expected.map(\.bitPattern))

        // Tensors the model lacks, twice or out of order, or of another shape: refused, naming the tensor.
        _ = try reopened.handle(.hello(Hello(trainerID: "t1")), from: "p")
        let lnf = specs.filter { top.contains($0.name) }
        for (id, bad, says) in [("b1", [TensorSpec(name: "transformer.h.9.ln_1.weight", shape: [8])], "no tensor named transformer.h.9.ln_1.weight"),
                                ("b2", Array(lnf.reversed()), "out of the model's order"),
                                ("b3", [TensorSpec(name: "transformer.ln_f.weight", shape: [4, 2])], "tensor transformer.ln_f.weight [4, 2], expected [8]")] {
            guard case .error(let e)? = reply(try reopened.handle(update(id, base: 2, scale: 0.01, specs: bad), from: "p")) else { return XCTFail(id) }
            XCTAssertEqual(e.code, .shapeMismatch, id)
            XCTAssertTrue(e.detail.contains(says), "\(id): \(e.detail)")
        }
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), expected.map(\.bitPattern))
    }

    func testRestartRestoresTheExactModelByReplayingAfterTheNewestGoodCheckpoint() throws {
        var specs: [TensorSpec] = []
        var expected: [Float] = []
        var version = 0
        do {
            let c = try core()
            specs = c.specs
            _ = try c.handle(.hello(Hello(trainerID: "t1")), from: "p")
            for i in 0..<9 {  // 4 versions (K = 2), checkpoints at v0 and v3, one update buffered
                _ = try c.handle(update("u\(i)", base: max(0, c.version - 1), scale: 0.01 * Float(i + 1), specs: specs), from: "p")
            }
            expected = c.model.parameters.storage.array
            version = c.version
            XCTAssertEqual(version, 4)
        }
        // Reopen: checkpoint v3, then replay of the updates after it (including the buffered one).
        let reopened = try core()
        XCTAssertEqual(reopened.version, version)
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), expected.map(\.bitPattern))
        // One more update on each: identical, so the buffered state was restored too.
        _ = try reopened.handle(.hello(Hello(trainerID: "t1")), from: "p")
        XCTAssertEqual(reply(try reopened.handle(update("u9", base: version, scale: 0.05, specs: specs), from: "p")),
                       .ack(Ack(updateID: "u9", outcome: .applied, version: version + 1)))
        let afterOne = reopened.model.parameters.storage.array

        // Corrupt the newest checkpoint: the restart falls back to the previous one and replays more.
        let newest = try reopened.ledger.versions()[0].checkpointPath
        var data = try Data(contentsOf: URL(fileURLWithPath: newest + "/model.safetensors"))
        data[data.count - 1] ^= 0xFF
        try data.write(to: URL(fileURLWithPath: newest + "/model.safetensors"))
        let fallback = try core()
        XCTAssertEqual(fallback.version, version + 1)
        XCTAssertEqual(fallback.model.parameters.storage.array.map(\.bitPattern), afterOne.map(\.bitPattern))
        // The fallback wrote a good checkpoint of where it is, so the next restart starts there.
        let rewritten = try fallback.ledger.versions()[0]
        XCTAssertEqual(rewritten.number, version + 1)
        XCTAssertEqual(try Checkpoint.sha256(ofFile: rewritten.checkpointPath + "/model.safetensors"), rewritten.sha256)
        XCTAssertEqual(try core().model.parameters.storage.array.map(\.bitPattern), afterOne.map(\.bitPattern))
    }

    /// Compressed updates arrive as a stream, are decoded chunk by chunk into the aggregator's
    /// delta files and applied; a restart replays those files to the same model, bit for bit,
    /// and what was applied is exactly what the sender's payload decodes to.
    func testCompressedUpdatesReplayToTheSameModelBitForBit() throws {
        var codec = WireCodec()
        codec.chunkBytes = 256  // 64 values a chunk: several chunks per update
        var expected: [Float] = []
        var version = 0
        var applied: [[Float]] = []
        var uncheckpointed = config
        uncheckpointed.checkpointEvery = 100  // every update replays from its delta file
        do {
            let c = try core(uncheckpointed)
            nonisolated(unsafe) let core = c
            _ = try c.handle(.hello(Hello(trainerID: "t1")), from: "p")
            var residual = [Float](repeating: 0, count: c.model.parameters.count)
            let encodings = [Compression(.int8), Compression(.topk, density: 0.1, bits: 2), Compression(.bf16), Compression(.f16)]
            for i in 0..<7 {
                let n = c.model.parameters.count
                let delta = (0..<n).map { Float(($0 * 7 + i * 13) % 23 - 11) * 1e-3 }
                let compression = encodings[i % encodings.count]
                let encoded = delta.withUnsafeBufferPointer { d in residual.withUnsafeMutableBufferPointer { compression.encode(d, chunkBytes: 256, residual: $0) } }
                let payload = TensorPayload(specs: c.specs, encoded: encoded)
                applied.append(payload.values)
                var assembler = StreamAssembler(codec: codec)
                assembler.destinations = { info, count in core.incomingUpdate(info, count: count) }
                var message: Message?
                for m in MessageStream.split(codec.encode(.update(UpdateInfo(updateID: "c\(i)", trainerID: "t1", baseVersion: max(0, c.version - 1),
                                                                              tokens: 64, localSteps: 4), payload))) {
                    message = try assembler.accept(m)
                }
                guard case .update(_, let received)? = message else { return XCTFail("update \(i) did not assemble") }
                XCTAssertNotNil(received.destination, "decoded straight into the update's delta file")
                XCTAssertEqual(received.values.map(\.bitPattern), applied[i].map(\.bitPattern))
                guard case .ack? = reply(try c.handle(message!, from: "p")) else { return XCTFail("update \(i) not acknowledged") }
            }
            expected = c.model.parameters.storage.array
            version = c.version
            XCTAssertEqual(version, 3, "seven updates at K = 2: three versions, one buffered")
        }
        let reopened = try core(uncheckpointed)
        XCTAssertEqual(try reopened.ledger.versions().map(\.number), [0], "only the initial checkpoint: all seven replay")
        XCTAssertEqual(reopened.version, version)
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), expected.map(\.bitPattern))
    }

    /// Streaming application: updates folded into FedBuff's buffer chunk by chunk as they arrive
    /// (never held whole) give the model that applying them whole, in the order they completed,
    /// gives (to float rounding): also when other updates complete the buffer and a checkpoint is
    /// taken while one is half in, when one is abandoned midway, and when one holds a NaN. A
    /// restart replays to the same model.
    func testUpdatesFoldedInWhileTheyStreamGiveTheModelOfWholeUpdates() throws {
        let shape = GPT2Config(layers: 1, embedding: 32, heads: 2, context: 8, vocabulary: 64)
        var k3 = config
        k3.bufferSize = 3
        k3.checkpointEvery = 100
        k3.maxStaleness = 50
        var codec = WireCodec()
        codec.chunkBytes = 8192  // two pages a chunk: each chunk's memory is given back
        func open(_ name: String) throws -> AggregatorCore {
            try AggregatorCore(runDirectory: dir + "/" + name, config: k3, initialModel: try GPT2Model(config: shape, seed: 1))
        }
        let folding = try open("folding"), whole = try open("whole")
        folding.foldingBytes = 0
        whole.foldingBytes = .max
        for c in [folding, whole] { _ = try c.handle(.hello(Hello(trainerID: "t1")), from: "p") }
        let n = folding.model.parameters.count
        func message(_ i: Int, base: Int, nan: Bool = false) -> Message {
            var v = (0..<n).map { Float(($0 * 7 + i * 13) % 23 - 11) * 1e-3 }
            if nan { v[n / 2] = .nan }
            return .update(UpdateInfo(updateID: "u\(i)", trainerID: "t1", baseVersion: base, tokens: 64, localSteps: 4),
                           TensorPayload(specs: folding.specs, values: v))
        }
        nonisolated(unsafe) let f = folding
        func assembler() -> StreamAssembler {
            var a = StreamAssembler(codec: codec)
            a.destinations = { info, count in f.incomingUpdate(info, count: count) }
            return a
        }
        func streamed(_ m: Message, _ a: inout StreamAssembler, parts: Range<Int>? = nil) throws -> Message? {
            let messages = MessageStream.split(codec.encode(m))
            var out: Message?
            for part in messages[parts ?? messages.indices] { out = try a.accept(part) }
            return out
        }
        func deliver(_ i: Int, base: Int) throws {
            var a = assembler()
            let m = try XCTUnwrap(try streamed(message(i, base: base), &a), "u\(i) assembled")
            guard case .ack? = reply(try folding.handle(m, from: "p")) else { return XCTFail("u\(i) folded not acknowledged") }
            guard case .ack? = reply(try whole.handle(message(i, base: base), from: "p")) else { return XCTFail("u\(i) whole not acknowledged") }
        }
        try deliver(0, base: 0)
        // u1 streams in halfway (folded); u2 and u3 complete meanwhile (assembled: one fold at a
        // time) and step the model; a checkpoint is taken; then u1 completes, one version stale.
        var a1 = assembler()
        let u1 = message(1, base: 0)
        let half = MessageStream.split(codec.encode(u1)).count / 2
        XCTAssertNil(try streamed(u1, &a1, parts: 0..<half))
        try deliver(2, base: 0)
        try deliver(3, base: 0)
        XCTAssertEqual(folding.version, 1)
        try folding.checkpoint()
        let rest = try XCTUnwrap(try streamed(u1, &a1, parts: half..<MessageStream.split(codec.encode(u1)).count))
        guard case .ack? = reply(try folding.handle(rest, from: "p")) else { return XCTFail("u1 not acknowledged") }
        guard case .ack? = reply(try whole.handle(u1, from: "p")) else { return XCTFail("u1 whole not acknowledged") }
        // u4 is abandoned halfway (its transfer dropped); u5 holds a NaN.
        do {
            var a4 = assembler()
            XCTAssertNil(try streamed(message(4, base: 1), &a4, parts: 0..<half))
        }
        var a5 = assembler()
        XCTAssertThrowsError(try streamed(message(5, base: 1, nan: true), &a5), "a NaN is refused")
        try deliver(6, base: 1)
        try deliver(7, base: 1)
        XCTAssertEqual(folding.version, 2)
        XCTAssertEqual(whole.version, 2)
        func maxDifference(_ a: AggregatorCore, _ b: AggregatorCore) -> Float {
            zip(a.model.parameters.storage.array, b.model.parameters.storage.array).map { abs($0 - $1) }.max() ?? .infinity
        }
        XCTAssertLessThan(maxDifference(folding, whole), 1e-6, "folded as they streamed = applied whole")
        XCTAssertGreaterThan(zip(folding.model.parameters.storage.array, try GPT2Model(config: shape, seed: 1).parameters.storage.array)
            .map { abs($0 - $1) }.max()!, 1e-3, "the updates moved the model")
        XCTAssertEqual(try folding.ledger.acceptedUpdateIDs(), ["u0", "u1", "u2", "u3", "u6", "u7"])
        let reopened = try open("folding")
        XCTAssertEqual(reopened.version, 2)
        XCTAssertLessThan(maxDifference(reopened, folding), 1e-6, "a restart replays the folded updates to the same model")
    }

    /// With release steps, a trainer that holds version u receives compressed steps to the
    /// current version and, adding them in order, holds exactly the aggregator's published model;
    /// the published model tracks the aggregator's own (error feedback on the server side).
    func testReleaseStepsRebuildThePublishedModelBitForBit() throws {
        var c1 = config
        c1.bufferSize = 1
        let c = try core(c1)
        c.releaseSteps = Compression(.topk, density: 0.1, bits: 4)
        let codec = WireCodec()
        _ = try c.handle(.hello(Hello(trainerID: "t1")), from: "p")
        guard case .release(let first, let whole) = c.release() else { return XCTFail() }
        XCTAssertNil(first.stepFrom)
        var held = whole.values
        var holds = first.version
        for round in 0..<6 {
            _ = try c.handle(update("s\(round)", base: c.version, scale: 0.003 * Float(round + 1), specs: c.specs), from: "p")
            _ = c.release()  // published after each version, as the service does: one step per version
            if round % 2 == 0 { continue }  // the trainer skips a version now and then: two steps to catch up
            XCTAssertEqual(try c.handle(.fetch(Fetch(holds: holds)), from: "p"), [.sendReleaseSteps(to: "p", from: holds)])
            let steps = c.releaseSteps(from: holds)
            XCTAssertEqual(steps.count, 2)
            var assembler = StreamAssembler(codec: codec)
            for message in steps {
                var received: Message?
                for m in MessageStream.split(codec.encode(message)) { received = try assembler.accept(m) }
                guard case .release(let info, let payload)? = received else { return XCTFail("a step did not arrive") }
                XCTAssertEqual(info.stepFrom, holds)
                XCTAssertEqual(info.through, c.version)
                PublishedModel.add(payload, to: &held)
                holds = info.version
            }
            guard case .release(let now, let published) = c.release() else { return XCTFail() }
            XCTAssertEqual(now.version, holds)
            XCTAssertEqual(held.map(\.bitPattern), published.values.map(\.bitPattern), "round \(round): exactly the published model")
            let model = c.model.parameters.storage.array
            let gap = zip(model, held).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +).squareRoot()
            let moved = zip(model, whole.values).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +).squareRoot()
            XCTAssertLessThan(gap, moved, "round \(round): the published model follows the aggregator's")
        }
        XCTAssertEqual(try c.handle(.fetch(Fetch(holds: -5)), from: "p"), [.sendRelease(to: "p", cluster: nil)],
                       "a version no longer kept: the whole release")
    }

    /// With `norm_policy = "refuse"` an update above the bound is refused with its norm, recorded
    /// with it, and changes nothing; one below the bound is applied as usual.
    func testUpdatesAboveTheNormBoundAreRefusedWhenThePolicySaysSo() throws {
        var c = config
        c.bufferSize = 1
        c.maxUpdateNorm = 1.0
        c.normPolicy = .refuse
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        _ = try core.handle(.hello(Hello(trainerID: "t1")), from: "t1")
        let before = core.model.parameters.storage.array
        guard case .error(let e)? = reply(try core.handle(update("big", base: 0, scale: 1.0, specs: core.specs), from: "t1")) else {
            return XCTFail("expected a refusal")
        }
        XCTAssertEqual(e.code, .normTooLarge)
        XCTAssertEqual(e.refersTo, "big")
        XCTAssertTrue(e.detail.contains("exceeds max_update_norm 1.0"), e.detail)
        XCTAssertEqual(core.model.parameters.storage.array, before)
        let record = try XCTUnwrap(try core.ledger.update(id: "big"))
        XCTAssertEqual(record.outcome, .refused)
        XCTAssertGreaterThan(record.norm, 1.0)
        XCTAssertNil(record.deltaPath, "nothing of a refused update is kept for replay")
        // Small enough: applied.
        XCTAssertEqual(reply(try core.handle(update("small", base: 0, scale: 1e-4, specs: core.specs), from: "t1")),
                       .ack(Ack(updateID: "small", outcome: .applied, version: 1)))
        // A NaN update refused by the decoder is recorded the same way; a resend gets the same verdict.
        let nan = UpdateInfo(updateID: "nan", trainerID: "t1", baseVersion: 1, tokens: 1, localSteps: 1)
        let refusal = try core.refuseUndecodable(nan, ProtocolError(.nonFinite, "tensor x holds nan at element 3"))
        guard case .error(let first) = refusal, case .error(let second) = try core.refuseUndecodable(nan, ProtocolError(.nonFinite, "again")) else {
            return XCTFail("expected refusals")
        }
        XCTAssertEqual(first.code, .nonFinite)
        XCTAssertEqual(second.code, .duplicate)
        XCTAssertTrue(second.detail.contains("tensor x holds nan"), second.detail)
        XCTAssertEqual(try core.ledger.updateCount(outcome: .refused), 2)
    }

    /// `keep_checkpoints`: only the newest checkpoints stay (directories and ledger rows), and a
    /// damaged newest one still falls back to the one before with the exact model.
    func testOnlyTheNewestCheckpointsAreKeptAndFallbackStillWorks() throws {
        var c = config
        c.bufferSize = 1
        c.checkpointEvery = 1
        c.keepCheckpoints = 2
        func open() throws -> AggregatorCore {
            try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        }
        var expected: [Float] = []
        do {
            let core = try open()
            _ = try core.handle(.hello(Hello(trainerID: "t1")), from: "t1")
            for i in 0..<6 { _ = try core.handle(update("k\(i)", base: core.version, scale: 0.01, specs: core.specs), from: "t1") }
            XCTAssertEqual(core.version, 6)
            expected = core.model.parameters.storage.array
            XCTAssertEqual(try core.ledger.versions().map(\.number), [6, 5])
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/checkpoints").sorted(), ["v5", "v6"])
        // Damage the newest: the restart falls back to v5, replays the update after it, and is exact.
        let newest = dir + "/checkpoints/v6/model.safetensors"
        var data = try Data(contentsOf: URL(fileURLWithPath: newest))
        data[data.count - 3] ^= 0x40
        try data.write(to: URL(fileURLWithPath: newest))
        let reopened = try open()
        XCTAssertEqual(reopened.version, 6)
        XCTAssertEqual(reopened.model.parameters.storage.array.map(\.bitPattern), expected.map(\.bitPattern))
    }

    func testASyncRoundStopsWaitingForATrainerThatWentSilent() throws {
        var c = AggregationConfig()
        c.mode = .sync
        c.participants = 2
        c.serverOptimizer = .sgd(learningRate: 1)
        c.trainerTimeout = 10
        let core = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        _ = try core.handle(.hello(Hello(trainerID: "t1")), from: "t1", now: 0)
        _ = try core.handle(.hello(Hello(trainerID: "t2")), from: "t2", now: 0)
        let u = update("u1", base: 0, scale: 0.01, specs: core.specs)
        XCTAssertEqual(reply(try core.handle(u, from: "t1", now: 5)), .ack(Ack(updateID: "u1", outcome: .buffered, version: 0)))
        XCTAssertEqual(try core.expireSilentTrainers(now: 12), ["t2"], "t2 has been silent for 12 s, t1 for 7 s")
        XCTAssertEqual(core.version, 1, "the round closed with the update it had")
        // The forgotten trainer must register again before its updates count.
        guard case .error(let e)? = reply(try core.handle(update("u2", base: 1, scale: 0.01, specs: core.specs, trainer: "t2"), from: "t2", now: 13)) else {
            return XCTFail()
        }
        XCTAssertEqual(e.code, .unknownTrainer)
        // A restart continues from the early-closed round's checkpoint.
        let reopened = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        XCTAssertEqual(reopened.version, 1)
        XCTAssertEqual(reopened.model.parameters.storage.array, core.model.parameters.storage.array)
    }

    /// A checkpoint taken mid-round (as on a graceful stop) keeps who already contributed: after
    /// the restart the same trainer cannot count twice in that round, and the round completes
    /// with the other trainer's update.
    func testASyncRoundKeepsItsContributorsAcrossACheckpointAndRestart() throws {
        var c = AggregationConfig()
        c.mode = .sync
        c.participants = 2
        c.serverOptimizer = .sgd(learningRate: 1)
        let first = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        for t in ["t1", "t2"] { _ = try first.handle(.hello(Hello(trainerID: t)), from: t) }
        XCTAssertEqual(reply(try first.handle(update("u1", base: 0, scale: 0.01, specs: first.specs), from: "t1")),
                       .ack(Ack(updateID: "u1", outcome: .buffered, version: 0)))
        try first.checkpoint()  // mid-round, as the service does when it stops
        let reopened = try AggregatorCore(runDirectory: dir, config: c, initialModel: try GPT2Model(config: modelConfig, seed: 1))
        for t in ["t1", "t2"] { _ = try reopened.handle(.hello(Hello(trainerID: t)), from: t) }
        guard case .error(let e)? = reply(try reopened.handle(update("u2", base: 0, scale: 0.01, specs: reopened.specs), from: "t1")) else {
            return XCTFail("t1 contributed to this round before the restart")
        }
        XCTAssertTrue(e.detail.contains("already contributed"), e.detail)
        XCTAssertEqual(reply(try reopened.handle(update("u3", base: 0, scale: 0.02, specs: reopened.specs, trainer: "t2"), from: "t2")),
                       .ack(Ack(updateID: "u3", outcome: .applied, version: 1)))
    }
}

extension AggregatorCoreTests {
    /// A FETCH is decided by the core: the current release for a fetcher behind, a heartbeat for
    /// one that has it already, a refusal for an unknown cluster.
    func testAFetchIsAnsweredWithTheReleaseUnlessTheFetcherHasIt() throws {
        let c = try core()
        XCTAssertEqual(try c.handle(.fetch(Fetch()), from: "t1"), [.sendRelease(to: "t1", cluster: nil)])
        XCTAssertEqual(try c.handle(.fetch(Fetch(haveVersion: c.version - 1)), from: "t1"), [.sendRelease(to: "t1", cluster: nil)])
        XCTAssertEqual(try c.handle(.fetch(Fetch(haveVersion: c.version)), from: "t1"), [.reply(to: "t1", .heartbeat)])
        guard case .error(let e)? = reply(try c.handle(.fetch(Fetch(cluster: "en")), from: "t1")) else { return XCTFail("a cluster without clusters") }
        XCTAssertEqual(e.code, .unknownCluster)
    }
}
