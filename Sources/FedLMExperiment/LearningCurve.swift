import FedLMLedger
import Foundation

/// Validation loss per data cluster against training tokens and wall time.
public struct LearningCurve: Sendable {
    public struct Point: Sendable {
        public var tokens: Int
        public var seconds: Double
        public var losses: [String: Double]
        public var mean: Double { losses.values.reduce(0, +) / Double(max(losses.count, 1)) }
        public init(tokens: Int, seconds: Double, losses: [String: Double]) {
            self.tokens = tokens
            self.seconds = seconds
            self.losses = losses
        }
    }
    public var points: [Point]

    public init(points: [Point]) { self.points = points }

    /// From an aggregator's ledger: every evaluation ("validation_loss/<c>", or with personalized
    /// heads "personalized_loss/<c>" for the clusters that have them), with the tokens of the
    /// updates received by then and seconds since `start`.
    public static func fromLedger(_ path: String, start: Double, personalized: Bool) throws -> LearningCurve {
        var byVersion: [(version: Int, point: Point, personal: [String: Double])] = []
        for e in try Ledger.reading(path: path).evaluations(prefixes: ["validation_loss/", "personalized_loss/"]) {
            let (version, time, name, value, tokens) = (e.version, e.time, e.name, e.value, e.tokens)
            if byVersion.last?.version != version {
                byVersion.append((version, Point(tokens: tokens, seconds: time - start, losses: [:]), [:]))
            }
            let cluster = String(name.split(separator: "/", maxSplits: 1)[1])
            if name.hasPrefix("personalized_loss/") { byVersion[byVersion.count - 1].personal[cluster] = value } else {
                byVersion[byVersion.count - 1].point.losses[cluster] = value
                byVersion[byVersion.count - 1].point.tokens = max(byVersion[byVersion.count - 1].point.tokens, tokens)
            }
        }
        return LearningCurve(points: byVersion.map { entry in
            var p = entry.point
            if personalized { for (c, v) in entry.personal { p.losses[c] = v } }
            return p
        })
    }

    /// From `fedlm train`'s validation.csv (step, tokens, seconds, one column per cluster, mean);
    /// `offset` is added to its seconds (time before training started).
    public static func fromTrainingCSV(_ path: String, offset: Double = 0) throws -> LearningCurve {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",").map(String.init) }
        guard let header = lines.first, header.count >= 5 else { throw ExperimentError("\(path): no validation header") }
        let clusters = Array(header[3..<(header.count - 1)])
        return LearningCurve(points: lines.dropFirst().compactMap { row in
            guard row.count == header.count, let tokens = Int(row[1]), let seconds = Double(row[2]) else { return nil }
            var losses: [String: Double] = [:]
            for (i, c) in clusters.enumerated() { losses[c] = Double(row[3 + i]) }
            return Point(tokens: tokens, seconds: seconds + offset, losses: losses)
        })
    }

    /// The first wall time at which the mean loss reaches `target` (linear between points), or nil.
    public func secondsToReach(_ target: Double) -> Double? {
        for (a, b) in zip(points, points.dropFirst()) where b.mean <= target {
            if a.mean <= target { return a.seconds }
            let f = (a.mean - target) / (a.mean - b.mean)
            return a.seconds + f * (b.seconds - a.seconds)
        }
        if let first = points.first, first.mean <= target { return first.seconds }
        return nil
    }
}
