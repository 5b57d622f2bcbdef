import FedLMProtocol
import FedLMZeroMQ

extension ZMQSocket {
    /// Sends an encoded message on a point-to-point socket in its streamed form
    /// (`MessageStream`): a tensor message goes out as its head and one message per chunk, each
    /// preceded by `prefix` (routing frames: a ROUTER's or the aggregator's peer id).
    func sendStreamed(_ frames: [[UInt8]], prefix: [[UInt8]] = []) throws {
        for message in MessageStream.split(frames) { try send(prefix + message) }
    }
}
