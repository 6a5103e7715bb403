/*
 * The shared-memory event (dk/shm_event.h): one word, 0 clear, 1 set.
 *
 *   waiter                               setter
 *   v = load(word)            (A)        store(word, 1)          (B)
 *   v == 0 ? futex_wait(word, 0)         futex_wake(word, all)
 *
 * The kernel compares the word with 0 under its hash-bucket lock before
 * sleeping, and the setter's store (B) precedes its wake, so a waiter
 * either sees 1 at (A), or fails the kernel's comparison (-EAGAIN), or is
 * asleep when the wake arrives: the set is never lost. Acquire on (A)
 * pairs with release on (B), so what the setter wrote before set() is
 * visible to a waiter that returns.
 */
#include "internal.h"

#include "dk/shm_event.h"
#include "watch.h"

#include <errno.h>
#include <limits.h>

_Static_assert(sizeof(dk_shm_event_t) == 4, "event layout (fastipc: 4 B)");

int
dk_shm_event_check(const dk_shm_event_t *e)
{
    return ((uintptr_t)e % 4 != 0) ? -EINVAL : 0;
}

void
dk_shm_event_set(dk_shm_event_t *e, unsigned flags)
{
    if (flags & ~DK_SHARED) {
        DK_CLIENT_CRASH("dk_shm_event_set: unknown flags");
    }
    dk__atomic_store_release(&e->word, 1); /* (B) */
    dk__os_futex_wake(&e->word, INT_MAX, (flags & DK_SHARED) != 0);
}

void
dk_shm_event_clear(dk_shm_event_t *e)
{
    dk__atomic_store_release(&e->word, 0);
}

bool
dk_shm_event_is_set(const dk_shm_event_t *e)
{
    return dk__atomic_load_acquire(&e->word) != 0;
}

int
dk_shm_event_wait(dk_shm_event_t *e, uint64_t deadline, unsigned flags)
{
    if (flags & ~DK_SHARED) {
        return -EINVAL;
    }
    bool shared = (flags & DK_SHARED) != 0;
    for (;;) {
        if (dk__atomic_load_acquire(&e->word) != 0) { /* (A) */
            return 0;
        }
        if (deadline == 0 || dk__os_monotonic_ns() >= deadline) {
            return -ETIMEDOUT;
        }
        int rc = dk__os_futex_wait(&e->word, 0, deadline, shared);
        if (rc == -EINTR) {
            return dk__atomic_load_acquire(&e->word) != 0 ? 0 : -EINTR;
        }
        /* 0 (woken, maybe spuriously), -EAGAIN (set meanwhile) and
         * -ETIMEDOUT all go back to look at the word. */
    }
}

/* ---- steps for asynchronous waiters (watch.h) ------------------------ */

int
dk__shm_event_wait_step(dk_shm_event_t *e, uint32_t **word, uint32_t *busy)
{
    if (dk_shm_event_is_set(e)) {
        return 0;
    }
    *word = &e->word;
    *busy = 0;
    return -EAGAIN;
}
