/* Q4_K and Q6_K products with the activations rounded to int8, as llama.cpp computes them (the
 * gguf-a8 weight format; ssd_ggml_linear_q8 in ggml_q8.c). Opt-in: the weights are
 * still the file's, but each activation is rounded to 8 bits, so the logits move by about what
 * llama.cpp's do against an fp32 reference (docs/benchmarks.md section 11), and the model that
 * speculative decoding samples from exactly is this one.
 *
 * - Activations: per row and per 256 (one super-block), a = round(x / da) with da = max|x| / 127
 *   (llama.cpp's Q8_K), and xs[s] = da * (the sum of a over the 16 weights of sub-block s).
 * - A super-block of one weight row is decoded once (unsigned q, the fp32 offsets off[16] of
 *   gguf's q * scale - off, its integer sub-block scales and d: into registers on AVX-512,
 *   direct_decode in ggml_avx512.c; into L1 elsewhere, the units' decode), then every activation row is
 *   applied: T = sum_s sc16[s] * sum_{16 of s} q * a in int32
 *   (maddubs pairs q (unsigned) with a (signed) without saturating: 2 * 63 * 127 < 32768; the
 *   whole super-block stays below 2^31), then acc += T * (d * da) and offs += off . xs in fp32.
 *   The output is sum(acc) - sum(offs): w . (a * da), w gguf's weight, up to fp32 rounding.
 * - Each output sums its super-blocks in order whatever the row and thread counts: batch invariant,
 *   so a speculative round computes the bits a decode step would.
 * - AVX-512 with VNNI (vpdpwssd applies the scales as it accumulates), AVX2 (vpmaddwd), scalar.
 *
 * This header is rows8, the AVX2 and scalar kernels written once: included by ggml_avx2.c and
 * ggml_scalar.c after what ggml_rows.h needs (VL, TARGET, vf, hsum, decode) and their q8_scales
 * (the integer scale of each sub-block of 16 and the super-block's d) and dot8 (one super-block:
 * *acc += T * dd, *offs += off . xs as above, for one weight row and one activation row; VL lanes each). */

/* Output rows [r0, r1) of a group (as rows_fp32() in ggml_rows.h) for m <= MCHUNK activation rows
 * quantized by ggml_q8.c (row stride k, da k / SLICE, xs k / 16). */
static inline TARGET void rows8(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
                                const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y)
{
    float acc[NR][MCHUNK][VL] __attribute__((aligned(64))), offs[NR][MCHUNK][VL] __attribute__((aligned(64)));
    int8_t q[NR][SLICE] __attribute__((aligned(64)));
    int16_t sc16[NR][128];          /* the scalar unit's 16, or the AVX2 unit's 128 (q8_scales) */
    float d[NR], sc[SLICE / 16], off[NR][SLICE / 16];
    int rows = (int)(r1 - r0);
    int64_t slice_bytes = row_bytes(qtype, SLICE);
    for (int r = 0; r < rows; r++) {
        memset(acc[r], 0, sizeof(float) * VL * m);
        memset(offs[r], 0, sizeof(float) * VL * m);
    }
    for (int64_t k0 = 0; k0 < k; k0 += SLICE) {
        for (int r = 0; r < rows; r++) {
            const uint8_t *b = slice_at(w, qtype, k, r0 + r, k0);
            decode(qtype, b, SLICE, q[r], sc, off[r]);
            q8_scales(qtype, b, sc16[r], &d[r]);
            prefetch_ahead(b, slice_bytes);
        }
        for (int i = 0; i < m; i++) {
            const int8_t *a = xq + i * k + k0;
            const float *s = xs + i * (k / 16) + k0 / 16, dai = da[i * (k / SLICE) + k0 / SLICE];
            for (int r = 0; r < rows; r++)
                dot8(q[r], sc16[r], a, d[r] * dai, off[r], s, acc[r][i], offs[r][i]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < m; i++) {
            float v = hsum(*(const vf *)acc[r][i]) - hsum(*(const vf *)offs[r][i]);
            y[i * n + r0 + r] = bias ? v + bias[r0 + r] : v;
        }
}
