import CFedLMRuntime

/// Flush-to-zero / denormals-are-zero control.
///
/// MXCSR is per thread, so every thread that does training math must call `enable()`;
/// `parallel(_:_:)` does it for its workers. Subnormal floats (AdamW's tiny second moments)
/// otherwise cost ~100 cycles each on x86.
public enum FlushToZero {
    public static func enable() { fedlm_enable_flush_to_zero() }
    public static var isEnabled: Bool { fedlm_flush_to_zero_enabled() != 0 }
}
