/*
 * The public futex calls (dk/futex.h) over the OS layer.
 */
#include "internal.h"

#include "dk/futex.h"

int
dk_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline,
              bool shared)
{
    return dk__os_futex_wait(word, expected, deadline, shared);
}

int
dk_futex_wake(uint32_t *word, int n, bool shared)
{
    return dk__os_futex_wake(word, n, shared);
}
