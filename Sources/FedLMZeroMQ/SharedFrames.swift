import CZeroMQ

/// Frames that libzmq sends without copying them: each frame handed to libzmq keeps this box
/// alive until libzmq has finished with the bytes (its I/O thread releases it), so a release
/// encoded once can be sent to many peers, and published, without a 40 MB copy each time.
///
/// The frames are either byte arrays, or head frames followed by a `body` array cut into
/// frames of `bodyFrameBytes` where they lie: a tensor message's values go out straight from
/// the array that holds them, never copied into frames first. Everything is immutable for the
/// box's lifetime, so no storage moves while libzmq reads it.
public final class SharedFrames: @unchecked Sendable {
    private let arrays: [[UInt8]]
    /// The body array, kept alive for its storage, and where that storage is.
    private let body: Any?
    private let bodyBytes: UnsafeRawBufferPointer
    private let bodyFrameBytes: Int

    public init(_ frames: [[UInt8]]) {
        arrays = frames
        body = nil
        bodyBytes = UnsafeRawBufferPointer(start: nil, count: 0)
        bodyFrameBytes = 1
    }

    /// `head`, then the bytes of `body` as frames of `bodyFrameBytes` (the last one shorter).
    public init<Element: BitwiseCopyable>(head: [[UInt8]], body: [Element], bodyFrameBytes: Int) {
        precondition(bodyFrameBytes > 0, "frame size \(bodyFrameBytes)")
        arrays = head
        self.body = body
        // The storage of an immutable array held by this box stays where it is.
        bodyBytes = body.withUnsafeBytes { $0 }
        self.bodyFrameBytes = bodyFrameBytes
    }

    /// Frames in all: the arrays, then the body's.
    public var count: Int { arrays.count + (bodyBytes.count + bodyFrameBytes - 1) / bodyFrameBytes }

    /// Bytes in all frames.
    public var byteCount: Int { arrays.reduce(0) { $0 + $1.count } + bodyBytes.count }

    /// The first `n` frames as arrays (copied; meant for the small head frames).
    public func arrays(prefix n: Int) -> [[UInt8]] { (0..<min(n, count)).map { Array(self[$0]) } }

    /// Frame `i`'s bytes, valid while this box is alive.
    public subscript(i: Int) -> UnsafeRawBufferPointer {
        if i < arrays.count { return arrays[i].withUnsafeBytes { $0 } }
        let start = (i - arrays.count) * bodyFrameBytes
        return UnsafeRawBufferPointer(rebasing: bodyBytes[start..<min(start + bodyFrameBytes, bodyBytes.count)])
    }
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
            let frame = shared[i]
            if frame.isEmpty {
                zmq_msg_init(&msg)
            } else {
                let hold = Unmanaged.passRetained(shared).toOpaque()
                guard zmq_msg_init_data(&msg, UnsafeMutableRawPointer(mutating: frame.baseAddress!), frame.count, releaseSharedFrame, hold) == 0 else {
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
