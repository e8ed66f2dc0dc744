/* The interleaved layout of Q4_K and Q6_K weights for the int8-activation kernel on AVX-512 VNNI
 * (ggml_q8il.c says why; ggml_q8il_pack.c packs it): one output row per 32-bit lane.
 *
 * The layout (ssd_ggml_pack_il), per group of IR = 16 rows and super-block (q the unsigned weight
 * integers, 4 bits for Q4_K, 6 for Q6_K):
 *   lo  2048  [c 4][t 8][row 16][4]: byte b holds the low nibbles of q[64c + 4t + b] and, above,
 *             of q[64c + 32 + 4t + b]; for Q4_K these are the row's qs bytes 32c + 4t + b
 *   Q4_K: sc 128 [sub-block 8][row 16] the 6-bit scales as bytes; mn 128 [c 4][row 16][2] the
 *         mins of sub-blocks 2c, 2c + 1 (an int16 pair per lane); d, dmin [row 16] f16 as stored
 *         (Q4K_IL bytes: 148 per row and super-block against the file's 144)
 *   Q6_K: hi 1024 [c 4][u 4][row 16][4]: byte b holds the top two bits of q[64c + 4u + b],
 *         q[64c + 16 + ...], q[64c + 32 + ...], q[64c + 48 + ...] from the bottom up; sc 256
 *         [p 8][row 16][2] the int8 scales of sub-blocks 2p, 2p + 1; d [row 16] f16 (Q6K_IL bytes:
 *         210 per row and super-block, as stored)
 * The file's numbers, reordered. */
#ifndef SSD_GGML_Q8IL_H
#define SSD_GGML_Q8IL_H
#include "ggml.h"

#define IR 16                       /* rows of a group: one per 32-bit lane */
#define Q4K_IL 2368                 /* bytes of a group's super-block */
#define Q6K_IL 3360

static inline int il_bytes(int qtype)
{
    return qtype == Q4_K ? Q4K_IL : Q6K_IL;
}

int ssd_ggml_il_usable(int qtype);  /* ggml_q8il_pack.c */
#endif
