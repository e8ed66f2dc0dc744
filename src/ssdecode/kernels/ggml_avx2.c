/* The AVX2+FMA kernels of the plain layout (8 lanes): ggml_rows.h's fp32 products and ggml_q8.h's
 * int8-activation ones, on slices decoded by decode_avx2. */
#include "ggml.h"
#if defined(__x86_64__) || defined(__i386__)
#include "ggml_x86.h"

#define VL 8
#define MT 8
#define ACC 8
#define TARGET X86_TARGET
typedef float vf __attribute__((vector_size(4 * VL), aligned(4), may_alias));

static inline __attribute__((always_inline)) TARGET vf load_i8(const int8_t *p)
{
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __attribute__((always_inline)) TARGET vf bcast(const float *p)
{
    return (vf)_mm256_broadcast_ss(p);
}

static inline __attribute__((always_inline)) TARGET float hsum(vf v)
{
    return hsum8((__m256)v);
}

static inline __attribute__((always_inline)) TARGET void decode(int qtype, const uint8_t *row, int len, int8_t *q,
                                                                float *sc, float *off)
{
    decode_avx2(qtype, row, len, q, sc, off);
}

#include "ggml_rows.h"

/* The integer scale of each sub-block of 16 and the super-block's d, for dot8: each of the 16
 * scales repeated over the 8 int16 lanes of its sub-block (sc16[128]), so that a dot loads them
 * instead of building them per activation row. */
static inline X86_TARGET void q8_scales(int qtype, const uint8_t *b, int16_t *sc16, float *d)
{
    int16_t one[16];
    if (qtype == Q4_K) {            /* u0 u0 u1 u1 ... u7 u7 */
        __m128i u = q4k_scales_avx2(b + 4);
        _mm256_storeu_si256((__m256i *)one, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(u, u)));
        *d = f16c(b);
    } else {
        _mm256_storeu_si256((__m256i *)one, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192))));
        *d = f16c(b + 208);
    }
    for (int s = 0; s < 16; s++)
        _mm_storeu_si128((__m128i *)(sc16 + 8 * s), _mm_set1_epi16(one[s]));
}

/* One super-block: *acc += T * dd, *offs += off . xs (ggml_q8.h), for one weight row and one
 * activation row, 8 lanes each. */
static inline __attribute__((always_inline)) X86_TARGET void
dot8(const int8_t *q, const int16_t *sc16, const int8_t *a, float dd, const float *off, const float *xs, float *acc,
     float *offs)
{
    __m256i t = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) {   /* sub-blocks 2c and 2c + 1 */
        __m256i p = _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(q + 32 * c)),
                                         _mm256_loadu_si256((const __m256i *)(a + 32 * c)));
        t = _mm256_add_epi32(t, _mm256_madd_epi16(p, _mm256_loadu_si256((const __m256i *)(sc16 + 16 * c))));
    }
    __m256 o = _mm256_fmadd_ps(_mm256_loadu_ps(off), _mm256_loadu_ps(xs), _mm256_load_ps(offs));
    _mm256_store_ps(offs, _mm256_fmadd_ps(_mm256_loadu_ps(off + 8), _mm256_loadu_ps(xs + 8), o));
    _mm256_store_ps(acc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(dd), _mm256_load_ps(acc)));
}

#include "ggml_q8.h"

TARGET void ggml_rows_avx2(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, int64_t r0,
                           int64_t r1, const float *bias, float *y)
{
    rows_fp32(qtype, x, m, k, w, n, r0, r1, bias, y);
}

TARGET void ggml_dequant_avx2(int qtype, const uint8_t *w, int64_t k, int64_t row, int packed, float *out)
{
    dequant(qtype, w, k, row, packed, out);
}

TARGET void ggml_rows8_avx2(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
                            const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y)
{
    rows8(qtype, xq, da, xs, m, k, w, n, r0, r1, bias, y);
}
#endif
