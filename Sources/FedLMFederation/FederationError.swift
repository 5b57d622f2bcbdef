/// Errors of the federation's roles that are not protocol errors.
public enum FederationError: Error, CustomStringConvertible {
    case replayDiverged(String)
    case badTopology(String)
    /// A peer sent something this role cannot use.
    case peer(String)
    /// Something on this machine: a file of this role's state, a port.
    case local(String)
    public var description: String {
        switch self {
        case .replayDiverged(let why): return "restart replay diverged: \(why)"
        case .badTopology(let why): return "topology: \(why)"
        case .peer(let why): return why
        case .local(let why): return why
        }
    }
}
