import Foundation

/// `[monitoring]`: where a level's aggregator serves its metrics and dashboard and its broker its
/// metrics over HTTP, and which client addresses may read them. Off unless the topology has the
/// table; only loopback clients unless `allow` names others.
///
///     [monitoring]
///     aggregator = "127.0.0.1:9464"   # /metrics, / (the dashboard), /api/status
///     broker = "127.0.0.1:9465"       # /metrics
///     allow = ["127.0.0.1", "::1", "10.1.0.0/16"]   # client addresses or CIDR ranges (default: loopback)
public struct MonitoringConfig: Sendable, Equatable {
    public var aggregator: HTTPAddress?
    public var broker: HTTPAddress?
    /// Clients that may read; every other gets 403 (the socket's peer address decides, never a
    /// forwarded-for header).
    public var allow: [AddressRange] = AddressRange.loopback

    public init(aggregator: HTTPAddress? = nil, broker: HTTPAddress? = nil, allow: [AddressRange] = AddressRange.loopback) {
        self.aggregator = aggregator
        self.broker = broker
        self.allow = allow
    }

    /// Whether a client at `ip` may read.
    public func allows(_ ip: String) -> Bool { allow.contains { $0.contains(ip) } }
}

/// "host:port" (IPv4, or IPv6 in brackets: "[::1]:9464") that an HTTP server binds.
public struct HTTPAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses "127.0.0.1:9464", "0.0.0.0:9464" or "[::1]:9464"; nil names what is wrong.
    public static func parse(_ text: String) -> Result<HTTPAddress, MonitoringConfigError> {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(.init("'\(text)' is not [IPv6]:port"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return .failure(.init("'\(text)' has no port (host:port, e.g. 127.0.0.1:9464)")) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { return .failure(.init("'\(text)': the port '\(portText)' is not 0-65535")) }
        guard IPAddressBytes(String(host)) != nil else {
            return .failure(.init("'\(text)': '\(host)' is not an IP address (name resolution is not done; give the address to bind)"))
        }
        return .success(HTTPAddress(host: String(host), port: port))
    }

    public var isIPv6: Bool { host.contains(":") }
    public var isLoopback: Bool { AddressRange.loopback.contains { $0.contains(host) } }
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
    /// The address a local client reaches it at ("0.0.0.0" and "::" are reached on loopback).
    public var url: String {
        let reach = host == "0.0.0.0" ? "127.0.0.1" : host == "::" ? "::1" : host
        return "http://" + (reach.contains(":") ? "[\(reach)]" : reach) + ":\(port)"
    }
}

/// One IPv4 or IPv6 address, or a CIDR range of them ("10.0.0.0/8", "fd00::/8").
public struct AddressRange: Sendable, Equatable, CustomStringConvertible {
    public let description: String
    private let network: [UInt8]
    private let prefixBits: Int

    public static let loopback: [AddressRange] = [try! AddressRange.parse("127.0.0.0/8").get(), try! AddressRange.parse("::1").get()]

    public static func parse(_ text: String) -> Result<AddressRange, MonitoringConfigError> {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let bytes = IPAddressBytes(String(parts[0])) else {
            return .failure(.init("'\(text)' is not an IP address or CIDR range (e.g. 10.0.0.0/8)"))
        }
        let bits = parts.count == 2 ? Int(parts[1]) : bytes.count * 8
        guard let bits, (0...(bytes.count * 8)).contains(bits) else {
            return .failure(.init("'\(text)': the prefix length must be 0-\(bytes.count * 8)"))
        }
        return .success(AddressRange(description: text, network: bytes, prefixBits: bits))
    }

    /// Whether `ip` (as a server sees its client: "127.0.0.1", "::1", "::ffff:10.0.0.1") lies in the range.
    public func contains(_ ip: String) -> Bool {
        guard var bytes = IPAddressBytes(ip) else { return false }
        // An IPv4 client on an IPv6 socket arrives as ::ffff:a.b.c.d.
        if bytes.count == 16, network.count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            bytes = Array(bytes[12...])
        }
        guard bytes.count == network.count else { return false }
        for bit in 0..<prefixBits where (bytes[bit / 8] ^ network[bit / 8]) & (0x80 >> UInt8(bit % 8)) != 0 { return false }
        return true
    }
}

/// A bad `[monitoring]` value, its text naming the value.
public struct MonitoringConfigError: Error, Equatable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The 4 or 16 bytes of a numeric IPv4 or IPv6 address (nil: not one).
func IPAddressBytes(_ text: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
    return nil
}
