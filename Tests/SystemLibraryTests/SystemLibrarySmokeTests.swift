import COpenBLAS
import CSQLite
import CZeroMQ
import FedLMTensor
import Foundation
import XCTest

/// Each C dependency links and does real work: ZeroMQ moves a message over TCP loopback,
/// SQLite writes and reads back a row in a real file, OpenBLAS multiplies matrices.
final class SystemLibrarySmokeTests: XCTestCase {
    func testZeroMQRoundTripOverTCPLoopback() throws {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        XCTAssertGreaterThanOrEqual(major, 4)
        let context = zmq_ctx_new()
        defer { zmq_ctx_term(context) }
        let server = zmq_socket(context, ZMQ_REP), client = zmq_socket(context, ZMQ_REQ)
        var linger: Int32 = 0
        zmq_setsockopt(server, ZMQ_LINGER, &linger, 4)
        zmq_setsockopt(client, ZMQ_LINGER, &linger, 4)
        defer { zmq_close(client); zmq_close(server) }
        XCTAssertEqual(zmq_bind(server, "tcp://127.0.0.1:*"), 0)
        var endpoint = [CChar](repeating: 0, count: 256)
        var size = 256
        zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, &endpoint, &size)
        XCTAssertEqual(zmq_connect(client, endpoint), 0)
        let message = Array("ping".utf8)
        XCTAssertEqual(zmq_send(client, message, message.count, 0), 4)
        var buffer = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(zmq_recv(server, &buffer, 16, 0), 4)
        XCTAssertEqual(Array(buffer[0..<4]), message)
    }

    func testSQLiteWritesAndReadsARealFile() throws {
        let path = NSTemporaryDirectory() + "fedlm-smoke-\(getpid()).sqlite"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var db: OpaquePointer?
        XCTAssertEqual(sqlite3_open(path, &db), SQLITE_OK)
        defer { sqlite3_close(db) }
        XCTAssertEqual(sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (42);", nil, nil, nil), SQLITE_OK)
        var statement: OpaquePointer?
        XCTAssertEqual(sqlite3_prepare_v2(db, "SELECT x FROM t", -1, &statement, nil), SQLITE_OK)
        XCTAssertEqual(sqlite3_step(statement), SQLITE_ROW)
        XCTAssertEqual(sqlite3_column_int(statement, 0), 42)
        sqlite3_finalize(statement)
    }

    func testOpenBLASMultipliesAndNamesItsCore() {
        let a: [Float] = [1, 2, 3, 4, 5, 6]  // 2x3
        let b: [Float] = [7, 8, 9, 10, 11, 12]  // 3x2
        var c = [Float](repeating: 0, count: 4)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1, a, 3, b, 2, 0, &c, 2)
        XCTAssertEqual(c, [58, 64, 139, 154])
        XCTAssertFalse(BLASRuntime.coreName.isEmpty)
        print("OpenBLAS: \(BLASRuntime.configuration), core \(BLASRuntime.coreName)")
    }
}
