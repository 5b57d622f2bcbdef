/// Errors of the federation's roles that are not protocol errors.
public enum FederationError: Error, CustomStringConvertible {
    case replayDiverged(String)
    case badTopology(String)
    case peer(String)
    public var description: String {
        switch self {
        case .replayDiverged(let why): return "restart replay diverged: \(why)"
        case .badTopology(let why): return "topology: \(why)"
        case .peer(let why): return why
        }
    }
}
