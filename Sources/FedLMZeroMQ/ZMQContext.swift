import CZeroMQ

/// A libzmq context: owns the I/O threads. One per process is enough.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init(ioThreads: Int32 = 1) {
        handle = zmq_ctx_new()
        zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads)
    }

    deinit { zmq_ctx_term(handle) }

    /// libzmq's version, e.g. (4, 3, 4).
    public static var version: (Int32, Int32, Int32) {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return (a, b, c)
    }
}
