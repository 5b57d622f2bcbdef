import FedLMCheckpoint
import FedLMZeroMQ
import Foundation

/// An encoded update kept on disk until acknowledged (one file, written atomically).
struct PendingUpdate {
    let id: String
    let frames: SharedFrames

    /// Writes the id, a zero byte, the frame count and sizes (little-endian UInt64s), then the
    /// frames, straight from where they lie (atomically, fsynced).
    func save(_ path: String) throws {
        try AtomicFile.write(to: path) { sink in
            func write64(_ v: Int) throws { try withUnsafeBytes(of: UInt64(v).littleEndian) { try sink.write($0) } }
            try sink.write(Array(id.utf8) + [0])
            try write64(frames.count)
            for i in 0..<frames.count { try write64(frames[i].count) }
            for i in 0..<frames.count { try sink.write(frames[i]) }
        }
    }

    static func load(_ path: String) throws -> PendingUpdate {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let bytes = [UInt8](data)
        guard let zero = bytes.firstIndex(of: 0) else { throw FederationError.local("\(path): corrupt pending update") }
        let id = String(decoding: bytes[..<zero], as: UTF8.self)
        var offset = zero + 1
        func read64() throws -> Int {
            guard offset + 8 <= bytes.count else { throw FederationError.local("\(path): truncated pending update") }
            let v = bytes[offset..<(offset + 8)].withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
            offset += 8
            return v
        }
        let count = try read64()
        guard count >= 3, count < 1 << 20 else { throw FederationError.local("\(path): corrupt pending update") }
        let sizes = try (0..<count).map { _ in try read64() }
        var frames: [[UInt8]] = []
        for s in sizes {
            guard s >= 0, offset + s <= bytes.count else { throw FederationError.local("\(path): truncated pending update") }
            frames.append(Array(bytes[offset..<(offset + s)]))
            offset += s
        }
        return PendingUpdate(id: id, frames: SharedFrames(frames))
    }
}
