/* Attention of a few query tokens (decode, verification) over the KV cache, on CPU: each query
 * row is computed on its own, over exactly the keys it sees, in key order. Built and loaded by
 * attention.py.
 *
 * Why: speculative decoding's greedy output equals AR's only if a verification computes for each
 * token the bits a decode step would. PyTorch's SDPA takes one key span for all the query rows
 * of a call and masks the rest, and its sums are blocked by that span: a decode step (keys up to
 * its own position) and a verification row at the same position (keys up to the round's last,
 * masked) differ in the last bits whenever the two spans straddle a 16-key boundary (measured:
 * 4 of 40 positions at contexts 100-140). Rounding activations to int8 (the gguf-a8 format)
 * turns such bits into different tokens. Here a row's result depends only on its query and its
 * visible keys.
 *
 * Per (row, head): s_j = scale * q . k_j for each visible key j (a fixed 8-lane dot product), then
 * p_j = exp(s_j - max s), the sum of p_j in key order, and out = sum_j p_j v_j / sum. exp is a
 * polynomial on 8 lanes (rel. error ~2e-7), the same code for every key whatever its lane. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cpu.h"

#define CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))

static inline __attribute__((always_inline)) float hsum(v8 a)
{
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

static inline __attribute__((always_inline)) v8 dot(const v8 *q, const float *k, const int d)
{
    v8 acc = {0};
    for (int c = 0; c < d / 8; c++)
        acc += q[c] * *(const v8 *)(k + 8 * c);
    return acc;
}

#define KB 64                       /* keys per block: a block of K or V rows stays in L1 for a group */

/* The g heads that share a kv head, for one query row: q (g x d, heads d apart), keys k + j * kst
 * (j in idx[0..n)), values likewise; s: g x stride scratch (stride >= n + 8); out: g x d.
 * Keys go in blocks of KB, each block's rows read once for the g heads. Whatever the blocking,
 * a head's score for a key is the same dot product (alone or four at a time: independent
 * chains), its exps, their sum and the weighted values run in key order: the result depends on
 * the query and its visible keys only. */
static inline __attribute__((always_inline)) void group(const float *q, int g, const float *k, const float *v,
                                                        int64_t kst, const int64_t *idx, int64_t n, const int d,
                                                        float scale, float *s, int64_t stride, float *out)
{
    for (int64_t j0 = 0; j0 < n; j0 += KB) {
        int64_t j1 = n - j0 < KB ? n : j0 + KB;
        for (int hi = 0; hi < g; hi++) {
            v8 qv[d / 8];
            float *sh = s + hi * stride;
            for (int c = 0; c < d / 8; c++)
                qv[c] = *(const v8 *)(q + hi * d + 8 * c);
            int64_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                const float *k0 = k + idx[j] * kst, *k1 = k + idx[j + 1] * kst, *k2 = k + idx[j + 2] * kst,
                            *k3 = k + idx[j + 3] * kst;
                for (int c = 0; c < d / 8; c++) {   /* dot() four times, interleaved */
                    a0 += qv[c] * *(const v8 *)(k0 + 8 * c);
                    a1 += qv[c] * *(const v8 *)(k1 + 8 * c);
                    a2 += qv[c] * *(const v8 *)(k2 + 8 * c);
                    a3 += qv[c] * *(const v8 *)(k3 + 8 * c);
                }
                sh[j] = hsum(a0) * scale;
                sh[j + 1] = hsum(a1) * scale;
                sh[j + 2] = hsum(a2) * scale;
                sh[j + 3] = hsum(a3) * scale;
            }
            for (; j < j1; j++)
                sh[j] = hsum(dot(qv, k + idx[j] * kst, d)) * scale;
        }
    }
    float sum[g];
    for (int hi = 0; hi < g; hi++) {
        float *sh = s + hi * stride, top = -INFINITY;
        for (int64_t j = 0; j < n; j++)
            top = sh[j] > top ? sh[j] : top;
        for (int64_t j = n; j < n + 8; j++)
            sh[j] = top;
        sum[hi] = 0;
        for (int64_t j = 0; j < n; j += 8)
            *(v8 *)(sh + j) = exp8(*(v8 *)(sh + j) - top);
        for (int64_t j = 0; j < n; j++)
            sum[hi] += sh[j];
        memset(out + hi * d, 0, sizeof(float) * d);
    }
    for (int64_t j0 = 0; j0 < n; j0 += KB) {
        int64_t j1 = n - j0 < KB ? n : j0 + KB;
        for (int hi = 0; hi < g; hi++) {
            v8 o[d / 8];
            const float *sh = s + hi * stride;
            for (int c = 0; c < d / 8; c++)
                o[c] = *(v8 *)(out + hi * d + 8 * c);
            for (int64_t j = j0; j < j1; j++) {
                const float *vj = v + idx[j] * kst;
                for (int c = 0; c < d / 8; c++)
                    o[c] += sh[j] * *(const v8 *)(vj + 8 * c);
            }
            for (int c = 0; c < d / 8; c++)
                *(v8 *)(out + hi * d + 8 * c) = o[c];
        }
    }
    for (int hi = 0; hi < g; hi++)
        for (int c = 0; c < d; c++)
            out[hi * d + c] /= sum[hi];
}

/* out[b, t, h * D ...] for B rows of T query tokens and H heads (H / Hkv heads share a kv head):
 * q element (b, t, h, c) at q[b * qsb + t * qst + h * D + c]; key j of row b, kv head g at
 * k[b * ksb + j * kst + g * D] (v likewise), j < span; row (b, t) sees key j where
 * mask[(b * T + t) * span + j] (mask NULL: every key). D a multiple of 8. Returns -2 when out of
 * memory. */
CLONES int ssd_attend(const float *q, int64_t qsb, int64_t qst, const float *k, const float *v, int64_t ksb,
                      int64_t kst, int64_t span, const uint8_t *mask, int b, int t, int h, int hkv, int d,
                      float scale, float *out, int threads)
{
    int failed = 0, g = h / hkv;
    int64_t stride = (span + 16) / 8 * 8;
#pragma omp parallel num_threads(threads)
    {
        int64_t *idx = malloc(sizeof(int64_t) * (span + 1));
        float *s = aligned_alloc(32, sizeof(float) * g * stride);
        if (!idx || !s) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t job = 0; job < (int64_t)b * t * hkv; job++) {
            if (!idx || !s)
                continue;
            int64_t row = job / hkv, bi = row / t, ti = row % t, kh = job % hkv, n = 0;
            const uint8_t *visible = mask ? mask + row * span : NULL;
            for (int64_t j = 0; j < span; j++)
                if (!visible || visible[j])
                    idx[n++] = j;
            const float *qr = q + bi * qsb + ti * qst + kh * g * d, *kb = k + bi * ksb + kh * d,
                        *vb = v + bi * ksb + kh * d;
            float *o = out + (row * h + kh * g) * d;
            if (d == 128)           /* the common head sizes with their loops unrolled */
                group(qr, g, kb, vb, kst, idx, n, 128, scale, s, stride, o);
            else if (d == 64)
                group(qr, g, kb, vb, kst, idx, n, 64, scale, s, stride, o);
            else
                group(qr, g, kb, vb, kst, idx, n, d, scale, s, stride, o);
        }
        free(idx);
        free(s);
    }
    return failed ? -2 : 0;
}
