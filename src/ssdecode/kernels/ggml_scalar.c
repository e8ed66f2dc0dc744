/* The portable kernels of the plain layout (one lane, any CPU): ggml_rows.h's fp32 products and
 * ggml_q8.h's int8-activation ones. */
#include "ggml.h"

/* Slice [k0, k0 + len) of one weight row as w = q * sc[i / 16] - off[i / 16], the layouts of gguf's
 * dequantize_blocks. q is unsigned for Q6_K (its -32 is 32 * sc in off): q * sc is exact, so w
 * is the reference value, rounded once; likewise Q5_0 and Q4_0 (-16 and -8). decode_avx2
 * (ggml_x86.h) computes the same with intrinsics. */
static void decode(int qtype, const uint8_t *row, int len, int8_t *q, float *sc, float *off)
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

#define VL 1
#define MT 4
#define ACC 4
#define TARGET
typedef float vf __attribute__((vector_size(4 * VL), aligned(4), may_alias));

static inline __attribute__((always_inline)) vf load_i8(const int8_t *p)
{
    return (vf){*p};
}

static inline __attribute__((always_inline)) vf bcast(const float *p)
{
    return (vf){*p};
}

static inline __attribute__((always_inline)) float hsum(vf v)
{
    return v[0];
}

#include "ggml_rows.h"

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

/* One super-block: *acc += T * dd, *offs += off . xs (ggml_q8.h), for one weight row and one
 * activation row. */
static inline void dot8(const int8_t *q, const int16_t *sc16, const int8_t *a, float dd, const float *off,
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

#include "ggml_q8.h"

void ggml_rows_scalar(int qtype, const float *x, int m, int64_t k, const uint8_t *w, int64_t n, int64_t r0,
                      int64_t r1, const float *bias, float *y)
{
    rows_fp32(qtype, x, m, k, w, n, r0, r1, bias, y);
}

void ggml_dequant_scalar(int qtype, const uint8_t *w, int64_t k, int64_t row, int packed, float *out)
{
    dequant(qtype, w, k, row, packed, out);
}

void ggml_rows8_scalar(int qtype, const int8_t *xq, const float *da, const float *xs, int m, int64_t k,
                       const uint8_t *w, int64_t n, int64_t r0, int64_t r1, const float *bias, float *y)
{
    rows8(qtype, xq, da, xs, m, k, w, n, r0, r1, bias, y);
}
