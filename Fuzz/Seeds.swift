// Writes seed inputs (valid messages and streams) for the fuzz corpus: `fedlm-fuzz-seeds DIR`.
import Foundation

@main
struct Seeds {
    static func main() throws {
        let dir = CommandLine.arguments[1]
        var codec = WireCodec()
        codec.chunkBytes = 64
        let specs = [TensorSpec(name: "transformer.wte.weight", shape: [5, 4]), TensorSpec(name: "transformer.ln_f.bias", shape: [4])]
        let payload = TensorPayload(specs: specs, values: (0..<24).map { Float($0) * 0.25 })
        let messages: [Message] = [
            .hello(Hello(trainerID: "t", cluster: "en")), .fetch(Fetch(cluster: nil, haveVersion: 3)),
            .update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 1, cluster: "en", baseHeadVersion: 0, tokens: 8, localSteps: 1), payload),
            .release(ReleaseInfo(version: 2, cluster: "en", headVersion: 1), payload), .ack(Ack(updateID: "u", outcome: .applied, version: 2)),
            .error(ErrorReply(code: .tooStale, detail: "x", refersTo: "u")),
        ] + [Compression(.f16), Compression(.bf16), Compression(.int8), Compression(.topk, density: 0.25, bits: 3)].map { c in
            // Compressed payloads, so the fuzzer starts inside every chunk decoder.
            let encoded = payload.values.withUnsafeBufferPointer { c.encode($0, chunkBytes: 64) }
            return .update(UpdateInfo(updateID: "u", trainerID: "t", baseVersion: 1, tokens: 8, localSteps: 1),
                           TensorPayload(specs: specs, encoded: encoded))
        }
        try FileManager.default.createDirectory(atPath: dir + "/wire", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/stream", withIntermediateDirectories: true)
        for (i, m) in messages.enumerated() {
            try Data(FuzzInput.encode(frames: codec.encode(m))).write(to: URL(fileURLWithPath: "\(dir)/wire/seed-\(i)"))
            try Data(FuzzInput.encode(messages: MessageStream.split(codec.encode(m)))).write(to: URL(fileURLWithPath: "\(dir)/stream/seed-\(i)"))
        }
    }
}
