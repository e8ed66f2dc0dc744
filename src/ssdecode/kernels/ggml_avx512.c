/* The AVX-512 kernels of the plain layout: ggml_rows.h's fp32 products (16 lanes, with table
 * lookups for Q4_K, Q5_0 and Q4_0) and, with VNNI, the int8-activation rows that decode a
 * super-block into registers (ggml_rows8_direct; ggml_q8.h says what they compute). */
#include "ggml.h"
#if defined(__x86_64__) || defined(__i386__)
#include "ggml_x86.h"

/* Q4_K with AVX-512 by table lookup: vpermps picks lane i of a 16-float table by the low 4 bits of
 * index lane i, ignoring the rest. So each sub-block gets the table of its 16 dequantized values
 * (v * scale - offset for v = 0..15, gguf's values exactly, one FMA per 32 weights, its scale and
 * offset broadcast from memory for free), and a weight costs a shift and a lookup instead of
 * unpacking, an int -> float conversion and a dequantizing FMA. The lanes of a lookup hold weights
 * in the order q4k_order gives, into which x is packed.
 * Q5_0 and Q4_0 likewise, one block (32 weights, one scale d) at a time: the tables are gguf's
 * d * (v - 16) and d * (v - 8), and Q5_0's fifth bit is rotated from qh into bit 4 of the index
 * for vpermt2ps, which looks up 32 values. d comes in sc[r][j] for block j.
 *
 * acc[r][i] += row r of the slice . x row i, for rt weight rows and mt activation rows, as tile
 * in ggml_rows.h (each accumulator sums in the same order whatever rt and mt are); qtype a
 * constant once inlined. A block is Q4_K's 64 weights (sub-blocks 2j and 2j + 1, the low and high
 * nibbles of 32 bytes) or a Q5_0 or Q4_0 block of 32, looked up 16 weights at a time (v). */
static inline __attribute__((always_inline)) AVX512_TARGET void
lut_tile_of(const int qtype, const uint8_t *const *blk, const float (*sc)[SLICE / 16], const float (*off)[SLICE / 16],
            int len, const float *x, float *acc, const int rt, const int mt)
{
    const int five = qtype == Q5_0, size = five ? 22 : 18, per = qtype == Q4_K ? 64 : 32;
    int32_t sh[16], rot[2][16];
    for (int l = 0; l < 16; l++) {  /* constants once inlined */
        sh[l] = 8 * (l / 4);
        rot[0][l] = (q40_order(l) - 4) & 31;
        rot[1][l] = (q40_order(16 + l) - 4) & 31;
    }
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i q4k_shift[4] = {_mm512_set_epi64(0x800000008, 0x800000008, 0x800000008, 0x800000008, 0, 0, 0, 0),
                                  _mm512_set_epi64(0x1800000018, 0x1800000018, 0x1800000018, 0x1800000018,
                                                   0x1000000010, 0x1000000010, 0x1000000010, 0x1000000010),
                                  _mm512_set_epi64(0xc0000000c, 0xc0000000c, 0xc0000000c, 0xc0000000c,
                                                   0x400000004, 0x400000004, 0x400000004, 0x400000004),
                                  _mm512_set_epi64(0x1c0000001c, 0x1c0000001c, 0x1c0000001c, 0x1c0000001c,
                                                   0x1400000014, 0x1400000014, 0x1400000014, 0x1400000014)};
    const __m512i shift = _mm512_loadu_si512(sh), four = _mm512_set1_epi32(4), low4 = _mm512_set1_epi32(15);
    __m512 a[4][16];
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            a[r][i] = _mm512_load_ps(acc + (r * MCHUNK + i) * 16);
    for (int j = 0; j < (qtype == Q4_K ? SLICE : len) / per; j++)
#pragma GCC unroll 4
        for (int r = 0; r < rt; r++) {
            const uint8_t *b = blk[r] + (qtype == Q4_K ? 32 * j : j * size);
            __m512i raw;
            __m512 t[2];            /* Q4_K: sub-blocks 2j, 2j + 1; Q5_0: the values below 16, above */
            if (qtype == Q4_K) {
                raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b));
                for (int h = 0; h < 2; h++)
                    t[h] = _mm512_fmsub_ps(iota, _mm512_set1_ps(sc[r][2 * j + h]), _mm512_set1_ps(off[r][2 * j + h]));
            } else {
                raw = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(b + 2 + 4 * five)));
                __m512 dv = _mm512_set1_ps(sc[r][j]);
                t[0] = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(five ? 16 : 8)), dv);
                t[1] = _mm512_mul_ps(iota, dv);
            }
#pragma GCC unroll 4
            for (int v = 0; v < per / 16; v++) {
                __m512 w;
                if (qtype == Q4_K) {
                    w = _mm512_permutexvar_ps(_mm512_srlv_epi32(raw, q4k_shift[v]), t[v / 2]);
                } else {
                    __m512i idx = _mm512_srlv_epi32(raw, v ? _mm512_add_epi32(shift, four) : shift);
                    if (five) {
                        int32_t qh;
                        memcpy(&qh, b + 2, 4);
                        __m512i bit = _mm512_rorv_epi32(_mm512_set1_epi32(qh), _mm512_loadu_si512(rot[v]));
                        idx = _mm512_ternarylogic_epi32(idx, bit, low4, 0xe4);   /* low4 ? idx : bit */
                        w = _mm512_permutex2var_ps(t[0], idx, t[1]);
                    } else {
                        w = _mm512_permutexvar_ps(idx, t[0]);
                    }
                }
#pragma GCC unroll 16
                for (int i = 0; i < mt; i++)
                    a[r][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + i * SLICE + per * j + 16 * v), a[r][i]);
            }
        }
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            _mm512_store_ps(acc + (r * MCHUNK + i) * 16, a[r][i]);
}

static inline __attribute__((always_inline)) AVX512_TARGET void
lut_tile(int qtype, const uint8_t *const *blk, const float (*sc)[SLICE / 16], const float (*off)[SLICE / 16],
         int len, const float *x, float *acc, const int rt, const int mt)
{
    if (qtype == Q4_K)
        lut_tile_of(Q4_K, blk, sc, off, len, x, acc, rt, mt);
    else if (qtype == Q5_0)
        lut_tile_of(Q5_0, blk, sc, off, len, x, acc, rt, mt);
    else
        lut_tile_of(Q4_0, blk, sc, off, len, x, acc, rt, mt);
}

/* What the lookup paths keep of a slice of a row: the blocks' address and their scales. */
static inline AVX512_TARGET void lut_decode(int qtype, const uint8_t *row, int len, const uint8_t **blk,
                                            float *sc, float *off)
{
    if (qtype == Q4_K) {
        *blk = row;
        q4k_scales_ps(*blk, sc, off);   /* here one per 32 weights, 8 of each */
        *blk += 16;
    } else {
        int size = qtype == Q5_0 ? 22 : 18;
        *blk = row;
        for (int j = 0; j < len / 32; j++)
            sc[j] = f16c(*blk + j * size);
    }
}

#define VL 16
#define LUT
#define MT 16
#define ACC 16
#define TARGET AVX512_TARGET
typedef float vf __attribute__((vector_size(4 * VL), aligned(4), may_alias));

static inline __attribute__((always_inline)) TARGET vf load_i8(const int8_t *p)
{
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline __attribute__((always_inline)) TARGET vf bcast(const float *p)
{
    return (vf)_mm512_set1_ps(*p);
}

static inline __attribute__((always_inline)) TARGET float hsum(vf v)
{
    return _mm512_reduce_add_ps((__m512)v);
}

static inline __attribute__((always_inline)) TARGET void decode(int qtype, const uint8_t *row, int len, int8_t *q,
                                                                float *sc, float *off)
{
    decode_avx2(qtype, row, len, q, sc, off);
}

#include "ggml_rows.h"

TARGET void ggml_rows_avx512(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, int64_t r0,
                             int64_t r1, const float *bias, float *y)
{
    rows_fp32(qtype, x, m, k, w, n, r0, r1, bias, y);
}

TARGET void ggml_dequant_avx512(int qtype, const uint8_t *w, int64_t k, int64_t row, int packed, float *out)
{
    dequant(qtype, w, k, row, packed, out);
}

/* One super-block of one Q4_K or Q6_K weight row in registers, for ggml_rows8_direct: q[c] the
 * unsigned integers of weights 64c .. 64c + 63 (Q4_K: in q4k_lane order, ggml_q8.c), s[c] each int16
 * lane's sub-block scale, off the fp32 offsets per 16 weights and *d the super-block's scale.
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
VNNI_TARGET void ggml_rows8_direct(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
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
            float v = hsum(*(const vf *)acc[r][i]) - hsum(*(const vf *)offs[r][i]);
            y[i * n + r0 + r] = bias ? v + bias[r0 + r] : v;
        }
}
#endif
