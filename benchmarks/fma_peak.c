/* The CPU's arithmetic ceiling: multiply-adds per second from registers alone, all cores.
 *
 * fcn-bench model measures utilisation against the best GEMM the libraries reach in the same
 * run; this is the harder ceiling above it (no memory traffic at all), to tell how far from the
 * silicon those GEMMs and the model are. Each thread runs 24 independent accumulator chains of
 * one instruction (enough to cover its latency), for bf16 (AVX512_BF16 vdpbf16ps: 32 pairs
 * = 64 FLOP per instruction) and fp32 (AVX-512 vfmadd: 16 lanes = 32 FLOP per instruction).
 *
 *   gcc -O2 -mavx512f -mavx512bf16 -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak
 *   OMP_NUM_THREADS=2 /tmp/fma_peak
 *
 * Only for CPUs with avx512_bf16 (grep avx512_bf16 /proc/cpuinfo); prints figures, never asserts.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 24
#define ITERS 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double bf16_gflops(void) {
    double t0 = now();
    float sink = 0.f;
#pragma omp parallel reduction(+ : sink)
    {
        __m512 acc[CHAINS];
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_setzero_ps();
        __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 in bf16 */
        __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80);
        for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 24
            for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
            __asm__ volatile("" : "+v"(a)); /* keep the loop from being folded */
        }
        for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
    }
    double t = now() - t0;
    if (sink == 42.f) printf("%f\n", sink);
    return omp_get_max_threads() * (double)ITERS * CHAINS * 64 / t / 1e9;
}

static double fp32_gflops(void) {
    double t0 = now();
    float sink = 0.f;
#pragma omp parallel reduction(+ : sink)
    {
        __m512 acc[CHAINS];
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_setzero_ps();
        __m512 a = _mm512_set1_ps(1.f), b = _mm512_set1_ps(1e-9f);
        for (long k = 0; k < ITERS; k++) {
#pragma GCC unroll 24
            for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
            __asm__ volatile("" : "+v"(a));
        }
        for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
    }
    double t = now() - t0;
    if (sink == 42.f) printf("%f\n", sink);
    return omp_get_max_threads() * (double)ITERS * CHAINS * 32 / t / 1e9;
}

int main(void) {
    int threads = omp_get_max_threads();
    for (int r = 0; r < 3; r++)
        printf("threads %d  bf16 (vdpbf16ps) %.0f GFLOP/s  fp32 (vfmadd) %.0f GFLOP/s\n",
               threads, bf16_gflops(), fp32_gflops());
    return 0;
}
