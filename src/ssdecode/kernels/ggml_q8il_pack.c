/* Packing Q4_K and Q6_K weights into the interleaved layout (ggml_q8il.h), and what the Python side
 * asks of it. */
#include "ggml_q8il.h"

/* Whether this CPU has the interleaved kernel for qtype. */
int ssd_ggml_il_usable(int qtype)
{
#if defined(__x86_64__) || defined(__i386__)
    return q8_type(qtype) && ssd_ggml_best_isa() >= AVX512 && __builtin_cpu_supports("avx512vnni");
#else
    (void)qtype;
    return 0;
#endif
}

/* Rows of a group in the interleaved layout. */
int ssd_ggml_il_group_rows(void)
{
    return IR;
}

/* Bytes of one row of k weights in the interleaved layout (a partial super-block padded with zeros). */
int64_t ssd_ggml_il_row_bytes(int qtype, int64_t k)
{
    return (k + SLICE - 1) / SLICE * (il_bytes(qtype) / IR);
}

/* One Q4_K super-block b of group row r into the group's block o. */
static void il_pack_q4k(const uint8_t *b, int r, uint8_t *o)
{
    uint32_t words[4];
    uint8_t u[16];                  /* scales 0-7, mins 0-7 */
    q4k_scales(b + 4, words);
    memcpy(u, words, 16);
    for (int c = 0; c < 4; c++) {
        for (int t = 0; t < 8; t++)
            memcpy(o + 512 * c + 64 * t + 4 * r, b + 16 + 32 * c + 4 * t, 4);
        o[2176 + 32 * c + 2 * r] = u[8 + 2 * c];
        o[2176 + 32 * c + 2 * r + 1] = u[9 + 2 * c];
    }
    for (int s = 0; s < 8; s++)
        o[2048 + 16 * s + r] = u[s];
    memcpy(o + 2304 + 2 * r, b, 2);
    memcpy(o + 2336 + 2 * r, b + 2, 2);
}

/* The same for Q6_K: its q (gguf's ql / qh layout) re-split into the nibble and bit-pair planes. */
static void il_pack_q6k(const uint8_t *b, int r, uint8_t *o)
{
    uint8_t q[SLICE];
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        for (int l = 0; l < 32; l++) {
            q[128 * h + l] = (ql[l] & 15) | (qh[l] & 3) << 4;
            q[128 * h + l + 32] = (ql[l + 32] & 15) | (qh[l] >> 2 & 3) << 4;
            q[128 * h + l + 64] = (ql[l] >> 4) | (qh[l] >> 4 & 3) << 4;
            q[128 * h + l + 96] = (ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4;
        }
    }
    for (int c = 0; c < 4; c++)
        for (int e = 0; e < 4; e++) {
            for (int t = 0; t < 8; t++)
                o[512 * c + 64 * t + 4 * r + e] = (q[64 * c + 4 * t + e] & 15) | (q[64 * c + 32 + 4 * t + e] & 15) << 4;
            for (int u = 0; u < 4; u++)
                o[2048 + 256 * c + 64 * u + 4 * r + e] = (uint8_t)(q[64 * c + 4 * u + e] >> 4 | (q[64 * c + 16 + 4 * u + e] >> 4) << 2
                                                        | (q[64 * c + 32 + 4 * u + e] >> 4) << 4
                                                        | (q[64 * c + 48 + 4 * u + e] >> 4) << 6);
        }
    for (int p = 0; p < 8; p++) {
        o[3072 + 32 * p + 2 * r] = b[192 + 2 * p];
        o[3072 + 32 * p + 2 * r + 1] = b[193 + 2 * p];
    }
    memcpy(o + 3328 + 2 * r, b + 208, 2);
}

/* dst = the n x k Q4_K or Q6_K weight stored as src (GGUF row order, each row a whole number of
 * super-blocks: k rounded up) in the interleaved layout, padded with zero rows (d = 0) to whole
 * groups: dst holds groups * IR rows of ssd_ggml_il_row_bytes. */
void ssd_ggml_pack_il(int qtype, const uint8_t *src, int64_t n, int64_t k, uint8_t *dst, int threads)
{
    int64_t slices = (k + SLICE - 1) / SLICE, ldw = row_bytes(qtype, slices * SLICE), sb = row_bytes(qtype, SLICE);
    int64_t groups = (n + IR - 1) / IR;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++)
        for (int64_t j = 0; j < slices; j++) {
            uint8_t *o = dst + (g * slices + j) * il_bytes(qtype);
            memset(o, 0, il_bytes(qtype));
            for (int r = 0; r < IR && g * IR + r < n; r++)
                (qtype == Q4_K ? il_pack_q4k : il_pack_q6k)(src + (g * IR + r) * ldw + j * sb, r, o);
        }
}
