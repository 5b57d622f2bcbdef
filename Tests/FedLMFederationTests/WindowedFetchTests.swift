@testable import FedLMFederation
import FedLMProtocol
import XCTest

/// A trainer's windowed release fetches, decided without sockets: the next window asked for when
/// half of the last is in, a gap asked for again once, a stall resumed from the first chunk missing.
final class WindowedFetchTests: XCTestCase {
    func testWindowsAreAskedForAheadSoTheLinkStaysBusyAndNoMoreThanOneAndAHalfAreInFlight() throws {
        var w = WindowedFetch(window: 4)
        let first = w.outgoing(Fetch(cluster: "en", haveVersion: 3, holds: 3))
        XCTAssertEqual(first, Fetch(cluster: "en", haveVersion: 3, holds: 3, window: 4))
        // Head and chunks 0-3 of 10 asked for; nothing more until 2 are in.
        XCTAssertNil(w.progress(head: 99, received: 0, count: 10, gap: false))
        XCTAssertNil(w.progress(head: 99, received: 1, count: 10, gap: false))
        let second = try XCTUnwrap(w.progress(head: 99, received: 2, count: 10, gap: false))
        XCTAssertEqual(second.resume, ResumePoint(head: 99, next: 4))
        XCTAssertEqual(second.window, 4)
        XCTAssertEqual(second.cluster, "en")
        XCTAssertNil(second.holds, "a continuation wants this stream's chunks, not release steps")
        XCTAssertNil(w.progress(head: 99, received: 5, count: 10, gap: false))
        XCTAssertEqual(w.progress(head: 99, received: 6, count: 10, gap: false)?.resume, ResumePoint(head: 99, next: 8))
        // Everything asked for: nothing more.
        for received in 7...9 { XCTAssertNil(w.progress(head: 99, received: received, count: 10, gap: false)) }
    }

    func testAGapIsAskedForAgainOnceFromTheFirstChunkMissing() {
        var w = WindowedFetch(window: 4)
        _ = w.outgoing(Fetch())
        _ = w.progress(head: 5, received: 0, count: 20, gap: false)
        _ = w.progress(head: 5, received: 1, count: 20, gap: false)
        XCTAssertEqual(w.progress(head: 5, received: 2, count: 20, gap: false)?.resume?.next, 4)
        // Chunk 2 lost: chunk 3 shows the gap; the chunks after it in flight do not ask again.
        XCTAssertEqual(w.progress(head: 5, received: 2, count: 20, gap: true)?.resume, ResumePoint(head: 5, next: 2))
        XCTAssertNil(w.progress(head: 5, received: 2, count: 20, gap: true))
        XCTAssertNil(w.progress(head: 5, received: 2, count: 20, gap: true))
        // The repeat arrives; windows continue from where the repeat's window ends (2 + 4).
        XCTAssertNil(w.progress(head: 5, received: 3, count: 20, gap: false))
        XCTAssertEqual(w.progress(head: 5, received: 4, count: 20, gap: false)?.resume?.next, 6)
    }

    func testAStalledStreamResumesFromTheFirstChunkMissingAndANewReleaseStartsAfresh() {
        var w = WindowedFetch(window: 8)
        XCTAssertNil(w.stalled(head: 1, received: 0, count: 3), "no stream seen yet: the core's own request goes again")
        _ = w.outgoing(Fetch(haveVersion: 2))
        _ = w.progress(head: 1, received: 0, count: 30, gap: false)
        _ = w.progress(head: 1, received: 5, count: 30, gap: false)
        XCTAssertEqual(w.stalled(head: 1, received: 5, count: 30), Fetch(haveVersion: 2, window: 8, resume: ResumePoint(head: 1, next: 5)))
        // The release changed meanwhile: the aggregator sent a new head and its first window.
        XCTAssertNil(w.progress(head: 2, received: 0, count: 30, gap: false))
        XCTAssertEqual(w.progress(head: 2, received: 4, count: 30, gap: false)?.resume, ResumePoint(head: 2, next: 8))
        // A new request from the core forgets the stream.
        XCTAssertEqual(w.outgoing(Fetch(haveVersion: 9)).resume, nil)
        XCTAssertNil(w.stalled(head: 2, received: 4, count: 30))
    }
}
