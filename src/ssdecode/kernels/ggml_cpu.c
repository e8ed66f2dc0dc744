/* y[M, N] = x[M, K] @ W^T (+ bias) for W stored as GGML Q4_K, Q6_K, Q8_0, Q5_0 or Q4_0 blocks,
 * exactly as in the GGUF file (issue 11: run GGUF models as stored), and rows of such a W as fp32
 * (an embedding lookup). Built and loaded by ggml.py.
 *
 * Why it is shaped like this:
 * - Decode and verification multiply 1-16 fp32 rows by a large weight. With fp32 activations
 *   every weight costs an int8 -> fp32 conversion and a dequantizing FMA besides its product, so
 *   even one row is bound by instructions rather than bytes (docs/benchmarks.md). Q4_K, Q5_0 and
 *   Q4_0 with AVX-512 cost less: a shift and a table lookup per 16 weights (q4k_tile, q40_tile),
 *   the same path for any number of rows, so batch invariance holds. Each 256-weight
 *   slice of a row is decoded once (to int8 plus a scale and an offset per 16 weights, in L1)
 *   and every activation row is applied to it while it is there; the dequantized lanes live only
 *   in registers, and few activation rows take several weight rows at once (FMA chains).
 * - The dequantized weight equals gguf's dequantize() bit for bit (q * scale is exact in fp32 for
 *   all three types and the offset is subtracted with one rounding), and sums are fp32: the result
 *   is F.linear on the dequantized weight up to summation order. Activations are never rounded.
 * - NR output rows share each slice of x (16 rows x 256 = 16 KB), which then stays in L1. x is
 *   copied slice by slice so that a tile addresses its rows at fixed offsets from one register
 *   (with 16 row pointers the loop ran out of registers and was bound by their loads).
 * - The weight is packed once at load (ssd_ggml_pack, slice_at): each group of NR rows slice-major,
 *   the order in which rows() reads it, so a thread streams its part of the weight in memory
 *   order (the same bytes as the file's, reordered). Read in GGUF row order, slice by slice over
 *   NR rows is eight strided streams: with software prefetch the products ran 5-25% slower than
 *   packed (docs/benchmarks.md section 11), without it at a third of the memory bandwidth.
 *   PREFETCH bytes ahead are still prefetched: one row of a product of several rows is slower
 *   than the hardware prefetchers' look-ahead expects.
 * - Each output is summed by one thread in a fixed order, so results depend neither on the thread
 *   count nor on how many activation rows come with it. More than MCHUNK activation rows
 *   (prefill) are taken MCHUNK at a time over the whole weight, so x stays in cache and the
 *   weight streams once per chunk.
 * - The vector code is written once with GCC vector extensions (ggml_cpu_isa.h) and instantiated
 *   for AVX-512, AVX2+FMA and a portable scalar build (one lane), picked at run time. Only the
 *   functions carry target attributes, so the library loads on any CPU.
 * - With AMX (isa AMX: AVX-512 plus the tile unit, where Linux grants it), products of many rows
 *   (prefill) run on AMX-BF16 with the activations split exactly into three bf16 parts: the same
 *   numbers up to summation order (rows_amx and the comment before it). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include "amx.h"                    /* the AMX path where the toolchain builds it */

enum { Q4_K, Q6_K, Q8_0, Q5_0, Q4_0 };  /* qtype codes, as in ggml.py */
enum { SCALAR, AVX2, AVX512, AMX }; /* isa codes, as in ggml.py */
#define SLICE 256                   /* a K-quant super-block, eight Q8_0 blocks */
#define MCHUNK 16
#define NR 8
#define AMX_MIN_ROWS 16             /* fewer rows go to the AVX-512 kernel with isa AMX; Q6_K: twice as many */
#define PREFETCH 4096               /* bytes ahead of the slice being read (see slice_at) */

static inline float f16(const uint8_t *p)
{
    uint32_t h = p[0] | (uint32_t)p[1] << 8, e = h >> 10 & 31, man = h & 1023, bits;
    float v;
    if (e == 0) {
        v = man * 0x1p-24f;         /* zero or subnormal: exact */
    } else {
        bits = (e == 31 ? 255 : e + 112) << 23 | man << 13;
        memcpy(&v, &bits, 4);
    }
    return h & 0x8000 ? -v : v;
}

/* Q4_K's twelve scale bytes hold eight 6-bit scales and eight 6-bit mins; as four little-endian
 * words: scales 0-3, scales 4-7, mins 0-3, mins 4-7, one byte each. */
static inline void q4k_scales(const uint8_t *s, uint32_t out[4])
{
    uint32_t w[3];
    memcpy(w, s, 12);
    out[0] = w[0] & 0x3f3f3f3f;
    out[1] = (w[2] & 0x0f0f0f0f) | (w[0] >> 6 & 0x03030303) << 4;
    out[2] = w[1] & 0x3f3f3f3f;
    out[3] = (w[2] >> 4 & 0x0f0f0f0f) | (w[1] >> 6 & 0x03030303) << 4;
}

/* The order of the weights in the AVX-512 table lookups (q4k_tile, q40_tile), into which x is
 * packed. Q4_K: the 32 nibble bytes of sub-blocks 2g and 2g + 1 are broadcast to both halves of a
 * register and shifted per lane, so lookup v (0-3) of group g takes, in lane l, weight
 * q4k_order(16 v + l) + 64 g. Q5_0, Q4_0: a block's 16 nibble bytes go to all four 128-bit lanes,
 * so lookup h (0, 1) of block j takes weight q40_order(16 h + l) + 32 j. */
static inline int q4k_order(int p)
{
    int v = p / 16, l = p % 16;
    return 32 * (v / 2) + 4 * (l % 8) + 2 * (v % 2) + l / 8;
}

static inline int q40_order(int p)
{
    int h = p / 16, l = p % 16;
    return 16 * h + 4 * (l % 4) + l / 4;
}

/* The types with a lookup path (on AVX-512). */
static inline int lut_type(int qtype)
{
    return qtype == Q4_K || qtype == Q5_0 || qtype == Q4_0;
}

/* Slice [k0, k0 + len) of one weight row as w = q * sc[i / 16] - off[i / 16], the layouts of gguf's
 * dequantize_blocks. q is unsigned for Q6_K (its -32 is 32 * sc in off): q * sc is exact, so w
 * is the reference value, rounded once; likewise Q5_0 and Q4_0 (-16 and -8). decode_avx2 below
 * computes the same with intrinsics. */
static void decode_scalar(int qtype, const uint8_t *row, int len, int8_t *q, float *sc, float *off)
{
    if (qtype == Q4_K) {            /* d, dmin (f16), 12 scale bytes, 128 of nibbles */
        const uint8_t *b = row;
        uint32_t words[4];
        uint8_t u[16];
        float d = f16(b), dmin = f16(b + 2);
        q4k_scales(b + 4, words);
        memcpy(u, words, 16);
        for (int j = 0; j < 16; j++) {
            sc[j] = d * u[j / 2];
            off[j] = dmin * u[8 + j / 2];
        }
        for (int g = 0; g < 4; g++)     /* 32 bytes: low nibbles are sub-block 2g, high ones 2g+1 */
            for (int i = 0; i < 32; i++) {
                q[64 * g + i] = b[16 + 32 * g + i] & 15;
                q[64 * g + 32 + i] = b[16 + 32 * g + i] >> 4;
            }
    } else if (qtype == Q6_K) {     /* 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d */
        const uint8_t *b = row;
        float d = f16(b + 208);
        for (int j = 0; j < 16; j++) {
            sc[j] = d * (int8_t)b[192 + j];
            off[j] = 32 * sc[j];
        }
        for (int h = 0; h < 2; h++) {   /* each half: 64 low-nibble bytes, 32 high-bit bytes */
            const uint8_t *l = b + 64 * h, *hb = b + 128 + 32 * h;
            int8_t *o = q + 128 * h;
            for (int i = 0; i < 32; i++) {
                o[i] = (l[i] & 15) | (hb[i] & 3) << 4;
                o[i + 32] = (l[i + 32] & 15) | (hb[i] >> 2 & 3) << 4;
                o[i + 64] = (l[i] >> 4) | (hb[i] >> 4 & 3) << 4;
                o[i + 96] = (l[i + 32] >> 4) | (hb[i] >> 6) << 4;
            }
        }
    } else if (qtype == Q8_0) {     /* d (f16) and 32 int8 per block */
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * 34;
            sc[2 * j] = sc[2 * j + 1] = f16(b);
            off[2 * j] = off[2 * j + 1] = 0;
            memcpy(q + 32 * j, b + 2, 32);
        }
    } else {                        /* Q5_0: d, 32 high bits, 16 bytes of nibbles; Q4_0: d, nibbles */
        int five = qtype == Q5_0, size = five ? 22 : 18;
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * size, *nib = b + 2 + 4 * five;
            uint32_t qh = 0;
            if (five)
                memcpy(&qh, b + 2, 4);
            sc[2 * j] = sc[2 * j + 1] = f16(b);
            off[2 * j] = off[2 * j + 1] = (five ? 16 : 8) * sc[2 * j];   /* q is stored unsigned */
            for (int i = 0; i < 16; i++) {  /* low nibbles are weights 0-15, high ones 16-31 */
                q[32 * j + i] = (nib[i] & 15) | (qh >> i & 1) << 4;
                q[32 * j + 16 + i] = (nib[i] >> 4) | (qh >> (16 + i) & 1) << 4;
            }
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#define X86_TARGET __attribute__((target("avx2,fma,f16c")))

/* 8 scales for pairs of 16 weights -> 16 (one per 16). */
static inline X86_TARGET void store_pairs(float *dst, __m256 v)
{
    __m256 lo = _mm256_unpacklo_ps(v, v), hi = _mm256_unpackhi_ps(v, v);   /* 0011 4455, 2233 6677 */
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

static inline X86_TARGET __m256 bytes_to_ps(__m128i b, int is_signed)  /* the low 8 bytes */
{
    return _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
}

static inline X86_TARGET float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline X86_TARGET float f16c(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* q4k_scales in a register: the words stored one by one and reloaded as a vector stalled on store
 * forwarding. Reads the four bytes after the scales (the block goes on). */
static inline X86_TARGET __m128i q4k_scales_avx2(const uint8_t *s)
{
    __m128i w = _mm_loadu_si128((const __m128i *)s);
    __m128i a = _mm_shuffle_epi32(w, 0x98), b = _mm_shuffle_epi32(w, 0x50);    /* w0 w2 w1 w2, w0 w0 w1 w1 */
    return _mm_or_si128(_mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
                                      _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f)),
                        _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0)));
}

static inline X86_TARGET void decode_avx2(int qtype, const uint8_t *row, int len, int8_t *q, float *sc, float *off)
{
    const __m256i low4 = _mm256_set1_epi8(15), bits45 = _mm256_set1_epi8(0x30);
    if (qtype == Q4_K) {
        const uint8_t *b = row;
        __m128i u = q4k_scales_avx2(b + 4);
        store_pairs(sc, _mm256_mul_ps(bytes_to_ps(u, 0), _mm256_set1_ps(f16c(b))));
        store_pairs(off, _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(u, 8), 0), _mm256_set1_ps(f16c(b + 2))));
        for (int g = 0; g < 4; g++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * g));
            _mm256_storeu_si256((__m256i *)(q + 64 * g), _mm256_and_si256(v, low4));
            _mm256_storeu_si256((__m256i *)(q + 64 * g + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
        }
    } else if (qtype == Q6_K) {
        const uint8_t *b = row;
        __m128i s = _mm_loadu_si128((const __m128i *)(b + 192));
        __m256 d = _mm256_set1_ps(f16c(b + 208)), s0 = _mm256_mul_ps(bytes_to_ps(s, 1), d),
               s1 = _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(s, 8), 1), d), c32 = _mm256_set1_ps(32);
        _mm256_storeu_ps(sc, s0);
        _mm256_storeu_ps(sc + 8, s1);
        _mm256_storeu_ps(off, _mm256_mul_ps(s0, c32));
        _mm256_storeu_ps(off + 8, _mm256_mul_ps(s1, c32));
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h)),
                    l1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32)),
                    hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)),
                    n0 = _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                    n1 = _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4);
            __m256i *o = (__m256i *)(q + 128 * h);
            _mm256_storeu_si256(o, _mm256_or_si256(_mm256_and_si256(l0, low4),
                                                   _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45)));
            _mm256_storeu_si256(o + 1, _mm256_or_si256(_mm256_and_si256(l1, low4),
                                                       _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45)));
            _mm256_storeu_si256(o + 2, _mm256_or_si256(n0, _mm256_and_si256(hb, bits45)));
            _mm256_storeu_si256(o + 3, _mm256_or_si256(n1, _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45)));
        }
    } else if (qtype == Q8_0) {
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * 34;
            sc[2 * j] = sc[2 * j + 1] = f16c(b);
            off[2 * j] = off[2 * j + 1] = 0;
            _mm256_storeu_si256((__m256i *)(q + 32 * j), _mm256_loadu_si256((const __m256i *)(b + 2)));
        }
    } else {
        int five = qtype == Q5_0, size = five ? 22 : 18;
        /* qh's bit i to byte i: byte i / 8 of qh into byte i, then its bit i % 8 tested */
        const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
                      bit = _mm256_set1_epi64x(0x8040201008040201);
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * size;
            __m128i v = _mm_loadu_si128((const __m128i *)(b + 2 + 4 * five));
            __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), low4);
            if (five) {
                uint32_t qh;
                memcpy(&qh, b + 2, 4);
                __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
                h = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
                nib = _mm256_or_si256(nib, _mm256_and_si256(h, _mm256_set1_epi8(16)));
            }
            sc[2 * j] = sc[2 * j + 1] = f16c(b);
            off[2 * j] = off[2 * j + 1] = (five ? 16 : 8) * sc[2 * j];
            _mm256_storeu_si256((__m256i *)(q + 32 * j), nib);
        }
    }
}
#endif

/* Bytes of k weights (a whole number of blocks). */
static inline int64_t row_bytes(int qtype, int64_t k)
{
    static const int block[] = {256, 256, 32, 32, 32}, size[] = {144, 210, 34, 22, 18};
    return k / block[qtype] * size[qtype];
}

/* Slice [k0, k0 + SLICE) of weight row `row` in the packed layout (ssd_ggml_pack): groups of NR
 * rows, each group slice-major (slice 0 of its NR rows back to back, then slice 1, ...), so that
 * the products read each group's bytes in order, as the hardware prefetchers follow. */
static inline const uint8_t *slice_at(const uint8_t *w, int qtype, int64_t k, int64_t row, int64_t k0)
{
    int64_t len = k - k0 < SLICE ? k - k0 : SLICE;
    return w + row / NR * NR * row_bytes(qtype, k) + NR * row_bytes(qtype, k0) + row % NR * row_bytes(qtype, len);
}

static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *b, int64_t bytes)
{
    for (int64_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(b + PREFETCH + o);
}

typedef void rows_fn(int, const float *, int, int64_t, const uint8_t *, int64_t, int64_t, int64_t,
                     const float *, float *);
typedef void dequant_fn(int, const uint8_t *, int64_t, int64_t, int, float *);

#define SFX scalar
#define VL 1
#define MT 4
#define ACC 4
#define TARGET
#define LOAD_I8(p) ((F(vf)){*(p)})
#define BCAST(p) ((F(vf)){*(p)})
#define HSUM(v) (v)[0]
#define DECODE decode_scalar
#include "ggml_cpu_isa.h"

#if defined(__x86_64__) || defined(__i386__)
#define SFX avx2
#define VL 8
#define MT 8
#define ACC 8
#define TARGET X86_TARGET
#define LOAD_I8(p) (F(vf))_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define BCAST(p) (F(vf))_mm256_broadcast_ss(p)
#define HSUM(v) hsum8((__m256)(v))
#define DECODE decode_avx2
#include "ggml_cpu_isa.h"

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

/* Q4_K with AVX-512 by table lookup: vpermps picks lane i of a 16-float table by the low 4 bits of
 * index lane i, ignoring the rest. So each sub-block gets the table of its 16 dequantized values
 * (v * scale - offset for v = 0..15, gguf's values exactly, one FMA per 32 weights, its scale and
 * offset broadcast from memory for free), and a weight costs a shift and a lookup instead of
 * unpacking, an int -> float conversion and a dequantizing FMA. The lanes of a lookup hold weights
 * in the order q4k_order gives, into which x is packed. */
static inline AVX512_TARGET void q4k_scales_ps(const uint8_t *b, float *sc, float *off)
{
    __m128i u = q4k_scales_avx2(b + 4);
    _mm256_storeu_ps(sc, _mm256_mul_ps(bytes_to_ps(u, 0), _mm256_set1_ps(f16c(b))));
    _mm256_storeu_ps(off, _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(u, 8), 0), _mm256_set1_ps(f16c(b + 2))));
}

/* acc[r][i] += row r of the super-block . x row i, for rt weight rows and mt activation rows, as
 * tile in ggml_cpu_isa.h (each accumulator sums in the same order whatever rt and mt are). */
static inline __attribute__((always_inline)) AVX512_TARGET void
q4k_tile(const uint8_t *const *nib, const float (*sc)[SLICE / 16], const float (*off)[SLICE / 16], const float *x,
         float *acc, const int rt, const int mt)
{
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i shift[4] = {_mm512_set_epi64(0x800000008, 0x800000008, 0x800000008, 0x800000008, 0, 0, 0, 0),
                              _mm512_set_epi64(0x1800000018, 0x1800000018, 0x1800000018, 0x1800000018,
                                               0x1000000010, 0x1000000010, 0x1000000010, 0x1000000010),
                              _mm512_set_epi64(0xc0000000c, 0xc0000000c, 0xc0000000c, 0xc0000000c,
                                               0x400000004, 0x400000004, 0x400000004, 0x400000004),
                              _mm512_set_epi64(0x1c0000001c, 0x1c0000001c, 0x1c0000001c, 0x1c0000001c,
                                               0x1400000014, 0x1400000014, 0x1400000014, 0x1400000014)};
    __m512 a[4][16];
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            a[r][i] = _mm512_load_ps(acc + (r * MCHUNK + i) * 16);
    for (int g = 0; g < 4; g++)
#pragma GCC unroll 4
        for (int r = 0; r < rt; r++) {
            __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(nib[r] + 32 * g)));
            __m512 t[2];
            for (int h = 0; h < 2; h++)
                t[h] = _mm512_fmsub_ps(iota, _mm512_set1_ps(sc[r][2 * g + h]), _mm512_set1_ps(off[r][2 * g + h]));
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m512 w = _mm512_permutexvar_ps(_mm512_srlv_epi32(raw, shift[v]), t[v / 2]);
#pragma GCC unroll 16
                for (int i = 0; i < mt; i++)
                    a[r][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + i * SLICE + 64 * g + 16 * v), a[r][i]);
            }
        }
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            _mm512_store_ps(acc + (r * MCHUNK + i) * 16, a[r][i]);
}

/* Q5_0 and Q4_0 likewise, one block (32 weights, one scale d) at a time: the tables are gguf's
 * d * (v - 16) and d * (v - 8), and Q5_0's fifth bit is rotated from qh into bit 4 of the index
 * for vpermt2ps, which looks up 32 values. d comes in sc[r][j] for block j. */
static inline __attribute__((always_inline)) AVX512_TARGET void
q40_tile(const int five, const uint8_t *const *blk, const float (*d)[SLICE / 16], int len, const float *x,
         float *acc, const int rt, const int mt)
{
    int32_t sh[16], rot[2][16];
    for (int l = 0; l < 16; l++) {  /* constants once inlined */
        sh[l] = 8 * (l / 4);
        rot[0][l] = (q40_order(l) - 4) & 31;
        rot[1][l] = (q40_order(16 + l) - 4) & 31;
    }
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i shift = _mm512_loadu_si512(sh), four = _mm512_set1_epi32(4), low4 = _mm512_set1_epi32(15);
    const int size = five ? 22 : 18;
    __m512 a[4][16];
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            a[r][i] = _mm512_load_ps(acc + (r * MCHUNK + i) * 16);
    for (int j = 0; j < len / 32; j++)
#pragma GCC unroll 4
        for (int r = 0; r < rt; r++) {
            const uint8_t *b = blk[r] + j * size;
            __m512i raw = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(b + 2 + 4 * five)));
            __m512 dv = _mm512_set1_ps(d[r][j]), lo = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(five ? 16 : 8)), dv),
                   hi = _mm512_mul_ps(iota, dv);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m512i idx = _mm512_srlv_epi32(raw, h ? _mm512_add_epi32(shift, four) : shift);
                __m512 w;
                if (five) {
                    int32_t qh;
                    memcpy(&qh, b + 2, 4);
                    __m512i bit = _mm512_rorv_epi32(_mm512_set1_epi32(qh), _mm512_loadu_si512(rot[h]));
                    idx = _mm512_ternarylogic_epi32(idx, bit, low4, 0xe4);   /* low4 ? idx : bit */
                    w = _mm512_permutex2var_ps(lo, idx, hi);
                } else {
                    w = _mm512_permutexvar_ps(idx, lo);
                }
#pragma GCC unroll 16
                for (int i = 0; i < mt; i++)
                    a[r][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + i * SLICE + 32 * j + 16 * h), a[r][i]);
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
        q4k_tile(blk, sc, off, x, acc, rt, mt);
    else if (qtype == Q5_0)
        q40_tile(1, blk, sc, len, x, acc, rt, mt);
    else
        q40_tile(0, blk, sc, len, x, acc, rt, mt);
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


#if defined(AMX_BUILD)
/* AMX-BF16 with exact activations (rows_amx below): multi-row products on the tile unit, with the
 * same numbers as the fp32 kernels up to summation order.
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
#define AMX_CHUNK 12                /* most activation tiles per pass over the weight */
#define AMX_X_BYTES (3 << 19)       /* packed x per pass (tiles x a segment of k) that stays in L2 */

static int amx_usable(void)
{
    return amx_permitted(AMX_BF16);
}

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
static int linear_amx(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, const float *bias,
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
#else
static int amx_usable(void)
{
    return 0;
}
#endif

#define SFX avx512
#define VL 16
#define LUT
#define MT 16
#define ACC 16
#define TARGET AVX512_TARGET
#define LOAD_I8(p) (F(vf))_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define BCAST(p) (F(vf))_mm512_set1_ps(*(p))
#define HSUM(v) _mm512_reduce_add_ps((__m512)(v))
#define DECODE decode_avx2
#include "ggml_cpu_isa.h"
#undef LUT
#endif

/* The fewest activation rows of qtype that the amx isa computes on the tile unit (Q6_K converts
 * two parts per weight: at 16 rows 0.8-0.96x the AVX-512 kernel, docs/benchmarks.md). */
int ssd_ggml_amx_min_rows(int qtype)
{
    return qtype == Q6_K ? 2 * AMX_MIN_ROWS : AMX_MIN_ROWS;
}

/* The widest instruction set this CPU runs (AMX: AVX-512 and a tile unit that Linux lets us use). */
int ssd_ggml_best_isa(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return amx_usable() ? AMX : AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return AVX2;
#endif
    return SCALAR;
}

#include "ggml_q8.h"                /* the products with int8 activations (gguf-a8) */
#include "ggml_q8il.h"              /* and from the interleaved layout, on AVX-512 VNNI */

/* x[m, k] as [k / SLICE][m][SLICE] (the last slice may be partial), in the lookup order of qtype if
 * lut; one row in the given order is already that. */
static const float *pack_x(const float *x, int m, int64_t k, int lut, int qtype, float **buf)
{
    int group = qtype == Q4_K ? 64 : 32;
    *buf = NULL;
    if (m == 1 && !lut)
        return x;
    float *p = *buf = aligned_alloc(64, sizeof(float) * m * ((k + SLICE - 1) / SLICE * SLICE));  /* whole lines */
    if (p)
        for (int64_t k0 = 0; k0 < k; k0 += SLICE)
            for (int i = 0; i < m; i++) {
                float *dst = p + k0 * m + i * SLICE;
                const float *src = x + i * k + k0;
                int len = k - k0 < SLICE ? (int)(k - k0) : SLICE;
                for (int j = 0; j < len; j++)
                    dst[j] = !lut ? src[j] : src[j / group * group + (group == 64 ? q4k_order : q40_order)(j % group)];
            }
    return p;
}

static int pick(int isa, rows_fn **rows, dequant_fn **dequant)
{
    *rows = rows_scalar;
    *dequant = dequant_scalar;
    if (isa > ssd_ggml_best_isa())
        return 0;
#if defined(__x86_64__) || defined(__i386__)
    if (isa >= AVX512) {            /* AMX: the AVX-512 kernels where it is not used */
        *rows = rows_avx512;
        *dequant = dequant_avx512;
    } else if (isa == AVX2) {
        *rows = rows_avx2;
        *dequant = dequant_avx2;
    }
#endif
    return 1;
}

/* out[i, :] = row ids[i] (ids NULL: row r0 + i) of W as fp32, for count rows (checked by the
 * caller); W in GGUF row order, or packed by ssd_ggml_pack. Returns -1 for an isa this CPU lacks,
 * else 0. */
int ssd_ggml_dequantize(int isa, int qtype, const uint8_t *w, int64_t k, int packed, const int64_t *ids, int64_t r0,
                        int64_t count, float *out, int threads)
{
    rows_fn *rows;
    dequant_fn *dequant;
    if (!pick(isa, &rows, &dequant))
        return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; i++)
        dequant(qtype, w, k, ids ? ids[i] : r0 + i, packed, out + i * k);
    return 0;
}

/* Rows of a group in the packed layout. */
int ssd_ggml_group_rows(void)
{
    return NR;
}

/* dst = the n x k weight stored as src (row after row, as in a GGUF file) in the packed layout of
 * slice_at, its rows padded with zeros to a whole number of groups: dst has groups * NR rows' bytes. */
void ssd_ggml_pack(int qtype, const uint8_t *src, int64_t n, int64_t k, uint8_t *dst, int threads)
{
    int64_t ldw = row_bytes(qtype, k), groups = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++)
        for (int64_t row = g * NR; row < g * NR + NR; row++)
            for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
                uint8_t *to = (uint8_t *)slice_at(dst, qtype, k, row, k0);
                int64_t bytes = row_bytes(qtype, k - k0 < SLICE ? k - k0 : SLICE);
                if (row < n)
                    memcpy(to, src + row * ldw + row_bytes(qtype, k0), bytes);
                else
                    memset(to, 0, bytes);
            }
}

/* y[m, n] = x[m, k] @ W^T (+ bias[n]); W is n rows of k / block weights, packed by ssd_ggml_pack.
 * Returns -1 for an isa this CPU lacks, -2 when out of memory, else 0. Shapes and types are checked
 * by the caller. */
int ssd_ggml_linear(int isa, int qtype, const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n,
                    const float *bias, float *y, int threads)
{
    rows_fn *rows;
    dequant_fn *dequant;
    if (!pick(isa, &rows, &dequant))
        return -1;
    int64_t groups = (n + NR - 1) / NR;
#if defined(AMX_BUILD)
    if (isa == AMX && m >= ssd_ggml_amx_min_rows(qtype))
        return linear_amx(qtype, x, (int)m, k, w, n, bias, y, threads);
#endif
    for (int64_t m0 = 0; m0 < m; m0 += MCHUNK) {
        int mc = m - m0 < MCHUNK ? (int)(m - m0) : MCHUNK;
        float *buf;
        const float *xp = pack_x(x + m0 * k, mc, k, isa >= AVX512 && lut_type(qtype), qtype, &buf);
        if (!xp)
            return -2;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t g = 0; g < groups; g++)
            rows(qtype, xp, mc, k, w, n, g * NR, g * NR + NR < n ? g * NR + NR : n, bias, y + m0 * n);
        free(buf);
    }
    return 0;
}
