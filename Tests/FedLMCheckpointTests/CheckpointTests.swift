import FedLMCheckpoint
import FedLMModel
import FedLMTensor
import Foundation
import XCTest

final class CheckpointTests: XCTestCase {
    var dir = ""
    let config = GPT2Config(layers: 2, embedding: 16, heads: 2, context: 8, vocabulary: 20)

    override func setUp() {
        dir = NSTemporaryDirectory() + "fedlm-ckpt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func saved(tied: Bool = true) throws -> (GPT2Model, String) {
        var c = config
        c.tiedHead = tied
        let model = try GPT2Model(config: c, seed: 4)
        let path = dir + "/ckpt"
        try Checkpoint.save(model: model, optimizer: AdamW(layout: model.layout), to: path)
        return (model, path)
    }

    func message(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testRoundTripPreservesEveryBitAndHuggingFaceNames() throws {
        for tied in [true, false] {
            let (model, path) = try saved(tied: tied)
            let loaded = try Checkpoint.load(from: path).model
            XCTAssertEqual(loaded.config, model.config)
            XCTAssertEqual(loaded.parameters.storage.array.map(\.bitPattern), model.parameters.storage.array.map(\.bitPattern))
            let file = try SafeTensorsFile(path: path + "/model.safetensors")
            XCTAssertTrue(file.names.contains("transformer.h.1.attn.c_attn.weight"))
            XCTAssertEqual(file.tensor("transformer.h.0.mlp.c_fc.weight")?.shape, [16, 64], "Conv1D weights are [in, out]")
            XCTAssertEqual(file.names.contains("lm_head.weight"), !tied)
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path + "/config.json"))) as! [String: Any]
            XCTAssertEqual(json["model_type"] as? String, "gpt2")
            XCTAssertEqual(json["n_embd"] as? Int, 16)
            XCTAssertEqual(json["tie_word_embeddings"] as? Bool, tied)
            XCTAssertEqual(json["activation_function"] as? String, "gelu_new")
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    func testTruncatedModelFileIsDetected() throws {
        let (_, path) = try saved()
        let file = path + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: file))
        // Without the checksum list, the format check itself catches the truncation.
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: data.prefix(data.count - 10)) }.contains("truncated"))
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: data.prefix(5)) }.contains("shorter than"))
        try data.prefix(data.count - 10).write(to: URL(fileURLWithPath: file))
        XCTAssertTrue(message { _ = try Checkpoint.load(from: path) }.contains("SHA-256"))
    }

    func testFlippedByteIsCaughtByTheChecksum() throws {
        let (_, path) = try saved()
        let file = path + "/model.safetensors"
        var data = try Data(contentsOf: URL(fileURLWithPath: file))
        data[data.count - 100] ^= 0x40
        try data.write(to: URL(fileURLWithPath: file))
        let error = message { _ = try Checkpoint.load(from: path) }
        XCTAssertTrue(error.contains("model.safetensors") && error.contains("corrupt"), error)
    }

    func testMalformedHeadersAreNamedErrors() throws {
        func file(header: String, dataBytes: Int) -> Data {
            var d = Data()
            var n = UInt64(header.utf8.count).littleEndian
            d.append(Data(bytes: &n, count: 8))
            d.append(header.data(using: .utf8)!)
            d.append(Data(count: dataBytes))
            return d
        }
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: file(header: "{not json", dataBytes: 0)) }.contains("not valid JSON"))
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, dataBytes: 4)) }
            .contains("'a'"))
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: file(header: #"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, dataBytes: 4)) }
            .contains("unsupported dtype"))
        XCTAssertTrue(message {
            _ = try SafeTensorsFile(data: file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, dataBytes: 4))
        }.contains("gap or overlap"))
        var huge = Data(count: 16)
        huge.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(1 << 40).littleEndian, as: UInt64.self) }
        XCTAssertTrue(message { _ = try SafeTensorsFile(data: huge) }.contains("limit"))
    }

    func testMissingWrongShapeAndUnexpectedTensorsAreRefused() throws {
        let model = try GPT2Model(config: config, seed: 1)
        let layout = model.layout
        let all = layout.entries
        func write(_ entries: [ParameterLayout.Entry], extra: Bool = false, reshape: String? = nil) throws -> SafeTensorsFile {
            var sources = entries.map { e in
                SafeTensors.Source(name: e.name, dtype: .f32, shape: e.name == reshape ? [e.count] : e.shape,
                                   bytes: UnsafeRawBufferPointer(start: model.parameters.pointer + e.offset, count: e.count * 4))
            }
            if extra {
                sources.append(.init(name: "transformer.h.9.mystery", dtype: .f32, shape: [1],
                                     bytes: UnsafeRawBufferPointer(start: model.parameters.pointer, count: 4)))
            }
            try SafeTensors.write(sources, to: dir + "/x.safetensors")
            return try SafeTensorsFile(path: dir + "/x.safetensors")
        }
        let target = ParameterVector(layout: layout)
        XCTAssertTrue(message { try Checkpoint.readVector(try write(Array(all.dropLast())), into: target, prefix: "") }
            .contains("'transformer.ln_f.bias' is missing"))
        XCTAssertTrue(message { try Checkpoint.readVector(try write(all, reshape: "transformer.h.0.attn.c_attn.weight"), into: target, prefix: "") }
            .contains("has shape [768], expected [16, 48]"))
        XCTAssertTrue(message { try Checkpoint.readVector(try write(all, extra: true), into: target, prefix: "") }
            .contains("unexpected tensor 'transformer.h.9.mystery'"))
    }

    func testConfigOfTheWrongShapeIsRefused() throws {
        let (_, path) = try saved()
        // Claim 3 layers: the checksum still matches after we rewrite the list, so the shape check must catch it.
        var json = try String(contentsOfFile: path + "/config.json", encoding: .utf8)
        json = json.replacingOccurrences(of: "\"n_layer\" : 2", with: "\"n_layer\" : 3")
        try json.write(toFile: path + "/config.json", atomically: true, encoding: .utf8)
        let sums = ["model.safetensors": try Checkpoint.sha256(ofFile: path + "/model.safetensors"),
                    "config.json": try Checkpoint.sha256(ofFile: path + "/config.json")]
        try JSONEncoder().encode(sums).write(to: URL(fileURLWithPath: path + "/checksums.json"))
        XCTAssertTrue(message { _ = try Checkpoint.load(from: path) }.contains("transformer.h.2"))
    }

    func testNaNWeightsAreRefused() throws {
        let model = try GPT2Model(config: config, seed: 1)
        model.parameters.values("transformer.h.1.mlp.c_fc.bias")[3] = .nan
        try Checkpoint.save(model: model, to: dir + "/nan")
        XCTAssertTrue(message { _ = try Checkpoint.load(from: dir + "/nan") }.contains("transformer.h.1.mlp.c_fc.bias"))
    }

    func testAtomicWriteNeverLeavesAPartialFile() throws {
        let path = dir + "/atomic.bin"
        try AtomicFile.write(Data([1, 2, 3]), to: path)
        struct Boom: Error {}
        XCTAssertThrowsError(try AtomicFile.write(to: path) { sink in
            try sink.write([9, 9, 9, 9])
            throw Boom()
        })
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data([1, 2, 3]))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
    }

    /// A file written piece by piece, in any order, is byte for byte the file `SafeTensors.write`
    /// makes of the same values; it appears at its path only on commit, which refuses while a
    /// piece is missing; a longer reused file is cut to size.
    func testPieceWriterMakesTheSameFileAsAWholeWrite() throws {
        let dir = NSTemporaryDirectory() + "fedlm-pieces-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let values = (0..<1000).map { Float($0) / 7 }
        try values.withUnsafeBytes { try SafeTensors.write([.init(name: "delta", dtype: .f32, shape: [1000], bytes: $0)], to: dir + "/whole") }
        try Data(repeating: 0xAB, count: 100_000).write(to: URL(fileURLWithPath: dir + "/old"))
        let writer = try SafeTensorsPieceWriter(name: "delta", count: 1000, temporaryPath: dir + "/incoming", reusing: dir + "/old")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/old"), "the reused file became the temporary")
        values.withUnsafeBufferPointer { v in
            writer.write(UnsafeBufferPointer(rebasing: v[600..<1000]), at: 600)
            writer.write(UnsafeBufferPointer(rebasing: v[0..<300]), at: 0)
        }
        XCTAssertThrowsError(try writer.commit(to: dir + "/pieces", sync: false)) { XCTAssertTrue("\($0)".contains("700 of 1000"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/pieces"))
        values.withUnsafeBufferPointer { writer.write(UnsafeBufferPointer(rebasing: $0[300..<600]), at: 300) }
        try writer.commit(to: dir + "/pieces", sync: true)
        XCTAssertTrue(writer.isCommitted)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/pieces")), try Data(contentsOf: URL(fileURLWithPath: dir + "/whole")))
        XCTAssertEqual(try SafeTensorsFile(path: dir + "/pieces").floats("delta"), values)
    }
}
