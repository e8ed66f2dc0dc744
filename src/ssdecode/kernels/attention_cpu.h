/* What attention_cpu.c shares with layer_cpu.c: ssd_attend, the 8-lane vector types and exp8. */
#ifndef SSD_ATTENTION_CPU_H
#define SSD_ATTENTION_CPU_H
#include <stdint.h>

#pragma GCC diagnostic ignored "-Wpsabi"   /* v8 across non-AVX functions: all inlined */
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4), may_alias));

/* exp(x) for x <= 0 (a softmax's shifted scores): 2^n * 2^f with n = round(x log2 e) (half away
 * from zero), f in [-0.5, 0.5], a degree-6 polynomial; x below -87 gives 0. */
static inline __attribute__((always_inline)) v8 exp8(v8 x)
{
    v8 t = x * 1.44269504f;
    v8i low = t < -126.0f;
    t = (v8)(((v8i)t & ~low) | ((v8i)((v8){0} - 126.0f) & low));
    v8i n = -__builtin_convertvector(0.5f - t, v8i);
    v8 f = t - __builtin_convertvector(n, v8), p = (v8){0} + 1.5403530e-4f;
    p = p * f + 1.3333558e-3f;
    p = p * f + 9.6181291e-3f;
    p = p * f + 5.5504109e-2f;
    p = p * f + 2.4022651e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.0f;
    v8 e = p * (v8)((n + 127) << 23);
    return (v8)((v8i)e & ~(x < -87.0f));
}

int ssd_attend(const float *q, int64_t qsb, int64_t qst, const float *k, const float *v, int64_t ksb, int64_t kst,
               int64_t span, const uint8_t *mask, int b, int t, int h, int hkv, int d, float scale, float *out,
               int threads);  /* attention_cpu.c says what it computes */
#endif
