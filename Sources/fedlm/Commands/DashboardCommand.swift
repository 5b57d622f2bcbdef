import ArgumentParser
import FedLMFederation
import FedLMMonitoring
import Foundation

/// The live dashboard of every level of a federation, served from its ledgers (read only), for a
/// federation whose aggregators serve none, or one that has stopped. An aggregator with
/// `[monitoring] aggregator` serves the same page for its own level.
struct DashboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dashboard",
        abstract: "Serve the live dashboard of a federation (every level) from its ledgers: loss curves, trainers, versions, refusals.",
        discussion: "Takes a topology or a run directory, like `fedlm status`. Reads only; works while the federation runs or after.")

    @OptionGroup var logging: LoggingOptions
    @Argument(help: "A topology file, or an aggregator's run directory.") var target: String
    @Option(help: "Address to serve on (host:port).") var address: String = "127.0.0.1:9470"
    @Option(help: "Client addresses or CIDR ranges that may read, comma-separated (default: loopback only).") var allow: String?

    func run() async throws {
        var access = MonitoringConfig()
        let bind: HTTPAddress
        switch HTTPAddress.parse(address) {
        case .success(let a): bind = a
        case .failure(let e): throw ValidationError("--address: \(e)")
        }
        if let allow {
            access.allow = try allow.split(separator: ",").map { text in
                switch AddressRange.parse(text.trimmingCharacters(in: .whitespaces)) {
                case .success(let r): return r
                case .failure(let e): throw ValidationError("--allow: \(e)")
                }
            }
        } else if !bind.isLoopback {
            throw ValidationError("--address \(bind) is reachable from other machines: say who may read it with --allow")
        }
        let levels = try StatusCommand.levels(of: target).map { DashboardData.Level(name: $0.0, ledgerPath: $0.1 + "/ledger.sqlite") }
        let title = (try? Topology.load(path: target).name) ?? URL(fileURLWithPath: target).lastPathComponent
        let server = try MonitoringServer(address: bind, access: access, metrics: nil, dashboard: DashboardData(title: title, levels: levels))
        print("dashboard at \(bind.url)/ (Ctrl-C stops it)")
        try await runService(server, label: "fedlm.dashboard")
    }
}
