import CZeroMQ

/// A libzmq call failed: which operation, on what, and libzmq's own message.
public struct ZMQError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let code: Int32
    public var message: String { String(cString: zmq_strerror(code)) }
    public var description: String { "zmq \(operation): \(message) (errno \(code))" }

    static func last(_ operation: String) -> ZMQError { ZMQError(operation: operation, code: zmq_errno()) }

    /// The call was interrupted or timed out rather than failed.
    public var isTimeoutOrRetry: Bool { code == EAGAIN || code == EINTR }
}

#if canImport(Glibc)
import Glibc
#endif
