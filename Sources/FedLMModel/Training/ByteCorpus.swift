import FedLMTensor
import Foundation

/// Text as raw bytes (token = byte value, vocabulary 256), split into a training part and a
/// held-out tail; random windows are drawn with a seeded generator.
///
/// This is the demo's stand-in for a tokenizer: it needs nothing but the text.
public struct ByteCorpus: Sendable {
    public let train: [UInt8]
    public let validation: [UInt8]

    public init(bytes: [UInt8], validationFraction: Double = 0.05) {
        let cut = Int(Double(bytes.count) * (1 - validationFraction))
        train = Array(bytes[..<cut])
        validation = Array(bytes[cut...])
    }

    /// Reads and concatenates files; a directory contributes its regular files (sorted, so the
    /// corpus is the same on every run), skipping symbolic links (which would repeat text) and
    /// `.dat` index files.
    public static func load(paths: [String], validationFraction: Double = 0.05) throws -> ByteCorpus {
        var bytes: [UInt8] = []
        let fm = FileManager.default
        for path in paths {
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw CorpusError.unreadable(path: path, reason: "no such file or directory")
            }
            let files: [String]
            if isDirectory.boolValue {
                let items = (try? fm.subpathsOfDirectory(atPath: path)) ?? []
                files = items.sorted().map { path + "/" + $0 }.filter {
                    let type = (try? fm.attributesOfItem(atPath: $0)[.type]) as? FileAttributeType
                    return type == .typeRegular && !$0.hasSuffix(".dat")
                }
            } else {
                files = [path]
            }
            for file in files {
                guard let data = fm.contents(atPath: file) else {
                    throw CorpusError.unreadable(path: file, reason: "cannot read")
                }
                bytes.append(contentsOf: data)
            }
        }
        return ByteCorpus(bytes: bytes, validationFraction: validationFraction)
    }

    /// A batch of random windows from `part`; targets are the inputs shifted by one.
    public static func batch(from part: [UInt8], batch: Int, sequence: Int, rng: inout SeededGenerator) -> TokenBatch {
        precondition(part.count > sequence + 1, "corpus part of \(part.count) bytes is too short for sequence \(sequence)")
        var inputs = [Int32](), targets = [Int32]()
        inputs.reserveCapacity(batch * sequence)
        targets.reserveCapacity(batch * sequence)
        for _ in 0..<batch {
            let start = Int(rng.next() % UInt64(part.count - sequence - 1))
            for t in 0..<sequence {
                inputs.append(Int32(part[start + t]))
                targets.append(Int32(part[start + t + 1]))
            }
        }
        return TokenBatch(batch: batch, sequence: sequence, inputs: inputs, targets: targets)
    }
}

public enum CorpusError: Error, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case tooSmall(String)
    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "\(path): \(reason)"
        case .tooSmall(let why): return why
        }
    }
}
