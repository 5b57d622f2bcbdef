import Foundation

/// A fixed-size, 64-byte-aligned, zero-initialised block of `Float`s that owns its memory.
///
/// The model plans all of its activations as `FloatBuffer`s once per shape, so a training step
/// allocates nothing. Elementwise kernels take raw pointers from `pointer`; the buffer must
/// outlive them, which holding it in a stored property guarantees.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    public init(count: Int) {
        self.count = count
        pointer = Self.allocate(count)
        memset(pointer, 0, max(count, 1) * MemoryLayout<Float>.stride)
    }

    /// A buffer whose contents are whatever the memory held: for one about to be overwritten
    /// in full (zeroing 40 MB costs about 2 ms).
    public init(uninitializedCount count: Int) {
        self.count = count
        pointer = Self.allocate(count)
    }

    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        precondition(count >= 0, "FloatBuffer count must be non-negative, got \(count)")
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("FloatBuffer: cannot allocate \(bytes) bytes")
        }
        return raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { free(pointer) }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public subscript(index: Int) -> Float {
        get { pointer[index] }
        set { pointer[index] = newValue }
    }

    public func zero() { memset(pointer, 0, count * MemoryLayout<Float>.stride) }

    public func copy(from other: FloatBuffer) {
        precondition(other.count == count, "FloatBuffer copy: \(other.count) elements into \(count)")
        pointer.update(from: other.pointer, count: count)
    }

    public var array: [Float] { Array(buffer) }
}
