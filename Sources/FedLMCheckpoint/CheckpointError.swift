/// Everything that can be wrong with a checkpoint on disk, each case naming the file and the
/// tensor or field concerned.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case io(path: String, reason: String)
    case malformed(path: String, reason: String)
    case missingTensor(path: String, name: String)
    case unexpectedTensor(path: String, name: String)
    case wrongShape(path: String, name: String, expected: [Int], found: [Int])
    case wrongDType(path: String, name: String, expected: String, found: String)
    case checksumMismatch(path: String, expected: String, found: String)
    case configMismatch(path: String, reason: String)

    public var description: String {
        switch self {
        case .io(let path, let reason): return "\(path): \(reason)"
        case .malformed(let path, let reason): return "\(path): corrupt or not a safetensors file: \(reason)"
        case .missingTensor(let path, let name): return "\(path): tensor '\(name)' is missing"
        case .unexpectedTensor(let path, let name): return "\(path): unexpected tensor '\(name)'"
        case .wrongShape(let path, let name, let expected, let found):
            return "\(path): tensor '\(name)' has shape \(found), expected \(expected)"
        case .wrongDType(let path, let name, let expected, let found):
            return "\(path): tensor '\(name)' has dtype \(found), expected \(expected)"
        case .checksumMismatch(let path, let expected, let found):
            return "\(path): SHA-256 \(found) does not match the recorded \(expected): the file is corrupt"
        case .configMismatch(let path, let reason): return "\(path): \(reason)"
        }
    }
}
