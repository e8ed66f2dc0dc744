/* What the units of the GGUF kernels' library share (ggml_cpu.c says how the products are shaped):
 * the type and instruction set codes, the blocks' layouts and the packed layout's addresses as
 * static inline helpers, and the functions that one unit calls in another. */
#ifndef SSD_GGML_H
#define SSD_GGML_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { Q4_K, Q6_K, Q8_0, Q5_0, Q4_0 };  /* qtype codes, as in ggml.py */
enum { SCALAR, AVX2, AVX512, AMX }; /* isa codes, as in ggml.py */
#define SLICE 256                   /* a K-quant super-block, eight Q8_0 blocks */
#define MCHUNK 16
#define NR 8
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

/* The order of the weights in the AVX-512 table lookups (lut_tile, ggml_avx512.c), into which x is
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

/* The types with a kernel for int8 activations (ggml_q8.h). */
static inline int q8_type(int qtype)
{
    return qtype == Q4_K || qtype == Q6_K;
}

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

/* Output rows [r0, r1) (a group of NR, or the last one's first rows) of y[m, n] for m <= MCHUNK
 * activation rows x packed by slice (pack_x in ggml_cpu.c), W packed by ssd_ggml_pack. */
typedef void rows_fn(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, int64_t r0,
                     int64_t r1, const float *bias, float *y);
/* Weight row `row` as fp32 (w in GGUF row order, or packed by ssd_ggml_pack). */
typedef void dequant_fn(int qtype, const uint8_t *w, int64_t k, int64_t row, int packed, float *out);
/* rows_fn for activations rounded to int8 by ggml_q8.c (row stride k, da k / SLICE, xs k / 16). */
typedef void rows8_fn(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
                      const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y);

#pragma GCC visibility push(hidden) /* calls between the units are direct, not through the PLT */
rows_fn ggml_rows_scalar, ggml_rows_avx2, ggml_rows_avx512;             /* ggml_scalar.c, ... */
dequant_fn ggml_dequant_scalar, ggml_dequant_avx2, ggml_dequant_avx512;
rows8_fn ggml_rows8_scalar, ggml_rows8_avx2, ggml_rows8_direct;         /* direct: ggml_avx512.c */
/* Row x[k] rounded to int8 per 256, as ggml_q8.h says (ggml_q8.c). */
void ggml_q8_quantize_avx2(const float *x, int64_t k, int perm, int8_t *xq, float *da, float *xs);
/* ssd_ggml_linear on the AMX tile unit (ggml_amx.c); -2 when out of memory. */
int ggml_linear_amx(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, const float *bias,
                    float *y, int threads);
#pragma GCC visibility pop

int ssd_ggml_best_isa(void);        /* ggml_cpu.c */
#endif
