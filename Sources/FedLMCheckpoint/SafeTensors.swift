import Foundation

/// The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
/// header length N, N bytes of JSON mapping each tensor name to its dtype, shape and byte range
/// within the data section, then the raw little-endian data.
public enum SafeTensors {
    public enum DType: String, Sendable {
        case f32 = "F32", i32 = "I32", i64 = "I64", u16 = "U16", f16 = "F16", bf16 = "BF16", u8 = "U8"
        public var size: Int {
            switch self {
            case .f32, .i32: return 4
            case .i64: return 8
            case .u16, .f16, .bf16: return 2
            case .u8: return 1
            }
        }
    }

    /// One tensor to write: its bytes must stay valid until `write` returns.
    public struct Source {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let bytes: UnsafeRawBufferPointer
        public init(name: String, dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
        }
    }

    /// Largest header this reader accepts (the reference implementation's limit).
    public static let maximumHeaderBytes = 100_000_000

    /// Writes the tensors, in the order given, to `path` atomically (and durably unless `sync` is
    /// false); `reusing`: a file no longer needed, overwritten in place (`AtomicFile.write`).
    public static func write(_ tensors: [Source], metadata: [String: String] = [:], to path: String, sync: Bool = true,
                             reusing: String? = nil) throws {
        let headerBytes = header(tensors.map { ($0.name, $0.dtype, $0.shape, $0.bytes.count) }, metadata: metadata)
        try AtomicFile.write(to: path, sync: sync, reusing: reusing) { sink in
            try sink.write(headerBytes)
            for t in tensors { try sink.write(t.bytes) }
        }
    }

    /// Everything before the data section: the 8-byte length, then the JSON header naming each
    /// tensor's dtype, shape and byte range (in the order given), padded with spaces so the data
    /// starts 8-byte aligned, as the reference writer does.
    public static func header(_ tensors: [(name: String, dtype: DType, shape: [Int], byteCount: Int)],
                              metadata: [String: String] = [:]) -> [UInt8] {
        var header = "{"
        var offset = 0
        var first = true
        func appendKey(_ key: String) {
            header += first ? "" : ","
            first = false
            header += jsonString(key) + ":"
        }
        if !metadata.isEmpty {
            appendKey("__metadata__")
            header += "{" + metadata.keys.sorted().map { jsonString($0) + ":" + jsonString(metadata[$0]!) }
                .joined(separator: ",") + "}"
        }
        var seen = Set<String>()
        for t in tensors {
            precondition(seen.insert(t.name).inserted, "duplicate tensor name \(t.name)")
            let expected = t.shape.reduce(1, *) * t.dtype.size
            precondition(expected == t.byteCount, "tensor \(t.name): \(t.byteCount) bytes for shape \(t.shape)")
            appendKey(t.name)
            header += "{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],"
            header += "\"data_offsets\":[\(offset),\(offset + t.byteCount)]}"
            offset += t.byteCount
        }
        header += "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        return withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { Array($0) } + headerBytes
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// A safetensors file read and validated in full before any tensor is handed out.
public struct SafeTensorsFile {
    public struct Tensor: Equatable, Sendable {
        public let name: String
        public let dtype: SafeTensors.DType
        public let shape: [Int]
        /// Byte range within the data section.
        public let range: Range<Int>
    }

    public let path: String
    public let metadata: [String: String]
    /// Tensors in file order.
    public let tensors: [Tensor]
    private let byName: [String: Int]
    private let data: Data
    private let dataStart: Int

    public init(path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw CheckpointError.io(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    public init(data: Data, path: String = "<memory>") throws {
        func bad(_ reason: String) -> CheckpointError { .malformed(path: path, reason: reason) }
        guard data.count >= 8 else { throw bad("file is \(data.count) bytes, shorter than the 8-byte header length") }
        let headerLength = data.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(SafeTensors.maximumHeaderBytes) else {
            throw bad("header length \(headerLength) exceeds the \(SafeTensors.maximumHeaderBytes)-byte limit")
        }
        guard 8 + Int(headerLength) <= data.count else {
            throw bad("header length \(headerLength) runs past the end of the \(data.count)-byte file (truncated?)")
        }
        let headerData = data.subdata(in: 8..<(8 + Int(headerLength)))
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerData) } catch {
            throw bad("header is not valid JSON")
        }
        guard let object = json as? [String: Any] else { throw bad("header is not a JSON object") }
        var metadata: [String: String] = [:]
        var tensors: [Tensor] = []
        for (name, value) in object {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw bad("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw bad("__metadata__ value for '\(k)' is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else { throw bad("entry '\(name)' is not an object") }
            guard let dtypeName = entry["dtype"] as? String else { throw bad("tensor '\(name)' has no dtype") }
            guard let dtype = SafeTensors.DType(rawValue: dtypeName) else {
                throw bad("tensor '\(name)' has unsupported dtype \(dtypeName)")
            }
            guard let shapeValues = entry["shape"] as? [Any],
                  let shape = shapeValues.map({ ($0 as? NSNumber)?.intValue }) as? [Int],
                  shape.allSatisfy({ $0 >= 0 }) else { throw bad("tensor '\(name)' has a malformed shape") }
            guard let offsets = entry["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = (offsets[0] as? NSNumber)?.intValue, let end = (offsets[1] as? NSNumber)?.intValue,
                  begin >= 0, end >= begin else { throw bad("tensor '\(name)' has malformed data_offsets") }
            let (elements, overflow) = shape.reduce((1, false)) { acc, dim in
                let (product, o) = acc.0.multipliedReportingOverflow(by: dim)
                return (product, acc.1 || o)
            }
            guard !overflow, elements * dtype.size == end - begin else {
                throw bad("tensor '\(name)': shape \(shape) of \(dtypeName) needs \(elements * dtype.size) bytes, offsets give \(end - begin)")
            }
            tensors.append(Tensor(name: name, dtype: dtype, shape: shape, range: begin..<end))
        }
        // The data section must be covered exactly, without gaps or overlaps.
        tensors.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        var cursor = 0
        for t in tensors {
            guard t.range.lowerBound == cursor else {
                throw bad("tensor '\(t.name)' starts at byte \(t.range.lowerBound), expected \(cursor) (gap or overlap)")
            }
            cursor = t.range.upperBound
        }
        let dataStart = 8 + Int(headerLength)
        guard cursor == data.count - dataStart else {
            throw bad("tensors cover \(cursor) data bytes but the file holds \(data.count - dataStart) (truncated or padded)")
        }
        self.path = path
        self.metadata = metadata
        self.tensors = tensors
        self.byName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
        self.data = data
        self.dataStart = dataStart
    }

    public func tensor(_ name: String) -> Tensor? { byName[name].map { tensors[$0] } }

    public var names: [String] { tensors.map(\.name) }

    /// Where tensor `name`'s bytes start in the file (for reading it piece by piece).
    public func fileOffset(of name: String) -> Int? { tensor(name).map { dataStart + $0.range.lowerBound } }

    /// Copies a float tensor into `destination`, checking its dtype and shape first.
    public func copyFloats(_ name: String, shape expected: [Int], into destination: UnsafeMutablePointer<Float>) throws {
        guard let t = tensor(name) else { throw CheckpointError.missingTensor(path: path, name: name) }
        guard t.dtype == .f32 else {
            throw CheckpointError.wrongDType(path: path, name: name, expected: "F32", found: t.dtype.rawValue)
        }
        guard t.shape == expected else {
            throw CheckpointError.wrongShape(path: path, name: name, expected: expected, found: t.shape)
        }
        data.withUnsafeBytes { raw in
            let source = raw.baseAddress! + dataStart + t.range.lowerBound
            UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: t.range.count)
        }
        #if _endian(big)
        for i in 0..<(t.range.count / 4) { destination[i] = Float(bitPattern: UInt32(littleEndian: destination[i].bitPattern)) }
        #endif
    }

    public func floats(_ name: String) throws -> [Float] {
        guard let t = tensor(name) else { throw CheckpointError.missingTensor(path: path, name: name) }
        var out = [Float](repeating: 0, count: t.shape.reduce(1, *))
        try out.withUnsafeMutableBufferPointer { try copyFloats(name, shape: t.shape, into: $0.baseAddress!) }
        return out
    }
}
