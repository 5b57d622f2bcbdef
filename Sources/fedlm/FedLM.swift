import ArgumentParser
import CFedLMRuntime
import FedLMTensor
import Foundation
import Logging

/// The `fedlm` command line.
@main
struct FedLM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedlm",
        abstract: "Asynchronous federated pre-training of GPT-2-style language models.",
        subcommands: [UpCommand.self, StatusCommand.self, DashboardCommand.self, BrokerCommand.self, AggregatorCommand.self, TrainerCommand.self, SubscribeCommand.self,
                      TrainCommand.self, EvalCommand.self, SampleCommand.self, TokenizerCommand.self, DataCommand.self, BenchCommand.self, ConfigCommand.self,
                      CheckpointCommand.self, ClusterCommand.self, ExperimentCommand.self, CompareCommand.self, KeysCommand.self, InviteCommand.self,
                      ConformanceCommand.self])

    static func main() async {
        // Before anything else: OpenBLAS picks its kernels at load time, and may need a re-exec.
        let choice = BLASRuntime.ensureFastKernels()
        BLASRuntime.configureThreads()
        FlushToZero.enable()
        fedlm_line_buffer_stdout()
        fedlm_reuse_large_allocations()
        Runtime.kernelChoice = choice
        Runtime.followParent()
        // Each handler takes the --log-level and --log-format the command line set (`LoggingOptions`).
        LoggingSystem.bootstrap { label in LogSettings.handler(label: label) }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// Process-wide facts decided at start-up.
enum Runtime {
    nonisolated(unsafe) static var kernelChoice: BLASRuntime.KernelChoice = .generic("unknown")
    static let logger = Logger(label: "fedlm")

    /// A child that `fedlm up` started in a process group of its own stops when `fedlm up`
    /// exits, even by SIGKILL (the kernel sends it SIGTERM), so no role outlives its supervisor.
    static func followParent() {
        guard let value = getenv(ChildProcess.parentVariable), let parent = Int32(String(cString: value)) else { return }
        unsetenv(ChildProcess.parentVariable)
        if fedlm_stop_with_parent(parent) == 1 {
            FileHandle.standardError.write("fedlm: the process that started this one (pid \(parent)) has exited; stopping\n".data(using: .utf8)!)
            exit(1)
        }
    }

    /// Logs the BLAS kernel choice and the thread count; every command that computes calls it.
    static func announce() {
        logger.info("\(BLASRuntime.describe(kernelChoice)); \(ComputeThreads.count) compute threads; flush-to-zero \(FlushToZero.isEnabled ? "on" : "OFF")")
    }
}
