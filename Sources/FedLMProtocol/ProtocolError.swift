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
        case normTooLarge         // an update's L2 norm exceeds the aggregator's bound (policy "refuse")
    }

    public let code: Code
    public let detail: String
    /// The UPDATE this error refuses, when its header could be read even though its tensors
    /// could not (non-finite values, a bad checksum): the aggregator then records the refusal
    /// under the update's id and tells the trainer which update it was.
    public var update: UpdateInfo?

    public init(_ code: Code, _ detail: String, update: UpdateInfo? = nil) {
        self.code = code
        self.detail = detail
        self.update = update
    }

    /// True for errors about what a message carries (non-finite values, wrong shapes, too
    /// large): the same message sent again gets the same answer, so a refusal of an update for
    /// one of these is final and recorded. A bad checksum or a lost chunk is about the transfer,
    /// and the sender may send the same update again intact.
    public var refusesContent: Bool { [.nonFinite, .shapeMismatch, .tooLarge].contains(code) }

    public var description: String { "\(code.rawValue): \(detail)" }
}
