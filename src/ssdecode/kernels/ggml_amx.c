/* AMX-BF16 with exact activations (rows_amx below): multi-row products on the tile unit, with the
 * same numbers as the fp32 kernels up to summation order (isa AMX from AMX_MIN_ROWS rows on,
 * ggml_cpu.c).
 * - Each fp32 activation is split exactly into three bf16 parts, x = x1 + x2 + x3: x1 is x with
 *   the low 16 bits cleared, x2 likewise of the rest x - x1 (exact, at most 16 significant bits),
 *   and x3 = x - x1 - x2 has at most 8 bits, so it is a bf16 (truncation rather than rounding: no
 *   part can overflow). The tile unit treats bf16 subnormals as zero, so this holds for
 *   |x| >= 2^-103 (every part then normal); smaller activations lose at most 2^-126 each.
 * - The weights' integers are bf16 exactly (Q4_K 0..15, Q5_0 and Q4_0 q - 16 and q - 8, Q8_0
 *   int8), each bf16 product is exact in fp32 and TDPBF16PS sums in fp32, so one block's integer
 *   dot product comes out of the tile in fp32; its scale (and Q4_K's min times the block's sum of
 *   x) is applied per output afterwards, in fp32. Q6_K's sub-blocks of 16 have int8 scales s
 *   under one fp16 d per 256: its integers (q - 32) * s (13 bits) go in as two bf16 parts each,
 *   high and low, and a whole super-block sums in the tile before d is applied.
 * - A = 16 output rows x one block of 32 weights, converted to bf16 once per 256-weight slice and
 *   reused for every activation tile; B = 16 tokens x 32 activations in the tile unit's pair
 *   layout, one tile per part, accumulated into the same C (so one C store per three products);
 *   C is stored and scaled into fp32 accumulators, 16 outputs x 16 tokens. Two blocks are in
 *   flight at a time (C0, C1) so that a product's latency overlaps the next. The tile stores and
 *   reloads, one per block of 32, cost about as much as the products themselves, and a tile
 *   holds 16 tokens however few there are: hence AMX_MIN_ROWS (docs/benchmarks.md, section 10).
 * - Each output's sum runs over its blocks in order: the same whatever the row count (from
 *   AMX_MIN_ROWS on) or thread count. */
#include "ggml.h"
#include "amx.h"
#if defined(AMX_BUILD)
#include "ggml_x86.h"

#define AMX_CHUNK 12                /* most activation tiles per pass over the weight */
#define AMX_X_BYTES (3 << 19)       /* packed x per pass (tiles x a segment of k) that stays in L2 */

#define TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
/* C(c) = A(a, loaded from ap) . the three activation parts of one block at xp, xp + 512 and
 * xp + 1024, through tiles x0..x2 (tile numbers are immediates, hence a macro) */
#define TILE_DP_PARTS(c, a, ap, x0, x1, x2, xp) do { \
        TILE_LOAD(a, ap, 64); TILE_ZERO(c); \
        TILE_LOAD(x0, xp, 64); TILE_DP(c, a, x0); \
        TILE_LOAD(x1, (xp) + 512, 64); TILE_DP(c, a, x1); \
        TILE_LOAD(x2, (xp) + 1024, 64); TILE_DP(c, a, x2); } while (0)

/* Tiles 0, 1: C (16 x 16 fp32); 2, 3: A (16 rows x 32 bf16); 4-7: B (16 rows of 16 pairs). */
static void amx_config(void)
{
    static const uint8_t rows[8] = {16, 16, 16, 16, 16, 16, 16, 16};
    static const uint16_t colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    amx_load_config(8, rows, colsb);
}

static inline uint16_t bf16_hi(float v)  /* the bf16 that v is when its low 16 bits are zero */
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return u >> 16;
}

/* 32 fp32 (a then b) whose low 16 bits are zero as 32 bf16. */
static inline AVX512_TARGET __m512i bf16_pack(__m512 a, __m512 b)
{
    const __m512i high = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                          31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(_mm512_castps_si512(a), high, _mm512_castps_si512(b));
}

/* 32 int16 as fp32, the first 16 then the rest. */
static inline AVX512_TARGET void i16_to_ps(__m512i v, __m512 *lo, __m512 *hi)
{
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(v)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1)));
}

/* Block j (32 weights) of one Q8_0, Q5_0 or Q4_0 weight row as 32 bf16 integers (the offsets are in
 * them: mn = 0), with the block's scale. */
static inline AVX512_TARGET void amx_weights(int qtype, const uint8_t *row, int64_t j, uint16_t *dst, float *sc,
                                             float *mn)
{
    uint16_t tab[32];               /* bf16 of v - 16 (Q5_0), v - 8 (Q4_0); constants once inlined */
    for (int v = 0; v < 32; v++)
        tab[v] = bf16_hi((float)(qtype == Q5_0 ? v - 16 : v - 8));
    __m512i w;
    if (qtype == Q8_0) {
        const uint8_t *b = row + j * 34;
        *sc = f16c(b);
        __m512 lo, hi;
        i16_to_ps(_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2))), &lo, &hi);
        w = bf16_pack(lo, hi);
    } else {                        /* Q5_0, Q4_0: weights 0-15 in the low nibbles, 16-31 in the high */
        int five = qtype == Q5_0;
        const uint8_t *b = row + j * (five ? 22 : 18);
        *sc = f16c(b);
        __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + 2 + 4 * five)));
        __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, _mm256_set1_epi16(15))),
                                         _mm256_srli_epi16(v, 4), 1);
        if (five) {
            uint32_t qh;
            memcpy(&qh, b + 2, 4);
            idx = _mm512_mask_add_epi16(idx, (__mmask32)qh, idx, _mm512_set1_epi16(16));
        }
        w = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(tab));
    }
    *mn = 0;
    _mm512_storeu_si512(dst, w);
}

/* Slice [k0, k0 + len) of weight row r of a group: block b to a[b][r] (32 bf16), sc[b][r], mn[b][r];
 * Q6_K: the high parts of its integers to a[b], the low parts to a[8 + b], d to sc[0][r]. */
static inline AVX512_TARGET void amx_slice(int qtype, const uint8_t *row, int len, int r,
                                           uint16_t (*a)[16 * 32], float (*sc)[16], float (*mn)[16])
{
    if (qtype == Q6_K) {
        const uint8_t *blk = row;
        const __m512i mask = _mm512_set1_epi32((int)0xffff0000);
        int8_t q[SLICE];
        float scs[16], offs[16];
        decode_avx2(Q6_K, row, len, q, scs, offs);  /* q unsigned, 0..63 */
        for (int b = 0; b < 8; b++) {   /* sub-blocks 2b and 2b + 1 */
            __m512i s = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((int8_t)blk[192 + 2 * b])),
                                           _mm256_set1_epi16((int8_t)blk[193 + 2 * b]), 1),
                    v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + 32 * b)));
            __m512 f[2], hi[2];
            i16_to_ps(_mm512_mullo_epi16(_mm512_sub_epi16(v, _mm512_set1_epi16(32)), s), &f[0], &f[1]);
            for (int h = 0; h < 2; h++)
                hi[h] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(f[h]), mask));
            _mm512_storeu_si512(a[b] + 32 * r, bf16_pack(hi[0], hi[1]));
            _mm512_storeu_si512(a[8 + b] + 32 * r,
                                bf16_pack(_mm512_sub_ps(f[0], hi[0]), _mm512_sub_ps(f[1], hi[1])));
        }
        sc[0][r] = f16c(blk + 208);
    } else if (qtype == Q4_K) {     /* sub-blocks 2g and 2g + 1: the low and high nibbles of 32 bytes */
        const uint8_t *blk = row;
        float scs[8], mins[8];
        uint16_t tab[16];
        for (int v = 0; v < 16; v++)
            tab[v] = bf16_hi((float)v);
        const __m512i t = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)tab)),
                      low4 = _mm512_set1_epi16(15);
        q4k_scales_ps(blk, scs, mins);
        for (int g = 0; g < 4; g++) {
            __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * g)));
            _mm512_storeu_si512(a[2 * g] + 32 * r, _mm512_permutexvar_epi16(_mm512_and_si512(v, low4), t));
            _mm512_storeu_si512(a[2 * g + 1] + 32 * r, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t));
        }
        for (int b = 0; b < 8; b++) {
            sc[b][r] = scs[b];
            mn[b][r] = mins[b];
        }
    } else {
        for (int b = 0; b < len / 32; b++)
            amx_weights(qtype, row, b, a[b] + 32 * r, &sc[b][r], &mn[b][r]);
    }
}

static inline float trunc16(float v)  /* v with the low 16 bits cleared: its leading 8 significant bits */
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u &= 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

/* Activation tile t (16 tokens), block j (32 values from 32 j) as three B tiles, one per part,
 * in the tile unit's pair layout: row i / 2, column token, element i % 2; missing tokens zero.
 * sums[token] = the block's sum of x, for Q4_K's mins (sums may be NULL). */
static void amx_pack(const float *x, int m, int64_t k, int t, int64_t j, uint16_t *dst, float *sums)
{
    memset(dst, 0, sizeof(uint16_t) * 3 * 16 * 32);
    if (sums)
        memset(sums, 0, sizeof(float) * 16);
    for (int c = 0; c < 16 && 16 * t + c < m; c++) {
        const float *src = x + (16 * t + c) * k + j * 32;
        float sum = 0;
        for (int i = 0; i < 32; i++) {
            float v = src[i], x1 = trunc16(v), r = v - x1, x2 = trunc16(r);
            uint16_t *d = dst + i / 2 * 32 + 2 * c + i % 2;
            d[0] = bf16_hi(x1);
            d[512] = bf16_hi(x2);
            d[1024] = bf16_hi(r - x2);
            sum += v;
        }
        if (sums)
            sums[c] = sum;
    }
}

/* acc[r] += c[r] * sc[r] - mn[r] * sums: one block's products, scaled, into the accumulators. */
static inline __attribute__((always_inline)) AVX512_TARGET void
amx_scale(__m512 *acc, const float *c, const float *sc, const float *mn, const float *sums)
{
    for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_fmadd_ps(_mm512_load_ps(c + 16 * r), _mm512_set1_ps(sc[r]), acc[r]);
        if (sums)
            acc[r] = _mm512_fnmadd_ps(_mm512_set1_ps(mn[r]), _mm512_load_ps(sums), acc[r]);
    }
}

/* Output rows [r0, r1) (at most 16) for activation tiles [t0, t1) (at most AMX_CHUNK) of xb, over
 * weights [k_lo, k_hi) (whole slices) of k: the sums go on from y where k_lo > 0 (the same fp32
 * accumulators, continued: the order of an output's sum does not depend on the segments), and
 * the bias is added at k_hi = k. */
static AVX512_TARGET void rows_amx(int qtype, const uint16_t *xb, const float *xs, int t0, int t1, int m, int64_t k,
                                   int64_t k_lo, int64_t k_hi, const uint8_t *w, int64_t n, int64_t r0,
                                   int64_t r1, const float *bias, float *y)
{
    int rows = (int)(r1 - r0);
    int64_t nb = k / 32, slice_bytes = row_bytes(qtype, SLICE);
    uint16_t a[SLICE / 16][16 * 32] __attribute__((aligned(64)));
    float sc[SLICE / 16][16], mn[SLICE / 16][16], c[2][16 * 16] __attribute__((aligned(64)));
    float acc[AMX_CHUNK][16][16] __attribute__((aligned(64)));
    memset(acc, 0, sizeof acc);
    if (k_lo)
        for (int t = t0; t < t1; t++)
            for (int c = 0; c < 16 && 16 * t + c < m; c++)
                for (int r = 0; r < rows; r++)
                    acc[t - t0][r][c] = y[(16 * t + c) * n + r0 + r];
    memset(a, 0, sizeof a);         /* rows past the end, and a last odd block, weigh nothing */
    memset(sc, 0, sizeof sc);
    memset(mn, 0, sizeof mn);
    for (int64_t k0 = k_lo; k0 < k_hi; k0 += SLICE) {
        int len = k - k0 < SLICE ? (int)(k - k0) : SLICE, blocks = len / 32;
        for (int r = 0; r < rows; r++) {
            const uint8_t *b = slice_at(w, qtype, k, r0 + r, k0);
            amx_slice(qtype, b, len, r, a, sc, mn);
            prefetch_ahead(b, slice_bytes);
        }
        if (blocks % 2) {           /* the pair's second block: zero weights (x: block 0 again) */
            memset(a[blocks], 0, sizeof a[blocks]);
            memset(sc[blocks], 0, sizeof sc[blocks]);
            memset(mn[blocks], 0, sizeof mn[blocks]);
        }
        for (int t = t0; t < t1; t++) {
            __m512 v[16];
            for (int r = 0; r < 16; r++)
                v[r] = _mm512_load_ps(acc[t - t0][r]);
            const uint16_t *xt = xb + (t * nb + k0 / 32) * 3 * 512;    /* block b's parts: xt + 3 * 512 * b */
            if (qtype == Q6_K) {    /* the whole super-block in C0 (high parts) and C1 (low parts) */
                TILE_ZERO(0);
                TILE_ZERO(1);
                for (int b = 0; b < 8; b++) {
                    TILE_LOAD(2, a[b], 64);
                    TILE_LOAD(3, a[8 + b], 64);
                    TILE_LOAD(4, xt + 1536 * b, 64);
                    TILE_DP(0, 2, 4);
                    TILE_DP(1, 3, 4);
                    TILE_LOAD(5, xt + 1536 * b + 512, 64);
                    TILE_DP(0, 2, 5);
                    TILE_DP(1, 3, 5);
                    TILE_LOAD(6, xt + 1536 * b + 1024, 64);
                    TILE_DP(0, 2, 6);
                    TILE_DP(1, 3, 6);
                }
                TILE_STORE(0, c[0], 64);
                amx_scale(v, c[0], sc[0], mn[0], NULL);
                TILE_STORE(1, c[1], 64);
                amx_scale(v, c[1], sc[0], mn[0], NULL);
            }
            for (int b = 0; qtype != Q6_K && b < blocks; b += 2) {   /* two blocks in flight: C0 and C1 */
                int b1 = b + 1 < blocks ? b + 1 : b;   /* (a[b + 1] is zero then) */
                const float *s0 = xs ? xs + (t * nb + k0 / 32 + b) * 16 : NULL, *s1 = xs ? s0 + 16 * (b1 - b) : NULL;
                TILE_DP_PARTS(0, 2, a[b], 4, 5, 6, xt + 1536 * b);
                TILE_DP_PARTS(1, 3, a[b + 1], 7, 4, 5, xt + 1536 * b1);
                TILE_STORE(0, c[0], 64);
                amx_scale(v, c[0], sc[b], mn[b], s0);
                TILE_STORE(1, c[1], 64);
                amx_scale(v, c[1], sc[b + 1], mn[b + 1], s1);
            }
            for (int r = 0; r < 16; r++)
                _mm512_store_ps(acc[t - t0][r], v[r]);
        }
    }
    for (int t = t0; t < t1; t++)
        for (int c = 0; c < 16 && 16 * t + c < m; c++)
            for (int r = 0; r < rows; r++)
                y[(16 * t + c) * n + r0 + r] = bias && k_hi == k ? acc[t - t0][r][c] + bias[r0 + r] : acc[t - t0][r][c];
}

/* ssd_ggml_linear on the tile unit; -2 when out of memory. */
int ggml_linear_amx(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, const float *bias,
                    float *y, int threads)
{
    int tiles = (m + 15) / 16;
    int64_t nb = k / 32, groups = (n + 15) / 16;
    /* A pass: chunk tiles (as many passes as AMX_CHUNK needs, evenly) x a segment of whole
     * slices, AMX_X_BYTES of packed x at most. Each pass converts its weights again. */
    int passes = (tiles + AMX_CHUNK - 1) / AMX_CHUNK, chunk = (tiles + passes - 1) / passes;
    int64_t seg = AMX_X_BYTES / (chunk * 3 * 512 * sizeof(uint16_t) / 32) / SLICE * SLICE;
    seg = seg < SLICE ? SLICE : seg;
    uint16_t *xb = aligned_alloc(64, sizeof(uint16_t) * 3 * 512 * nb * tiles);
    float *xs = qtype == Q4_K ? aligned_alloc(64, sizeof(float) * 16 * nb * tiles) : NULL;
    if (!xb || (qtype == Q4_K && !xs)) {
        free(xb);
        free(xs);
        return -2;
    }
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nb * tiles; i++)
            amx_pack(x, m, k, (int)(i / nb), i % nb, xb + i * 3 * 512, xs ? xs + i * 16 : NULL);
        amx_config();             /* per thread */
        for (int t0 = 0; t0 < tiles; t0 += chunk) {
            int t1 = tiles - t0 < chunk ? tiles : t0 + chunk;
            for (int64_t k_lo = 0; k_lo < k; k_lo += seg) {
                int64_t k_hi = k - k_lo < seg ? k : k_lo + seg;
#pragma omp for schedule(static)
                for (int64_t g = 0; g < groups; g++)
                    rows_amx(qtype, xb, xs, t0, t1, m, k, k_lo, k_hi, w, n, 16 * g,
                             16 * g + 16 < n ? 16 * g + 16 : n, bias, y);
            }
        }
        __asm__ volatile("tilerelease" ::);
    }
    free(xb);
    free(xs);
    return 0;
}
#endif
