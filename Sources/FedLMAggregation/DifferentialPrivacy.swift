import Foundation

/// Client-level differential privacy at the aggregator (DP-FedAvg style): every update is clipped
/// to L2 norm `clip`, and each aggregate of buffered updates gets Gaussian noise of standard
/// deviation `noiseMultiplier * clip` added to their sum before it is averaged, so one trainer's
/// update changes the outcome's distribution only by a bounded amount.
public struct DifferentialPrivacy: Equatable, Sendable, Codable {
    public var clip: Double
    public var noiseMultiplier: Double
    public var delta: Double

    public init(clip: Double, noiseMultiplier: Double, delta: Double = 1e-5) {
        self.clip = clip
        self.noiseMultiplier = noiseMultiplier
        self.delta = delta
    }

    /// An (epsilon, delta) guarantee for a trainer whose updates went into `contributions`
    /// aggregates: each is a Gaussian mechanism of sensitivity `clip` with noise
    /// `noiseMultiplier * clip`, i.e. rho = 1 / (2 z^2) zero-concentrated DP; they compose to
    /// rho_total = contributions * rho, and epsilon = rho + 2 sqrt(rho ln(1/delta)) (Bun &
    /// Steinke 2016). Conservative: no amplification by sampling is claimed (trainers are not
    /// sampled at random; whoever arrives is aggregated), and a trainer with two updates in one
    /// aggregate counts them as two contributions.
    public func epsilon(contributions: Int) -> Double {
        guard noiseMultiplier > 0 else { return .infinity }
        let rho = Double(contributions) / (2 * noiseMultiplier * noiseMultiplier)
        return rho + 2 * (rho * log(1 / delta)).squareRoot()
    }
}
