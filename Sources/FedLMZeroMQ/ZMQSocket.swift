import CZeroMQ
import Foundation

/// A libzmq socket. Not thread-safe (as libzmq sockets are not): one thread uses it at a time.
public final class ZMQSocket: @unchecked Sendable {
    public enum Kind: Int32, Sendable {
        case pair, pub, sub, req, rep, dealer, router, pull, push, xpub, xsub
        var raw: Int32 {
            switch self {
            case .pair: return ZMQ_PAIR
            case .pub: return ZMQ_PUB
            case .sub: return ZMQ_SUB
            case .req: return ZMQ_REQ
            case .rep: return ZMQ_REP
            case .dealer: return ZMQ_DEALER
            case .router: return ZMQ_ROUTER
            case .pull: return ZMQ_PULL
            case .push: return ZMQ_PUSH
            case .xpub: return ZMQ_XPUB
            case .xsub: return ZMQ_XSUB
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    public let kind: Kind
    private let context: ZMQContext  // keeps the context alive as long as its sockets
    private var closed = false

    public init(_ context: ZMQContext, _ kind: Kind) throws {
        guard let h = zmq_socket(context.handle, kind.raw) else { throw ZMQError.last("socket(\(kind))") }
        handle = h
        self.kind = kind
        self.context = context
        try set(ZMQ_LINGER, Int32(0))  // never block shutdown on undelivered messages
    }

    deinit { close() }

    public func close() {
        if !closed {
            zmq_close(handle)
            closed = true
        }
    }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError.last("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError.last("connect \(endpoint)") }
    }

    /// The endpoint last bound, with the port the OS chose for `tcp://127.0.0.1:*`.
    public var lastEndpoint: String {
        var buffer = [UInt8](repeating: 0, count: 512)
        var size = buffer.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size)
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }

    // MARK: Options

    public func set(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else { throw ZMQError.last("setsockopt \(option)") }
    }

    public func set(_ option: Int32, int64 value: Int64) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int64>.size) == 0 else { throw ZMQError.last("setsockopt \(option)") }
    }

    public func set(_ option: Int32, bytes: [UInt8]) throws {
        let rc = bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, bytes.count) }
        guard rc == 0 else { throw ZMQError.last("setsockopt \(option)") }
    }

    /// Messages queued per peer before sends block or drop (libzmq's high-water marks).
    public func setHighWaterMarks(send: Int32, receive: Int32) throws {
        try set(ZMQ_SNDHWM, send)
        try set(ZMQ_RCVHWM, receive)
    }

    /// Inbound messages larger than this are refused and the peer disconnected.
    public func setMaximumMessageSize(_ bytes: Int64) throws { try set(ZMQ_MAXMSGSIZE, int64: bytes) }

    /// The identity a ROUTER peer sees for this socket.
    public func setRoutingID(_ id: [UInt8]) throws { try set(ZMQ_ROUTING_ID, bytes: id) }

    /// A SUB socket receives messages whose first frame starts with `prefix` ("" for all).
    public func subscribe(_ prefix: [UInt8] = []) throws { try set(ZMQ_SUBSCRIBE, bytes: prefix) }

    /// ZMTP heartbeats: ping every `interval` ms, drop the connection after `timeout` ms of silence.
    public func setHeartbeat(interval: Int32, timeout: Int32) throws {
        try set(ZMQ_HEARTBEAT_IVL, interval)
        try set(ZMQ_HEARTBEAT_TIMEOUT, timeout)
        try set(ZMQ_HEARTBEAT_TTL, timeout)
    }

    /// TCP keepalive probes: a peer whose machine or link died is noticed by the kernel after
    /// `idle` seconds of silence and `count` unanswered probes `interval` seconds apart.
    public func setTCPKeepalive(idle: Int32, interval: Int32, count: Int32) throws {
        try set(ZMQ_TCP_KEEPALIVE, 1)
        try set(ZMQ_TCP_KEEPALIVE_IDLE, idle)
        try set(ZMQ_TCP_KEEPALIVE_INTVL, interval)
        try set(ZMQ_TCP_KEEPALIVE_CNT, count)
    }

    /// ROUTER: fail a send to an unknown peer (EHOSTUNREACH) instead of dropping it silently.
    public func setRouterMandatory(_ on: Bool) throws { try set(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0)) }

    /// XPUB: pass every subscription message up, including duplicates (for snapshot-then-stream).

    // MARK: Messages

    /// Sends a multipart message. With `wait: false` returns false instead of blocking when
    /// the message cannot be queued (the high-water mark is reached, or there is no connection).
    @discardableResult
    public func send(_ frames: [[UInt8]], wait: Bool = true) throws -> Bool {
        precondition(!frames.isEmpty, "a message has at least one frame")
        for (i, frame) in frames.enumerated() {
            var flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            if !wait { flags |= ZMQ_DONTWAIT }
            let rc = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, frame.count, flags) }
            if rc < 0 {
                let error = ZMQError.last("send")
                // Later frames too: a connection that drops mid-message makes libzmq roll the
                // message back and answer EAGAIN; the next send starts a new message.
                if error.code == EAGAIN, !wait { return false }
                throw error
            }
        }
        return true
    }

    /// Receives one multipart message, waiting at most `timeout` ms (-1: forever); nil on timeout.
    public func receive(timeout: Int32 = -1) throws -> [[UInt8]]? {
        if timeout >= 0 {
            guard try poll(timeout: timeout) else { return nil }
        }
        var frames: [[UInt8]] = []
        while true {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            let rc = zmq_msg_recv(&msg, handle, 0)
            if rc < 0 {
                let error = ZMQError.last("receive")
                if error.code == EINTR { continue }
                throw error
            }
            let size = zmq_msg_size(&msg)
            let data = zmq_msg_data(&msg)!
            frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            if zmq_msg_more(&msg) == 0 { break }
        }
        return frames
    }

    /// Sends `head`, then `frames` (parts of memory that may change once this returns) copied
    /// into their own messages, as one multipart message.
    public func send(_ head: [[UInt8]], copying frames: [UnsafeRawBufferPointer]) throws {
        try send(head, more: !frames.isEmpty)
        for (i, frame) in frames.enumerated() {
            let flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            while zmq_send(handle, frame.baseAddress, frame.count, flags) < 0 {
                let error = ZMQError.last("send")
                if error.code == EINTR { continue }
                throw error
            }
        }
    }

    /// Sends frames, leaving the message open (more frames follow) when `more` is set.
    func send(_ frames: [[UInt8]], more: Bool) throws {
        for (i, frame) in frames.enumerated() {
            let flags: Int32 = (i < frames.count - 1 || more) ? ZMQ_SNDMORE : 0
            let rc = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, frame.count, flags) }
            if rc < 0 { throw ZMQError.last("send") }
        }
    }

    /// Waits until a message can be received; false after `timeout` ms.
    public func poll(timeout: Int32) throws -> Bool {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        while true {
            let rc = zmq_poll(&item, 1, Int(timeout))
            if rc < 0 {
                if zmq_errno() == EINTR { continue }
                throw ZMQError.last("poll")
            }
            return rc > 0
        }
    }
}

/// Waits on several sockets at once.
public enum ZMQPoller {
    /// Indices of the sockets that have a message to receive, after at most `timeout` ms.
    public static func readable(_ sockets: [ZMQSocket], timeout: Int32) throws -> [Int] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        while true {
            let rc = zmq_poll(&items, Int32(items.count), Int(timeout))
            if rc < 0 {
                if zmq_errno() == EINTR { continue }
                throw ZMQError.last("poll")
            }
            return items.indices.filter { items[$0].revents & Int16(ZMQ_POLLIN) != 0 }
        }
    }
}
