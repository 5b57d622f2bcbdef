#include "fedlm_runtime.h"
#include <stdio.h>

void fedlm_line_buffer_stdout(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

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
