/* What the AMX paths of the GGUF and int4 kernels (ggml_amx.c, int4_amx.c) share: whether this
 * toolchain can build tile code (AMX_BUILD: 64-bit x86 and an assembler that knows the tile
 * instructions, as GCC 11 and clang 12 imply), whether the process may use a tile feature (amx.c),
 * and the tile instructions. */
#ifndef SSD_AMX_H
#define SSD_AMX_H
#if defined(__x86_64__) && (__GNUC__ >= 11 || __clang_major__ >= 12)
#define AMX_BUILD 1
#include <stdint.h>
#include <string.h>

enum { AMX_BF16 = 22, AMX_INT8 = 25 };  /* CPUID.(7, 0):EDX bits; AMX-TILE is bit 24 */

/* Whether the CPU has the tile feature and Linux lets this process use the tile unit. */
__attribute__((visibility("hidden"))) int amx_permitted(int feature);

/* Tile instructions as asm with memory clobbers (GCC's _tile_* macros have none, so buffers written
 * before a load or read after a store could be reordered around them). Tile numbers are immediates. */
#define TILE_LOAD(t, p, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t :: "r"(p), "r"((long)(stride)) : "memory")
#define TILE_STORE(t, p, stride) \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" :: "r"(p), "r"((long)(stride)) : "memory")
#define TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)

/* Load a tile configuration: palette 1, rows and bytes per row of tiles 0..count-1. */
static inline void amx_load_config(int count, const uint8_t *rows, const uint16_t *colsb)
{
    struct { uint8_t palette, start, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < count; t++) {
        cfg.rows[t] = rows[t];
        cfg.colsb[t] = colsb[t];
    }
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg));
}
#endif
#endif
