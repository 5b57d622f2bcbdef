#include "fedlm_runtime.h"
#include <stdio.h>
#include <string.h>

void fedlm_line_buffer_stdout(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

#if defined(__linux__)
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
int fedlm_stop_with_parent(int parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) return -1;
    /* The parent may have exited before the request: then nobody will signal us. */
    return getppid() != parent ? 1 : 0;
}
#else
int fedlm_stop_with_parent(int parent) { (void)parent; return -1; }
#endif

#include <malloc.h>
void fedlm_reuse_large_allocations(void) {
    /* glibc serves blocks over its mmap threshold (at most 32 MiB) with fresh mappings that are
       unmapped on free, so every 40 MB tensor message used to fault in 10,000 new zeroed pages.
       From the heap, freed blocks are reused instead (and the top is not trimmed back). */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <xmmintrin.h>

#define MXCSR_DAZ (1u << 6)
#define MXCSR_FTZ (1u << 15)

void fedlm_cpu_relax(void) { _mm_pause(); }

void fedlm_enable_flush_to_zero(void) { _mm_setcsr(_mm_getcsr() | MXCSR_DAZ | MXCSR_FTZ); }

int fedlm_flush_to_zero_enabled(void) {
    unsigned csr = _mm_getcsr();
    return (csr & MXCSR_DAZ) && (csr & MXCSR_FTZ);
}

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

uint32_t fedlm_cpu_features(void) {
    unsigned a, b, c, d;
    uint32_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (c & bit_SSE3) f |= FEDLM_CPU_SSE3;
    if (c & bit_AVX) f |= FEDLM_CPU_AVX;
    if (c & bit_FMA) f |= FEDLM_CPU_FMA;
    if (c & bit_OSXSAVE) {
        uint64_t xcr0 = xgetbv0();
        if ((xcr0 & 0x6) == 0x6) f |= FEDLM_CPU_OS_AVX;
        if ((xcr0 & 0xe6) == 0xe6) f |= FEDLM_CPU_OS_AVX512;
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (b & bit_AVX2) f |= FEDLM_CPU_AVX2;
        if (b & bit_AVX512F) f |= FEDLM_CPU_AVX512F;
        if (b & bit_AVX512DQ) f |= FEDLM_CPU_AVX512DQ;
        if (b & bit_AVX512BW) f |= FEDLM_CPU_AVX512BW;
        if (b & bit_AVX512VL) f |= FEDLM_CPU_AVX512VL;
    }
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        if (a & (1u << 5)) f |= FEDLM_CPU_AVX512BF16;
    }
    return f;
}

#elif defined(__aarch64__)
void fedlm_cpu_relax(void) { __asm__ volatile("yield"); }
void fedlm_enable_flush_to_zero(void) {
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr |= (1ull << 24);
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
}
int fedlm_flush_to_zero_enabled(void) {
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    return (fpcr >> 24) & 1;
}
uint32_t fedlm_cpu_features(void) { return 0; }
#else
void fedlm_cpu_relax(void) {}
void fedlm_enable_flush_to_zero(void) {}
int fedlm_flush_to_zero_enabled(void) { return 0; }
uint32_t fedlm_cpu_features(void) { return 0; }
#endif

/* CRC-32C: table fallback (reflected polynomial 0x82F63B78) and the SSE4.2 instruction. */
static uint32_t crc32c_table[256];

/* Built once at load time, before any thread can call fedlm_crc32c. */
__attribute__((constructor)) static void crc32c_build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
}

static uint32_t crc32c_software(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* Copy, exponent check and squares of one block (any CPU; also the AVX2 version's tail). */
static void take_block_portable(const float *src, float *dst, size_t n, uint32_t *exponent, double *squares) {
    float sum = 0;
    uint32_t e = *exponent;
    for (size_t i = 0; i < n; i++) {
        float v = src[i];
        uint32_t bits;
        memcpy(&bits, &v, 4);
        dst[i] = v;
        if ((bits & 0x7F800000u) > e) e = bits & 0x7F800000u;
        sum += v * v;
    }
    *exponent = e;
    *squares += sum;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = ~crc & 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

/* The crc32 instruction has a latency of three cycles but can start one per cycle, so one
   dependent chain uses a third of it (about 8 GB/s). Three independent chains over three
   adjacent blocks run at full rate; the three results are then joined by "shifting" a block's
   CRC register over the following block's length, a linear map over GF(2) applied as four
   256-entry tables (built once from the map's matrix, as zlib's crc32_combine does). */
#define CRC32C_LONG 8192
#define CRC32C_SHORT 256
static uint32_t crc32c_shift_long[4][256], crc32c_shift_short[4][256];

/* Registers are bit-reflected, so a 32x32 GF(2) matrix is 32 columns: column i is the image of bit i. */
static uint32_t gf2_times(const uint32_t *matrix, uint32_t v) {
    uint32_t sum = 0;
    for (int i = 0; v; i++, v >>= 1) if (v & 1) sum ^= matrix[i];
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *matrix) {
    for (int i = 0; i < 32; i++) square[i] = gf2_times(matrix, matrix[i]);
}

/* Tables for the map "register -> register after `bytes` zero bytes" (bytes a power of two). */
static void crc32c_build_shift(uint32_t table[4][256], size_t bytes) {
    uint32_t op[32], tmp[32];
    /* One zero bit: shift right, and fold in the polynomial when bit 0 falls out. */
    op[0] = 0x82F63B78u;
    for (int i = 1; i < 32; i++) op[i] = 1u << (i - 1);
    for (size_t bits = 1; bits < bytes * 8; bits *= 2) {
        gf2_square(tmp, op);
        for (int i = 0; i < 32; i++) op[i] = tmp[i];
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t v = 0; v < 256; v++) table[k][v] = gf2_times(op, v << (8 * k));
}

static inline uint32_t crc32c_shift(uint32_t table[4][256], uint32_t r) {
    return table[0][r & 0xFF] ^ table[1][(r >> 8) & 0xFF] ^ table[2][(r >> 16) & 0xFF] ^ table[3][r >> 24];
}

__attribute__((target("sse4.2"))) static const unsigned char *crc32c_three_way(uint64_t *c, const unsigned char *p, size_t *n,
                                                                              size_t block, uint32_t table[4][256]) {
    while (*n >= 3 * block) {
        uint64_t c0 = *c, c1 = 0, c2 = 0;
        for (size_t i = 0; i < block; i += 8) {
            uint64_t v0, v1, v2;
            memcpy(&v0, p + i, 8);
            memcpy(&v1, p + block + i, 8);
            memcpy(&v2, p + 2 * block + i, 8);
            c0 = __builtin_ia32_crc32di(c0, v0);
            c1 = __builtin_ia32_crc32di(c1, v1);
            c2 = __builtin_ia32_crc32di(c2, v2);
        }
        *c = crc32c_shift(table, crc32c_shift(table, (uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * block;
        *n -= 3 * block;
    }
    return p;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42_parallel(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = ~crc & 0xFFFFFFFFu;
    p = crc32c_three_way(&c, p, &n, CRC32C_LONG, crc32c_shift_long);
    p = crc32c_three_way(&c, p, &n, CRC32C_SHORT, crc32c_shift_short);
    return crc32c_sse42(~(uint32_t)c, p, n);
}

static int crc32c_has_sse42 = 0;
__attribute__((constructor)) static void crc32c_detect(void) {
    unsigned a, b, c, d;
    crc32c_has_sse42 = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
    crc32c_build_shift(crc32c_shift_long, CRC32C_LONG);
    crc32c_build_shift(crc32c_shift_short, CRC32C_SHORT);
}

uint32_t fedlm_crc32c(uint32_t crc, const void *data, size_t length) {
    return crc32c_has_sse42 ? crc32c_sse42_parallel(crc, data, length) : crc32c_software(crc, data, length);
}

uint32_t fedlm_crc32c_serial(uint32_t crc, const void *data, size_t length) {
    return crc32c_has_sse42 ? crc32c_sse42(crc, data, length) : crc32c_software(crc, data, length);
}
#include <immintrin.h>

/* The same for a block already in L1, 16 values a step (AVX2 + FMA). */
__attribute__((target("avx2,fma"))) static void take_block_avx2(const float *src, float *dst, size_t n, uint32_t *exponent,
                                                                double *squares) {
    const __m256i mask = _mm256_set1_epi32(0x7F800000);
    __m256i high = _mm256_setzero_si256();
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
        _mm256_storeu_ps(dst + i, a);
        _mm256_storeu_ps(dst + i + 8, b);
        high = _mm256_max_epu32(high, _mm256_and_si256(_mm256_castps_si256(a), mask));
        high = _mm256_max_epu32(high, _mm256_and_si256(_mm256_castps_si256(b), mask));
        acc0 = _mm256_fmadd_ps(a, a, acc0);
        acc1 = _mm256_fmadd_ps(b, b, acc1);
    }
    float lanes[8];
    uint32_t exps[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(acc0, acc1));
    _mm256_storeu_si256((__m256i *)exps, high);
    float sum = 0;
    uint32_t e = *exponent;
    for (int k = 0; k < 8; k++) {
        sum += lanes[k];
        if (exps[k] > e) e = exps[k];
    }
    *exponent = e;
    *squares += sum;
    take_block_portable(src + i, dst + i, n - i, exponent, squares);
}

static int take_has_avx2 = 0;
__attribute__((constructor)) static void take_detect(void) {
    uint32_t f = fedlm_cpu_features();
    take_has_avx2 = (f & FEDLM_CPU_AVX2) && (f & FEDLM_CPU_FMA) && (f & FEDLM_CPU_OS_AVX);
}
#else
uint32_t fedlm_crc32c(uint32_t crc, const void *data, size_t length) { return crc32c_software(crc, data, length); }
uint32_t fedlm_crc32c_serial(uint32_t crc, const void *data, size_t length) { return crc32c_software(crc, data, length); }
#endif


void fedlm_take_floats(const void *source, float *destination, size_t count, fedlm_chunk_stats *stats) {
    /* Blocks of 24 KB: the CRC's three chains read a block into L1, the copy reads it from there. */
    const size_t block = 3 * 8192 / sizeof(float);
    const unsigned char *src = source;
    uint32_t crc = 0, exponent = 0;
    double squares = 0;
    for (size_t done = 0; done < count; done += block) {
        size_t n = count - done < block ? count - done : block;
        crc = fedlm_crc32c(crc, src + done * 4, n * 4);
#if defined(__x86_64__)
        if (take_has_avx2) {
            take_block_avx2((const float *)(src + done * 4), destination + done, n, &exponent, &squares);
            continue;
        }
#endif
        take_block_portable((const float *)(src + done * 4), destination + done, n, &exponent, &squares);
    }
    stats->crc32c = crc;
    stats->nonFinite = exponent == 0x7F800000u;
    stats->sumOfSquares = squares;
}
