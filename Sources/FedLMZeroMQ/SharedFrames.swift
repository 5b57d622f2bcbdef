import CZeroMQ

/// Frames that libzmq sends without copying them: each frame handed to libzmq keeps this box
/// alive until libzmq has finished with the bytes (its I/O thread releases it), so a release
/// encoded once can be sent to many peers, and published, without a 40 MB copy each time.
/// The frames are immutable for the box's lifetime, so their storage never moves.
public final class SharedFrames: @unchecked Sendable {
    public let frames: [[UInt8]]
    public init(_ frames: [[UInt8]]) { self.frames = frames }
    public var count: Int { frames.count }
}

/// libzmq's callback when it is done with a zero-copy frame: drops the frame's hold on its box.
private let releaseSharedFrame: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void = { _, hint in
    if let hint { Unmanaged<SharedFrames>.fromOpaque(hint).release() }
}

extension ZMQSocket {
    /// Sends one multipart message: `head` (copied), then the frames `range` of `shared`
    /// (not copied).
    public func send(_ head: [[UInt8]], shared: SharedFrames, range: Range<Int>) throws {
        precondition(!range.isEmpty && range.upperBound <= shared.count, "frame range \(range) of \(shared.count)")
        try send(head, more: true)
        for i in range {
            let flags: Int32 = i < range.upperBound - 1 ? ZMQ_SNDMORE : 0
            var msg = zmq_msg_t()
            let frame = shared.frames[i]
            if frame.isEmpty {
                zmq_msg_init(&msg)
            } else {
                let hold = Unmanaged.passRetained(shared).toOpaque()
                // The storage of an immutable array held by `shared` stays where it is.
                let bytes = frame.withUnsafeBytes { UnsafeMutableRawPointer(mutating: $0.baseAddress!) }
                guard zmq_msg_init_data(&msg, bytes, frame.count, releaseSharedFrame, hold) == 0 else {
                    Unmanaged<SharedFrames>.fromOpaque(hold).release()
                    throw ZMQError.last("message init")
                }
            }
            while zmq_msg_send(&msg, handle, flags) < 0 {
                let error = ZMQError.last("send")
                if error.code == EINTR { continue }
                zmq_msg_close(&msg)  // calls the release callback
                throw error
            }
        }
    }
}
