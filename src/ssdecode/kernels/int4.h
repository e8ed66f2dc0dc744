/* What the units of the int4 kernel's library share (int4_cpu.c says how it computes). */
#ifndef SSD_INT4_H
#define SSD_INT4_H
#include <stdint.h>

/* ssd_i4_linear on the AMX tile unit (int4_amx.c), from the quantized x; -2 when out of memory. */
__attribute__((visibility("hidden"))) int int4_linear_amx(const int8_t *xq, const int32_t *corr, const float *xs,
                                                          int64_t m, int64_t kp, const uint8_t *w, const float *d,
                                                          int64_t n, const float *bias, float *y, int threads);
#endif
