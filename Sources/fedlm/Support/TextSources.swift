import Foundation

/// Walks text inputs: plain files, folders (regular files, sorted, symlinks and `.dat` skipped),
/// and `.jsonl` files whose lines are objects with a `text` field.
enum TextSources {
    struct BadInput: Error, CustomStringConvertible {
        let description: String
    }

    static func files(_ inputs: [String]) throws -> [String] {
        let fm = FileManager.default
        var out: [String] = []
        for path in inputs {
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else { throw BadInput(description: "\(path): no such file or directory") }
            if isDirectory.boolValue {
                let items = (try? fm.subpathsOfDirectory(atPath: path)) ?? []
                out += items.sorted().map { path + "/" + $0 }.filter {
                    let type = (try? fm.attributesOfItem(atPath: $0)[.type]) as? FileAttributeType
                    return type == .typeRegular && !$0.hasSuffix(".dat")
                }
            } else {
                out.append(path)
            }
        }
        return out
    }

    /// Calls `body(origin, bytes)` per document: a whole plain file, or one JSONL line's `text`.
    static func forEachDocument(_ inputs: [String], _ body: (String, [UInt8]) throws -> Void) throws {
        for file in try files(inputs) {
            guard let data = FileManager.default.contents(atPath: file) else { throw BadInput(description: "\(file): cannot read") }
            if file.hasSuffix(".jsonl") {
                var lineNumber = 0
                for line in data.split(separator: 0x0A, omittingEmptySubsequences: false) {
                    lineNumber += 1
                    if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) { continue }
                    guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                        throw BadInput(description: "\(file):\(lineNumber): not a JSON object")
                    }
                    guard let text = object["text"] as? String else {
                        throw BadInput(description: "\(file):\(lineNumber): no string field 'text'")
                    }
                    try body("\(file):\(lineNumber)", Array(text.utf8))
                }
            } else {
                try body(file, Array(data))
            }
        }
    }
}
