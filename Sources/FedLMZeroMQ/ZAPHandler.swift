import CZeroMQ
import Foundation

/// libzmq's authentication hook (ZAP, RFC 27) for CURVE server sockets of one context: a REP
/// socket on `inproc://zeromq.zap.01`, answering each handshake with the `decide` function's
/// verdict. Fails closed: a request it cannot parse, a mechanism other than CURVE, or a key
/// `decide` does not know is refused (status 400).
public final class ZAPHandler: @unchecked Sendable {
    /// (ZAP domain of the server socket, client's public key in Z85) -> the user id to attach to
    /// its messages (the broker attaches the key itself and looks its member up), or nil to refuse.
    public typealias Decide = @Sendable (_ domain: String, _ publicKey: String) -> String?

    private let socket: ZMQSocket
    private let decide: Decide
    private let stopFlag = NSLock()
    private var stopped = false
    private let thread: Thread
    private let finished = DispatchSemaphore(value: 0)
    private let log: @Sendable (String) -> Void
    /// Refusals are logged once per key and domain per `logInterval` seconds, with a count of
    /// those in between (a refused client reconnects ten times a second).
    public var logInterval = 10.0
    private var lastLogged: [String: (time: Double, suppressed: Int)] = [:]

    public init(context: ZMQContext, decide: @escaping Decide, log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        socket = try ZMQSocket(context, .rep)
        try socket.bind("inproc://zeromq.zap.01")
        self.decide = decide
        self.log = log
        let box = Box()
        thread = Thread { box.handler?.serve() }
        box.handler = self
        thread.name = "fedlm-zap"
        thread.start()
    }

    private final class Box: @unchecked Sendable { weak var handler: ZAPHandler? }

    private var isStopped: Bool { stopFlag.lock(); defer { stopFlag.unlock() }; return stopped }

    private func serve() {
        while !isStopped {
            guard let request = try? socket.receive(timeout: 100) else { continue }
            _ = try? socket.send(answer(request))
        }
        socket.close()
        finished.signal()
    }

    /// The reply frames for one request: version, request id, status code and text, user id, metadata.
    func answer(_ f: [[UInt8]]) -> [[UInt8]] {
        let requestID = f.count > 1 ? f[1] : []
        func reply(_ code: String, _ text: String, user: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard f.count >= 7, f[0] == Array("1.0".utf8) else { return reply("400", "malformed ZAP request") }
        let domain = String(decoding: f[2], as: UTF8.self)
        guard String(decoding: f[5], as: UTF8.self) == "CURVE", let key = CurveKeyPair.z85(f[6]) else {
            logOnce(String(decoding: f[5], as: UTF8.self) + " " + domain,
                    "refused a \(String(decoding: f[5], as: UTF8.self)) connection on \(domain): only CURVE is accepted")
            return reply("400", "CURVE required")
        }
        guard let user = decide(domain, key) else {
            logOnce(key + " " + domain, "refused key \(key) on \(domain) (from \(String(decoding: f[3], as: UTF8.self)))")
            return reply("400", "key not allowed")
        }
        return reply("200", "OK", user: user)
    }

    /// Logs `line` unless a line for `subject` was logged within `logInterval` (then counts it).
    private func logOnce(_ subject: String, _ line: String) {
        let now = Date().timeIntervalSince1970
        if let last = lastLogged[subject], now - last.time < logInterval {
            lastLogged[subject]!.suppressed += 1
            return
        }
        let suppressed = lastLogged[subject]?.suppressed ?? 0
        if lastLogged.count > 4096 { lastLogged = lastLogged.filter { now - $0.value.time < logInterval } }  // strangers' keys
        lastLogged[subject] = (now, 0)
        log(line + (suppressed > 0 ? " (and \(suppressed) times more since the last such line)" : ""))
    }

    public func stop() {
        stopFlag.lock(); stopped = true; stopFlag.unlock()
        finished.wait()
    }
}
