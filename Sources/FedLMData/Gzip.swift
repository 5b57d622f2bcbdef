import CZlib
import Foundation

/// gzip-compressed text (`.gz`), read through the system's zlib.
enum Gzip {
    /// The decompressed bytes of a gzip stream (several members one after another are read as
    /// one, as `gzip -d` does).
    static func decompress(_ data: Data, path: String) throws -> Data {
        var out = Data()
        var stream = z_stream()
        // 16 + MAX_WBITS: a gzip header and trailer around the deflate stream.
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DataError.io(path: path, reason: "zlib cannot start")
        }
        defer { inflateEnd(&stream) }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        try data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
            guard let base = input.bindMemory(to: Bytef.self).baseAddress else { return }
            stream.next_in = UnsafeMutablePointer(mutating: base)
            stream.avail_in = uInt(input.count)
            while true {
                let status = chunk.withUnsafeMutableBufferPointer { buffer -> Int32 in
                    stream.next_out = buffer.baseAddress
                    stream.avail_out = uInt(buffer.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                out.append(contentsOf: chunk[0..<(chunk.count - Int(stream.avail_out))])
                switch status {
                case Z_STREAM_END:
                    guard stream.avail_in > 0 else { return }
                    inflateReset(&stream)  // another gzip member follows
                case Z_OK: continue
                case Z_BUF_ERROR where stream.avail_in == 0:
                    throw DataError.io(path: path, reason: "the gzip stream ends early (truncated file)")
                default:
                    throw DataError.io(path: path, reason: "not valid gzip data (zlib status \(status))")
                }
            }
        }
        return out
    }
}
