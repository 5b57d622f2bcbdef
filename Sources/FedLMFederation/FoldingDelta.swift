import FedLMAggregation
import FedLMCheckpoint
import FedLMProtocol
import FedLMTensor

/// A whole update folded into FedBuff's buffer chunk by chunk while it streams in (streaming
/// application). Each chunk, once checked, is written to the update's file and added to the
/// buffer with the update's staleness weight, and its memory is given back at once: the
/// aggregator never holds the update whole, so its memory is the model, the buffer and the
/// chunks in flight, about 2x the model instead of 3x.
///
/// A fold is taken back out exactly as it went in (its chunks read back from the file and
/// subtracted) when the update is refused at the end, when its transfer is abandoned, and
/// around whatever must not see a half-arrived update: another update completing the buffer
/// (the step takes the completed updates only), a checkpoint (the buffer saved holds completed
/// updates only, so a replay never adds half an update), a version adopted from above. Folded
/// back in afterwards, it has the weight of the staleness at that moment, so the weight it
/// completes with is the one a replay applies. (Sums then form in another order than a replay
/// adds them: a restart reproduces the model to within float rounding, not bit for bit.)
final class FoldingDelta: IncomingDelta, @unchecked Sendable {
    /// Values per piece read back from the file.
    static let pieceValues = (1 << 20) / 4

    let info: UpdateInfo
    let strategy: FedBuff
    /// Values received and folded so far (chunks arrive in order from the first).
    private(set) var receivedCount = 0
    /// The staleness the received values are folded in with; nil while they are taken out.
    private(set) var foldedStaleness: Int?
    /// Values whose memory was given back (they are read from the file to be taken out).
    private var releasedCount = 0
    /// The update completed (its fold stays) or was dealt with otherwise.
    var settled = false
    /// A chunk held a value that is not finite: the update will be refused, and nothing of it
    /// stays folded (a NaN in the buffer could never be taken out again).
    private(set) var poisoned = false

    init(_ info: UpdateInfo, writer: SafeTensorsPieceWriter, pool: SparePool, strategy: FedBuff, staleness: Int) {
        self.info = info
        self.strategy = strategy
        foldedStaleness = staleness
        super.init(writer: writer, pool: pool, storage: FloatBuffer(mappedCount: writer.count))
    }

    /// A transfer abandoned midway takes its fold out with it.
    deinit { if !settled { unfold() } }

    override func received(_ range: Range<Int>) {
        precondition(range.lowerBound == receivedCount, "chunks arrive in order")
        write(range)
        let chunk = UnsafeBufferPointer(rebasing: storage.buffer[range])
        if !poisoned, chunk.contains(where: { !$0.isFinite }) {
            unfold()
            poisoned = true
        }
        receivedCount = range.upperBound
        if let s = foldedStaleness { strategy.fold(chunk, at: range.lowerBound, staleness: s) }
        // Given back only once it is safely in the file (a failed write keeps it in memory).
        if writer.failure == nil, releasedCount == range.lowerBound {
            storage.releasePages(range)
            releasedCount = range.upperBound
            releasedPages = true
        }
    }

    /// Takes the values received so far out of the buffer (nothing if they are out already).
    func unfold() {
        guard let s = foldedStaleness else { return }
        apply(sign: -1, staleness: s)
        foldedStaleness = nil
    }

    /// Puts them back in with the weight of `staleness` (nothing if they are in already).
    func refold(staleness: Int) {
        guard foldedStaleness == nil, !settled, !poisoned else { return }
        apply(sign: 1, staleness: staleness)
        foldedStaleness = staleness
    }

    private func apply(sign: Float, staleness: Int) {
        // From the file where the memory was given back; a piece that cannot be read back is
        // a disk failing under the aggregator: stopping beats a buffer silently wrong.
        let piece = UnsafeMutablePointer<Float>.allocate(capacity: Self.pieceValues)
        defer { piece.deallocate() }
        for start in stride(from: 0, to: releasedCount, by: Self.pieceValues) {
            let n = min(Self.pieceValues, releasedCount - start)
            do { try writer.read(start..<(start + n), into: piece) } catch {
                fatalError("cannot read back update \(info.updateID) from \(writer.temporaryPath): \(error)")
            }
            strategy.fold(UnsafeBufferPointer(start: piece, count: n), at: start, staleness: staleness, sign: sign)
        }
        if receivedCount > releasedCount {
            strategy.fold(UnsafeBufferPointer(rebasing: storage.buffer[releasedCount..<receivedCount]), at: releasedCount,
                          staleness: staleness, sign: sign)
        }
    }
}
