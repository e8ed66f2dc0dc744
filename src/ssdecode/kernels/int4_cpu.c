/* y[m, n] = x[m, k] @ W^T (+ bias) for a 4-bit weight in blocks of 32 with one fp32 scale each
 * (w = d * (q - 8), q in 0..15, as GGML's Q4_0), with the activations quantized to int8 per row:
 * the DRAFT model's products (the ``int4`` weight format). Built and loaded by int4.py.
 *
 * Why it is shaped like this:
 * - A draft's output never changes what speculative decoding samples (the verifier uses the q
 *   the draft sampled from), so a draft may round both its weights and its activations. A draft
 *   step is a product of 1-2 rows with every weight, bound by the weight's bytes: half a byte
 *   here, against one for int8 (fbgemm) and 0.69-1.06 for a GGUF draft's Q5_0 and Q8_0 blocks.
 * - Integer dot products: q (unsigned) times x (signed int8) on AVX-512 VNNI by vpdpbusd, 64
 *   weights a step; AVX2's maddubs sums such pairs into int16 without saturating (2 * 15 * 127
 *   < 32768). Each block's sum leaves the integer domain once: converted and multiplied by its
 *   scale into fp32 accumulators. The -8 of every q comes out per block as -8 * (the block's sum
 *   of x), precomputed per activation row and added as the initial value of the block's integer
 *   sum (the ``corr`` lanes), so it costs no instruction in the loop.
 * - Layout: per row, groups of 128 weights in 64 bytes; byte j holds weight j in its low nibble
 *   and weight 64 + j in its high one, so one 64-byte load and a mask and a shift give two
 *   vectors of 64 weights (AVX2: two loads, four vectors of 32, one block each). k is padded to
 *   a multiple of 128 with zero weights.
 * - RT weight rows meet MT activation rows per tile; rows are split among threads, so the weight
 *   streams from memory once per call. Each tile prefetches the same bytes of the next tile's rows:
 *   four interleaved row streams are not a pattern the hardware prefetchers follow well (without
 *   it the output head's product ran at 14 GB/s, with it at 22-24).
 * - Many rows (a prompt's prefill) are bound by the conversion and scaling of each block's sum,
 *   per row: with AMX-INT8 (isa AMX, where Linux grants the tile unit) a 16 x 16 tile of block
 *   sums (16 tokens x 16 weight rows, 32 weights each) comes from one TDPBSUD, its C tile
 *   starting from the -8 * sum(x) corrections, and is scaled into fp32 accumulators once (int4_amx.c).
 *   Without the tile unit a prompt of 64 tokens and more goes through oneDNN's fp32 GEMM on rows
 *   dequantized by ssd_i4_dequantize instead (blockwise.py, int4.py). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include "amx.h"
#include "int4.h"

enum { SCALAR, AVX2, VNNI, AMX };   /* isa codes, as in int4.py */
#define AMX_MIN_ROWS 32             /* fewer rows take the VNNI tiles with isa AMX (docs/benchmarks.md) */
#define RT 4                        /* weight rows per tile */
#define MT 4                        /* activation rows per tile */
#define GROUP 128                   /* weights per 64 bytes */

/* A tile: acc[r * m + i] = row r of w . row i of x, for rt weight rows and mt activation rows.
 * xq: int8 [mt][kp] (row stride kp); corr: int32 [mt][kp / 4]; w: [rt][kp / 2] bytes; d: [rt][kp / 32]. */
typedef void tile_fn(const int8_t *xq, const int32_t *corr, int64_t kp, const uint8_t *w, const float *d,
                     float *acc, int m, int rt, int mt);

static void tile_scalar(const int8_t *xq, const int32_t *corr, int64_t kp, const uint8_t *w, const float *d,
                        float *acc, int m, int rt, int mt)
{
    for (int r = 0; r < rt; r++)
        for (int i = 0; i < mt; i++) {
            float s = 0;
            for (int64_t b = 0; b < kp / 32; b++) {
                int32_t dot = corr[i * (kp / 4) + 8 * b];
                for (int j = 0; j < 32; j++) {
                    int64_t p = 32 * b + j, g = p / GROUP, o = p % GROUP;
                    uint8_t byte = w[r * (kp / 2) + g * 64 + o % 64];
                    dot += (o < 64 ? byte & 15 : byte >> 4) * xq[i * kp + p];
                }
                s += d[r * (kp / 32) + b] * (float)dot;
            }
            acc[r * m + i] = s;
        }
}

#if defined(__x86_64__) || defined(__i386__)
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

static inline __attribute__((always_inline)) AVX2_TARGET void
tile_avx2_(const int8_t *xq, const int32_t *corr, int64_t kp, const uint8_t *w, const float *d, float *acc, int m,
           const int rt, const int mt)
{
    __m256 a[RT][MT];
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(15);
    for (int r = 0; r < rt; r++)
        for (int i = 0; i < mt; i++)
            a[r][i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < kp / GROUP; g++)
        for (int b = 0; b < 4; b++) {          /* blocks: low nibbles of bytes 0-31, 32-63, then the high ones */
            int64_t p = g * GROUP + 32 * b;
            for (int r = 0; r < rt; r++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + r * (kp / 2) + g * 64 + 32 * (b % 2)));
                if (b < 2)
                    __builtin_prefetch(w + (r + RT) * (kp / 2) + g * 64 + 32 * b);  /* the next tile's rows */
                __m256i q = _mm256_and_si256(b < 2 ? v : _mm256_srli_epi16(v, 4), low);
                __m256 s = _mm256_broadcast_ss(d + r * (kp / 32) + p / 32);
                for (int i = 0; i < mt; i++) {
                    __m256i x = _mm256_loadu_si256((const __m256i *)(xq + i * kp + p));
                    __m256i t = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                    t = _mm256_add_epi32(t, _mm256_loadu_si256((const __m256i *)(corr + i * (kp / 4) + p / 4)));
                    a[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), s, a[r][i]);
                }
            }
        }
    for (int r = 0; r < rt; r++)
        for (int i = 0; i < mt; i++) {
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(a[r][i]), _mm256_extractf128_ps(a[r][i], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            acc[r * m + i] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        }
}

static inline __attribute__((always_inline)) VNNI_TARGET void
tile_vnni_(const int8_t *xq, const int32_t *corr, int64_t kp, const uint8_t *w, const float *d, float *acc, int m,
           const int rt, const int mt)
{
    __m512 a[RT][MT];
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i idx1 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    for (int r = 0; r < rt; r++)
        for (int i = 0; i < mt; i++)
            a[r][i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < kp / GROUP; g++) {
        __m512i x0[MT], x1[MT];
        for (int i = 0; i < mt; i++) {
            x0[i] = _mm512_loadu_si512(xq + i * kp + g * GROUP);
            x1[i] = _mm512_loadu_si512(xq + i * kp + g * GROUP + 64);
        }
        for (int r = 0; r < rt; r++) {
            __m512i v = _mm512_loadu_si512(w + r * (kp / 2) + g * 64);
            __builtin_prefetch(w + (r + RT) * (kp / 2) + g * 64);  /* the next tile's rows */
            __m512i q0 = _mm512_and_si512(v, low), q1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            __m512 s4 = _mm512_castps128_ps512(_mm_loadu_ps(d + r * (kp / 32) + 4 * g));
            __m512 s0 = _mm512_permutexvar_ps(idx0, s4), s1 = _mm512_permutexvar_ps(idx1, s4);
            for (int i = 0; i < mt; i++) {
                const int32_t *c = corr + i * (kp / 4) + g * (GROUP / 4);
                __m512i t0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(c), q0, x0[i]);
                __m512i t1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(c + 16), q1, x1[i]);
                a[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), s0, a[r][i]);
                a[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), s1, a[r][i]);
            }
        }
    }
    for (int r = 0; r < rt; r++)
        for (int i = 0; i < mt; i++)
            acc[r * m + i] = _mm512_reduce_add_ps(a[r][i]);
}

/* The tiles with rt and mt as constants, so that their accumulators stay in registers. */
#define TILE(name, inner, target)                                                                          \
static target void name(const int8_t *xq, const int32_t *corr, int64_t kp, const uint8_t *w, const float *d, \
                        float *acc, int m, int rt, int mt)                                                 \
{                                                                                                          \
    if (rt == RT && mt == 1)                                                                               \
        inner(xq, corr, kp, w, d, acc, m, RT, 1);                                                          \
    else if (rt == RT && mt == 2)                                                                          \
        inner(xq, corr, kp, w, d, acc, m, RT, 2);                                                          \
    else if (rt == RT && mt == 3)                                                                          \
        inner(xq, corr, kp, w, d, acc, m, RT, 3);                                                          \
    else if (rt == RT)                                                                                     \
        inner(xq, corr, kp, w, d, acc, m, RT, MT);                                                         \
    else                                                                                                   \
        for (int r = 0; r < rt; r++)                                                                       \
            for (int i = 0; i < mt; i++)                                                                   \
                inner(xq + i * kp, corr + i * (kp / 4), kp, w + r * (kp / 2), d + r * (kp / 32),           \
                      acc + r * m + i, m, 1, 1);                                                           \
}
TILE(tile_avx2, tile_avx2_, AVX2_TARGET)
TILE(tile_vnni, tile_vnni_, VNNI_TARGET)
#endif

/* The widest instruction set this CPU runs. */
int ssd_i4_best_isa(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vnni"))
#if defined(AMX_BUILD)
        return __builtin_cpu_supports("avx512vl") && amx_permitted(AMX_INT8) ? AMX : VNNI;
#else
        return VNNI;
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return AVX2;
#endif
    return SCALAR;
}

/* y[m, n] = x[m, k] @ W^T (+ bias), W as described at the top with rows of kp (k rounded up to
 * GROUP) weights, x rounded to int8 per row. Returns -1 for an isa this CPU lacks, -2 when out of
 * memory, else 0. */
int ssd_i4_linear(int isa, const float *x, int64_t m, int64_t k, int64_t kp, const uint8_t *w, const float *d,
                  int64_t n, const float *bias, float *y, int threads)
{
    tile_fn *tile = tile_scalar;
    if (isa > ssd_i4_best_isa())
        return -1;
#if defined(__x86_64__) || defined(__i386__)
    if (isa != SCALAR)
        tile = isa >= VNNI ? tile_vnni : tile_avx2;
#endif
    int64_t rows = isa == AMX && m >= AMX_MIN_ROWS ? (m + 15) / 16 * 16 : m;   /* whole tiles for AMX */
    int8_t *xq = calloc((size_t)(rows * kp), 1);
    int32_t *corr = calloc((size_t)(m * kp / 4), sizeof(int32_t));
    float *xs = malloc(sizeof(float) * (size_t)m);
    if (!xq || !corr || !xs) {
        free(xq), free(corr), free(xs);
        return -2;
    }
    for (int64_t i = 0; i < m; i++) {
        float amax = 0;
        for (int64_t j = 0; j < k; j++)
            amax = fmaxf(amax, fabsf(x[i * k + j]));
        float inv = amax > 0 ? 127 / amax : 0;
        xs[i] = amax / 127;
        for (int64_t j = 0; j < k; j++) {
            xq[i * kp + j] = (int8_t)lrintf(x[i * k + j] * inv);
            corr[i * (kp / 4) + j / 32 * 8] -= 8 * xq[i * kp + j];
        }
    }
#if defined(AMX_BUILD)
    if (isa == AMX && m >= AMX_MIN_ROWS) {
        int rc = int4_linear_amx(xq, corr, xs, m, kp, w, d, n, bias, y, threads);
        free(xq), free(corr), free(xs);
        return rc;
    }
#endif
    int64_t groups = (n + 4 * RT - 1) / (4 * RT);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        float acc[RT * MT];
        for (int64_t r = g * 4 * RT; r < n && r < (g + 1) * 4 * RT; r += RT) {
            int rt = n - r < RT ? (int)(n - r) : RT;
            for (int64_t i = 0; i < m; i += MT) {
                int mt = m - i < MT ? (int)(m - i) : MT;
                tile(xq + i * kp, corr + i * (kp / 4), kp, w + r * (kp / 2), d + r * (kp / 32), acc, mt, rt, mt);
                for (int q = 0; q < rt; q++)
                    for (int t = 0; t < mt; t++)
                        y[(i + t) * n + r + q] = xs[i + t] * acc[q * mt + t] + (bias ? bias[r + q] : 0);
            }
        }
    }
    free(xq), free(corr), free(xs);
    return 0;
}

/* One row of W as fp32, d * (q - 8): block b is byte 32 (b % 2) + p of its group's 64, in the low
 * nibble for b % 4 < 2. Cloned for AVX2, where GCC vectorizes the byte -> float conversion. */
__attribute__((target_clones("avx2", "default")))
static void dequantize_row(const uint8_t *row, const float *s, int64_t k, float *out)
{
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *by = row + b / 4 * 64 + b % 2 * 32;
        int shift = b / 2 % 2 * 4;
        for (int p = 0; p < 32; p++)
            out[32 * b + p] = s[b] * (float)((by[p] >> shift & 15) - 8);
    }
}

/* out[i, :k] = row r0 + i of W as fp32, for count rows: blocks of the weight for a GEMM
 * (blockwise.py). */
void ssd_i4_dequantize(const uint8_t *w, const float *d, int64_t k, int64_t kp, int64_t r0, int64_t count,
                       float *out, int threads)
{
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; i++)
        dequantize_row(w + (r0 + i) * (kp / 2), d + (r0 + i) * (kp / 32), k, out + i * k);
}
