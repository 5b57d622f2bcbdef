import Foundation

/// A fixed-size, 64-byte-aligned, zero-initialised block of `Float`s that owns its memory.
///
/// The model plans all of its activations as `FloatBuffer`s once per shape, so a training step
/// allocates nothing. Elementwise kernels take raw pointers from `pointer`; the buffer must
/// outlive them, which holding it in a stored property guarantees.
///
/// Buffers of `mappedBytes` or more are mapped from the kernel, whose fresh pages are zero and
/// take no memory until written: a large buffer that stays zero (a model's gradients in the
/// aggregator, a buffer a strategy has not used yet) costs nothing.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>
    private let mapped: Bool

    /// Buffers this large or larger are mapped (zero without being written).
    public static let mappedBytes = 32 << 20

    public init(count: Int) {
        self.count = count
        (pointer, mapped) = Self.allocate(count)
        if !mapped { memset(pointer, 0, max(count, 1) * MemoryLayout<Float>.stride) }
    }

    /// A buffer whose contents are whatever the memory held: for one about to be overwritten
    /// in full (zeroing 40 MB costs about 2 ms).
    public init(uninitializedCount count: Int) {
        self.count = count
        (pointer, mapped) = Self.allocate(count)
    }

    /// A mapped buffer of any size (zero), whose pages `releasePages` can give back.
    public init(mappedCount count: Int) {
        self.count = count
        (pointer, mapped) = Self.allocate(count, map: true)
    }

    public var isMapped: Bool { mapped }

    /// Gives the memory of the whole pages within elements `range` back to the kernel (a mapped
    /// buffer only; they read as zero afterwards).
    public func releasePages(_ range: Range<Int>) {
        guard mapped else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound * 4 + page - 1) / page * page
        let end = range.upperBound == count ? (count * 4 + page - 1) / page * page : range.upperBound * 4 / page * page
        guard end > start else { return }
        madvise(UnsafeMutableRawPointer(pointer) + start, end - start, Int32(MADV_DONTNEED))
    }

    private static func allocate(_ count: Int, map: Bool = false) -> (UnsafeMutablePointer<Float>, mapped: Bool) {
        precondition(count >= 0, "FloatBuffer count must be non-negative, got \(count)")
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        if bytes >= mappedBytes || map {
            guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
                fatalError("FloatBuffer: cannot map \(bytes) bytes")
            }
            return (raw.bindMemory(to: Float.self, capacity: max(count, 1)), true)
        }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("FloatBuffer: cannot allocate \(bytes) bytes")
        }
        return (raw.bindMemory(to: Float.self, capacity: max(count, 1)), false)
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit {
        if mapped { munmap(pointer, max(count, 1) * MemoryLayout<Float>.stride) } else { free(pointer) }
    }

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
