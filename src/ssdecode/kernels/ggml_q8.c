/* The entry of the products with int8 activations (ggml_q8.h says what they compute and how): the
 * activations' quantization and the pick of a kernel for the instruction set. */
#include "ggml.h"
#if defined(__x86_64__) || defined(__i386__)
#include "ggml_x86.h"
#endif

/* Where ggml_rows8_direct (ggml_avx512.c) wants Q4_K's weight j of a super-block: in each 128, the
 * low nibbles of 64 bytes (weights 0-31, 64-95) then the high ones (32-63, 96-127). */
static inline int q4k_lane(int j)
{
    int h = j % 128;
    return j - h + (h < 32 ? h : h < 64 ? h + 32 : h < 96 ? h - 32 : h);
}

/* Row x[k] (k a multiple of SLICE) as ggml_q8.h says: xq[k] (weight j at q4k_lane(j) if perm), da[k / SLICE],
 * xs[k / 16]. A slice holding a NaN gets da = NaN, so that the outputs are NaN as with fp32
 * activations (an infinity makes them NaN through inf * 0). */
static void q8_quantize(const float *x, int64_t k, int perm, int8_t *xq, float *da, float *xs)
{
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
        float amax = 0;
        int nan = 0;
        for (int j = 0; j < SLICE; j++) {
            amax = fmaxf(amax, fabsf(x[k0 + j]));
            nan |= x[k0 + j] != x[k0 + j];
        }
        float d = nan ? NAN : amax / 127, inv = amax > 0 ? 127 / amax : 0;
        da[k0 / SLICE] = d;
        for (int s = 0; s < SLICE / 16; s++) {
            int sum = 0;
            for (int j = 16 * s; j < 16 * s + 16; j++)
                sum += xq[k0 + (perm ? q4k_lane(j) : j)] = (int8_t)lrintf(x[k0 + j] * inv);
            xs[k0 / 16 + s] = d * (float)sum;
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
/* q8_quantize with AVX2: the same numbers (the same product, rounded to nearest even). */
X86_TARGET void ggml_q8_quantize_avx2(const float *x, int64_t k, int perm, int8_t *xq, float *da, float *xs)
{
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
        __m256 top = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int j = 0; j < SLICE; j += 8) {
            __m256 v = _mm256_loadu_ps(x + k0 + j);
            top = _mm256_max_ps(top, _mm256_and_ps(v, magnitude));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
        __m128 t = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
        t = _mm_max_ps(t, _mm_movehl_ps(t, t));
        float amax = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
        float d = _mm256_movemask_ps(nan) ? NAN : amax / 127;
        __m256 inv = _mm256_set1_ps(amax > 0 ? 127 / amax : 0);
        da[k0 / SLICE] = d;
        for (int s = 0; s < SLICE / 16; s++) {
            __m256i a0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k0 + 16 * s), inv)),
                    a1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k0 + 16 * s + 8), inv));
            __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xd8);   /* 16 int16 in order */
            __m128i sum = _mm_madd_epi16(_mm_add_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)),
                                         _mm_set1_epi16(1));
            sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));
            sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));
            xs[k0 / 16 + s] = d * (float)_mm_cvtsi128_si32(sum);
            _mm_storeu_si128((__m128i *)(xq + k0 + (perm ? q4k_lane(16 * s) : 16 * s)),
                             _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
        }
    }
}
#endif

/* The widest q8 kernel for isa (AVX-512 needs VNNI, else AVX2's is used); NULL for an isa this CPU lacks. */
static rows8_fn *pick8(int isa)
{
    if (isa > ssd_ggml_best_isa())
        return NULL;
#if defined(__x86_64__) || defined(__i386__)
    if (isa >= AVX512 && __builtin_cpu_supports("avx512vnni"))
        return ggml_rows8_direct;
    if (isa >= AVX2)
        return ggml_rows8_avx2;
#endif
    return ggml_rows8_scalar;
}

/* y[m, n] = round8(x)[m, k] @ W^T (+ bias[n]) for Q4_K and Q6_K weights packed by ssd_ggml_pack.
 * Returns -1 for an isa this CPU lacks, -2 when out of memory, -3 for another qtype, else 0. */
int ssd_ggml_linear_q8(int isa, int qtype, const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n,
                       const float *bias, float *y, int threads)
{
    rows8_fn *rows = pick8(isa);
    if (!rows)
        return -1;
    if (!q8_type(qtype))
        return -3;
    int direct = 0;                 /* ggml_rows8_direct */
#if defined(__x86_64__) || defined(__i386__)
    direct = rows == ggml_rows8_direct;
#endif
    int8_t *xq = malloc((size_t)(m * k));
    float *da = malloc(sizeof(float) * (size_t)(m * (k / SLICE))), *xs = malloc(sizeof(float) * (size_t)(m * (k / 16)));
    if (!xq || !da || !xs) {
        free(xq), free(da), free(xs);
        return -2;
    }
    void (*quantize)(const float *, int64_t, int, int8_t *, float *, float *) = q8_quantize;
#if defined(__x86_64__) || defined(__i386__)
    if (rows != ggml_rows8_scalar)
        quantize = ggml_q8_quantize_avx2;
#endif
    for (int64_t i = 0; i < m; i++)
        quantize(x + i * k, k, direct && qtype == Q4_K, xq + i * k, da + i * (k / SLICE), xs + i * (k / 16));
    int64_t groups = (n + NR - 1) / NR;
    for (int64_t m0 = 0; m0 < m; m0 += MCHUNK) {
        int mc = m - m0 < MCHUNK ? (int)(m - m0) : MCHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t g = 0; g < groups; g++)
            rows(qtype, xq + m0 * k, da + m0 * (k / SLICE), xs + m0 * (k / 16), mc, k, w, n, g * NR,
                 g * NR + NR < n ? g * NR + NR : n, bias, y + m0 * n);
    }
    free(xq), free(da), free(xs);
    return 0;
}
