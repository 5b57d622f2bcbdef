import FedLMAggregation
import FedLMCheckpoint
import FedLMModel
import FedLMProtocol
import FedLMTensor
import Foundation
import Synchronization

/// The aggregator's pseudo-gradient files (`<run>/deltas/`): one safetensors file per accepted
/// update, kept until a checkpoint no longer needs it for replay.
///
/// Files no longer needed are not deleted but kept as spares and overwritten by the next
/// updates: writing into page-cache pages the kernel already holds is about ten times faster on
/// this machine than faulting in fresh ones (a 42 MB update: ~9 ms against ~100 ms), and the
/// spares cost no more disk than the files they were.
///
/// An update streaming in is written to its file chunk by chunk as it arrives (`incoming`), so
/// by the time its last chunk is in, the file only needs its final name (`commit`).
struct DeltaFiles {
    let directory: String
    private let pool: SparePool

    init(directory: String, maximumSpares: Int) throws {
        self.directory = directory
        pool = SparePool(maximum: maximumSpares)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Spare files, ready to be overwritten.
    var spares: [String] { pool.paths }
    var maximumSpares: Int { pool.maximum }

    /// The file of an update: its id made safe for a file name, plus a hash of the id so two ids
    /// that map to the same safe name never share a file.
    func path(for updateID: String) -> String {
        let safe = String(updateID.unicodeScalars.prefix(80).map {
            CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == "_" ? Character($0) : "_"
        })
        return directory + "/\(safe)-\(String(SeededGenerator.stableHash(updateID), radix: 16)).safetensors"
    }

    /// Writes `delta` as the update's file, overwriting a spare when there is one; fsynced when
    /// `sync`. Returns the path.
    func write(_ delta: UnsafeBufferPointer<Float>, updateID: String, sync: Bool) throws -> String {
        let path = path(for: updateID)
        try SafeTensors.write([.init(name: "delta", dtype: .f32, shape: [delta.count], bytes: UnsafeRawBufferPointer(delta))],
                              to: path, sync: sync, reusing: pool.take())
        return path
    }

    /// Writes the tensors a partial update carried, each under its own name (their values taken
    /// from the whole-model `delta`), as the update's file. Returns the path.
    func write(_ delta: ParameterVector, carried: TensorSubset, updateID: String, sync: Bool) throws -> String {
        let path = path(for: updateID)
        let sources = carried.packed.entries.map { e in
            let range = delta.layout[e.name].range
            return SafeTensors.Source(name: e.name, dtype: .f32, shape: e.shape,
                                      bytes: UnsafeRawBufferPointer(start: delta.pointer + range.lowerBound, count: range.count * 4))
        }
        try SafeTensors.write(sources, to: path, sync: sync, reusing: pool.take())
        return path
    }

    /// Reads an update's file into `delta`: a whole update (one tensor `delta`), or a partial one
    /// (the tensors it carried, by name; zero elsewhere), whose tensors are returned.
    static func read(_ path: String, into delta: ParameterVector) throws -> TensorSubset? {
        let file = try SafeTensorsFile(path: path)
        if file.tensor("delta") != nil {
            try file.copyFloats("delta", shape: [delta.count], into: delta.pointer)
            return nil
        }
        delta.zero()
        var indices: [Int] = []
        for name in file.names {
            guard let i = delta.layout.entries.firstIndex(where: { $0.name == name }) else {
                throw FederationError.replayDiverged("\(path) holds a tensor \(name) the model lacks")
            }
            let e = delta.layout.entries[i]
            try file.copyFloats(name, shape: e.shape, into: delta.pointer + e.offset)
            indices.append(i)
        }
        return TensorSubset(model: delta.layout, indices: indices)
    }

    /// Room for an update of `count` values streaming in, whose chunks are written to a file
    /// (a spare when there is one) as they arrive; nil if no file can be opened (the update is
    /// then assembled in an array and written whole).
    func incoming(count: Int) -> IncomingDelta? {
        writer(count: count).map { IncomingDelta(writer: $0, pool: pool) }
    }

    /// Room for a whole update folded into FedBuff's buffer as it streams in (`FoldingDelta`).
    func folding(_ info: UpdateInfo, count: Int, into strategy: FedBuff, staleness: Int) -> FoldingDelta? {
        writer(count: count).map { FoldingDelta(info, writer: $0, pool: pool, strategy: strategy, staleness: staleness) }
    }

    private func writer(count: Int) -> SafeTensorsPieceWriter? {
        let temporary = directory + "/incoming-\(UInt64.random(in: 0...UInt64.max)).safetensors"
        let spare = pool.take()
        guard let writer = try? SafeTensorsPieceWriter(name: "delta", count: count, temporaryPath: temporary, reusing: spare) else {
            if let spare { pool.put(spare) }
            return nil
        }
        return writer
    }

    /// Calls `body` with a whole update's values from its file, about 1 MiB at a time, with
    /// each piece's offset (a replay that never holds the update whole). False if the file holds
    /// a partial update.
    static func forEachPiece(_ path: String, count: Int, _ body: (UnsafeBufferPointer<Float>, Int) -> Void) throws -> Bool {
        let file = try SafeTensorsFile(path: path)
        guard let t = file.tensor("delta"), let offset = file.fileOffset(of: "delta") else { return false }
        guard t.dtype == .f32, t.shape == [count] else {
            throw FederationError.replayDiverged("\(path) holds \(t.shape) \(t.dtype.rawValue) values, the model \(count) F32")
        }
        let piece = FoldingDelta.pieceValues
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: piece)
        defer { buffer.deallocate() }
        for start in stride(from: 0, to: count, by: piece) {
            let n = min(piece, count - start)
            try SafeTensorsPieceWriter.read(path: path, at: offset + start * 4, count: n, into: buffer)
            body(UnsafeBufferPointer(start: buffer, count: n), start)
        }
        return true
    }

    /// The update's file from what `incoming` wrote; written whole from its values if a piece
    /// could not be written. fsynced when `sync`. Returns the path.
    func commit(_ incoming: IncomingDelta, updateID: String, sync: Bool) throws -> String {
        let path = path(for: updateID)
        do { try incoming.writer.commit(to: path, sync: sync) } catch {
            if incoming.releasedPages { throw error }
            try SafeTensors.write([.init(name: "delta", dtype: .f32, shape: [incoming.storage.count],
                                         bytes: UnsafeRawBufferPointer(incoming.storage.buffer))], to: path, sync: sync)
        }
        return path
    }

    /// Files no longer needed: kept as spares up to `maximumSpares`, the rest deleted.
    func retire(_ paths: [String]) {
        for path in paths { pool.put(path) }
    }

    /// After a restart: every file of the directory the ledger does not refer to (spares, files
    /// retired or half-written when the process died) is retired.
    func sweep(keeping referenced: Set<String>) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        retire(names.map { directory + "/" + $0 }.filter { !referenced.contains($0) })
    }
}

/// The spare files of a `DeltaFiles`, shared with its `IncomingDelta`s, which hand their file
/// back when their update is refused or its transfer abandoned.
final class SparePool: Sendable {
    let maximum: Int
    private let files = Mutex<[String]>([])

    init(maximum: Int) { self.maximum = maximum }

    var paths: [String] { files.withLock { $0 } }

    func take() -> String? { files.withLock { $0.popLast() } }

    /// Keeps `path` as a spare (renamed so no update's name is taken), or deletes it when there
    /// are enough.
    func put(_ path: String) {
        let directory = (path as NSString).deletingLastPathComponent
        let kept: Bool = files.withLock { files in
            guard files.count < maximum else { return false }
            let spare = directory + "/spare-\(UInt64.random(in: 0...UInt64.max)).safetensors"
            guard rename(path, spare) == 0 else { return false }
            files.append(spare)
            return true
        }
        if !kept { unlink(path) }
    }
}

/// An update's values as they stream in (`PayloadDestination`): assembled in a buffer the
/// aggregator applies without copying, each chunk also written to the update's file. If the
/// update is not committed (refused, or its transfer abandoned), its file goes back to the spares.
class IncomingDelta: PayloadDestination, @unchecked Sendable {
    let storage: FloatBuffer
    let writer: SafeTensorsPieceWriter
    private let pool: SparePool
    /// Whether some of `storage` was given back (its values are then only in the file).
    var releasedPages = false

    init(writer: SafeTensorsPieceWriter, pool: SparePool, storage: FloatBuffer? = nil) {
        self.storage = storage ?? FloatBuffer(uninitializedCount: writer.count)
        self.writer = writer
        self.pool = pool
    }

    deinit { if !writer.isCommitted { pool.put(writer.temporaryPath) } }

    var values: UnsafeMutableBufferPointer<Float> { storage.buffer }

    func received(_ range: Range<Int>) {
        write(range)
    }

    func write(_ range: Range<Int>) {
        writer.write(UnsafeBufferPointer(rebasing: storage.buffer[range]), at: range.lowerBound)
    }
}
