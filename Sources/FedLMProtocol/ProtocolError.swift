/// Why a message was refused. The code travels in ERROR replies; the detail says what exactly.
public struct ProtocolError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Codable, Sendable, CaseIterable {
        case malformed            // frames missing, header not JSON, a field missing or of the wrong type
        case unsupportedVersion   // the peer speaks another protocol version
        case unknownType          // a message type this version does not know
        case shapeMismatch        // tensor names or shapes differ from the model's
        case nonFinite            // NaN or infinity in a tensor
        case badChecksum          // a chunk's CRC-32C does not match
        case tooLarge             // over the configured message or tensor size
        case tooStale             // base version too old for the aggregation
        case unknownTrainer       // not registered (or forgotten after silence)
        case unknownCluster
        case duplicate            // update id already applied (the ack is repeated instead)
        case unavailable          // no model release yet, aggregator not connected, ...
        case forbidden            // the sender's role may not send this (a subscriber's UPDATE)
    }

    public let code: Code
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code.rawValue): \(detail)" }
}
