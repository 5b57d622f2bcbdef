// libFuzzer target: StreamAssembler on arbitrary message sequences (built by scripts/fuzz).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamAssembler(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzInput.assembleOnce(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
