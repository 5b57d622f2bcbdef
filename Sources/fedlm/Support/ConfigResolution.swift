import ArgumentParser
import FedLMModel
import Foundation

/// Resolves `--config`: a path to a TOML file, or a preset name from `Config/` (tiny, small, ...).
enum ConfigResolution {
    static func load(_ nameOrPath: String) throws -> ConfigFile {
        let path = resolve(nameOrPath)
        do { return try ConfigFile.load(path: path) } catch let e as ConfigFileError {
            throw ValidationError(e.description)
        } catch let e as ConfigError {
            throw ValidationError("\(path): \(e)")
        }
    }

    static func resolve(_ nameOrPath: String) -> String {
        if FileManager.default.fileExists(atPath: nameOrPath) { return nameOrPath }
        for dir in configDirectories {
            let candidate = dir + "/" + nameOrPath + (nameOrPath.hasSuffix(".toml") ? "" : ".toml")
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
        }
        return nameOrPath  // let loading report the missing file by the name the user gave
    }

    /// `Config/` of the working directory, then the one next to the source tree this binary was built from.
    static var configDirectories: [String] {
        let cwd = FileManager.default.currentDirectoryPath + "/Config"
        let sourceTree = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Config").path
        return [cwd, sourceTree]
    }
}
