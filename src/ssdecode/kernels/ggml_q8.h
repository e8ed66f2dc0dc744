/* Q4_K and Q6_K products with the activations rounded to int8, as llama.cpp computes them (the
 * gguf-a8 weight format; ggml_cpu.c includes this after its kernels). Opt-in: the weights are
 * still the file's, but each activation is rounded to 8 bits, so the logits move by about what
 * llama.cpp's do against an fp32 reference (docs/benchmarks.md section 11), and the model that
 * speculative decoding samples from exactly is this one.
 *
 * - Activations: per row and per 256 (one super-block), a = round(x / da) with da = max|x| / 127
 *   (llama.cpp's Q8_K), and xs[s] = da * (the sum of a over the 16 weights of sub-block s).
 * - A super-block of one weight row is decoded once (unsigned q, the fp32 offsets off[16] of
 *   gguf's q * scale - off, its integer sub-block scales and d: into registers on AVX-512,
 *   direct_decode; into L1 elsewhere, decode_avx2 or decode_scalar), then every activation row is
 *   applied: T = sum_s sc16[s] * sum_{16 of s} q * a in int32
 *   (maddubs pairs q (unsigned) with a (signed) without saturating: 2 * 63 * 127 < 32768; the
 *   whole super-block stays below 2^31), then acc += T * (d * da) and offs += off . xs in fp32.
 *   The output is sum(acc) - sum(offs): w . (a * da), w gguf's weight, up to fp32 rounding.
 * - Each output sums its super-blocks in order whatever the row and thread counts: batch invariant,
 *   so a speculative round computes the bits a decode step would.
 * - AVX-512 with VNNI (vpdpwssd applies the scales as it accumulates), AVX2 (vpmaddwd), scalar. */

static int q8_type(int qtype)
{
    return qtype == Q4_K || qtype == Q6_K;
}

/* Where rows8_direct wants Q4_K's weight j of a super-block: in each 128, the low nibbles of 64 bytes
 * (weights 0-31, 64-95) then the high ones (32-63, 96-127). */
static inline int q4k_lane(int j)
{
    int h = j % 128;
    return j - h + (h < 32 ? h : h < 64 ? h + 32 : h < 96 ? h - 32 : h);
}

/* Row x[k] (k a multiple of SLICE) as above: xq[k] (weight j at q4k_lane(j) if perm), da[k / SLICE],
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
static X86_TARGET void q8_quantize_avx2(const float *x, int64_t k, int perm, int8_t *xq, float *da, float *xs)
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

/* The integer scale of each sub-block of 16 and the super-block's d. */
static inline void q8_scales(int qtype, const uint8_t *b, int16_t *sc16, float *d)
{
    if (qtype == Q4_K) {
        uint32_t words[4];
        uint8_t u[16];
        q4k_scales(b + 4, words);
        memcpy(u, words, 16);
        for (int s = 0; s < 16; s++)
            sc16[s] = u[s / 2];
        *d = f16(b);
    } else {
        for (int s = 0; s < 16; s++)
            sc16[s] = (int8_t)b[192 + s];
        *d = f16(b + 208);
    }
}

/* One super-block: *acc += T * dd, *offs += off . xs (as above), for one weight row and one
 * activation row. Scalar, AVX2 and AVX-512 VNNI; VL lanes each. */
static inline void dot8_scalar(const int8_t *q, const int16_t *sc16, const int8_t *a, float dd, const float *off,
                               const float *xs, float *acc, float *offs)
{
    int32_t t = 0;
    for (int s = 0; s < 16; s++) {
        int32_t p = 0;
        for (int j = 16 * s; j < 16 * s + 16; j++)
            p += (uint8_t)q[j] * a[j];
        t += sc16[s] * p;
    }
    *acc += (float)t * dd;
    for (int s = 0; s < 16; s++)
        *offs += off[s] * xs[s];
}

#if defined(__x86_64__) || defined(__i386__)
/* q8_scales for dot8_avx2: each of the 16 scales repeated over the 8 int16 lanes of its sub-block
 * (sc16[128]), so that a dot loads them instead of building them per activation row. */
static inline X86_TARGET void q8_scales_x86(int qtype, const uint8_t *b, int16_t *sc16, float *d)
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

static inline __attribute__((always_inline)) X86_TARGET void
dot8_avx2(const int8_t *q, const int16_t *sc16, const int8_t *a, float dd, const float *off, const float *xs,
          float *acc, float *offs)
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

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif

/* Output rows [r0, r1) of a group (as rows() in ggml_cpu_isa.h) for m <= MCHUNK activation rows
 * quantized by q8_quantize (row stride k, da k / SLICE, xs k / 16). */
#define Q8_ROWS(SFX, VL, TARGET, DECODE, SCALES, DOT, HSUM)                                                              \
static TARGET void rows8_##SFX(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,   \
                              const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y)   \
{                                                                                                               \
    float acc[NR][MCHUNK][VL] __attribute__((aligned(64))), offs[NR][MCHUNK][VL] __attribute__((aligned(64)));   \
    int8_t q[NR][SLICE] __attribute__((aligned(64)));                                                           \
    int16_t sc16[NR][128];          /* the scalar build's 16, or q8_scales_x86's 128 */                         \
    float d[NR], sc[SLICE / 16], off[NR][SLICE / 16];                                                           \
    int rows = (int)(r1 - r0);                                                                                  \
    int64_t slice_bytes = row_bytes(qtype, SLICE);                                                              \
    for (int r = 0; r < rows; r++) {                                                                            \
        memset(acc[r], 0, sizeof(float) * VL * m);                                                              \
        memset(offs[r], 0, sizeof(float) * VL * m);                                                             \
    }                                                                                                           \
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {                                                                 \
        for (int r = 0; r < rows; r++) {                                                                        \
            const uint8_t *b = slice_at(w, qtype, k, r0 + r, k0);                                               \
            DECODE(qtype, b, SLICE, q[r], sc, off[r]);                                                          \
            SCALES(qtype, b, sc16[r], &d[r]);                                                                   \
            prefetch_ahead(b, slice_bytes);                                                                     \
        }                                                                                                       \
        for (int i = 0; i < m; i++) {                                                                           \
            const int8_t *a = xq + i * k + k0;                                                                  \
            const float *s = xs + i * (k / 16) + k0 / 16, dai = da[i * (k / SLICE) + k0 / SLICE];               \
            for (int r = 0; r < rows; r++)                                                                      \
                DOT(q[r], sc16[r], a, d[r] * dai, off[r], s, acc[r][i], offs[r][i]);                            \
        }                                                                                                       \
    }                                                                                                           \
    for (int r = 0; r < rows; r++)                                                                              \
        for (int i = 0; i < m; i++) {                                                                           \
            float v = HSUM(acc[r][i]) - HSUM(offs[r][i]);                                                       \
            y[i * n + r0 + r] = bias ? v + bias[r0 + r] : v;                                                    \
        }                                                                                                       \
}

static inline float first(const float *v)
{
    return v[0];
}

typedef void rows8_fn(int, const int8_t *, const float *, const float *, int, int64_t, const uint8_t *, int64_t,
                      int64_t, int64_t, const float *, float *);

Q8_ROWS(scalar, 1, , decode_scalar, q8_scales, dot8_scalar, first)
#if defined(__x86_64__) || defined(__i386__)
static inline X86_TARGET float hsum8p(const float *v)
{
    return hsum8(_mm256_load_ps(v));
}

static inline VNNI_TARGET float hsum16p(const float *v)
{
    return _mm512_reduce_add_ps(_mm512_load_ps(v));
}

Q8_ROWS(avx2, 8, X86_TARGET, decode_avx2, q8_scales_x86, dot8_avx2, hsum8p)

/* One super-block of one Q4_K or Q6_K weight row in registers, for rows8_direct: q[c] the unsigned
 * integers of weights 64c .. 64c + 63 (Q4_K: in q4k_lane order), s[c] each int16 lane's
 * sub-block scale, off the fp32 offsets per 16 weights and *d the super-block's scale.
 * Q4_K: a 64-byte load is four sub-blocks of 32, low and high nibbles. Q6_K: 64 bytes of low
 * nibbles and 32 of high bit pairs make 128 weights in order; the pairs are moved to bits 4-5 by
 * 16-bit shifts (left 4 and 2, none and right 2), whose spill into the next byte the mask drops. */
static inline __attribute__((always_inline)) VNNI_TARGET void
direct_decode(int qtype, const uint8_t *b, __m512i *q, __m512i *s, __m512 *off, float *d)
{
    const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
    const __m512i lane = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                          15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i sc;
    if (qtype == Q4_K) {
        __m128i u = q4k_scales_avx2(b + 4);     /* scales 0-7, mins 0-7 */
        __m256 mins = _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(u, 8), 0), _mm256_set1_ps(f16c(b + 2)));
        *off = _mm512_permutexvar_ps(_mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4,
                                                                        3, 2, 1, 0), 1),
                                     _mm512_castps256_ps512(mins));  /* one per 16 */
        *d = f16c(b);
        sc = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(u));
        for (int h = 0; h < 2; h++) {
            __m512i v = _mm512_loadu_si512(b + 16 + 64 * h);
            q[2 * h] = _mm512_and_si512(v, low4);
            q[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        for (int c = 0; c < 4; c++)     /* lane l of q[c]: sub-block of 32 c / 2 * 4 + c % 2 + 2 (l >= 16) */
            s[c] = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_set1_epi16(c / 2 * 4 + c % 2),
                                                             _mm512_and_si512(_mm512_srli_epi16(lane, 3),
                                                                              _mm512_set1_epi16(2))), sc);
    } else {
        __m128i raw = _mm_loadu_si128((const __m128i *)(b + 192));
        *d = f16c(b + 208);
        *off = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), _mm512_set1_ps(32 * *d));
        sc = _mm512_cvtepi8_epi16(_mm256_castsi128_si256(raw));
        const __m512i left = _mm512_set_epi64(0x2000200020002, 0x2000200020002, 0x2000200020002, 0x2000200020002,
                                              0x4000400040004, 0x4000400040004, 0x4000400040004, 0x4000400040004),
                      right = _mm512_set_epi64(0x2000200020002, 0x2000200020002, 0x2000200020002, 0x2000200020002,
                                               0, 0, 0, 0);
        for (int h = 0; h < 2; h++) {
            __m512i l = _mm512_loadu_si512(b + 64 * h),
                    hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)));
            q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, low4),
                                       _mm512_and_si512(_mm512_sllv_epi16(hb, left), bits45));
            q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4),
                                           _mm512_and_si512(_mm512_srlv_epi16(hb, right), bits45));
        }
        for (int c = 0; c < 4; c++)     /* lane l of q[c]: sub-block of 16 4c + l / 8 */
            s[c] = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_set1_epi16(4 * c), _mm512_srli_epi16(lane, 3)),
                                            sc);
    }
}

/* Q4_K and Q6_K on AVX-512 VNNI straight from the blocks (no decoded copy): each weight row's
 * super-block is decoded once into registers (direct_decode) and every activation row applied to
 * it, the group's bytes read in memory order. */
static VNNI_TARGET void rows8_direct(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
                                     const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y)
{
    float acc[NR][MCHUNK][16] __attribute__((aligned(64))), offs[NR][MCHUNK][16] __attribute__((aligned(64)));
    int rows = (int)(r1 - r0);
    for (int r = 0; r < rows; r++) {
        memset(acc[r], 0, sizeof(float) * 16 * m);
        memset(offs[r], 0, sizeof(float) * 16 * m);
    }
    for (int64_t k0 = 0; k0 < k; k0 += SLICE)
        for (int r = 0; r < rows; r++) {
            const uint8_t *b = slice_at(w, qtype, k, r0 + r, k0);
            __m512i q[4], s[4];
            __m512 off;
            float d;
            prefetch_ahead(b, row_bytes(qtype, SLICE));
            direct_decode(qtype, b, q, s, &off, &d);
            for (int i = 0; i < m; i++) {
                const int8_t *a = xq + i * k + k0;
                __m512i t = _mm512_setzero_si512();
                for (int c = 0; c < 4; c++)
                    t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q[c], _mm512_loadu_si512(a + 64 * c)), s[c]);
                _mm512_store_ps(offs[r][i], _mm512_fmadd_ps(off, _mm512_loadu_ps(xs + i * (k / 16) + k0 / 16),
                                                            _mm512_load_ps(offs[r][i])));
                _mm512_store_ps(acc[r][i], _mm512_fmadd_ps(_mm512_cvtepi32_ps(t),
                                                           _mm512_set1_ps(d * da[i * (k / SLICE) + k0 / SLICE]),
                                                           _mm512_load_ps(acc[r][i])));
            }
        }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < m; i++) {
            float v = hsum16p(acc[r][i]) - hsum16p(offs[r][i]);
            y[i * n + r0 + r] = bias ? v + bias[r0 + r] : v;
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
        return rows8_direct;
    if (isa >= AVX2)
        return rows8_avx2;
#endif
    return rows8_scalar;
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
    int direct = 0;                 /* rows8_direct */
#if defined(__x86_64__) || defined(__i386__)
    direct = rows == rows8_direct;
#endif
    int8_t *xq = malloc((size_t)(m * k));
    float *da = malloc(sizeof(float) * (size_t)(m * (k / SLICE))), *xs = malloc(sizeof(float) * (size_t)(m * (k / 16)));
    if (!xq || !da || !xs) {
        free(xq), free(da), free(xs);
        return -2;
    }
    void (*quantize)(const float *, int64_t, int, int8_t *, float *, float *) = q8_quantize;
#if defined(__x86_64__) || defined(__i386__)
    if (rows != rows8_scalar)
        quantize = q8_quantize_avx2;
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
