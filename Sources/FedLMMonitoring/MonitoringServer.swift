import FedLMFederation
import FlyingFox
import FlyingSocks
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The HTTP side of a role (FlyingFox): `/metrics` in Prometheus' text format, and where it has
/// `dashboard` data (an aggregator, `fedlm dashboard`), the live dashboard at `/` and its data at
/// `/api/status`. Read only: GET and HEAD, nothing else. A client whose socket address is not in
/// `allow` gets 403 (a forwarded-for header counts for nothing).
public final class MonitoringServer: Service, @unchecked Sendable {
    public let address: HTTPAddress
    public let access: MonitoringConfig
    public let metrics: PrometheusMetrics?
    public let dashboard: DashboardData?
    private let server: HTTPServer
    private let logger: Logger

    public init(address: HTTPAddress, access: MonitoringConfig, metrics: PrometheusMetrics?, dashboard: DashboardData?,
                logger: Logger = Logger(label: "fedlm.monitoring")) throws {
        self.address = address
        self.access = access
        self.metrics = metrics
        self.dashboard = dashboard
        self.logger = logger
        let socketAddress: any SocketAddress = address.isIPv6 ? try sockaddr_in6.inet6(ip6: address.host, port: address.port)
            : try sockaddr_in.inet(ip4: address.host, port: address.port)
        server = HTTPServer(address: socketAddress, timeout: 15, logger: .disabled, handler: Router(metrics: metrics, dashboard: dashboard, access: access))
    }

    /// Serves until the process shuts down gracefully, or fails (the address taken, say). At
    /// shutdown it closes its listening socket and returns at once: FlyingFox's own stop waits on
    /// its connections and socket pool, which must not hold up the roles' shutdown.
    public func run() async throws {
        let served = [metrics.map { _ in "metrics at \(address.url)/metrics" }, dashboard.map { _ in "dashboard at \(address.url)/" }].compactMap { $0 }
        logger.info("\(served.joined(separator: ", ")); readable from \(access.allow.map(\.description).joined(separator: ", "))")
        let outcome = Outcome()
        try await withGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, Error>) in
                outcome.wait(done)
                Task { [server, address] in
                    do {
                        try await server.run()
                        outcome.finish(nil)
                    } catch {
                        outcome.finish(MonitoringError("monitoring cannot serve on \(address) ([monitoring] in the topology): \(error)"))
                    }
                }
            }
        } onGracefulShutdown: { [server] in
            outcome.finish(nil)
            Task { await server.stop(timeout: 0) }
        }
    }

    /// The one result of `run`, whichever comes first: the server ends, or shutdown begins.
    private final class Outcome: Sendable {
        private struct State {
            var continuation: CheckedContinuation<Void, Error>?
            var result: Result<Void, Error>?
        }
        private let state = Mutex(State())

        func wait(_ c: CheckedContinuation<Void, Error>) {
            state.withLock { state in
                if let result = state.result { c.resume(with: result) } else { state.continuation = c }
            }
        }

        func finish(_ error: Error?) {
            state.withLock { state in
                guard state.result == nil else { return }
                let result: Result<Void, Error> = error.map { .failure($0) } ?? .success(())
                state.result = result
                state.continuation?.resume(with: result)
                state.continuation = nil
            }
        }
    }

    /// Waits until the socket listens (tests, benchmarks).
    public func waitUntilListening(timeout: Double = 5) async throws { try await server.waitUntilListening(timeout: timeout) }
    public func stop() async { await server.stop(timeout: 1) }
}

/// The routes; every request passes the access check first.
struct Router: HTTPHandler {
    let metrics: PrometheusMetrics?
    let dashboard: DashboardData?
    let access: MonitoringConfig

    func handleRequest(_ request: HTTPRequest) async throws -> HTTPResponse {
        guard let ip = Self.peerIP(request), access.allows(ip) else {
            return Self.text(.forbidden, "this address may not read this server (see [monitoring] allow)\n")
        }
        guard request.method == .GET || request.method == .HEAD else {
            return HTTPResponse(statusCode: .methodNotAllowed, headers: [HTTPHeader("Allow"): "GET, HEAD"], body: Data("read only\n".utf8))
        }
        switch request.path {
        case "/metrics":
            guard let metrics else { break }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: Data(metrics.exposition()))
        case "/api/status":
            guard let dashboard else { break }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"], body: Data(dashboard.json()))
        case "/", "/index.html":
            guard dashboard != nil else { break }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: Data(DashboardPage.html.utf8))
        default: break
        }
        return Self.text(.notFound, "not found: \(request.path) (try " + ([metrics.map { _ in "/metrics" }, dashboard.map { _ in "/, /api/status" }]
            .compactMap { $0 }.joined(separator: ", ")) + ")\n")
    }

    /// The client's address as the socket reports it.
    static func peerIP(_ request: HTTPRequest) -> String? {
        switch request.remoteAddress {
        case .ip4(let ip, _), .ip6(let ip, _): return ip
        case .unix, .none: return nil
        }
    }

    static func text(_ status: HTTPStatusCode, _ body: String) -> HTTPResponse {
        HTTPResponse(statusCode: status, headers: [.contentType: "text/plain; charset=utf-8"], body: Data(body.utf8))
    }
}

/// The monitoring server could not do its work (the address taken, say), naming the address.
public struct MonitoringError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
