import Foundation

extension Thread {
    /// Waits until every one of `threads` (started) has finished, at most `timeout` seconds
    /// (nil: as long as it takes). True when they all finished.
    @discardableResult
    public static func join(_ threads: [Thread], timeout: Double? = nil) -> Bool {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while threads.contains(where: { !$0.isFinished }) {
            if let deadline, Date() > deadline { return false }
            usleep(1000)
        }
        return true
    }
}
