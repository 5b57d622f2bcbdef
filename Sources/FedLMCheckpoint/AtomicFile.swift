import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Crash-safe file and directory writes: write a temporary sibling, fsync it, rename it over
/// the destination, fsync the parent directory. A reader sees the old file or the new one,
/// never a half-written one.
public enum AtomicFile {
    /// Writes `produce`'s output through `write` calls to `path` atomically. With `sync: false`
    /// the data is not forced to disk (still atomic against a killed process, not a power cut).
    ///
    /// `reusing` names a file that is no longer needed: it becomes the new file and is
    /// overwritten in place, so the write goes into page-cache pages the kernel already holds
    /// instead of fresh ones (on this VM a fresh page costs about 10 microseconds, a 42 MB file
    /// about 100 ms; overwriting it about 9 ms).
    public static func write(to path: String, sync: Bool = true, reusing: String? = nil, _ produce: (FileSink) throws -> Void) throws {
        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
        if let reusing, rename(reusing, temporary) == 0 { flags &= ~O_TRUNC }
        let fd = open(temporary, flags, 0o644)
        guard fd >= 0 else { throw CheckpointError.io(path: temporary, reason: String(cString: strerror(errno))) }
        let sink = FileSink(fd: fd, path: temporary)
        do {
            try produce(sink)
            try sink.flush()
            // A reused file may have been longer.
            guard ftruncate(fd, off_t(sink.bytesWritten)) == 0 else {
                throw CheckpointError.io(path: temporary, reason: "ftruncate: \(String(cString: strerror(errno)))")
            }
            guard !sync || fsync(fd) == 0 else { throw CheckpointError.io(path: temporary, reason: "fsync: \(String(cString: strerror(errno)))") }
            close(fd)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw CheckpointError.io(path: path, reason: "rename: \(reason)")
        }
        if sync { syncDirectory(containing: path) }
    }

    public static func write(_ data: Data, to path: String) throws {
        try write(to: path) { sink in try data.withUnsafeBytes { try sink.write($0) } }
    }

    /// fsyncs the directory that holds `path`, so a rename into it survives a power cut.
    public static func syncDirectory(containing path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        syncDirectory(dir.isEmpty ? "." : dir)
    }

    public static func syncDirectory(_ dir: String) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}

/// A buffered writer over a file descriptor (large tensors go straight through).
public final class FileSink {
    let fd: Int32
    let path: String
    private var buffer: [UInt8] = []
    public private(set) var bytesWritten = 0

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        buffer.reserveCapacity(1 << 16)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        if bytes.count >= 1 << 16 {
            try flush()
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
            if buffer.count >= 1 << 16 { try flush() }
        }
        bytesWritten += bytes.count
    }

    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    func flush() throws {
        if buffer.isEmpty { return }
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw CheckpointError.io(path: path, reason: String(cString: strerror(errno)))
            }
            offset += n
        }
    }
}
