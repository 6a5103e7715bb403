/*
 * Dispatch semaphores, with GCD's accounting: `value` goes negative by the
 * number of committed waiters; a signal that finds it negative posts one
 * wake-up token, and exactly one waiter takes it with a CAS.
 *
 * A waiter first spins, uncounted, for a unit (a positive value), as the
 * process-shared semaphore of dk/mutex.h does: when the signaller runs on
 * another CPU it usually answers within a microsecond, while sleeping and
 * being woken costs two syscalls and a scheduler round trip. The spin
 * lasts at most SPIN_BUDGET_NS, and less when spinning has not been
 * paying off (see there), so an idle waiter burns no CPU after a few
 * tens of microseconds. An uncounted spinner never takes a unit owed to a
 * committed waiter: the value only turns positive once every committed waiter
 * has been counted a unit.
 *
 * A committed waiter then parks. `park` holds two counters in one 64-bit
 * word: the tokens in one 32-bit half (the futex word waiters sleep on)
 * and the parked waiters in the other, so that a signaller learns whether
 * anyone sleeps from the very RMW that posts its token, and pays the
 * futex wake only then:
 *
 *   CPU0 (waiter, parking)                CPU1 (signaller)
 *   old = park += 1 sleeper   (A)         value += 1 (was < 0)      (S1)
 *   old.tokens == 0 ?                     old = park += 1 token     (B)
 *     futex_wait(tokens, 0)               old.sleepers > 0 ? wake one
 *
 * A and B are RMWs on one word, so one comes first: either the signaller
 * sees the sleeper and wakes it, or the waiter sees the token and does
 * not sleep; a token posted between A and the sleep is caught by the
 * futex's own compare of the tokens with 0. A woken waiter that finds no
 * token (another waiter, on its way to park, took it) parks again: its
 * unit is still owed and the next signal will post a token for it.
 *
 * After B the signaller touches the semaphore only through the futex
 * wake, a syscall on its address: a waiter may take the token, return,
 * and release the semaphore at once (the usual "signal when done, then
 * the waiter frees it" pattern), and the kernel tolerates a wake on
 * memory that has gone (at worst a spurious wake-up elsewhere, which
 * every futex waiter tolerates).
 *
 * A waiter that times out must give its unit back unless a signal has
 * already counted it:
 *
 *   CPU0 (waiter, timed out)              CPU1 (signaller)
 *   v = value                             value += 1 (v was < 0)    (S1)
 *   v < 0: CAS value v -> v+1  (T1)       park += 1 token, wake     (B)
 *   v >= 0: a token is coming: take it
 *
 * T1 and S1 are RMWs on one word, so exactly one of them accounts for the
 * unit: either the waiter undoes its decrement, or it waits for the token
 * B is about to post.
 */
#include "internal.h"
#include "watch.h"

#include <errno.h>

/* How long a waiter spins for a unit before it commits and parks: at
 * most the budget dk/mutex.h's waiters use. A spin only pays when the
 * signaller runs on another CPU meanwhile; when the other CPUs are busy
 * with other work (or the signaller is slow), it only delays the sleep,
 * and when the two threads share one CPU it even holds off the very
 * thread that would signal. So each semaphore keeps a budget that halves
 * on every spin that fails, drops to 0 (no spin) below SPIN_MIN_NS, comes
 * back in full on a spin that succeeds, and is tried in full every
 * SPIN_PROBE_EVERY-th wait anyway, so that a ping-pong that can spin
 * again is noticed. Under load a ping-pong thus costs about what parking
 * every time costs, plus a failed probe now and then. */
#define SPIN_BUDGET_NS 20000u
#define SPIN_MIN_NS 1000u
#define SPIN_PROBE_EVERY 64u

/* The halves of `park` (see the comment at the top). */
#define PARK_TOKEN 1ull
#define PARK_SLEEPER (1ull << 32)
#define PARK_TOKENS(p) ((uint32_t)(p))
#define PARK_SLEEPERS(p) ((uint32_t)((p) >> 32))

struct dk_semaphore_s {
    struct dk__object obj;
    long value;
    long orig;
    uint64_t park;    /* tokens (low half) | parked waiters (high half) */
    uint32_t spin_ns; /* current spin budget (a hint: relaxed, racy) */
    uint32_t spins;   /* spins so far, for the probe */
};

/* The 32-bit half of `park` that holds the tokens: the futex word. */
static uint32_t *
token_word(dk_semaphore_t *s)
{
    uint32_t *halves = (uint32_t *)(void *)&s->park;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return &halves[1];
#else
    return &halves[0];
#endif
}

int
dk_semaphore_create(long value, dk_semaphore_t **out)
{
    *out = NULL;
    if (value < 0) {
        return -EINVAL;
    }
    dk_semaphore_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return -ENOMEM;
    }
    dk__object_init(&s->obj, DK_KIND_SEMAPHORE);
    s->value = value;
    s->orig = value;
    s->spin_ns = SPIN_BUDGET_NS;
    *out = s;
    return 0;
}

/* The semaphore's part of the object model (object.c). */
static void
semaphore_dispose(struct dk__object *o)
{
    free(o);
}

static int
semaphore_describe(const struct dk__object *o, const char *refcnt, char *buf,
                   size_t len)
{
    return snprintf(buf, len, "semaphore[%p] = { refcnt = %s, value = %ld }",
                    (const void *)o, refcnt,
                    dk_semaphore_value((const dk_semaphore_t *)o));
}

const struct dk__vtable dk__semaphore_vtable = {
    .kind = DK_KIND_SEMAPHORE,
    .name = "semaphore",
    .finalize = dk__finalize_on_root,
    .dispose = semaphore_dispose,
    .describe = semaphore_describe,
};

bool
dk_semaphore_signal(dk_semaphore_t *s)
{
    /* (S1) Release: pairs with the acquire of the waiter's CAS in
     * take_unit or its decrement in semaphore_wait, publishing what we
     * wrote before signalling. */
    long old = dk__atomic_add_release(&s->value, 1);
    if (old >= 0) {
        return false;
    }
    /* (B) Release: pairs with the acquire of take_token's CAS. A's RMW
     * on the same word is ordered before or after this one. */
    uint64_t was = dk__atomic_add_release(&s->park, PARK_TOKEN);
    if (PARK_SLEEPERS(was) > 0) {
        dk__os_futex_wake(token_word(s), 1, false); /* s may be gone */
    }
    return true;
}

/* Take a unit if the value is positive, without becoming a waiter. */
static bool
take_unit(dk_semaphore_t *s)
{
    long v = dk__atomic_load_relaxed(&s->value);
    while (v > 0) {
        /* Acquire: pairs with the signaller's release add (S1). */
        if (dk__atomic_cas_acquire(&s->value, &v, v - 1)) {
            return true;
        }
    }
    return false;
}

static bool
take_token(dk_semaphore_t *s)
{
    uint64_t p = dk__atomic_load_relaxed(&s->park);
    while (PARK_TOKENS(p) > 0) {
        /* Acquire: pairs with the signaller's token post (B). */
        if (dk__atomic_cas_acquire(&s->park, &p, p - PARK_TOKEN)) {
            return true;
        }
    }
    return false;
}

/* Watch the value for up to the semaphore's current budget (not past
 * deadline) and take a unit as soon as one shows; true if we did. Reads
 * the vDSO clock every 8 pauses (a pause can take 140 cycles), never a
 * syscall. The budget adapts: see SPIN_BUDGET_NS. */
static bool
spin_for_unit(dk_semaphore_t *s, uint64_t deadline)
{
    if (dk__os_ncpu_cached() <= 1) {
        return false;
    }
    uint32_t kept = dk__atomic_load_relaxed(&s->spin_ns);
    uint32_t budget = kept;
    if (dk__atomic_add_relaxed(&s->spins, 1) % SPIN_PROBE_EVERY == 0) {
        budget = SPIN_BUDGET_NS;
    }
    if (budget == 0) {
        return false;
    }
    uint64_t until = dk__os_monotonic_ns() + budget;
    if (until > deadline) {
        until = deadline;
    }
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (dk__atomic_load_relaxed(&s->value) > 0 && take_unit(s)) {
            dk__atomic_store_relaxed(&s->spin_ns, SPIN_BUDGET_NS);
            return true;
        }
        if (i % 8 == 0 && dk__os_monotonic_ns() >= until) {
            /* Under SPIN_MIN_NS: stop spinning until a probe succeeds. */
            uint32_t half = kept / 2;
            dk__atomic_store_relaxed(&s->spin_ns,
                                     half >= SPIN_MIN_NS ? half : 0);
            return false;
        }
    }
}

/* Sleep until a token may be there, counted as a sleeper so that
 * signallers wake us (A in the comment at the top). */
static int
park(dk_semaphore_t *s, uint64_t deadline)
{
    /* (A) Relaxed: it only has to be ordered with B, an RMW on the same
     * word; the token itself is taken with take_token's acquire. */
    uint64_t was = dk__atomic_add_relaxed(&s->park, PARK_SLEEPER);
    int rc = 0;
    if (PARK_TOKENS(was) == 0) {
        rc = dk__os_futex_wait(token_word(s), 0, deadline, false);
    }
    dk__atomic_sub_relaxed(&s->park, PARK_SLEEPER);
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
    if (dk__atomic_sub_acquire(&s->value, 1) > 0) {
        return 0;
    }
    for (;;) {
        if (take_token(s)) {
            return 0;
        }
        int rc = park(s, deadline);
        if (rc == -ETIMEDOUT || (rc == -EINTR && interruptible)) {
            long v = dk__atomic_load_relaxed(&s->value);
            while (v < 0) {
                if (dk__atomic_cas_acq_rel(&s->value, &v, v + 1)) { /* (T1) */
                    return rc;
                }
            }
            /* A signal counted us: its token is (about to be) posted. */
            while (!take_token(s)) {
                park(s, DK_TIME_FOREVER);
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
    return dk__atomic_load_acquire(&s->value);
}

/* ---- steps for asynchronous waiters (watch.h) ------------------------ */

/*
 * An asynchronous waiter commits as a blocking one does, then stays
 * counted as a parked waiter (A) for as long as the watcher watches the
 * token word for it, so that signallers wake the word (B). It leaves that
 * count when it takes a token or gives up.
 */
int
dk__semaphore_wait_begin(dk_semaphore_t *s, uint32_t **word, uint32_t *busy)
{
    /* Commit: count ourselves a waiter. Acquire: pairs with (S1). */
    if (dk__atomic_sub_acquire(&s->value, 1) > 0) {
        return 0;
    }
    /* (A) As in park: ordered with B by being an RMW on the same word. */
    dk__atomic_add_relaxed(&s->park, PARK_SLEEPER);
    return dk__semaphore_take_token(s, word, busy);
}

int
dk__semaphore_take_token(dk_semaphore_t *s, uint32_t **word, uint32_t *busy)
{
    if (take_token(s)) {
        dk__atomic_sub_relaxed(&s->park, PARK_SLEEPER);
        return 0;
    }
    *word = token_word(s);
    *busy = 0;
    return -EAGAIN;
}

void
dk__semaphore_wait_abandon(dk_semaphore_t *s)
{
    dk__atomic_sub_relaxed(&s->park, PARK_SLEEPER);
    long v = dk__atomic_load_relaxed(&s->value);
    while (v < 0) {
        if (dk__atomic_cas_acq_rel(&s->value, &v, v + 1)) { /* (T1) */
            /* Our watcher may have taken the one wake-up a signal made
             * for a parked waiter: pass it on while a token waits (a
             * spurious wake-up at worst). */
            if (PARK_TOKENS(dk__atomic_load_acquire(&s->park)) > 0) {
                dk__os_futex_wake(token_word(s), 1, false);
            }
            return;
        }
    }
    /* A signal counted us (S1): its token follows (B). Take it and hand
     * the unit on, as if we had never waited. */
    while (!take_token(s)) {
        park(s, DK_TIME_FOREVER);
    }
    dk_semaphore_signal(s);
}
