import ArgumentParser
import FedLMFederation
import FedLMTools
import FedLMModel
import Foundation

/// `fedlm conformance`: checks a trainer program, in any language, against the protocol's rules
/// for trainers (PROTOCOL.md, "A trainer's conversation") with a real aggregator and scripted
/// exchanges.
struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Check a trainer program against the protocol's rules: a real aggregator, scripted refusals, a corrupt release, a restart.",
        discussion: """
            The client command follows `--`; {broker}, {name}, {state}, {data} and {config} in it are replaced by the \
            address to connect to, the trainer id to use, a state directory, and --data and --config. Give the client \
            a token budget of at least five updates. Examples:
              fedlm conformance --data runs/demo-data/shards --config Config/tiny.toml -- \\
                .venv-client/bin/fedlm-torch-trainer --broker {broker} --name {name} --state {state} --data {data} \\
                --config {config} --local-steps 2 --tokens 40960 --ack-timeout 3
              fedlm conformance --data runs/demo-data/shards --config Config/tiny.toml -- \\
                .build/release/fedlm trainer --broker {broker} --name {name} --state {state} --data {data} \\
                --config {config} --max-local-steps 2 --tokens 40960 --ack-timeout 3
            """)

    @Option(help: "Prepared data directory, for {data}.") var data: String
    @Option(help: "Model config file, for {config} (the harness's model is of this shape).") var config: String
    @Option(help: "Directory for the aggregator's run, the client's state and its output (default: a new temporary one).") var out: String?
    @Option(help: "Seconds before the client is stopped.") var timeLimit: Double = 600
    @Argument(parsing: .postTerminator, help: "The client's command.") var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("give the client's command after --") }
        guard timeLimit > 0 else { throw ValidationError("--time-limit must be positive") }
    }

    func run() throws {
        let file = try ConfigResolution.load(config)
        let directory = out ?? NSTemporaryDirectory() + "fedlm-conformance-\(getpid())"
        var options = ConformanceRun.Options(command: command, data: data, configPath: config, model: file.model, directory: directory)
        options.timeLimit = timeLimit
        let run = ConformanceRun(options: options)
        let results = try run.run()
        for line in run.log { print("  " + line) }
        print("")
        for check in results {
            let mark = check.passed.map { $0 ? "PASS" : "FAIL" } ?? "----"
            print("\(mark)  \(check.rule)\(check.detail.isEmpty ? "" : " (\(check.detail))")")
        }
        let failed = results.filter { $0.passed != true }
        print(failed.isEmpty ? "\nthe client keeps every rule" : "\n\(failed.count) of \(results.count) rules broken or not reached")
        if !failed.isEmpty { throw ExitCode(1) }
    }
}
