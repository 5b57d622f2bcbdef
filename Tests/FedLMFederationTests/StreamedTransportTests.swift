import FedLMAggregation
import FedLMCheckpoint
import FedLMFederation
import FedLMModel
import FedLMProtocol
import FedLMZeroMQ
import Foundation
import XCTest

/// Tensor messages streamed chunk by chunk through a real broker to a real aggregator over TCP
/// loopback: releases arrive as a head and CHUNK messages, a corrupted stream gets exactly one
/// error and changes nothing, stray chunks are dropped silently, and a good update is applied.
class StreamedTransportTests: XCTestCase {
    /// Releases sent live from the model's memory (`LiveRelease`) instead of encoded once per version.
    var liveReleases: Bool { false }

    /// About 0.7M parameters: 2.7 MB of tensors, three 1 MiB chunks.
    let modelConfig = GPT2Config(layers: 2, embedding: 128, heads: 4, context: 16, vocabulary: 2048)
    var dir = ""
    var broker: BrokerService!
    var service: AggregatorService!
    var threads: [Thread] = []
    let codec = WireCodec()
    var trainer: ZMQSocket!
    let context = ZMQContext()

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "fedlm-stream-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let endpoints = BrokerEndpoints.loopback()
        var config = AggregationConfig()
        config.mode = .fedbuff
        config.bufferSize = 1
        config.staleness = .constant
        config.serverOptimizer = .sgd(learningRate: 1)
        config.durability = .process
        config.checkpointEvery = 100  // the update files stay referenced by the ledger
        broker = BrokerService(endpoints: endpoints)
        service = AggregatorService(core: try AggregatorCore(runDirectory: dir, config: config,
                                                             initialModel: try GPT2Model(config: modelConfig, seed: 5)),
                                    endpoints: endpoints)
        if liveReleases { service.liveReleaseBytes = 0 }
        threads = [Thread { [broker] in try? broker!.runBlocking() }, Thread { [service] in try? service!.runBlocking() }]
        threads.forEach { $0.start() }
        trainer = try ZMQSocket(context, .dealer)
        try trainer.setRoutingID(Array("t1".utf8))
        try trainer.connect(endpoints.trainers)
    }

    override func tearDown() {
        trainer?.close()
        service?.stop()
        broker?.stop()
        XCTAssertTrue(Thread.join(threads, timeout: 60), "the services stopped")
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Every message that arrives within `seconds`, as raw frames.
    func drain(for seconds: Double) throws -> [[[UInt8]]] {
        var got: [[[UInt8]]] = []
        let end = Date().timeIntervalSince1970 + seconds
        while Date().timeIntervalSince1970 < end {
            if let m = try trainer.receive(timeout: 50) { got.append(m) }
        }
        return got
    }

    /// Sends `frames` (streamed) and returns the first complete reply and how many messages it took.
    func call(_ frames: [[UInt8]]) throws -> (Message, messages: Int) {
        for part in MessageStream.split(frames) { try trainer.send(part) }
        var assembler = StreamAssembler(codec: codec)
        var count = 0
        let end = Date().timeIntervalSince1970 + 20
        while Date().timeIntervalSince1970 < end {
            guard let m = try trainer.receive(timeout: 100) else { continue }
            count += 1
            if let done = try assembler.accept(m) {
                if case .error(let e) = done, e.code == .unavailable {  // the aggregator has not reached the broker yet
                    usleep(100_000)
                    for part in MessageStream.split(frames) { try trainer.send(part) }
                    count = 0
                    continue
                }
                return (done, count)
            }
        }
        // A hang is a failure, not a skip: the aggregator or broker stopped answering.
        throw StreamFailure("no reply within 20 s to a \(frames.count)-frame message")
    }

    func testReleasesAndUpdatesStreamThroughTheBroker() throws { try exchangeReleasesAndUpdates() }

    /// Messages until `count` have arrived (or `seconds` passed).
    func receive(_ count: Int, within seconds: Double = 20) throws -> [[[UInt8]]] {
        var got: [[[UInt8]]] = []
        let end = Date().timeIntervalSince1970 + seconds
        while got.count < count, Date().timeIntervalSince1970 < end {
            if let m = try trainer.receive(timeout: 50) { got.append(m) }
        }
        return got
    }

    func isChunk(_ m: [[UInt8]], _ index: Int) -> Bool {
        m.count == 4 && m[1] == [MessageType.chunk.rawValue] && m[2] == MessageStream.chunkPrefix(index: index, count: 3)[2]
    }

    /// A windowed FETCH gets at most a window of chunks (the head first); a FETCH resuming that
    /// head continues from the chunk it names; one naming another head gets the stream afresh.
    func testAWindowedFetchSendsOneWindowAtATimeAndResumesWhereAsked() throws {
        try windowedFetch()
    }

    func windowedFetch() throws {
        guard case .welcome = try call(codec.encode(.hello(Hello(trainerID: "t1")))).0 else { return XCTFail("expected WELCOME") }
        _ = try call(codec.encode(.fetch(Fetch())))  // the release exists (the aggregator is up)
        try trainer.send(codec.encode(.fetch(Fetch(window: 1))))
        let first = try receive(2)
        XCTAssertEqual(first.count, 2)
        guard first.count == 2 else { return }
        XCTAssertEqual(first[0].count, 3, "the head")
        XCTAssertTrue(isChunk(first[1], 0), "then chunk 0 of 3")
        XCTAssertEqual(try drain(for: 0.3).count, 0, "and no more than the window")
        var assembler = StreamAssembler(codec: codec)
        assembler.resumesReleases = true
        for m in first { XCTAssertNil(try assembler.accept(m)) }
        let head = WireCodec.headDigest(first[0][2])
        XCTAssertEqual(assembler.releaseProgress?.head, head)

        // Resumed from chunk 2 (chunk 1 "lost"), then from chunk 1: a gap, then the rest.
        try trainer.send(codec.encode(.fetch(Fetch(window: 5, resume: ResumePoint(head: head, next: 2)))))
        let tail = try receive(2)
        XCTAssertTrue(tail.count == 2 && tail[0] == first[0] && isChunk(tail[1], 2), "the same head, then chunk 2")
        for m in tail { XCTAssertNil(try assembler.accept(m)) }
        XCTAssertEqual(assembler.gaps, 1)
        XCTAssertEqual(assembler.abandoned, 0, "the same head continues the transfer")
        try trainer.send(codec.encode(.fetch(Fetch(window: 5, resume: ResumePoint(head: head, next: 1)))))
        var done: Message?
        for m in try receive(3) { done = try assembler.accept(m) ?? done }
        guard case .release(let info, let payload)? = done else { return XCTFail("expected the release assembled") }
        XCTAssertEqual(info.version, 0)
        XCTAssertEqual(payload.values, try GPT2Model(config: modelConfig, seed: 5).parameters.storage.array)

        // A head the aggregator no longer has (the release moved on): the current stream afresh.
        try trainer.send(codec.encode(.fetch(Fetch(window: 2, resume: ResumePoint(head: head &+ 1, next: 2)))))
        let afresh = try receive(3)
        XCTAssertEqual(afresh.count, 3)
        XCTAssertEqual(afresh.first?.count, 3, "the head again")
        XCTAssertTrue(afresh.count == 3 && isChunk(afresh[1], 0) && isChunk(afresh[2], 1))
    }

    func exchangeReleasesAndUpdates() throws {
        guard case .welcome = try call(codec.encode(.hello(Hello(trainerID: "t1")))).0 else { return XCTFail("expected WELCOME") }
        let (reply, messages) = try call(codec.encode(.fetch(Fetch())))
        guard case .release(let info, let release) = reply else { return XCTFail("expected a release, got \(reply.type)") }
        let initial = try GPT2Model(config: modelConfig, seed: 5)
        XCTAssertEqual(info.version, 0)
        XCTAssertEqual(messages, 1 + (initial.parameters.count * 4 + (1 << 20) - 1) / (1 << 20), "a head and one message per 1 MiB chunk")
        XCTAssertEqual(release.values, initial.parameters.storage.array)

        // A stream with a corrupted chunk: one ERROR naming it, nothing for the chunks after it.
        let delta = (0..<release.values.count).map { Float($0 % 13) * 1e-3 }
        let good = codec.encode(.update(UpdateInfo(updateID: "u1", trainerID: "t1", baseVersion: 0, tokens: 64, localSteps: 1),
                                        TensorPayload(specs: release.specs, values: delta)))
        var stream = MessageStream.split(good)
        XCTAssertGreaterThanOrEqual(stream.count, 4)
        stream[1][3][100] ^= 0x01
        for part in stream { try trainer.send(part) }
        let replies = try drain(for: 1.0).map { try codec.decode($0) }
        XCTAssertEqual(replies.count, 1, "one error for one broken stream: \(replies.map(\.type))")
        guard case .error(let e)? = replies.first else { return XCTFail("expected ERROR") }
        XCTAssertEqual(e.code, .badChecksum)
        XCTAssertTrue(e.detail.contains("chunk 0"), e.detail)

        // Chunks that belong to no stream are dropped without a reply.
        for part in stream.dropFirst() { try trainer.send(part) }
        XCTAssertEqual(try drain(for: 0.5).count, 0)

        // The same update id, intact: applied (the broken attempt left no trace), and the next
        // release is the initial weights minus the delta.
        guard case .ack(let ack) = try call(good).0 else { return XCTFail("expected ACK") }
        XCTAssertEqual(ack.outcome, .applied)
        XCTAssertEqual(ack.version, 1)
        guard case .release(let next, let after) = try call(codec.encode(.fetch(Fetch(haveVersion: 0)))).0 else {
            return XCTFail("expected the new release")
        }
        XCTAssertEqual(next.version, 1)
        for i in stride(from: 0, to: delta.count, by: 9973) {
            XCTAssertEqual(after.values[i], release.values[i] - delta[i], accuracy: 1e-6)
        }
        // Written to its file chunk by chunk as it streamed in: the file holds exactly the
        // update, and the norm the ledger records (summed on the way in) is the update's.
        let applied = try XCTUnwrap(try service.core.ledger.update(id: "u1"))
        XCTAssertTrue(try SafeTensorsFile(path: XCTUnwrap(applied.deltaPath)).floats("delta") == delta, "the file holds exactly the update")
        let norm = delta.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        XCTAssertEqual(applied.norm, norm, accuracy: norm * 1e-5)

        // An update carrying a NaN (in its last chunk): refused naming the update and the
        // tensor, recorded in the ledger, the model unchanged; sent again, the same refusal.
        var poisoned = delta
        poisoned[poisoned.count - 5] = .nan
        let bad = codec.encode(.update(UpdateInfo(updateID: "u-nan", trainerID: "t1", baseVersion: 1, tokens: 64, localSteps: 1),
                                       TensorPayload(specs: release.specs, values: poisoned)))
        guard case .error(let refusal) = try call(bad).0 else { return XCTFail("expected ERROR") }
        XCTAssertEqual(refusal.code, .nonFinite)
        XCTAssertEqual(refusal.refersTo, "u-nan")
        XCTAssertTrue(refusal.detail.contains(release.specs.last!.name), refusal.detail)
        let recorded = try XCTUnwrap(try service.core.ledger.update(id: "u-nan"))
        XCTAssertEqual(recorded.outcome, .refused)
        XCTAssertTrue(recorded.reason?.contains("nonFinite") == true, recorded.reason ?? "")
        guard case .error(let again) = try call(bad).0 else { return XCTFail("expected ERROR") }
        XCTAssertEqual(again.code, .duplicate)
        XCTAssertEqual(again.refersTo, "u-nan")
        guard case .release(let unchanged, let same) = try call(codec.encode(.fetch(Fetch()))).0 else { return XCTFail("expected a release") }
        XCTAssertEqual(unchanged.version, 1)
        XCTAssertEqual(same.values, after.values)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir + "/deltas")
        XCTAssertEqual(left.filter { $0.hasPrefix("incoming-") }, [], "the refused update's file went back to the spares")
    }
}

/// The same exchanges with every release sent live from the model's memory, as large models' are.
final class LiveReleaseTransportTests: StreamedTransportTests {
    override var liveReleases: Bool { true }

    func testLiveReleasesAndUpdatesStreamThroughTheBroker() throws { try exchangeReleasesAndUpdates() }
}

/// A streamed call that got no answer.
struct StreamFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
