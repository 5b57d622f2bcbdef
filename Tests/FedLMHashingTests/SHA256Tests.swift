import FedLMHashing
import Foundation
import XCTest

/// SHA-256 against FIPS 180-4's published examples and a digest of pieces against the digest of
/// the whole.
final class SHA256Tests: XCTestCase {
    func testPublishedExamples() {
        XCTAssertEqual(SHA256.hex(of: Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(of: Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(of: Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex(of: Data(repeating: UInt8(ascii: "a"), count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testPiecesGiveTheDigestOfTheWhole() {
        let whole = Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        let hasher = SHA256()
        var start = 0
        for size in [0, 1, 63, 64, 65, 4096, 100_000] where start < whole.count {
            let end = min(start + size, whole.count)
            hasher.update(data: whole.subdata(in: start..<end))
            start = end
        }
        hasher.update(data: whole.subdata(in: start..<whole.count))
        XCTAssertEqual(hasher.finalize(), SHA256.hash(data: whole))
    }
}
