/* The decoder layers of a Llama-family model for a few query tokens (decode, verification) on CPU,
 * all of them in one call: the norms, RoPE, the KV cache writes, attention, SiLU and the residual
 * sums here, the products by the weight format's own kernels (ggml_cpu.c, int4_cpu.c), reached
 * through the function pointers the model's plan holds. Built and loaded by layers.py.
 *
 * Why: a decode step of the 28-layer demo target spent ~17 ms of ~65 outside its products, in
 * ~15 PyTorch ops and their Python per layer; here that work is a few microseconds a layer, and
 * PyTorch's own thread pool stays idle while our kernels' pool runs.
 *
 * Exactness: every token (row) is computed on its own, in a fixed order (the products and the
 * attention are so too), so a verification row has the bits of the decode step at its position,
 * whatever the number of tokens or sequences in the call. The numbers equal PyTorch's path up to
 * fp32 rounding (sums in another order; exp a polynomial), not bit for bit; a prompt's prefill,
 * which stays on PyTorch's path, only writes the cache. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "attention_cpu.h"          /* ssd_attend, exp8 and the v8 types */

#define MAX_PARTS 3                 /* q, k and v of three weight types */

enum { GGML, GGML_Q8, INT4 };       /* product kinds, as in layers.py */

typedef int ggml_fn(int isa, int qtype, const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n,
                    const float *bias, float *y, int threads);
typedef int int4_fn(int isa, const float *x, int64_t m, int64_t k, int64_t kp, const uint8_t *w, const float *d,
                    int64_t n, const float *bias, float *y, int threads);

typedef struct {                    /* one weight of one kind; n output columns */
    int64_t kind, isa, qtype, n, k, kp;
    const void *w;
    const float *scales, *bias;     /* scales: int4 only */
    void *fn;                       /* ssd_ggml_linear, ssd_ggml_linear_q8 or ssd_i4_linear */
} Part;

typedef struct {                    /* a product whose parts' outputs lie side by side */
    int64_t parts, n;
    Part part[MAX_PARTS];
} Lin;

typedef struct {
    const float *in_norm, *post_norm, *q_norm, *k_norm;   /* q_norm, k_norm: NULL but for Qwen3 */
    Lin qkv, o, gate_up, down;
} Layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, inter;
    float eps;
    const float *cos, *sin;         /* [positions, head_dim] */
    const Layer *layer;
} Model;

/* y[m, lin.n] = x[m, k] @ W^T (+ bias); tmp: room for m x (the widest part) floats. */
static int product(const Lin *lin, const float *x, int64_t m, float *y, float *tmp, int threads)
{
    int64_t col = 0;
    for (int64_t i = 0; i < lin->parts; i++) {
        const Part *p = &lin->part[i];
        float *out = lin->parts == 1 ? y : tmp;
        int rc = p->kind == INT4
                     ? ((int4_fn *)p->fn)((int)p->isa, x, m, p->k, p->kp, p->w, p->scales, p->n, p->bias, out, threads)
                     : ((ggml_fn *)p->fn)((int)p->isa, (int)p->qtype, x, m, p->k, p->w, p->n, p->bias, out, threads);
        if (rc)
            return rc;
        if (lin->parts > 1)
            for (int64_t r = 0; r < m; r++)
                memcpy(y + r * lin->n + col, tmp + r * p->n, sizeof(float) * p->n);
        col += p->n;
    }
    return 0;
}

/* out = x / rms(x) * w over n values (the mean of squares summed in double). */
static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *out)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

/* Rotate-half RoPE of one head in place with cos/sin rows c, s. */
static void rope(float *x, const float *c, const float *s, int64_t d)
{
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i + half] + a * s[i + half];
    }
}

/* silu(x) = x / (1 + e^-x), from e = exp(-|x|) (the softmax's polynomial takes arguments <= 0). */
static inline __attribute__((always_inline)) v8 silu8(v8 x)
{
    v8 e = exp8((v8)((v8i)x | INT32_MIN));  /* -|x|: the sign bit set */
    v8i neg = x < 0;
    return (v8)(((v8i)x & ~neg) | ((v8i)(x * e) & neg)) / (1.0f + e);
}

/* act[i] = silu(g[i]) * u[i] for n values; a tail of fewer than 8 goes through the same code. */
static void silu_mul(const float *g, const float *u, int64_t n, float *act)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        *(v8 *)(act + i) = silu8(*(const v8 *)(g + i)) * *(const v8 *)(u + i);
    if (i < n) {
        float gt[8] = {0}, ut[8] = {0}, at[8];
        memcpy(gt, g + i, sizeof(float) * (n - i));
        memcpy(ut, u + i, sizeof(float) * (n - i));
        *(v8 *)at = silu8(*(v8 *)gt) * *(v8 *)ut;
        memcpy(act + i, at, sizeof(float) * (n - i));
    }
}

static int64_t widest(const Lin *lin)
{
    int64_t w = 0;
    for (int64_t i = 0; i < lin->parts; i++)
        w = lin->part[i].n > w ? lin->part[i].n : w;
    return w;
}

/* All layers of model m over h [b * t, hidden] (updated in place) for b sequences of t tokens:
 * token i of sequence r at position pos[r * t + i], written into the cache of layer l at
 * kc[l] / vc[l] ([slots, max_len, kv_heads, head_dim]), slot slots[r], row starts[r] + i (not
 * written when that is past max_len: padding). Its attention sees the keys j < span of its slot
 * where mask[(r * t + i) * span + j] (mask NULL: all of them). Returns the products' codes: -1
 * an isa this CPU lacks, -2 out of memory. */
int ssd_layers_forward(const Model *m, float *h, int b, int t, const int64_t *pos, float *const *kc,
                       float *const *vc, int64_t max_len, const int64_t *slots, const int64_t *starts,
                       const uint8_t *mask, int64_t span, int threads)
{
    const int64_t rows = (int64_t)b * t, hid = m->hidden, d = m->head_dim, nh = m->heads, nkv = m->kv_heads;
    const int64_t qn = (nh + 2 * nkv) * d, inter = m->inter, kvw = nkv * d, sst = max_len * kvw;
    int64_t wide = 0;
    for (int64_t l = 0; l < m->layers; l++) {
        const Layer *ly = &m->layer[l];
        const Lin *lins[4] = {&ly->qkv, &ly->o, &ly->gate_up, &ly->down};
        for (int i = 0; i < 4; i++)
            wide = widest(lins[i]) > wide ? widest(lins[i]) : wide;
    }
    float *xn = malloc(sizeof(float) * rows * hid), *qkv = malloc(sizeof(float) * rows * qn),
          *att = malloc(sizeof(float) * rows * nh * d), *out = malloc(sizeof(float) * rows * hid),
          *gu = malloc(sizeof(float) * rows * 2 * inter), *act = malloc(sizeof(float) * rows * inter),
          *tmp = malloc(sizeof(float) * rows * wide);
    int rc = xn && qkv && att && out && gu && act && tmp ? 0 : -2;
    int consecutive = 1;
    for (int r = 1; r < b; r++)
        consecutive &= slots[r] == slots[0] + r;
    const float scale = (float)(1.0 / sqrt((double)d));
    for (int64_t l = 0; l < m->layers && !rc; l++) {
        const Layer *ly = &m->layer[l];
        for (int64_t r = 0; r < rows; r++)
            rms_norm(h + r * hid, ly->in_norm, hid, m->eps, xn + r * hid);
        if ((rc = product(&ly->qkv, xn, rows, qkv, tmp, threads)))
            break;
        for (int64_t r = 0; r < rows; r++) {
            float *row = qkv + r * qn;
            const float *c = m->cos + pos[r] * d, *s = m->sin + pos[r] * d;
            for (int64_t hd = 0; hd < nh + nkv; hd++) {
                if (ly->q_norm)
                    rms_norm(row + hd * d, hd < nh ? ly->q_norm : ly->k_norm, d, m->eps, row + hd * d);
                rope(row + hd * d, c, s, d);
            }
            int64_t seq = r / t, at = starts[seq] + r % t;
            if (at < max_len) {
                memcpy(kc[l] + slots[seq] * sst + at * kvw, row + nh * d, sizeof(float) * kvw);
                memcpy(vc[l] + slots[seq] * sst + at * kvw, row + (nh + nkv) * d, sizeof(float) * kvw);
            }
        }
        for (int r = 0; r < b && !rc; r = consecutive ? b : r + 1)  /* consecutive slots: one call */
            rc = ssd_attend(qkv + r * t * qn, t * qn, qn, kc[l] + slots[r] * sst, vc[l] + slots[r] * sst, sst, kvw,
                            span, mask ? mask + r * t * span : NULL, consecutive ? b : 1, t, (int)nh, (int)nkv,
                            (int)d, scale, att + r * t * nh * d, threads);
        if (rc || (rc = product(&ly->o, att, rows, out, tmp, threads)))
            break;
        for (int64_t i = 0; i < rows * hid; i++)
            h[i] += out[i];
        for (int64_t r = 0; r < rows; r++)
            rms_norm(h + r * hid, ly->post_norm, hid, m->eps, xn + r * hid);
        if ((rc = product(&ly->gate_up, xn, rows, gu, tmp, threads)))
            break;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
        for (int64_t r = 0; r < rows; r++)
            silu_mul(gu + r * 2 * inter, gu + r * 2 * inter + inter, inter, act + r * inter);
        if ((rc = product(&ly->down, act, rows, out, tmp, threads)))
            break;
        for (int64_t i = 0; i < rows * hid; i++)
            h[i] += out[i];
    }
    free(xn), free(qkv), free(att), free(out), free(gu), free(act), free(tmp);
    return rc;
}
