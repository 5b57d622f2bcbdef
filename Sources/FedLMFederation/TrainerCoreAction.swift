import FedLMProtocol

extension TrainerCore {
    /// What the driver does next, in order.
    public enum Action: Equatable, Sendable {
        /// Send this request (the one to send again on `resend`).
        case send(Message)
        /// Send this request after a short pause (asking again for a newer version).
        case sendAfter(seconds: Double, Message)
        /// Send the last request again.
        case resend
        /// Send this update (its frames are the driver's; it keeps the one in flight on disk).
        case sendUpdate(String)
        /// Keep this release as the weights the trainer holds: a whole release replaces them, a
        /// release step (`stepFrom`) is added to them.
        case hold(ReleaseInfo, TensorPayload)
        /// Load this cluster's release and report its loss on the choice sample (`evaluated`).
        case evaluate(cluster: String, ReleaseInfo, TensorPayload)
        /// Train `steps` local steps from this release and report the update (`trained`).
        case train(Round)
        /// The update in flight is settled: its pending file may go.
        case settled(updateID: String, Settlement)
        /// Something worth a line in the log.
        case note(Note)
        /// The token budget is spent: say BYE and stop.
        case finish
        /// The aggregator refused this trainer for good: stop with this error.
        case fail(String)
    }

    /// One round's work for the driver.
    public struct Round: Equatable, Sendable {
        public var number: Int
        /// The release the round's update is based on (its version goes in the UPDATE).
        public var release: ReleaseInfo
        /// The weights it starts from.
        public var start: Start
        public var steps: Int
        /// The cluster the update is for (its HELLO's).
        public var cluster: String?
    }

    /// Where a round's weights come from.
    public enum Start: Equatable, Sendable {
        /// The release the trainer holds.
        case release
        /// The weights the last round ended with.
        case local
        /// The release minus λ times the trainer's latest pseudo-gradient (overlap's merge rule).
        case releaseMinusOwn
    }

    public enum Settlement: Equatable, Sendable {
        case acknowledged(Ack)
        case refused(ErrorReply)
    }

    public enum Note: Equatable, Sendable {
        case registered(cluster: String?)
        case clusterLosses([String], [Float], chosen: String)
        case movedCluster(from: String, to: String)
        /// No version newer than `after` came within the fresh-base wait: training on it again.
        case noFreshVersion(after: Int)
        case resendingPendingUpdate(String)
    }
}
