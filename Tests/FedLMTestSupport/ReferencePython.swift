import Foundation
import XCTest

/// Finds the Python that has the reference packages (JAX, safetensors, ...).
///
/// The test command installs them into `.venv-test` and sets `FEDLM_PYTHON`; it also sets
/// `FEDLM_REQUIRE_REFERENCE=1`, so in CI a missing interpreter fails the test instead of
/// skipping it.
public enum ReferencePython {
    public static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    public static func interpreter() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let candidates: [String?] = [env["FEDLM_PYTHON"], packageRoot.appendingPathComponent(".venv-test/bin/python").path]
        for case let path? in candidates where FileManager.default.isExecutableFile(atPath: path) { return path }
        if env["FEDLM_REQUIRE_REFERENCE"] == "1" {
            XCTFail("FEDLM_REQUIRE_REFERENCE=1 but no reference Python found (set FEDLM_PYTHON)")
        }
        throw XCTSkip("no reference Python; run the README's test command, which installs it")
    }

    /// Runs a script under Tests/Reference with arguments; fails the test with its output on error.
    @discardableResult
    public static func run(_ script: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try interpreter())
        process.arguments = [packageRoot.appendingPathComponent("Tests/Reference/\(script)").path] + arguments
        var env = ProcessInfo.processInfo.environment
        env["JAX_PLATFORMS"] = "cpu"
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw NSError(domain: "ReferencePython", code: Int(process.terminationStatus),
                          userInfo: [NSLocalizedDescriptionKey: "\(script) failed:\n\(output)"])
        }
        return output
    }

    public static func temporaryDirectory(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "fedlm-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

/// The Python with the PyTorch trainer's packages (torch, transformers, pyzmq, crc32c,
/// safetensors): `.venv-client`, which the test command installs, or `FEDLM_CLIENT_PYTHON`.
public enum ClientPython {
    public static func interpreter() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let candidates: [String?] = [env["FEDLM_CLIENT_PYTHON"], ReferencePython.packageRoot.appendingPathComponent(".venv-client/bin/python").path]
        for case let path? in candidates where FileManager.default.isExecutableFile(atPath: path) { return path }
        if env["FEDLM_REQUIRE_REFERENCE"] == "1" {
            XCTFail("FEDLM_REQUIRE_REFERENCE=1 but no Python with the PyTorch trainer's packages (set FEDLM_CLIENT_PYTHON)")
        }
        throw XCTSkip("no Python with the PyTorch trainer's packages; run the README's test command, which installs them")
    }

    /// `clients/python`, for PYTHONPATH.
    public static var clientDirectory: String { ReferencePython.packageRoot.appendingPathComponent("clients/python").path }

    /// Starts the PyTorch trainer (`python -m fedlm_client ARGUMENTS`) with its output in `log`.
    public static func startTrainer(_ arguments: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try interpreter())
        p.arguments = ["-m", "fedlm_client"] + arguments
        p.environment = ProcessInfo.processInfo.environment.merging(["PYTHONPATH": clientDirectory]) { _, new in new }
        FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = p.standardOutput
        try p.run()
        return p
    }
}
