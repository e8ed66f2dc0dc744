/* The x86 pieces that the GGUF kernels' AVX2, AVX-512, AMX and int8-activation units share: the
 * target attributes and, as static inline functions, decode_avx2 (ggml_scalar.c's decode with
 * intrinsics: the same numbers) and its helpers. Only the functions carry target attributes, so
 * the library loads on any CPU; each runs only where ggml_cpu.c's pick found its instructions. */
#ifndef SSD_GGML_X86_H
#define SSD_GGML_X86_H
#include <immintrin.h>
#include "ggml.h"

#define X86_TARGET __attribute__((target("avx2,fma,f16c")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* 8 scales for pairs of 16 weights -> 16 (one per 16). */
static inline X86_TARGET void store_pairs(float *dst, __m256 v)
{
    __m256 lo = _mm256_unpacklo_ps(v, v), hi = _mm256_unpackhi_ps(v, v);   /* 0011 4455, 2233 6677 */
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

static inline X86_TARGET __m256 bytes_to_ps(__m128i b, int is_signed)  /* the low 8 bytes */
{
    return _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
}

static inline X86_TARGET float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline X86_TARGET float f16c(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* q4k_scales in a register: the words stored one by one and reloaded as a vector stalled on store
 * forwarding. Reads the four bytes after the scales (the block goes on). */
static inline X86_TARGET __m128i q4k_scales_avx2(const uint8_t *s)
{
    __m128i w = _mm_loadu_si128((const __m128i *)s);
    __m128i a = _mm_shuffle_epi32(w, 0x98), b = _mm_shuffle_epi32(w, 0x50);    /* w0 w2 w1 w2, w0 w0 w1 w1 */
    return _mm_or_si128(_mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
                                      _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f)),
                        _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0)));
}

/* Q4_K's scales and mins as fp32, one per 32 weights (8 of each), for the AVX-512 lookups and AMX. */
static inline AVX512_TARGET void q4k_scales_ps(const uint8_t *b, float *sc, float *off)
{
    __m128i u = q4k_scales_avx2(b + 4);
    _mm256_storeu_ps(sc, _mm256_mul_ps(bytes_to_ps(u, 0), _mm256_set1_ps(f16c(b))));
    _mm256_storeu_ps(off, _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(u, 8), 0), _mm256_set1_ps(f16c(b + 2))));
}

static inline X86_TARGET void decode_avx2(int qtype, const uint8_t *row, int len, int8_t *q, float *sc, float *off)
{
    const __m256i low4 = _mm256_set1_epi8(15), bits45 = _mm256_set1_epi8(0x30);
    if (qtype == Q4_K) {
        const uint8_t *b = row;
        __m128i u = q4k_scales_avx2(b + 4);
        store_pairs(sc, _mm256_mul_ps(bytes_to_ps(u, 0), _mm256_set1_ps(f16c(b))));
        store_pairs(off, _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(u, 8), 0), _mm256_set1_ps(f16c(b + 2))));
        for (int g = 0; g < 4; g++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * g));
            _mm256_storeu_si256((__m256i *)(q + 64 * g), _mm256_and_si256(v, low4));
            _mm256_storeu_si256((__m256i *)(q + 64 * g + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
        }
    } else if (qtype == Q6_K) {
        const uint8_t *b = row;
        __m128i s = _mm_loadu_si128((const __m128i *)(b + 192));
        __m256 d = _mm256_set1_ps(f16c(b + 208)), s0 = _mm256_mul_ps(bytes_to_ps(s, 1), d),
               s1 = _mm256_mul_ps(bytes_to_ps(_mm_srli_si128(s, 8), 1), d), c32 = _mm256_set1_ps(32);
        _mm256_storeu_ps(sc, s0);
        _mm256_storeu_ps(sc + 8, s1);
        _mm256_storeu_ps(off, _mm256_mul_ps(s0, c32));
        _mm256_storeu_ps(off + 8, _mm256_mul_ps(s1, c32));
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h)),
                    l1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32)),
                    hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)),
                    n0 = _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                    n1 = _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4);
            __m256i *o = (__m256i *)(q + 128 * h);
            _mm256_storeu_si256(o, _mm256_or_si256(_mm256_and_si256(l0, low4),
                                                   _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45)));
            _mm256_storeu_si256(o + 1, _mm256_or_si256(_mm256_and_si256(l1, low4),
                                                       _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45)));
            _mm256_storeu_si256(o + 2, _mm256_or_si256(n0, _mm256_and_si256(hb, bits45)));
            _mm256_storeu_si256(o + 3, _mm256_or_si256(n1, _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45)));
        }
    } else if (qtype == Q8_0) {
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * 34;
            sc[2 * j] = sc[2 * j + 1] = f16c(b);
            off[2 * j] = off[2 * j + 1] = 0;
            _mm256_storeu_si256((__m256i *)(q + 32 * j), _mm256_loadu_si256((const __m256i *)(b + 2)));
        }
    } else {
        int five = qtype == Q5_0, size = five ? 22 : 18;
        /* qh's bit i to byte i: byte i / 8 of qh into byte i, then its bit i % 8 tested */
        const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
                      bit = _mm256_set1_epi64x(0x8040201008040201);
        for (int j = 0; j < len / 32; j++) {
            const uint8_t *b = row + j * size;
            __m128i v = _mm_loadu_si128((const __m128i *)(b + 2 + 4 * five));
            __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), low4);
            if (five) {
                uint32_t qh;
                memcpy(&qh, b + 2, 4);
                __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
                h = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
                nib = _mm256_or_si256(nib, _mm256_and_si256(h, _mm256_set1_epi8(16)));
            }
            sc[2 * j] = sc[2 * j + 1] = f16c(b);
            off[2 * j] = off[2 * j + 1] = (five ? 16 : 8) * sc[2 * j];
            _mm256_storeu_si256((__m256i *)(q + 32 * j), nib);
        }
    }
}
#endif
