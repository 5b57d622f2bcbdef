import CZeroMQ
import Foundation

/// The broker's pub/sub relay: an XSUB socket that publishers (the aggregator) connect to and an
/// XPUB socket that subscribers connect to, joined by `zmq_proxy_steerable` on its own thread.
/// Subscriptions flow up, releases flow down; the relay holds no state of its own.
public final class ReleaseRelay: @unchecked Sendable {
    private let context: ZMQContext
    private let control: ZMQSocket
    private let controlEndpoint: String
    private let thread: Thread
    private let finished = DispatchSemaphore(value: 0)
    public let publisherEndpoint: String
    public let subscriberEndpoint: String
    /// libzmq's connection events on the XPUB side (accepted, disconnected): who subscribes.
    private let monitor: ZMQSocket
    private var subscribers = 0

    /// Binds both sides (use `tcp://host:*` to let the OS choose ports) and starts relaying.
    /// `configure` runs on each side before it binds (with "publish" for the XSUB side and
    /// "releases" for the XPUB side), e.g. to make both CURVE servers.
    public init(context: ZMQContext, publishers: String, subscribers: String, highWaterMark: Int32 = 64,
                configure: (ZMQSocket, String) throws -> Void = { _, _ in }) throws {
        self.context = context
        let xsub = try ZMQSocket(context, .xsub)
        let xpub = try ZMQSocket(context, .xpub)
        try xsub.setHighWaterMarks(send: highWaterMark, receive: highWaterMark)
        try xpub.setHighWaterMarks(send: highWaterMark, receive: highWaterMark)
        try configure(xsub, "publish")
        try configure(xpub, "releases")
        let monitorEndpoint = "inproc://fedlm-relay-monitor-\(UInt64.random(in: 0...UInt64.max))"
        guard zmq_socket_monitor(xpub.handle, monitorEndpoint, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) == 0 else { throw ZMQError.last("zmq_socket_monitor") }
        monitor = try ZMQSocket(context, .pair)
        try monitor.connect(monitorEndpoint)
        try xsub.bind(publishers)
        try xpub.bind(subscribers)
        publisherEndpoint = xsub.lastEndpoint
        subscriberEndpoint = xpub.lastEndpoint
        controlEndpoint = "inproc://fedlm-relay-control-\(UInt64.random(in: 0...UInt64.max))"
        let controlServer = try ZMQSocket(context, .pair)
        try controlServer.bind(controlEndpoint)
        control = try ZMQSocket(context, .pair)
        try control.connect(controlEndpoint)
        let done = finished
        thread = Thread {
            // Blocks until TERMINATE arrives on the control socket.
            zmq_proxy_steerable(xsub.handle, xpub.handle, nil, controlServer.handle)
            xsub.close()
            xpub.close()
            controlServer.close()
            done.signal()
        }
        thread.name = "fedlm-release-relay"
        thread.start()
    }

    /// Subscribers connected now: the connection events so far, read without waiting (call it
    /// from one thread, the broker loop's).
    public func subscriberCount() -> Int {
        while let event = try? monitor.receive(timeout: 0), let first = event.first, first.count >= 2 {
            switch Int32(first[0]) | Int32(first[1]) << 8 {
            case ZMQ_EVENT_ACCEPTED: subscribers += 1
            case ZMQ_EVENT_DISCONNECTED: subscribers = max(0, subscribers - 1)
            default: break
            }
        }
        return subscribers
    }

    /// Stops relaying and closes both sockets.
    public func stop() {
        _ = try? control.send([Array("TERMINATE".utf8)])
        finished.wait()
        control.close()
        monitor.close()
    }
}
