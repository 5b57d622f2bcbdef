import ServiceLifecycle

/// A role whose work is a blocking socket loop (`runBlocking`) that ends soon after `stop()`.
/// The default `run()` makes it a swift-service-lifecycle `Service`: the loop runs off the
/// cooperative pool, and graceful shutdown (SIGTERM/SIGINT via ServiceGroup) calls `stop()`.
public protocol BlockingService: Service, Sendable {
    func runBlocking() throws
    func stop()
}

extension BlockingService {
    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await Task.detached { try self.runBlocking() }.value
        } onGracefulShutdown: {
            self.stop()
        }
    }
}
