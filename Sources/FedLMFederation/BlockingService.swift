import FedLMTensor
import Foundation
import ServiceLifecycle

/// A role whose work is a blocking socket loop (`runBlocking`) that ends soon after `stop()`.
/// The default `run()` makes it a swift-service-lifecycle `Service`: the loop runs on a thread of
/// its own, never on the cooperative pool (which may have a single thread on a small machine:
/// a loop there would starve every other task of the process, the monitoring server's and the
/// graceful shutdown's among them). Graceful shutdown (SIGTERM/SIGINT via ServiceGroup) and
/// cancellation (another service of the group failed) both call `stop()`.
public protocol BlockingService: Service, Sendable {
    func runBlocking() throws
    func stop()
}

extension BlockingService {
    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, Error>) in
                    let thread = Thread {
                        FlushToZero.enable()  // a trainer's loop does training math on this thread
                        do {
                            try self.runBlocking()
                            done.resume()
                        } catch {
                            done.resume(throwing: error)
                        }
                    }
                    thread.name = "\(Self.self)"
                    thread.start()
                }
            } onCancel: {
                self.stop()
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }
}
