import ArgumentParser
import Foundation
import Logging

/// `--log-level` and `--log-format`, shared by every role (`@OptionGroup`); `fedlm up` passes
/// them on to the processes it starts.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Least severe level logged: trace, debug, info, notice, warning, error or critical.") var logLevel: String = "info"
    @Option(help: "text (one line per message) or json (one JSON object per line, for log collectors).") var logFormat: String = "text"

    func validate() throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level is '\(logLevel)', not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let format = LogSettings.Format(rawValue: logFormat) else { throw ValidationError("--log-format is '\(logFormat)', not text or json") }
        // Loggers are made after the command line is read: each takes these settings.
        LogSettings.level = level
        LogSettings.format = format
    }

    /// The options as arguments for a child process.
    var arguments: [String] { ["--log-level", logLevel, "--log-format", logFormat] }
}

/// How log handlers made from now on log (set once, from the command line, before any service starts).
enum LogSettings {
    enum Format: String { case text, json }
    nonisolated(unsafe) static var level = Logger.Level.info
    nonisolated(unsafe) static var format = Format.text

    static func handler(label: String) -> any LogHandler {
        switch format {
        case .text:
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        case .json:
            var handler = JSONLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// One JSON object per line on standard error: time (ISO 8601, UTC, milliseconds), level, label,
/// message, and metadata if any.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel = Logger.Level.info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var record: [String: Any] = ["time": Self.timestamp(), "level": event.level.rawValue, "label": label,
                                     "message": event.message.description]
        let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
        if !all.isEmpty { record["metadata"] = all.mapValues { $0.description } }
        guard var line = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        line.append(0x0A)
        FileHandle.standardError.write(line)
    }

    private static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }
}
