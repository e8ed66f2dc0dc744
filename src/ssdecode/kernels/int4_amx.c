/* The int4 products of many rows (a prompt's prefill) on AMX-INT8 (int4_cpu.c says why): per 16
 * tokens and 16 weight rows, a tile of block sums from one TDPBSUD, scaled into fp32 once. */
#include <stdlib.h>
#include <string.h>
#include "amx.h"
#include "int4.h"
#if defined(AMX_BUILD)
#include <immintrin.h>

#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TILE_DPBSUD(c, a, b) __asm__ volatile("tdpbsud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/* Weight rows [r0, r0 + 16) (rows past n weigh nothing) as one B tile per block of 32 weights,
 * bt[b][kk][r][0..3] = q of row r at 32 b + 4 kk + 0..3 (the VNNI layout: 8 rows of 16 x 4
 * bytes), and their scales ds[b][r]. */
static AMX_TARGET void amx_weights(const uint8_t *w, const float *d, int64_t kp, int64_t n, int64_t r0,
                                   uint8_t *bt, float *ds)
{
    int64_t nb = kp / 32;
    const __m256i low = _mm256_set1_epi8(15);
    const __m256i at = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);  /* dword kk of a row: kk * 64 bytes */
    memset(bt, 0, (size_t)nb * 512);
    memset(ds, 0, sizeof(float) * 16 * (size_t)nb);
    for (int r = 0; r < 16 && r0 + r < n; r++) {
        const uint8_t *row = w + (r0 + r) * (kp / 2);
        for (int64_t b = 0; b < nb; b++) {      /* block b: the low or high nibbles of 32 bytes of its group */
            int64_t g = b / 4, half = b % 4 / 2, part = b % 2;
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + 64 * g + 32 * part));
            __m256i q = _mm256_and_si256(half ? _mm256_srli_epi16(v, 4) : v, low);
            _mm256_i32scatter_epi32((int *)(bt + b * 512 + 4 * r), at, q, 4);
            ds[b * 16 + r] = d[(r0 + r) * nb + b];
        }
    }
}

/* Output rows [r0, r0 + 16) for all m (xq: tiles * 16 rows; cinit: per tile and block the C tile
 * of the -8 * sum(x) corrections; bt, ds: this thread's scratch). Two tiles of tokens at a time
 * share each B tile, in C tiles 0 and 3, so that one's store and reload overlap the other's product. */
static AMX_TARGET void rows_amx(const int8_t *xq, const int32_t *cinit, const float *xs, int64_t m, int64_t kp,
                                const uint8_t *w, const float *d, int64_t n, int64_t r0, const float *bias,
                                float *y, uint8_t *bt, float *ds)
{
    int64_t nb = kp / 32, tiles = (m + 15) / 16;
    int32_t c[2][16][16] __attribute__((aligned(64)));
    amx_weights(w, d, kp, n, r0, bt, ds);
    for (int64_t t = 0; t < tiles; t += 2) {
        int pair = t + 1 < tiles;
        __m512 acc[2][16];
        for (int i = 0; i < 16; i++)
            acc[0][i] = acc[1][i] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            TILE_LOAD(2, bt + b * 512, 64);
            TILE_LOAD(0, cinit + (t * nb + b) * 256, 64);
            TILE_LOAD(1, xq + 16 * t * kp + 32 * b, kp);
            TILE_DPBSUD(0, 1, 2);
            if (pair) {
                TILE_LOAD(3, cinit + ((t + 1) * nb + b) * 256, 64);
                TILE_LOAD(4, xq + 16 * (t + 1) * kp + 32 * b, kp);
                TILE_DPBSUD(3, 4, 2);
            }
            TILE_STORE(0, c[0], 64);
            if (pair)
                TILE_STORE(3, c[1], 64);
            __m512 s = _mm512_loadu_ps(ds + 16 * b);
            for (int p = 0; p <= pair; p++)
                for (int i = 0; i < 16; i++)
                    acc[p][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[p][i])), s, acc[p][i]);
        }
        for (int i = 0; i < 32 && 16 * t + i < m; i++) {
            float out[16];
            _mm512_storeu_ps(out, acc[i / 16][i % 16]);
            for (int r = 0; r < 16 && r0 + r < n; r++)
                y[(16 * t + i) * n + r0 + r] = xs[16 * t + i] * out[r] + (bias ? bias[r0 + r] : 0);
        }
    }
}

int int4_linear_amx(const int8_t *xq, const int32_t *corr, const float *xs, int64_t m, int64_t kp, const uint8_t *w,
                    const float *d, int64_t n, const float *bias, float *y, int threads)
{
    int64_t nb = kp / 32, tiles = (m + 15) / 16;
    int32_t *cinit = malloc(sizeof(int32_t) * 256 * (size_t)(tiles * nb));
    int failed = 0;
    if (!cinit)
        return -2;
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 16; j++)
                    cinit[(t * nb + b) * 256 + 16 * i + j] = 16 * t + i < m ? corr[(16 * t + i) * (kp / 4) + 8 * b] : 0;
#pragma omp parallel num_threads(threads)
    {
        static const uint8_t rows[5] = {16, 16, 8, 16, 16};     /* C, A, B, C, A */
        static const uint16_t colsb[5] = {64, 32, 64, 64, 32};
        uint8_t *bt = aligned_alloc(64, (size_t)nb * 512);
        float *ds = aligned_alloc(64, sizeof(float) * 16 * (size_t)nb);
        if (bt && ds) {
            amx_load_config(5, rows, colsb);      /* per thread */
#pragma omp for schedule(static)
            for (int64_t g = 0; g < (n + 15) / 16; g++)
                rows_amx(xq, cinit, xs, m, kp, w, d, n, 16 * g, bias, y, bt, ds);
            __asm__ volatile("tilerelease" ::);
        } else {
#pragma omp atomic write
            failed = 1;
        }
        free(bt), free(ds);
    }
    free(cinit);
    return failed ? -2 : 0;
}
#endif
