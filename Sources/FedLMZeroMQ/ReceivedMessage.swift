import CZeroMQ

/// One received multipart message whose frames stay in libzmq's buffers: reading a frame does
/// not copy it (a 1 MiB tensor chunk is checked and copied into place straight from where libzmq
/// received it). The buffers are released when the message is.
public final class ReceivedMessage {
    private var messages: UnsafeMutablePointer<zmq_msg_t>
    private var capacity: Int
    public private(set) var count = 0

    init() {
        capacity = 8
        messages = .allocate(capacity: capacity)
    }

    deinit {
        for i in 0..<count { zmq_msg_close(messages + i) }
        messages.deallocate()
    }

    /// A fresh message slot at the end. Slots are never copied bytewise: a small frame's bytes
    /// live inside its zmq_msg_t, so growing moves each with zmq_msg_move.
    fileprivate func appendSlot() -> UnsafeMutablePointer<zmq_msg_t> {
        if count == capacity {
            let grown = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: capacity * 2)
            for i in 0..<count {
                zmq_msg_init(grown + i)
                zmq_msg_move(grown + i, messages + i)
                zmq_msg_close(messages + i)
            }
            messages.deallocate()
            messages = grown
            capacity *= 2
        }
        zmq_msg_init(messages + count)
        count += 1
        return messages + count - 1
    }

    fileprivate func dropLastSlot() {
        count -= 1
        zmq_msg_close(messages + count)
    }

    /// Frame `i` in place (valid while this message lives).
    public func frame(_ i: Int) -> UnsafeRawBufferPointer {
        precondition(i >= 0 && i < count, "frame \(i) of \(count)")
        let size = zmq_msg_size(messages + i)
        return UnsafeRawBufferPointer(start: size == 0 ? nil : zmq_msg_data(messages + i), count: size)
    }

    fileprivate func messages(at i: Int) -> UnsafeMutablePointer<zmq_msg_t> { messages + i }

    /// Every frame in place (valid while this message lives).
    public var frames: [UnsafeRawBufferPointer] { (0..<count).map(frame) }
}

extension ZMQSocket {
    /// Receives one multipart message without copying its frames, waiting at most `timeout` ms
    /// (-1: forever); nil on timeout.
    public func receiveInPlace(timeout: Int32 = -1) throws -> ReceivedMessage? {
        if timeout >= 0 {
            guard try poll(timeout: timeout) else { return nil }
        }
        let message = ReceivedMessage()
        while true {
            let slot = message.appendSlot()
            if zmq_msg_recv(slot, handle, 0) < 0 {
                let error = ZMQError.last("receive")
                message.dropLastSlot()
                if error.code == EINTR { continue }
                throw error
            }
            if zmq_msg_more(slot) == 0 { break }
        }
        return message
    }
}

extension ReceivedMessage {
    /// The size of every frame.
    public var frameSizes: [Int] { (0..<count).map { zmq_msg_size(messages(at: $0)) } }

    /// The authenticated user id of the sender (what the ZAP handler answered for its key; nil
    /// without authentication). A ROUTER's routing-id frame carries no metadata; the frames
    /// after it do.
    public var userID: String? {
        for i in 0..<count {
            if let user = zmq_msg_gets(messages(at: i), "User-Id") { return String(cString: user) }
        }
        return nil
    }

    /// The file descriptor of the TCP connection the message came in on (libzmq's `ZMQ_SRCFD`),
    /// or nil. Valid only while that connection lasts: use it at once.
    public var sourceFD: Int32? {
        let fd = zmq_msg_get(messages(at: count > 1 ? 1 : 0), ZMQ_SRCFD)
        return fd >= 0 ? fd : nil
    }

    /// Sends `prefix` and then this message's frames from `first` on to `socket`, handing the
    /// frames' buffers over without copying them. With `wait: false` a full queue drops the
    /// message and returns false. A message is sent whole or not at all (libzmq queues a
    /// multipart message atomically once its first frame is accepted).
    @discardableResult
    public func send(to socket: ZMQSocket, prefix: [[UInt8]], from first: Int, wait: Bool = true) throws -> Bool {
        precondition(!prefix.isEmpty, "a forwarded message starts with its routing frames")
        let dontWait: Int32 = wait ? 0 : ZMQ_DONTWAIT
        for (i, frame) in prefix.enumerated() {
            let more = i < prefix.count - 1 || first < count
            let rc = frame.withUnsafeBytes { zmq_send(socket.handle, $0.baseAddress, frame.count, (more ? ZMQ_SNDMORE : 0) | (i == 0 ? dontWait : 0)) }
            if rc < 0 {
                let error = ZMQError.last("send")
                if i == 0, !wait, error.code == EAGAIN { return false }
                throw error
            }
        }
        for i in first..<count {
            if zmq_msg_send(messages(at: i), socket.handle, i < count - 1 ? ZMQ_SNDMORE : 0) < 0 { throw ZMQError.last("forward") }
        }
        return true
    }
}
