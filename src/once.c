/*
 * dk_once_f. The predicate goes 0 -> RUNNING (one CAS winner) -> DONE.
 * Losers sleep on one process-wide generation word; the winner bumps it
 * and wakes them all. Waiting is rare, so sharing the word costs nothing
 * and lets the predicate stay a plain intptr_t (dispatch_once_t).
 *
 *   waiter                               winner
 *   g = gen                              *pred = DONE            (D1)
 *   waiters += 1           (W1)          gen += 1
 *   *pred == DONE? return  (W2)          waiters > 0? wake all   (D2)
 *   futex_wait(&gen, g)
 */
#include "internal.h"

#include <limits.h>

#define ONCE_RUNNING ((intptr_t)1)
#define ONCE_DONE (~(intptr_t)0)

static uint32_t once_gen;
static uint32_t once_waiters;

bool
dk_once_done(const dk_once_t *predicate)
{
    return dk__atomic_load_acquire(predicate) == ONCE_DONE; /* pairs (D1) */
}

void
dk_once_f(dk_once_t *predicate, void *ctx, dk_function_t fn)
{
    if (dk_once_done(predicate)) {
        return;
    }
    intptr_t expected = 0;
    if (dk__atomic_cas_acq_rel(predicate, &expected, ONCE_RUNNING)) {
        fn(ctx);
        dk__atomic_store_seq_cst(predicate, ONCE_DONE); /* (D1) */
        dk__atomic_add_seq_cst(&once_gen, 1);
        if (dk__atomic_load_seq_cst(&once_waiters) > 0) { /* (D2) */
            dk__os_futex_wake(&once_gen, INT_MAX, false);
        }
        return;
    }
    for (;;) {
        uint32_t g = dk__atomic_load_acquire(&once_gen);
        if (dk_once_done(predicate)) {
            return;
        }
        dk__atomic_add_seq_cst(&once_waiters, 1);              /* (W1) */
        if (dk__atomic_load_seq_cst(predicate) == ONCE_DONE) { /* (W2) */
            dk__atomic_sub_relaxed(&once_waiters, 1);
            return;
        }
        dk__os_futex_wait(&once_gen, g, DK_TIME_FOREVER, false);
        dk__atomic_sub_relaxed(&once_waiters, 1);
    }
}
