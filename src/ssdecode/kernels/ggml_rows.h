/* The vector part of the fp32 products (ggml_cpu.c says how they are shaped), written once with GCC
 * vector extensions so that one text serves every width. Included once by each instruction set's
 * unit (ggml_scalar.c, ggml_avx2.c, ggml_avx512.c), which defines first: VL (fp32 lanes), MT
 * (most activation rows per register tile), ACC (accumulator registers a tile may use), TARGET
 * (its function attribute), the type vf (VL floats) and the static inline functions load_i8 (VL
 * int8 to fp32; GCC does not vectorize that conversion itself), bcast (a float to VL lanes), hsum
 * (the sum of the lanes) and decode (a slice decoder); with LUT defined (AVX-512) also lut_decode
 * and lut_tile, which take the types lut_type names. The unit exports rows_fp32() and dequant() under
 * its own names (ggml.h); ggml_cpu.c picks among them at run time. */

/* acc[r][i] += dequantized slice of row r . x[i * SLICE ...], for rt weight rows and mt activation rows
 * (compile-time constants after inlining, so the rt x mt accumulators stay in registers). Few
 * activation rows take more weight rows, so that enough independent FMA chains are in flight. Each
 * accumulator sums its products in slice order whatever rt and mt are: an output does not depend
 * on how many rows are computed with it. */
static inline __attribute__((always_inline)) TARGET void
tile(const int8_t *q, const float *sc, const float *off, int len, const float *x, float *acc, const int rt,
     const int mt)
{
    vf a[4][MT];                    /* rt <= 4 */
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            a[r][i] = *(const vf *)(acc + (r * MCHUNK + i) * VL);
    for (int g = 0; g < len / 16; g++) {
#pragma GCC unroll 16
        for (int c = 0; c < 16; c += VL) {
            int j = 16 * g + c;
#pragma GCC unroll 4
            for (int r = 0; r < rt; r++) {
                vf w = load_i8(q + r * SLICE + j) * bcast(sc + r * 16 + g) - bcast(off + r * 16 + g);
#pragma GCC unroll 16
                for (int i = 0; i < mt; i++)
                    a[r][i] += w * *(const vf *)(x + i * SLICE + j);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rt; r++)
#pragma GCC unroll 16
        for (int i = 0; i < mt; i++)
            *(vf *)(acc + (r * MCHUNK + i) * VL) = a[r][i];
}

/* Output rows [r0, r1) (a group of NR, or the last one's first rows) for m <= MCHUNK activation rows, x packed by slice (pack_x). */
static inline TARGET void rows_fp32(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n,
                                    int64_t r0, int64_t r1, const float *bias, float *y)
{
    float acc[NR][MCHUNK][VL] __attribute__((aligned(64)));
    float sc[NR][SLICE / 16], off[NR][SLICE / 16];
    int8_t q[NR][SLICE] __attribute__((aligned(64)));
    int rows = (int)(r1 - r0);
    int64_t slice_bytes = row_bytes(qtype, SLICE);
    const uint8_t *group = w + r0 * row_bytes(qtype, k);  /* r0 starts a group */
#ifdef LUT
    const uint8_t *blk[NR];
    static const uint8_t zeros[SLICE] __attribute__((aligned(64)));
    int lut = lut_type(qtype);
    for (int r = rows; r < NR; r++)
        blk[r] = zeros;
#endif
    if (rows < NR) {                /* the last group: rows past the end weigh nothing */
        memset(sc, 0, sizeof sc);
        memset(off, 0, sizeof off);
        memset(q, 0, sizeof q);
    }
    for (int r = 0; r < NR; r++)
        memset(acc[r], 0, sizeof(float) * VL * m);
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
        int len = k - k0 < SLICE ? (int)(k - k0) : SLICE;
        const uint8_t *s0 = group + NR * slice_bytes * (k0 / SLICE);   /* slice_at(w, .., r0 + r, k0): */
        int64_t bytes = len == SLICE ? slice_bytes : row_bytes(qtype, len);   /* s0 + r * bytes */
        for (int r = 0; r < rows; r++) {
            const uint8_t *b = s0 + r * bytes;
#ifdef LUT
            if (lut)
                lut_decode(qtype, b, len, blk + r, sc[r], off[r]);
            else
#endif
                decode(qtype, b, len, q[r], sc[r], off[r]);
            prefetch_ahead(b, slice_bytes);
        }
        for (int i = 0; i < m; i += MT) {
            int mt = m - i < MT ? m - i : MT;
            for (int r = 0; r < NR; r += (mt <= ACC / 4 ? 4 : mt <= ACC / 2 ? 2 : 1)) {
#ifdef LUT
#define LUT_TILE(c) if (lut) lut_tile(qtype, blk + r, sc + r, off + r, len, x + (k0 * m + i * SLICE), acc[r][i], \
                                      c <= ACC / 4 ? 4 : c <= ACC / 2 ? 2 : 1, c); else
#else
#define LUT_TILE(c)
#endif
#define T(c) case c: LUT_TILE(c) tile(q[r], sc[r], off[r], len, x + (k0 * m + i * SLICE), acc[r][i], \
                                      c <= ACC / 4 ? 4 : c <= ACC / 2 ? 2 : 1, c); break;
                switch (mt) {
                    T(1) T(2) T(3) T(4)
#if MT > 4
                    T(5) T(6) T(7) T(8)
#endif
#if MT > 8
                    T(9) T(10) T(11) T(12) T(13) T(14) T(15) T(16)
#endif
                }
#undef T
#undef LUT_TILE
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < m; i++) {
            float s = hsum(*(const vf *)acc[r][i]);
            y[i * n + r0 + r] = bias ? s + bias[r0 + r] : s;
        }
}

/* Weight row `row` as fp32 (w in GGUF row order, or packed by ssd_ggml_pack): q * sc - off is
 * gguf's value exactly (see decode in ggml_scalar.c; contracted to one FMA, the same single rounding). */
static inline TARGET void dequant(int qtype, const uint8_t *w, int64_t k, int64_t row, int packed, float *out)
{
    float sc[SLICE / 16], off[SLICE / 16];
    int8_t q[SLICE];
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
        int len = k - k0 < SLICE ? (int)(k - k0) : SLICE;
        decode(qtype, packed ? slice_at(w, qtype, k, row, k0) : w + row * row_bytes(qtype, k) + row_bytes(qtype, k0),
               len, q, sc, off);
        for (int g = 0; g < len / 16; g++)
#pragma GCC unroll 16
            for (int c = 0; c < 16; c += VL)
                *(vf *)(out + k0 + 16 * g + c) = load_i8(q + 16 * g + c) * bcast(sc + g) - bcast(off + g);
    }
}
