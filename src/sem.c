/*
 * Dispatch semaphores, with GCD's accounting: `value` goes negative by the
 * number of committed waiters; a signal that finds it negative posts one
 * wake-up token in `wakeups`, the futex word waiters sleep on, and exactly
 * one waiter takes it with a CAS.
 *
 * A waiter first spins, uncounted, for a unit (a positive value), as the
 * process-shared semaphore of dk/mutex.h does: when the signaller runs on
 * another CPU it usually answers within a microsecond, while sleeping and
 * being woken costs two syscalls and a scheduler round trip. The spin
 * lasts at most SPIN_BUDGET_NS, so an idle waiter burns no CPU after
 * that. An uncounted spinner never takes a unit owed to a committed
 * waiter: the value only turns positive once every committed waiter has
 * been counted a unit.
 *
 * A committed waiter then parks on `wakeups`, counted in `sleepers`, and
 * a signaller pays the futex wake only when someone is parked:
 *
 *   CPU0 (waiter, parking)                CPU1 (signaller)
 *   sleepers += 1             (A)         value += 1 (was < 0)      (S1)
 *   wakeups == 0 ?            (A')        wakeups += 1              (B)
 *   futex_wait(wakeups, 0)                sleepers > 0 ? wake one   (B')
 *
 * A, A', B and B' are seq_cst, so in their single total order either A
 * comes before B' (the signaller sees the sleeper and wakes it) or B
 * comes before A' (the waiter sees the token and does not sleep). A token
 * posted between A' and the sleep is caught by the futex's own compare of
 * `wakeups` with 0. A woken waiter that finds no token (another waiter,
 * spinning on its way to park, took it) parks again: its unit is still
 * owed and the next signal will post a token for it.
 *
 * A waiter that times out must give its unit back unless a signal has
 * already counted it:
 *
 *   CPU0 (waiter, timed out)              CPU1 (signaller)
 *   v = value                             value += 1 (v was < 0)    (S1)
 *   v < 0: CAS value v -> v+1  (T1)       wakeups += 1, wake        (B)
 *   v >= 0: a token is coming: take it
 *
 * T1 and S1 are RMWs on one word, so exactly one of them accounts for the
 * unit: either the waiter undoes its decrement, or it waits for the token
 * B is about to post.
 */
#include "internal.h"

#include <errno.h>

/* How long a waiter spins for a unit before it commits and parks (the
 * budget dk/mutex.h's waiters use too). */
#define SPIN_BUDGET_NS 20000ull

struct dk_semaphore_s {
    struct dk__object obj;
    long value;
    long orig;
    uint32_t wakeups;
    uint32_t sleepers;
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
    /* (S1) Release: pairs with the acquire of the waiter's CAS in
     * take_unit or its decrement in semaphore_wait, publishing what we
     * wrote before signalling. */
    long old = dk_atomic_add_release(&s->value, 1);
    if (old >= 0) {
        return false;
    }
    dk_atomic_add_seq_cst(&s->wakeups, 1);        /* (B) partner: A' */
    if (dk_atomic_load_seq_cst(&s->sleepers) > 0) { /* (B') partner: A */
        dk__os_futex_wake(&s->wakeups, 1, false);
    }
    return true;
}

/* Take a unit if the value is positive, without becoming a waiter. */
static bool
take_unit(dk_semaphore_t *s)
{
    long v = dk_atomic_load_relaxed(&s->value);
    while (v > 0) {
        /* Acquire: pairs with the signaller's release add (S1). */
        if (dk_atomic_cas_acquire(&s->value, &v, v - 1)) {
            return true;
        }
    }
    return false;
}

static bool
take_token(dk_semaphore_t *s)
{
    /* Acquire: pairs with the signaller's token post (B). */
    uint32_t w = dk_atomic_load_acquire(&s->wakeups);
    while (w > 0) {
        if (dk_atomic_cas_acq_rel(&s->wakeups, &w, w - 1)) {
            return true;
        }
    }
    return false;
}

static bool
others_can_run(void)
{
    static int ncpu; /* 0: not asked yet; the affinity rarely changes */
    int n = dk_atomic_load_relaxed(&ncpu);
    if (n == 0) {
        n = dk__os_ncpu();
        dk_atomic_store_relaxed(&ncpu, n);
    }
    return n > 1;
}

/* Watch the value for up to SPIN_BUDGET_NS (not past deadline) and take
 * a unit as soon as one shows; true if we did. Reads the vDSO clock every
 * 64 pauses, so it never makes a syscall. */
static bool
spin_for_unit(dk_semaphore_t *s, uint64_t deadline)
{
    if (!others_can_run()) {
        return false;
    }
    uint64_t until = dk__os_monotonic_ns() + SPIN_BUDGET_NS;
    if (until > deadline) {
        until = deadline;
    }
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (dk_atomic_load_relaxed(&s->value) > 0 && take_unit(s)) {
            return true;
        }
        if (i % 64 == 0 && dk__os_monotonic_ns() >= until) {
            return false;
        }
    }
}

/* Sleep on `wakeups` until a token may be there, counted in `sleepers`
 * so that signallers wake us (A, A' in the comment at the top). */
static int
park(dk_semaphore_t *s, uint64_t deadline)
{
    dk_atomic_add_seq_cst(&s->sleepers, 1);          /* (A) partner: B' */
    int rc = 0;
    if (dk_atomic_load_seq_cst(&s->wakeups) == 0) { /* (A') partner: B */
        rc = dk__os_futex_wait(&s->wakeups, 0, deadline, false);
    }
    dk_atomic_sub_relaxed(&s->sleepers, 1);
    return rc;
}

static int
semaphore_wait(dk_semaphore_t *s, uint64_t deadline, bool interruptible)
{
    if (take_unit(s)) {
        return 0; /* uncontended: one load and one CAS */
    }
    if (deadline == 0) {
        return -ETIMEDOUT;
    }
    if (spin_for_unit(s, deadline)) {
        return 0;
    }
    /* Commit: count ourselves a waiter. Acquire: pairs with (S1). */
    if (dk_atomic_sub_acquire(&s->value, 1) > 0) {
        return 0;
    }
    for (;;) {
        if (take_token(s)) {
            return 0;
        }
        int rc = park(s, deadline);
        if (rc == -ETIMEDOUT || (rc == -EINTR && interruptible)) {
            long v = dk_atomic_load_relaxed(&s->value);
            while (v < 0) {
                if (dk_atomic_cas_acq_rel(&s->value, &v, v + 1)) { /* (T1) */
                    return rc;
                }
            }
            /* A signal counted us: its token is (about to be) posted. */
            while (!take_token(s)) {
                park(s, DK_OS_FOREVER);
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
