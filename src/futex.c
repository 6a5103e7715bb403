/*
 * The public futex calls (dk/futex.h) over the OS layer.
 */
#include "internal.h"

#include "dk/futex.h"

#include <errno.h>

int
dk_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline,
              unsigned flags)
{
    if (flags & ~DK_SHARED) {
        return -EINVAL;
    }
    return dk__os_futex_wait(word, expected, deadline,
                             (flags & DK_SHARED) != 0);
}

int
dk_futex_wake(uint32_t *word, int n, unsigned flags)
{
    if (flags & ~DK_SHARED) {
        return -EINVAL;
    }
    return dk__os_futex_wake(word, n, (flags & DK_SHARED) != 0);
}
