import FedLMFederation
import FedLMTools
import Foundation

/// What watches a federation while `fedlm bench load --monitor` runs: one scraper reading
/// `/metrics` every `scrapeInterval` seconds (a Prometheus server, 15 times more often than its
/// default), and `dashboards` clients polling `/api/status` every two seconds (open dashboard
/// pages). Each keeps the latency of every answer and counts failures.
final class MonitoringWatchers: @unchecked Sendable {
    struct Report {
        var metrics = LatencyHistogram()
        var status = LatencyHistogram()
        var failures = 0
        var statusBytes = 0
    }

    let port: UInt16
    let scrapeInterval: Double
    let dashboards: Int
    private let lock = NSLock()
    private var report = Report()
    private var stopping = false
    private var threads: [Thread] = []

    init(port: UInt16, scrapeInterval: Double, dashboards: Int) {
        self.port = port
        self.scrapeInterval = scrapeInterval
        self.dashboards = dashboards
    }

    func start() {
        lock.lock()
        report = Report()
        stopping = false
        lock.unlock()
        threads = [watcher(path: "/metrics", every: scrapeInterval)] + (0..<dashboards).map { _ in watcher(path: "/api/status", every: 2) }
        threads.forEach { $0.start() }
    }

    func stop() -> Report {
        lock.lock()
        stopping = true
        lock.unlock()
        Thread.join(threads)
        lock.lock()
        defer { lock.unlock() }
        return report
    }

    private var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopping }

    /// A thread that GETs `path` every `every` seconds (the first at a random offset, so the
    /// clients do not move in step).
    private func watcher(path: String, every: Double) -> Thread {
        Thread { [self] in
            var next = Date().timeIntervalSince1970 + Double.random(in: 0..<every)
            while !isStopping {
                let now = Date().timeIntervalSince1970
                if now < next { usleep(UInt32(min(0.05, next - now) * 1e6)); continue }
                next += every
                let result = try? httpGet(port: port, path: path)
                let seconds = Date().timeIntervalSince1970 - now
                lock.lock()
                if let result, result.status == 200 {
                    if path == "/metrics" { report.metrics.record(seconds) } else {
                        report.status.record(seconds)
                        report.statusBytes = result.bytes
                    }
                } else {
                    report.failures += 1
                }
                lock.unlock()
            }
        }
    }
}

/// A blocking HTTP/1.1 GET on loopback: the status code and the bytes of the response.
func httpGet(port: UInt16, path: String, timeout: Double = 10) throws -> (status: Int, bytes: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RunFailure("socket: errno \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else { throw RunFailure("connect to 127.0.0.1:\(port): errno \(errno)") }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { throw RunFailure("send: errno \(errno)") }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    // "HTTP/1.1 200 OK"
    let statusLine = String(decoding: response.prefix(while: { $0 != 13 }), as: UTF8.self).split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw RunFailure("no HTTP answer from 127.0.0.1:\(port)\(path)") }
    return (status, response.count)
}
