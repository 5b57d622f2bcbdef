import ArgumentParser
import FedLMFederation
import FedLMLedger
import Foundation

/// A snapshot of a running or stopped federation from its ledgers: every level (the top and
/// each region), its trainers and their last contact, staleness, speed, refusals and losses.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status",
        abstract: "Where a federation stands, from its ledgers: versions, trainers (last contact, updates, tokens/s, staleness), refusals, losses per cluster.",
        discussion: "Takes a topology (every level it describes) or a run directory (with its regions/ if any). Reads only; works while the federation runs.")

    @Argument(help: "A topology file, or an aggregator's run directory.") var target: String
    @Flag(help: "Print JSON (one object: the levels by name).") var json = false

    struct Level: Codable {
        var name: String
        var runDirectory: String
        var status: LedgerStatus
    }

    func run() throws {
        let levels = try Self.levels(of: target).map { name, directory -> Level in
            let path = directory + "/ledger.sqlite"
            guard FileManager.default.fileExists(atPath: path) else {
                throw RunFailure("\(path): no ledger (has the aggregator of \(name) ever run?)")
            }
            return Level(name: name, runDirectory: directory, status: try Ledger.reading(path: path).status())
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(levels), as: UTF8.self))
        } else {
            print(levels.map(Self.text).joined(separator: "\n\n"))
        }
    }

    /// The levels to show: (name, run directory), the top first.
    static func levels(of target: String) throws -> [(String, String)] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory) else {
            throw RunFailure("\(target): no such topology file or run directory")
        }
        if isDirectory.boolValue {
            let regions = (try? FileManager.default.contentsOfDirectory(atPath: target + "/regions").sorted()) ?? []
            return [("top", target)] + regions.map { ("region \($0)", target + "/regions/" + $0) }
        }
        let t = try Topology.load(path: target)
        return [(t.regions.isEmpty ? t.name : "top", t.runDirectory)] + t.regions.map { ("region \($0.upstream!.region)", $0.runDirectory) }
    }

    static func text(_ level: Level) -> String {
        let s = level.status
        var lines = ["\(level.name) (\(level.runDirectory)): version \(s.version)" + (s.newestCheckpoint.map { ", checkpoint v\($0)" } ?? "")
            + (s.adoptedFromAbove.map { ", adopted version \($0) from above" } ?? "")
            + (s.lastUpdateSeconds.map { String(format: ", last update %.0f s ago", $0) } ?? ", no update yet")]
        lines.append(String(format: "  updates %d accepted, %d refused; %d tokens; mean staleness %.2f", s.accepted, s.refused, s.tokens, s.meanStaleness))
        if !s.refusals.isEmpty {
            lines.append("  refused: " + s.refusals.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !s.validationLoss.isEmpty {
            lines.append("  validation loss: " + s.validationLoss.sorted { $0.key < $1.key }.map { String(format: "%@ %.4f", $0.key, $0.value) }.joined(separator: ", "))
        }
        if !s.personalizedLoss.isEmpty {
            lines.append("  clusters' own models: " + s.personalizedLoss.sorted { $0.key < $1.key }.map { String(format: "%@ %.4f", $0.key, $0.value) }.joined(separator: ", "))
        }
        if !s.trainers.isEmpty {
            lines.append("  trainer                 cluster      last contact  accepted  refused    tokens  tokens/s  staleness")
            func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
                let fill = String(repeating: " ", count: max(0, width - text.count))
                return right ? fill + text : text + fill
            }
            for t in s.trainers {
                lines.append("  " + pad(t.id, 22) + "  " + pad(t.cluster ?? "-", 11) + "  " + pad(String(format: "%.0f s", t.lastContactSeconds), 12, right: true)
                             + "  " + pad("\(t.accepted)", 8, right: true) + "  " + pad("\(t.refused)", 7, right: true) + "  " + pad("\(t.tokens)", 8, right: true)
                             + "  " + pad(t.tokensPerSecond.map { String(format: "%.0f", $0) } ?? "-", 8, right: true)
                             + "  " + pad(String(format: "%.2f", t.meanStaleness), 9, right: true))
            }
            let clamped = s.trainers.filter { $0.clampedClaims > 0 }
            if !clamped.isEmpty {
                lines.append("  claimed more tokens than their steps allow (credited less): "
                             + clamped.map { "\($0.id) \($0.clampedClaims) update\($0.clampedClaims == 1 ? "" : "s")" }.joined(separator: ", "))
            }
        }
        return lines.joined(separator: "\n")
    }
}
