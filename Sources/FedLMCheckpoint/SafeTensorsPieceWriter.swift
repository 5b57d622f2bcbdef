import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A safetensors file of one FP32 tensor written piece by piece while its values arrive (the
/// aggregator writes each chunk of an update as it comes in, so persisting it overlaps the
/// transfer), which becomes the file at its final path only when `commit` renames it there:
/// atomic like `AtomicFile.write`, a reader never sees it half-written.
///
/// A failed piece is remembered, not thrown (the transfer goes on); `commit` then refuses, and
/// the caller writes the file whole instead, where the error is reported.
public final class SafeTensorsPieceWriter {
    /// Where the file is while it is written (a temporary name in the destination's directory).
    public let temporaryPath: String
    public let count: Int
    private var fd: Int32
    /// Where the tensor's bytes start in the file.
    public let dataOffset: Int
    /// Values written so far, and whether any write failed.
    public private(set) var valuesWritten = 0
    public private(set) var failure: String?

    /// Opens `temporaryPath` for a tensor `name` of `count` values: `reusing` (a file no longer
    /// needed, whose page-cache pages are overwritten in place) is renamed to it if given.
    public init(name: String, count: Int, temporaryPath: String, reusing: String? = nil) throws {
        self.temporaryPath = temporaryPath
        self.count = count
        var flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
        if let reusing, rename(reusing, temporaryPath) == 0 { flags &= ~O_TRUNC }
        fd = open(temporaryPath, flags, 0o644)
        guard fd >= 0 else { throw CheckpointError.io(path: temporaryPath, reason: String(cString: strerror(errno))) }
        let header = SafeTensors.header([(name, .f32, [count], count * 4)])
        dataOffset = header.count
        // The file has its final size from the start (a longer reused file is cut to it).
        guard ftruncate(fd, off_t(dataOffset + count * 4)) == 0, Self.writeAll(fd, header, at: 0) == nil else {
            let reason = String(cString: strerror(errno))
            close(fd)
            unlink(temporaryPath)
            throw CheckpointError.io(path: temporaryPath, reason: reason)
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Writes `values` as the tensor's elements from `index` on.
    public func write(_ values: UnsafeBufferPointer<Float>, at index: Int) {
        precondition(index >= 0 && index + values.count <= count, "values \(index)..<\(index + values.count) of \(count)")
        guard failure == nil, fd >= 0 else { return }
        if let error = Self.writeAll(fd, UnsafeRawBufferPointer(values), at: dataOffset + index * 4) {
            failure = error
        } else {
            valuesWritten += values.count
        }
    }

    /// Makes the file complete at `path`: every value must have been written without a failure.
    /// fsynced (the file and then its directory) when `sync`.
    public func commit(to path: String, sync: Bool) throws {
        guard fd >= 0 else { throw CheckpointError.io(path: temporaryPath, reason: "already committed") }
        if let failure { throw CheckpointError.io(path: temporaryPath, reason: failure) }
        guard valuesWritten == count else {
            throw CheckpointError.io(path: temporaryPath, reason: "\(valuesWritten) of \(count) values written")
        }
        if sync, fsync(fd) != 0 { throw CheckpointError.io(path: temporaryPath, reason: "fsync: \(String(cString: strerror(errno)))") }
        close(fd)
        fd = -1
        guard rename(temporaryPath, path) == 0 else { throw CheckpointError.io(path: path, reason: "rename: \(String(cString: strerror(errno)))") }
        if sync { AtomicFile.syncDirectory(containing: path) }
    }

    /// Reads the elements `range` back from the file (written before), before it is committed.
    public func read(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) throws {
        try Self.read(path: temporaryPath, at: dataOffset + range.lowerBound * 4, count: range.count, into: destination)
    }

    /// Reads `count` floats at byte `offset` of the file at `path`.
    public static func read(path: String, at offset: Int, count: Int, into destination: UnsafeMutablePointer<Float>) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CheckpointError.io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var done = 0
        let bytes = count * 4
        while done < bytes {
            let n = pread(fd, UnsafeMutableRawPointer(destination) + done, bytes - done, off_t(offset + done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw CheckpointError.io(path: path, reason: n == 0 ? "ends early" : String(cString: strerror(errno))) }
            done += n
        }
    }

    /// True once `commit` has moved the file to its final path.
    public var isCommitted: Bool { fd < 0 }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int) -> String? {
        bytes.withUnsafeBytes { writeAll(fd, $0, at: offset) }
    }

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> String? {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return String(cString: strerror(errno))
            }
            done += n
        }
        return nil
    }
}
