import FedLMProtocol

extension AggregatorCore {
    /// What the aggregator's service loop must do after the core handled a message.
    public enum Action: Equatable {
        /// Send to one peer (by its routing id).
        case reply(to: String, Message)
        /// Send one peer the current release of `cluster` (nil: the global model), as `release(cluster:)`
        /// makes it: the service encodes each release once per version and streams it to every
        /// fetcher and to the subscribers. With a `window` (a windowed FETCH), at most that many
        /// chunks, from where `resume` says while it names the current release's head.
        case sendRelease(to: String, cluster: String?, window: Int? = nil, resume: ResumePoint? = nil)
        /// Send one peer the release steps from the version it holds to the current one
        /// (`releaseSteps(from:)`), each encoded once.
        case sendReleaseSteps(to: String, from: Int)
    }
}
