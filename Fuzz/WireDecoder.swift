// libFuzzer target: WireCodec.decode on arbitrary frames (built by scripts/fuzz).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWireDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzInput.decodeOnce(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
