#ifndef FEDLM_RUNTIME_H
#define FEDLM_RUNTIME_H
#include <stddef.h>
#include <stdint.h>

/// Sets flush-to-zero and denormals-are-zero in this thread's MXCSR (x86) or FPCR.FZ (arm64).
/// AdamW's tiny second moments become subnormal floats, which x86 processes ~100x slower.
void fedlm_enable_flush_to_zero(void);

/// 1 if FTZ and DAZ are both set on the calling thread.
int fedlm_flush_to_zero_enabled(void);

/// Asks the kernel to send this process SIGTERM when its parent exits (Linux PR_SET_PDEATHSIG),
/// for children that live in their own process group; returns 1 if the parent `parent` is already
/// gone (the caller should stop), -1 if the request failed, 0 otherwise.
int fedlm_stop_with_parent(int parent);

/// Makes stdout line-buffered, so progress lines interleave with the log when piped.
void fedlm_line_buffer_stdout(void);

/// Makes large allocations come from (and return to) the heap instead of fresh mappings, so
/// buffers for big messages are reused without page faults (glibc; a no-op elsewhere).
void fedlm_reuse_large_allocations(void);

/// A spin-wait hint (x86 `pause`): keeps a spinning thread from starving its sibling.
void fedlm_cpu_relax(void);

/// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (start with 0). Uses the
/// SSE4.2 instruction where the CPU has it, three chains at once on long buffers (about 20 GB/s
/// here), a table otherwise.
uint32_t fedlm_crc32c(uint32_t crc, const void *data, size_t length);

/// The same CRC as one dependent chain of crc32 instructions (a third of `fedlm_crc32c`'s speed
/// on long buffers): the baseline `fedlm bench update` and the tests compare against.
uint32_t fedlm_crc32c_serial(uint32_t crc, const void *data, size_t length);

/// What one pass over a chunk of received FP32 values found (`fedlm_take_floats`).
typedef struct {
    uint32_t crc32c;      ///< CRC-32C of the chunk's bytes
    int nonFinite;        ///< 1 if any value is NaN or infinite
    double sumOfSquares;  ///< sum of the squared values (in float within 24 KB blocks, like VectorOps)
} fedlm_chunk_stats;

/// Copies `count` FP32 values from `source` (any alignment) to `destination` and, in the same
/// pass, computes their bytes' CRC-32C, whether any is not finite, and their sum of squares: the
/// receiver's four checks of a chunk as one pass, 24 KB at a time while the block is in L1.
void fedlm_take_floats(const void *source, float *destination, size_t count, fedlm_chunk_stats *stats);

/// Bit set of the CPU features that decide OpenBLAS's kernel choice.
enum {
    FEDLM_CPU_SSE3 = 1 << 0,
    FEDLM_CPU_AVX = 1 << 1,
    FEDLM_CPU_AVX2 = 1 << 2,
    FEDLM_CPU_FMA = 1 << 3,
    FEDLM_CPU_AVX512F = 1 << 4,
    FEDLM_CPU_AVX512DQ = 1 << 5,
    FEDLM_CPU_AVX512BW = 1 << 6,
    FEDLM_CPU_AVX512VL = 1 << 7,
    FEDLM_CPU_AVX512BF16 = 1 << 8,
    FEDLM_CPU_OS_AVX = 1 << 9,      // the OS saves YMM state (XGETBV)
    FEDLM_CPU_OS_AVX512 = 1 << 10,  // the OS saves ZMM state
};
uint32_t fedlm_cpu_features(void);

#endif
