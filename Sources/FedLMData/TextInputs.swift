import Foundation

/// Text inputs: plain files, folders (their regular files, sorted; symbolic links and `.dat`
/// files skipped), and `.jsonl` files whose lines are objects with a string field `text`; any of
/// them gzip-compressed (`.gz`, e.g. `.jsonl.gz`).
public enum TextInputs {
    public static func files(_ inputs: [String]) throws -> [String] {
        let fm = FileManager.default
        var out: [String] = []
        for path in inputs {
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw DataError.io(path: path, reason: "no such file or directory")
            }
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

    /// Calls `body` with each document of `file`; returns the file's size. A bad JSONL line goes
    /// to `onBadLine(location, reason)`, which throws to stop or returns to skip it.
    @discardableResult
    public static func forEachDocument(_ file: String, hasher: FileHasher? = nil,
                                       onBadLine: (String, String) throws -> Void,
                                       _ body: ([UInt8]) throws -> Void) throws -> Int {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: file), options: .alwaysMapped) } catch {
            throw DataError.io(path: file, reason: "cannot read: \(error.localizedDescription)")
        }
        hasher?.update(data)
        let compressed = file.hasSuffix(".gz")
        let text = compressed ? try Gzip.decompress(data, path: file) : data
        let name = compressed ? String(file.dropLast(3)) : file
        try forEachDocument(in: text, name: name, file: file, onBadLine: onBadLine, body)
        return data.count
    }

    /// The documents of `data`: the whole text, or one per JSONL line (`name` ends in `.jsonl`).
    private static func forEachDocument(in data: Data, name: String, file: String, onBadLine: (String, String) throws -> Void,
                                        _ body: ([UInt8]) throws -> Void) throws {
        guard name.hasSuffix(".jsonl") else {
            try body(Array(data))
            return
        }
        var lineNumber = 0
        var start = data.startIndex
        while start < data.endIndex {
            let end = data[start...].firstIndex(of: 0x0A) ?? data.endIndex
            lineNumber += 1
            let line = data[start..<end]
            start = end == data.endIndex ? end : end + 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                try onBadLine("\(file):\(lineNumber)", "not a JSON object")
                continue
            }
            guard let text = object["text"] as? String else {
                try onBadLine("\(file):\(lineNumber)", "no string field 'text'")
                continue
            }
            try body(Array(text.utf8))
        }
    }
}
