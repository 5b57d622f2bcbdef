/// Where the broker listens. Trainers and subscribers use `trainers` (ROUTER) and `releases`
/// (XPUB); the aggregator uses `aggregator` (ROUTER) and `publish` (XSUB).
public struct BrokerEndpoints: Equatable, Sendable, Codable {
    public var trainers = "tcp://127.0.0.1:5555"
    public var aggregator = "tcp://127.0.0.1:5556"
    public var publish = "tcp://127.0.0.1:5557"
    public var releases = "tcp://127.0.0.1:5558"
    public init() {}

    /// Four consecutive TCP ports on loopback from `port` (trainers, aggregator, publish, releases);
    /// without a port, a random one below the ephemeral range (tests and benchmarks).
    public static func loopback(port: Int = Int.random(in: 20_000...32_000)) -> BrokerEndpoints {
        var e = BrokerEndpoints()
        e.trainers = "tcp://127.0.0.1:\(port)"
        e.aggregator = "tcp://127.0.0.1:\(port + 1)"
        e.publish = "tcp://127.0.0.1:\(port + 2)"
        e.releases = "tcp://127.0.0.1:\(port + 3)"
        return e
    }

    /// The same addresses for connecting (a bind on `tcp://*:N` is reached at `tcp://127.0.0.1:N` locally).
    public static func connectable(_ endpoint: String) -> String {
        endpoint.replacingOccurrences(of: "tcp://*:", with: "tcp://127.0.0.1:").replacingOccurrences(of: "tcp://0.0.0.0:", with: "tcp://127.0.0.1:")
    }
}

/// Socket limits set deliberately so a flood or a huge message cannot exhaust memory.
public struct TransportLimits: Equatable, Sendable, Codable {
    /// Largest inbound message (bytes); a 124M-parameter update is about 500 MB.
    public var maxMessageBytes: Int64 = 1 << 30
    /// Messages queued per peer.
    public var highWaterMark: Int32 = 1000
    /// ZMTP heartbeat interval and timeout (ms), and the broker's timeout for a silent aggregator.
    public var heartbeatInterval: Int32 = 1000
    public var heartbeatTimeout: Int32 = 10_000
    /// The ZMTP heartbeat timeout of members' sockets (ms): what a member receives counts, and
    /// while it uploads over a slow link its PING waits behind the update (23 MB at 10 Mbit/s is
    /// 19 s), so this must exceed the longest upload it makes, or the connection is dropped and
    /// the upload starts over.
    public var memberHeartbeatTimeout: Int32 = 120_000
    public init() {}

    /// Sets the message size limit, high-water marks and heartbeats on a (connecting) socket.
    public func apply(to socket: ZMQSocket) throws {
        try socket.setMaximumMessageSize(maxMessageBytes)
        try socket.setHighWaterMarks(send: highWaterMark, receive: highWaterMark)
        try socket.setHeartbeat(interval: heartbeatInterval, timeout: memberHeartbeatTimeout)
    }

    /// Sets the message size limit and high-water marks on one of the broker's binding sockets,
    /// with TCP keepalive instead of ZMTP heartbeats to notice peers whose machine or link died.
    ///
    /// No ZMTP heartbeats on sockets that members connect to: libzmq (4.3.4, 4.3.5 and master as
    /// of 2026) sends a heartbeat PING by calling the connection's `out_event` from a timer
    /// without checking for an I/O error. When a peer fills its receive queue (the high-water
    /// mark stops reading its socket) and then closes the connection, the engine records the
    /// error but waits for the queue to drain; the next heartbeat timer then fails
    /// `zmq_assert (!_io_error)` in `stream_engine_base.cpp` and aborts the whole process. One
    /// member flooding and disconnecting took the broker down that way. The broker's own
    /// liveness checks (the aggregator's HEARTBEAT, peers forgotten after silence) do not need
    /// ZMTP heartbeats.
    public func applyServer(to socket: ZMQSocket) throws {
        try socket.setMaximumMessageSize(maxMessageBytes)
        try socket.setHighWaterMarks(send: highWaterMark, receive: highWaterMark)
        try socket.setTCPKeepalive(idle: max(1, heartbeatTimeout / 1000), interval: max(1, heartbeatInterval / 1000), count: 5)
    }
}

import FedLMZeroMQ
