/// How much an update counts given its staleness s = t - tau (versions between the model it
/// started from and the current one). All functions give 1 at s = 0 and never increase.
public enum StalenessWeight: Equatable, Sendable, Codable {
    /// Always 1.
    case constant
    /// (s + 1)^-a  (FedAsync's polynomial function).
    case polynomial(exponent: Double)
    /// 1 for s <= b, then 1 / (a (s - b) + 1)  (FedAsync's hinge function).
    case hinge(slope: Double, cutoff: Int)
    /// 1 / sqrt(1 + s)  (FedBuff's default).
    case inverseSquareRoot

    public func weight(staleness s: Int) -> Double {
        precondition(s >= 0, "staleness cannot be negative")
        switch self {
        case .constant: return 1
        case .polynomial(let a): return pow(Double(s) + 1, -a)
        case .hinge(let a, let b): return s <= b ? 1 : 1 / (a * Double(s - b) + 1)
        case .inverseSquareRoot: return 1 / (1 + Double(s)).squareRoot()
        }
    }
}

import Foundation
