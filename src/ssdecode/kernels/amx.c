/* Whether the process may use an AMX tile feature (amx.h), for the GGUF and int4 libraries. */
#include "amx.h"
#if defined(AMX_BUILD)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The tile unit is off until the process asks Linux for it (arch_prctl ARCH_REQ_XCOMP_PERM). Both
 * answers are kept: CPUID traps to the hypervisor in a VM, and the kernels ask on every call. */
int amx_permitted(int feature)
{
    static int known = 0, permitted = 0;
    static unsigned edx = 0;
    if (!known) {
        unsigned a, b, c;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &edx) && (edx >> 24 & 1))
            permitted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        known = 1;
    }
    return permitted && (edx >> feature & 1);
}
#endif
