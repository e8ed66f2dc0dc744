/* Q4_K and Q6_K products with int8 activations (gguf-a8) on AVX-512 VNNI from an interleaved layout
 * (ggml_q8il.h): one output row per 32-bit lane, so that a single vpdpbusd applies four weights of
 * each of 16 rows to four activations broadcast from memory.
 *
 * ggml_rows8_direct (ggml_avx512.c) decodes a row's super-block into registers and spends, per activation
 * row and 256 weights, four maddubs, four dpwssd and the fp32 sums of its lanes: at verification
 * shapes (2-16 rows) that integer work, not memory, bounds the product. Here the 16 rows of a
 * group share every instruction: per activation row and 256 weights of one row it is four
 * dpbusd plus a share of the sub-block scaling, about half, and the decode (a mask and a shift
 * per 8 weights of 16 rows) is shared by IL_MT activation rows. A group's super-blocks are read in
 * memory order, each prefetching PREFETCH bytes ahead: without that the hardware prefetchers did
 * not ramp up within a layer's small products (a decode step of the demo target 29-31 ms against
 * the plain layout's 26-27; with it 19-25 ms, docs/benchmarks.md section 11).
 *
 * Arithmetic: the integers of ggml_q8.h. Per super-block and output row, with a the int8
 * activations (scale da per 256) and S_s = sum over sub-block s of q * a (exact in int32),
 *   Q4_K: y += d * da * sum_s sc_s * S_s  -  dmin * da * sum_s mn_s * (sum over s of a)
 *   Q6_K: y += d * da * sum_s sc_s * (S_s - 32 * (sum over s of a))
 * the integer sums exact (below 2^31: 8 * 63 * 32 * 15 * 127; 16 * 128 * 16 * 63 * 127), each
 * product in fp32, super-blocks in order: an output does not depend on the thread count or on the
 * other activation rows (batch invariant), and prefill computes what decode would. */
#include "ggml_q8il.h"
#if defined(__x86_64__) || defined(__i386__)
#include "ggml_x86.h"
#endif

#define IL_MT 6                     /* most activation rows sharing one decode of the weights */
#define IL_CHUNK 64                 /* activation rows per pass over the weight */
#define Q6K_MT 4                    /* Q6_K, which keeps four sums per activation row in registers */

#if defined(__x86_64__) || defined(__i386__)
/* acc + dpbusd(w, the four bytes at p in every lane), the bytes broadcast by the instruction's memory
 * operand (GCC loads them into a register first: one more instruction per product). */
static inline __attribute__((always_inline)) VNNI_TARGET __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p)
{
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
}

static inline __attribute__((always_inline)) VNNI_TARGET __m512i bcast4(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* out[i] (lane r: output row r of the group) for M activation rows: xq rows of k int8, da their
 * scales per 256, bs their sums per 32 (int16). */
static inline __attribute__((always_inline)) VNNI_TARGET void
il_q4k(const int M, const uint8_t *blk, int64_t slices, const int8_t *xq, int64_t k, const float *da,
       const int16_t *bs, __m512 *out)
{
    const __m512i low4 = _mm512_set1_epi8(15);
    __m512 acc[IL_MT], mins[IL_MT];
    for (int i = 0; i < M; i++)
        acc[i] = mins[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < slices; j++, blk += Q4K_IL) {
        __m512i isum[IL_MT], imin[IL_MT];
        prefetch_ahead(blk, Q4K_IL);
        for (int i = 0; i < M; i++)
            isum[i] = imin[i] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            __m512i lo[IL_MT], hi[IL_MT];
            for (int i = 0; i < M; i++)
                lo[i] = hi[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                __m512i v = _mm512_loadu_si512(blk + 512 * c + 64 * t);
                __m512i wl = _mm512_and_si512(v, low4), wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                for (int i = 0; i < M; i++) {
                    const int8_t *a = xq + i * k + SLICE * j + 64 * c + 4 * t;
                    lo[i] = dpbusd_bcast(lo[i], wl, a);
                    hi[i] = dpbusd_bcast(hi[i], wh, a + 32);
                }
            }
            __m512i s0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2048 + 32 * c))),
                    s1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2064 + 32 * c))),
                    mn = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 2176 + 32 * c)));
            for (int i = 0; i < M; i++) {
                isum[i] = _mm512_add_epi32(isum[i], _mm512_add_epi32(_mm512_mullo_epi32(lo[i], s0),
                                                                     _mm512_mullo_epi32(hi[i], s1)));
                imin[i] = _mm512_dpwssd_epi32(imin[i], mn, bcast4(bs + i * (k / 32) + 8 * j + 2 * c));
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 2304))),
               dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 2336)));
        for (int i = 0; i < M; i++) {
            __m512 a = _mm512_set1_ps(da[i * (k / SLICE) + j]);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(d, a), acc[i]);
            mins[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin[i]), _mm512_mul_ps(dmin, a), mins[i]);
        }
    }
    for (int i = 0; i < M; i++)
        out[i] = _mm512_sub_ps(acc[i], mins[i]);
}

/* il_q4k for Q6_K; bs: the sums of the activations per 16. */
static inline __attribute__((always_inline)) VNNI_TARGET void
il_q6k(const int M, const uint8_t *blk, int64_t slices, const int8_t *xq, int64_t k, const float *da,
       const int16_t *bs, __m512 *out)
{
    const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
    __m512 acc[IL_MT];
    for (int i = 0; i < M; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < slices; j++, blk += Q6K_IL) {
        __m512i isum[IL_MT], corr[IL_MT];
        prefetch_ahead(blk, Q6K_IL);
        for (int i = 0; i < M; i++)
            isum[i] = corr[i] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            __m512i sub[IL_MT][4];     /* S of sub-blocks 4c .. 4c + 3 */
            for (int i = 0; i < M; i++)
                for (int e = 0; e < 4; e++)
                    sub[i][e] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) {
                __m512i h = _mm512_loadu_si512(blk + 2048 + 256 * c + 64 * u),
                        l0 = _mm512_loadu_si512(blk + 512 * c + 64 * u),
                        l1 = _mm512_loadu_si512(blk + 512 * c + 64 * u + 256);
                /* (low & 15) | clean high bits: ternary logic 0xEC is (A & C) | B */
                __m512i w[4] = {
                    _mm512_ternarylogic_epi32(l0, _mm512_and_si512(_mm512_slli_epi16(h, 4), bits45), low4, 0xEC),
                    _mm512_ternarylogic_epi32(l1, _mm512_and_si512(_mm512_slli_epi16(h, 2), bits45), low4, 0xEC),
                    _mm512_ternarylogic_epi32(_mm512_srli_epi16(l0, 4), _mm512_and_si512(h, bits45), low4, 0xEC),
                    _mm512_ternarylogic_epi32(_mm512_srli_epi16(l1, 4), _mm512_and_si512(_mm512_srli_epi16(h, 2), bits45),
                                              low4, 0xEC)};
                for (int i = 0; i < M; i++)
                    for (int e = 0; e < 4; e++)     /* w[e]: weights 64c + 16e + 4u .. + 3 */
                        sub[i][e] = dpbusd_bcast(sub[i][e], w[e], xq + i * k + SLICE * j + 64 * c + 16 * e + 4 * u);
            }
            __m512i pa = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 3072 + 64 * c))),
                    pb = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 3104 + 64 * c)));
            __m512i sc[4] = {_mm512_srai_epi32(_mm512_slli_epi32(pa, 16), 16), _mm512_srai_epi32(pa, 16),
                             _mm512_srai_epi32(_mm512_slli_epi32(pb, 16), 16), _mm512_srai_epi32(pb, 16)};
            for (int i = 0; i < M; i++) {
                const int16_t *b = bs + i * (k / 16) + 16 * j + 4 * c;
                for (int e = 0; e < 4; e++)
                    isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(sub[i][e], sc[e]));
                corr[i] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(corr[i], pa, bcast4(b)), pb, bcast4(b + 2));
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 3328)));
        for (int i = 0; i < M; i++) {
            __m512i t = _mm512_sub_epi32(isum[i], _mm512_slli_epi32(corr[i], 5));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(d, _mm512_set1_ps(da[i * (k / SLICE) + j])),
                                     acc[i]);
        }
    }
    for (int i = 0; i < M; i++)
        out[i] = acc[i];
}

/* Rows [i0, i0 + m) of y for group g (its outputs below n); bs: the sums of the activations per
 * sub-block (32 weights for Q4_K, 16 for Q6_K). */
static VNNI_TARGET void il_group(int qtype, const uint8_t *w, int64_t g, int64_t k, int64_t n, const int8_t *xq,
                                 const float *da, const int16_t *bs, int64_t m, const float *bias, float *y)
{
    int64_t slices = k / SLICE, sub = qtype == Q4_K ? 32 : 16;
    const uint8_t *blk = w + g * slices * il_bytes(qtype);
    __mmask16 keep = n - g * IR >= IR ? 0xffff : (__mmask16)((1u << (n - g * IR)) - 1);
    __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + g * IR) : _mm512_setzero_ps();
    int most = qtype == Q4_K ? IL_MT : Q6K_MT;
    for (int64_t i0 = 0; i0 < m;) {
        int64_t tiles = (m - i0 + most - 1) / most;
        int mt = (int)((m - i0 + tiles - 1) / tiles);  /* balanced: 5 rows as 3 + 2, not 4 + 1 */
        __m512 out[IL_MT];
        const int8_t *x = xq + i0 * k;
        const float *d = da + i0 * slices;
        const int16_t *s = bs + i0 * (k / sub);
#define IL_CASE(M) case M: { if (qtype == Q4_K) il_q4k(M, blk, slices, x, k, d, s, out); \
                             else il_q6k(M, blk, slices, x, k, d, s, out); } break;
        switch (mt) {
        IL_CASE(1) IL_CASE(2) IL_CASE(3) IL_CASE(4) IL_CASE(5) default: IL_CASE(IL_MT)
        }
#undef IL_CASE
        for (int i = 0; i < mt; i++)
            _mm512_mask_storeu_ps(y + (i0 + i) * n + g * IR, keep, _mm512_add_ps(out[i], b));
        i0 += mt;
    }
}
#endif

/* y[m, n] = round8(x)[m, k] @ W^T (+ bias[n]) for a Q4_K or Q6_K W packed by ssd_ggml_pack_il (k
 * need not be a multiple of 256: x is padded with zeros as W was; isa is
 * AVX512 or AMX: the caller's choice, checked). Returns -1 where the kernel cannot run, -2 when out
 * of memory, else 0. */
int ssd_ggml_linear_q8il(int isa, int qtype, const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n,
                         const float *bias, float *y, int threads)
{
    if (isa < AVX512 || !ssd_ggml_il_usable(qtype))
        return -1;
#if defined(__x86_64__) || defined(__i386__)
    int64_t kp = (k + SLICE - 1) / SLICE * SLICE, slices = kp / SLICE, groups = (n + IR - 1) / IR;
    int64_t sub = qtype == Q4_K ? 32 : 16;
    int8_t *xq = malloc((size_t)(m * kp));
    float *da = malloc(sizeof(float) * (size_t)(m * slices)), *xs = malloc(sizeof(float) * (size_t)(m * (kp / 16)));
    float *padded = k == kp ? NULL : calloc((size_t)(m * kp), sizeof(float));
    int16_t *bs = malloc(sizeof(int16_t) * (size_t)(m * (kp / sub)));
    if (!xq || !da || !xs || !bs || (k != kp && !padded)) {
        free(xq), free(da), free(xs), free(bs), free(padded);
        return -2;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (m >= IL_CHUNK)  /* a prompt */
    for (int64_t i = 0; i < m; i++) {
        if (padded)                 /* a weight of k weights per row is stored padded to kp with zeros */
            memcpy(padded + i * kp, x + i * k, sizeof(float) * (size_t)k);
        ggml_q8_quantize_avx2(padded ? padded + i * kp : x + i * k, kp, 0, xq + i * kp, da + i * slices,
                              xs + i * (kp / 16));
        for (int64_t j = 0; j < slices; j++)    /* an infinity too: NaN outputs, not inf - inf or inf */
            da[i * slices + j] = isfinite(da[i * slices + j]) ? da[i * slices + j] : NAN;
        for (int64_t s = 0; s < kp / sub; s++) {
            int sum = 0;
            for (int j = 0; j < sub; j++)
                sum += xq[i * kp + sub * s + j];
            bs[i * (kp / sub) + s] = (int16_t)sum;
        }
    }
    for (int64_t m0 = 0; m0 < m; m0 += IL_CHUNK) {
        int64_t mc = m - m0 < IL_CHUNK ? m - m0 : IL_CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t g = 0; g < groups; g++)
            il_group(qtype, w, g, kp, n, xq + m0 * kp, da + m0 * slices, bs + m0 * (kp / sub), mc, bias, y + m0 * n);
    }
    free(xq), free(da), free(xs), free(bs), free(padded);
    return 0;
#else
    (void)qtype, (void)x, (void)m, (void)k, (void)w, (void)n, (void)bias, (void)y, (void)threads;
    return -1;
#endif
}
