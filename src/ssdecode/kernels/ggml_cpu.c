/* y[M, N] = x[M, K] @ W^T (+ bias) for W stored as GGML Q4_K, Q6_K, Q8_0, Q5_0 or Q4_0 blocks,
 * exactly as in the GGUF file (issue 11: run GGUF models as stored), and rows of such a W as fp32
 * (an embedding lookup). Built and loaded by ggml.py.
 *
 * Why it is shaped like this:
 * - Decode and verification multiply 1-16 fp32 rows by a large weight. With fp32 activations
 *   every weight costs an int8 -> fp32 conversion and a dequantizing FMA besides its product, so
 *   even one row is bound by instructions rather than bytes (docs/benchmarks.md). Q4_K, Q5_0 and
 *   Q4_0 with AVX-512 cost less: a shift and a table lookup per 16 weights (ggml_avx512.c),
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
 * - The vector code is written once with GCC vector extensions (ggml_rows.h) and included by one
 *   unit per instruction set: AVX-512 (ggml_avx512.c), AVX2+FMA (ggml_avx2.c) and a portable
 *   scalar build (ggml_scalar.c, one lane), picked at run time (pick). Only the functions carry
 *   target attributes, so the library loads on any CPU.
 * - With AMX (isa AMX: AVX-512 plus the tile unit, where Linux grants it), products of many rows
 *   (prefill) run on AMX-BF16 with the activations split exactly into three bf16 parts: the same
 *   numbers up to summation order (ggml_amx.c). */
#include "ggml.h"
#include "amx.h"                    /* the AMX path where the toolchain builds it */

#define AMX_MIN_ROWS 16             /* fewer rows go to the AVX-512 kernel with isa AMX; Q6_K: twice as many */

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
#if defined(AMX_BUILD)
        return amx_permitted(AMX_BF16) ? AMX : AVX512;
#else
        return AVX512;
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return AVX2;
#endif
    return SCALAR;
}

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
    *rows = ggml_rows_scalar;
    *dequant = ggml_dequant_scalar;
    if (isa > ssd_ggml_best_isa())
        return 0;
#if defined(__x86_64__) || defined(__i386__)
    if (isa >= AVX512) {            /* AMX: the AVX-512 kernels where it is not used */
        *rows = ggml_rows_avx512;
        *dequant = ggml_dequant_avx512;
    } else if (isa == AVX2) {
        *rows = ggml_rows_avx2;
        *dequant = ggml_dequant_avx2;
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
        return ggml_linear_amx(qtype, x, (int)m, k, w, n, bias, y, threads);
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
