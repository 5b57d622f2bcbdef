import FedLMFederation
import FlyingFox
import FlyingSocks
import Foundation
import Logging
import ServiceLifecycle

/// The HTTP side of a role (FlyingFox): `/metrics` in Prometheus' text format, and where it has
/// `dashboard` data (an aggregator, `fedlm dashboard`), the live dashboard at `/` and its data at
/// `/api/status`. Read only: GET and HEAD, nothing else. A client whose socket address is not in
/// `allow` gets 403 (a forwarded-for header counts for nothing).
public final class MonitoringServer: Service, @unchecked Sendable {
    public let address: HTTPAddress
    public let allow: MonitoringConfig
    public let metrics: PrometheusMetrics?
    public let dashboard: DashboardData?
    private let server: HTTPServer
    private let logger: Logger

    public init(address: HTTPAddress, access: MonitoringConfig, metrics: PrometheusMetrics?, dashboard: DashboardData?,
                logger: Logger = Logger(label: "fedlm.monitoring")) throws {
        self.address = address
        self.allow = access
        self.metrics = metrics
        self.dashboard = dashboard
        self.logger = logger
        let socketAddress: any SocketAddress = address.isIPv6 ? try sockaddr_in6.inet6(ip6: address.host, port: address.port)
            : try sockaddr_in.inet(ip4: address.host, port: address.port)
        server = HTTPServer(address: socketAddress, timeout: 15, logger: .disabled, handler: Router(metrics: metrics, dashboard: dashboard, access: access))
    }

    public func run() async throws {
        let served = [metrics.map { _ in "metrics at \(address.url)/metrics" }, dashboard.map { _ in "dashboard at \(address.url)/" }].compactMap { $0 }
        logger.info("\(served.joined(separator: ", ")); readable from \(allow.allow.map(\.description).joined(separator: ", "))")
        try await withGracefulShutdownHandler {
            try await server.run()
        } onGracefulShutdown: { [server] in
            Task { await server.stop(timeout: 1) }
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
