/*
 * Dispatch semaphores, with GCD's accounting: `value` goes negative by the
 * number of waiters; a signal that finds it negative posts one wake-up
 * token in `wakeups`, the futex word waiters sleep on, and exactly one
 * waiter takes it with a CAS.
 *
 * A waiter that times out must give its unit back unless a signal has
 * already counted it:
 *
 *   waiter (timed out)                    signaller
 *   v = value                             value += 1 (v was < 0)  (S1)
 *   v < 0: CAS value v -> v+1  (T1)       wakeups += 1, wake      (S2)
 *   v >= 0: a token is coming: take it
 *
 * T1 and S1 are RMWs on one word, so exactly one of them accounts for the
 * unit: either the waiter undoes its decrement, or it waits for the token
 * S2 is about to post.
 */
#include "internal.h"
#include "watch.h"

#include <errno.h>

struct dk_semaphore_s {
    struct dk__object obj;
    long value;
    long orig;
    uint32_t wakeups;
};

dk_semaphore_t *
dk_semaphore_create(long value)
{
    if (value < 0) {
        errno = EINVAL;
        return NULL;
    }
    dk_semaphore_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    s->obj.refcnt = 1;
    s->obj.kind = DK_KIND_SEMAPHORE;
    s->value = value;
    s->orig = value;
    return s;
}

void dk__semaphore_destroy(dk_semaphore_t *s);
void
dk__semaphore_destroy(dk_semaphore_t *s)
{
    if (s->obj.finalizer != NULL && s->obj.context != NULL) {
        dk_queue_async_f(dk__default_root(), s->obj.context, s->obj.finalizer);
    }
    free(s);
}

bool
dk_semaphore_signal(dk_semaphore_t *s)
{
    long old = dk_atomic_add_release(&s->value, 1); /* (S1) */
    if (old >= 0) {
        return false;
    }
    dk_atomic_add_release(&s->wakeups, 1); /* (S2) */
    dk__os_futex_wake(&s->wakeups, 1, false);
    return true;
}

static bool
take_token(dk_semaphore_t *s)
{
    uint32_t w = dk_atomic_load_acquire(&s->wakeups);
    while (w > 0) {
        if (dk_atomic_cas_acq_rel(&s->wakeups, &w, w - 1)) {
            return true;
        }
    }
    return false;
}

static int
semaphore_wait(dk_semaphore_t *s, uint64_t deadline, bool interruptible)
{
    if (dk_atomic_sub_acquire(&s->value, 1) > 0) {
        return 0; /* uncontended: one atomic instruction */
    }
    for (;;) {
        if (take_token(s)) {
            return 0;
        }
        int rc = deadline == 0
                     ? -ETIMEDOUT
                     : dk__os_futex_wait(&s->wakeups, 0, deadline, false);
        if (rc == -ETIMEDOUT || (rc == -EINTR && interruptible)) {
            long v = dk_atomic_load_relaxed(&s->value);
            while (v < 0) {
                if (dk_atomic_cas_acq_rel(&s->value, &v, v + 1)) { /* (T1) */
                    return rc;
                }
            }
            /* A signal counted us: its token is (about to be) posted. */
            while (!take_token(s)) {
                dk__os_futex_wait(&s->wakeups, 0, DK_OS_FOREVER, false);
            }
            return 0;
        }
    }
}

int
dk_semaphore_wait(dk_semaphore_t *s, uint64_t deadline)
{
    return semaphore_wait(s, deadline, false);
}

int
dk_semaphore_wait_interruptible(dk_semaphore_t *s, uint64_t deadline)
{
    return semaphore_wait(s, deadline, true);
}

long
dk_semaphore_value(const dk_semaphore_t *s)
{
    return dk_atomic_load_acquire(&s->value);
}

/* ---- steps for asynchronous waiters (watch.h) ------------------------ */

int
dk__semaphore_wait_begin(dk_semaphore_t *s, uint32_t **word, uint32_t *busy)
{
    if (dk_atomic_sub_acquire(&s->value, 1) > 0) {
        return 0;
    }
    if (take_token(s)) {
        return 0;
    }
    *word = &s->wakeups;
    *busy = 0;
    return -EAGAIN;
}

int
dk__semaphore_take_token(dk_semaphore_t *s, uint32_t **word, uint32_t *busy)
{
    if (take_token(s)) {
        return 0;
    }
    *word = &s->wakeups;
    *busy = 0;
    return -EAGAIN;
}

void
dk__semaphore_wait_abandon(dk_semaphore_t *s)
{
    long v = dk_atomic_load_relaxed(&s->value);
    while (v < 0) {
        if (dk_atomic_cas_acq_rel(&s->value, &v, v + 1)) { /* (T1) */
            return;
        }
    }
    /* A signal counted us (S1): its token follows at once (S2). Take it
     * and hand the unit on, as if we had never waited. */
    while (!take_token(s)) {
        dk__os_futex_wait(&s->wakeups, 0, DK_OS_FOREVER, false);
    }
    dk_semaphore_signal(s);
}
