/*
 * Process-shared mutex and semaphore on fastipc's layouts (dk/mutex.h).
 *
 * Mutex: Drepper's three-state futex lock on `state` (0/1/2), the protocol
 * fastipc uses, so a fastipc process and a dispatchkit process interlock.
 * The owner is published after the state CAS and cleared *before* the
 * state is released:
 *
 *   releaser                          next acquirer
 *   owner = 0                (R1)
 *   old = xchg(state, 0)     (R2)     CAS(state, 0 -> 1)   (A1)
 *   old == 2 ? wake                   owner = my pid       (A2)
 *
 * fastipc clears the owner after R2, so its clear can land after a new
 * owner's A2 and erase it (its defect F2); here R1 happens before R2.
 *
 * Owner death: a waiter that has slept a whole slice (50 ms) without a
 * wake-up, or whose deadline has come, checks whether the owner process
 * is alive (dk__os_pid_alive: kill(pid, 0), where EPERM means it is; a
 * zombie or a pid no process can have is not). If it is not, the
 * waiters race to replace the owner field with a CAS; the winner holds
 * the lock (the state word never went back to 0) and is told the previous
 * owner died.
 *
 * Semaphore: the count is the futex word. Our waiters announce themselves
 * in `waiters` before sleeping:
 *
 *   waiter                              poster
 *   waiters += 1            (W1)        count += n              (P1)
 *   count == 0 ? sleep      (W2)        waiters > 0 ? wake n    (P2)
 *
 * so a post never misses one of our sleepers (fastipc wakes only on a
 * 0 -> n transition and loses the second of two sleepers: its defect F3).
 */
#include "internal.h"

#include "dk/mutex.h"

#include "os/linux/os.h"
#include "watch.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

/* fastipc's layouts, byte for byte (see dk/mutex.h). */
_Static_assert(sizeof(dk_shm_mutex_t) == DK_SHM_HEADER_SIZE, "mutex layout");
_Static_assert(offsetof(dk_shm_mutex_t, magic) == 0x00, "mutex magic");
_Static_assert(offsetof(dk_shm_mutex_t, state) == 0x08, "mutex state");
_Static_assert(offsetof(dk_shm_mutex_t, owner_pid) == 0x0C, "mutex owner");
_Static_assert(offsetof(dk_shm_mutex_t, last_ns) == 0x10, "mutex stamp");
_Static_assert(offsetof(dk_shm_mutex_t, owner_tid) == 0x18, "mutex tid");
_Static_assert(sizeof(dk_shm_semaphore_t) == DK_SHM_HEADER_SIZE,
               "semaphore layout");
_Static_assert(offsetof(dk_shm_semaphore_t, magic) == 0x00, "sem magic");
_Static_assert(offsetof(dk_shm_semaphore_t, count) == 0x08, "sem count");
_Static_assert(offsetof(dk_shm_semaphore_t, last_pid) == 0x0C, "sem pid");
_Static_assert(offsetof(dk_shm_semaphore_t, last_ns) == 0x10, "sem stamp");
_Static_assert(offsetof(dk_shm_semaphore_t, waiters) == 0x18, "sem waiters");
_Static_assert(_Alignof(dk_shm_mutex_t) == 4, "mutex: 4-byte aligned");
_Static_assert(_Alignof(dk_shm_semaphore_t) == 4, "sem: 4-byte aligned");
/* Both stamps sit at +0x10 (asserted above). */
#define STAMP_OFFSET 0x10

#define LIVENESS_SLICE_NS (50ull * DK_NSEC_PER_MSEC)
#define ORPHAN_AFTER_NS (1000ull * DK_NSEC_PER_MSEC)

/* After the caller's `spin` attempts fail, a waiter keeps watching the
 * word for up to this long before it sleeps, if another CPU can change
 * it meanwhile. Sleeping and being woken costs two syscalls and a
 * scheduler round trip (several microseconds in a VM); a partner process
 * on another CPU usually answers sooner than that. The caller has
 * released the GIL, so the spin delays nobody in its process. */
#define SPIN_BUDGET_NS 20000ull

/* Whether a spin of i attempts so far should stop: past the deadline
 * (for a try, deadline 0, past a budget of SPIN_BUDGET_NS from its
 * start), checked on the vDSO clock every 64 attempts. The deadline
 * bounds the whole call, however large the caller's spin count. */
static bool
spin_expired(int i, uint64_t deadline, uint64_t *limit)
{
    if (i % 64 != 63) {
        return false;
    }
    uint64_t now = dk__os_monotonic_ns();
    if (*limit == 0) {
        *limit = deadline != 0 ? deadline : now + SPIN_BUDGET_NS;
    }
    return now >= *limit;
}

/* Watch *word until it differs from busy, at most budget_ns and not past
 * deadline; true if it did. Reads the vDSO clock every 64 pauses, so it
 * never makes a syscall. */
static bool
spin_while(const uint32_t *word, uint32_t busy, uint64_t deadline,
           uint32_t budget_ns)
{
    uint64_t until = dk__os_monotonic_ns() + budget_ns;
    if (until > deadline) {
        until = deadline;
    }
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (dk__atomic_load_relaxed(word) != busy) {
            return true;
        }
        if (i % 64 == 0 && dk__os_monotonic_ns() >= until) {
            return false;
        }
    }
}

/*
 * How long a blocking lock watches a held word before it sleeps adapts,
 * as the dispatch semaphore's spin does (src/sem.c): a watch pays when
 * the holder runs on another CPU and lets go soon; when the holder has
 * been preempted (more runnable threads than CPUs) or holds the lock for
 * long, the watch only burns CPU, and it steals the CPU from a holder
 * that shares it. So the budget halves on every watch that ends in a
 * sleep, drops to 0 (no watch) below SPIN_MIN_NS, comes back in full on
 * a watch that takes the lock, and is tried in full every
 * SPIN_PROBE_EVERY-th contended lock anyway, so that a holder that can
 * answer quickly again is noticed. The shared header has no room for it
 * (fastipc's layout), so each thread keeps it, for the last mutex it
 * waited on: a thread waits on one lock at a time, and rarely switches.
 */
#define SPIN_MIN_NS 1000u
#define SPIN_PROBE_EVERY 64u
static __thread struct {
    const dk_shm_mutex_t *m;
    uint32_t budget_ns, waits;
    uint32_t lost;     /* races lost to a re-taking holder since giving way */
    uint32_t quick;    /* unwatched waits in a row that found it free */
    uint32_t skipped;  /* watches of the try skipped for a budget of 0 */
    bool watching;     /* the last failed try was a watching one */
    uint32_t backoffs; /* times it gave way so far, for tests */
    uint32_t races_lost; /* so far, for tests */
} watch_memo;

/* The calling thread's memo, reset when it waits on another mutex. */
static void
memo_for(const dk_shm_mutex_t *m)
{
    if (watch_memo.m != m) {
        watch_memo.m = m;
        watch_memo.budget_ns = SPIN_BUDGET_NS;
        watch_memo.waits = 0;
        watch_memo.lost = 0;
        watch_memo.quick = 0;
        watch_memo.skipped = 0;
    }
}

static uint32_t
watch_budget(const dk_shm_mutex_t *m)
{
    memo_for(m);
    if (watch_memo.waits++ % SPIN_PROBE_EVERY == 0) {
        return SPIN_BUDGET_NS;
    }
    return watch_memo.budget_ns;
}

uint32_t
dk__shm_mutex_watch_budget(const dk_shm_mutex_t *m)
{
    return watch_memo.m == m ? watch_memo.budget_ns : (uint32_t)SPIN_BUDGET_NS;
}

/* After a watch: back in full if it took the lock, else half of the kept
 * budget (not of a probe's full one, so a failed probe leaves 0 at 0). */
static void
watch_paid(bool paid)
{
    uint32_t half = watch_memo.budget_ns / 2;
    watch_memo.budget_ns =
        paid ? SPIN_BUDGET_NS : (half >= SPIN_MIN_NS ? half : 0);
}

/* The stamp is only 4-byte aligned (the header is), so it is stored and
 * loaded as two 32-bit words in native order, never as one uint64_t: a
 * misaligned 64-bit access is undefined in C, faults as an atomic on
 * some CPUs, and tears across cache lines on others. */
static uint32_t *
stamp_words(const void *header)
{
    return (uint32_t *)((uintptr_t)header + STAMP_OFFSET);
}

static void
stamp(void *header)
{
    uint64_t ns = dk__os_realtime_coarse_ns();
    uint32_t half[2];
    memcpy(half, &ns, sizeof half);
    uint32_t *w = stamp_words(header);
    dk__atomic_store_relaxed(&w[0], half[0]);
    dk__atomic_store_relaxed(&w[1], half[1]);
}

uint64_t
dk_shm_header_last_ns(const void *header)
{
    /* A stamp written as we read may be torn: read until two reads in a
     * row agree (a few tries; it is a diagnostic, not a protocol). */
    const uint32_t *w = stamp_words(header);
    uint32_t a[2], b[2];
    b[0] = dk__atomic_load_relaxed(&w[0]);
    b[1] = dk__atomic_load_relaxed(&w[1]);
    for (int i = 0; i < 4; i++) {
        a[0] = b[0];
        a[1] = b[1];
        b[0] = dk__atomic_load_relaxed(&w[0]);
        b[1] = dk__atomic_load_relaxed(&w[1]);
        if (a[0] == b[0] && a[1] == b[1]) {
            break;
        }
    }
    uint64_t ns;
    memcpy(&ns, b, sizeof ns);
    return ns;
}

int
dk_shm_mutex_init(dk_shm_mutex_t *m)
{
    if ((uintptr_t)m % 4 != 0) {
        return -EINVAL;
    }
    uint32_t magic = dk__atomic_load_acquire(&m->magic);
    if (magic == DK_MUTEX_MAGIC) {
        return 0;
    }
    if (magic != 0 || dk__atomic_load_acquire(&m->state) != 0) {
        return -EBADMSG;
    }
    uint32_t zero = 0;
    dk__atomic_cas_acq_rel(&m->magic, &zero, DK_MUTEX_MAGIC);
    return dk__atomic_load_acquire(&m->magic) == DK_MUTEX_MAGIC ? 0 : -EBADMSG;
}

static inline void
took_lock(dk_shm_mutex_t *m)
{
    dk__atomic_store_relaxed(&m->owner_pid,
                             (uint32_t)dk__os_pid_cached()); /* A2 */
    dk__atomic_store_relaxed(&m->owner_tid, (uint32_t)dk__os_tid_cached());
    stamp(m);
}

/*
 * The lock is held but may have been abandoned: take it over if its owner
 * process is gone (returns true; the state word never went back to 0, so
 * we simply become the holder). Several waiters may find the same dead
 * owner: the CAS on owner_pid elects one. A held lock with no owner
 * recorded for ORPHAN_AFTER_NS means a holder died between its state CAS
 * and its owner store, or between its owner clear and its state release
 * (a live holder crosses either gap within nanoseconds); *orphan_since
 * (0: not seen ownerless yet) times that, and must last as long as the
 * wait does.
 */
static bool
take_over_if_abandoned(dk_shm_mutex_t *m, uint32_t me, uint64_t now,
                       uint64_t *orphan_since)
{
    uint32_t owner = dk__atomic_load_acquire(&m->owner_pid);
    if (owner != 0) {
        *orphan_since = 0;
        if (dk__os_pid_alive(owner) ||
            !dk__atomic_cas_acq_rel(&m->owner_pid, &owner, me)) {
            return false;
        }
    } else {
        if (dk__atomic_load_relaxed(&m->state) == 0) {
            return false;
        }
        if (*orphan_since == 0) {
            *orphan_since = now;
            return false;
        }
        uint32_t zero = 0;
        if (now - *orphan_since < ORPHAN_AFTER_NS ||
            !dk__atomic_cas_acq_rel(&m->owner_pid, &zero, me)) {
            return false;
        }
    }
    *orphan_since = 0;
    dk__atomic_store_relaxed(&m->owner_tid, (uint32_t)dk__os_tid());
    stamp(m);
    dk__atomic_store_release(&m->state, 2); /* held, maybe with waiters */
    return true;
}

/*
 * The orphan clock of a blocking lock. A thread blocks on one mutex at a
 * time, but may do so in several calls with short deadlines (the Python
 * binding waits in 100 ms slices so that it can run signal handlers), so
 * the clock lives in the thread, not in one call: it goes on while the
 * observations are at most ORPHAN_GAP_NS apart, and starts afresh after a
 * longer gap, in which the lock may have changed hands unseen.
 */
#define ORPHAN_GAP_NS (4 * LIVENESS_SLICE_NS)
static __thread struct {
    const dk_shm_mutex_t *m;
    uint64_t since, seen;
} blocking_orphan;

static uint64_t *
orphan_clock(const dk_shm_mutex_t *m, uint64_t now)
{
    if (blocking_orphan.m != m || now - blocking_orphan.seen > ORPHAN_GAP_NS) {
        blocking_orphan.m = m;
        blocking_orphan.since = 0;
    }
    blocking_orphan.seen = now;
    return &blocking_orphan.since;
}

/* dk_shm_mutex_lock once its first CAS has failed (kept out of line, so
 * that the uncontended path saves no registers). */
static __attribute__((noinline)) int
lock_contended(dk_shm_mutex_t *m, uint64_t deadline, bool shared, int spin,
               bool interruptible)
{
    uint32_t me = (uint32_t)dk__os_pid_cached();
    uint32_t s = 0;
    if (dk__atomic_load_relaxed(&m->owner_pid) == me &&
        dk__atomic_load_relaxed(&m->owner_tid) == (uint32_t)dk__os_tid()) {
        return -EDEADLK;
    }
    uint64_t limit = 0;
    for (int i = 0; i < spin && !spin_expired(i, deadline, &limit); i++) {
        dk_cpu_relax();
        s = 0;
        if (dk__atomic_load_relaxed(&m->state) == 0 &&
            dk__atomic_cas_acquire(&m->state, &s, 1)) {
            took_lock(m);
            return 0;
        }
    }
    if (deadline == 0) {
        return -ETIMEDOUT; /* a try: no liveness syscall */
    }
    /* Not announced as a waiter yet: while we watch, an unlock that
     * finds state 1 makes no wake syscall. */
    uint32_t budget = 0;
    if (spin > 0 && dk__os_ncpu_cached() > 1 &&
        dk__atomic_load_relaxed(&m->state) == 1) {
        budget = watch_budget(m);
    }
    while (budget > 0 && spin_while(&m->state, 1, deadline, budget)) {
        s = 0;
        if (dk__atomic_cas_acquire(&m->state, &s, 1)) {
            took_lock(m);
            watch_paid(true);
            return 0;
        }
        if (s != 1) {
            break; /* waiters are sleeping: queue up behind them */
        }
    }
    if (budget > 0) {
        watch_paid(false);
    }
    bool slept_a_slice = false;
    for (;;) {
        /* Announce a waiter (2); whoever releases will wake us. */
        if (dk__atomic_xchg_acquire(&m->state, 2) == 0) {
            took_lock(m);
            return 0;
        }
        uint64_t now = dk__os_monotonic_ns();
        bool expired = now >= deadline;
        /* Ask whether the owner lives after each quiet slice, and once
         * more before giving up, so any positive timeout can recover a
         * lock whose holder died. */
        if ((slept_a_slice || expired) &&
            take_over_if_abandoned(m, me, now, orphan_clock(m, now))) {
            return 1;
        }
        if (expired) {
            return -ETIMEDOUT;
        }
        uint64_t slice = now + LIVENESS_SLICE_NS;
        int rc = dk__os_futex_wait(
            &m->state, 2, slice < deadline ? slice : deadline, shared);
        if (rc == -EINTR && interruptible) {
            return -EINTR;
        }
        slept_a_slice = rc == -ETIMEDOUT;
    }
}

/*
 * Back-off after a failed try (dk_shm_mutex_lock_after_try). Two
 * processes looping around a lock run side by side profitably only when
 * each has work to do outside it: then one runs its outside work while
 * the other holds the lock, and each hand-over (the lock's cache line
 * crossing to the other CPU: a round trip of 60-330 ns on the development
 * VM, depending on where the hypervisor placed its two CPUs) costs less
 * than that work.
 * When the holder comes back for the lock sooner than a hand-over
 * completes (an empty critical section and nothing outside it, or CPUs
 * far apart), handing it over buys no overlap: both CPUs pull the line
 * back and forth for about 4x the CPU time of one process running alone.
 * The binding's try watches the word (dk_shm_mutex_lock_try_spin, below),
 * and that watch sees the difference directly: it sees the word free and
 * loses the race for it to the holder, which took it straight back:
 *
 *   CPU0 (holder, nothing outside)      CPU1 (watching in try_spin)
 *   xchg(state, 0) == 1: no wake (R2)   load(state) == 1, pause
 *                                       load(state) == 0
 *   CAS(state, 0 -> 1)           (A1)
 *                                       CAS(state, 0 -> 1) fails, s == 1:
 *                                       a race lost
 *
 * A holder with work outside the lock is busy with it at that moment, so
 * the watcher's CAS wins (measured with bench_sync.py's loops, 100,000
 * acquisitions per process: with sum(range(30)) outside the lock no race
 * lost in most runs and a few dozen at most, with nothing there 2% of the
 * waits). After BACKOFF_LOST races lost (since it last gave way) the
 * watcher gives way: it yields its CPU, and if nothing else wanted that
 * CPU (the yield came straight back) it sleeps BACKOFF_NS, unannounced.
 * The holder runs alone meanwhile, keeps the line in its cache and makes
 * no wake-up syscall. When other threads were waiting for the CPU (more
 * runnable threads than CPUs: the yield let them run), sleeping on top of
 * that would only make the sleeper preempt somebody, perhaps the holder,
 * when it wakes, so it does not sleep. A waiter whose try does not watch
 * (one CPU in its affinity mask, or a caller that tried with
 * dk_shm_mutex_lock) sees no race; for it, BACKOFF_AFTER waits in a row
 * that find the lock free at once after its try stand in for them, as
 * they did for every waiter before races were counted. With a watching
 * try such quick waits are what a good overlap looks like (the waiter
 * arrives as the holder lets go), and giving way on them put each of two
 * processes with work outside the lock to sleep for 40% of the time.
 *
 * The sleep changes nothing in the state word's protocol: the sleeper has
 * not announced itself (it did not set 2), so no release owes it a wake:
 *
 *   CPU0 (holder, looping)              CPU1 (backing off)
 *   CAS(state, 0 -> 1)                  lost its BACKOFF_LOST-th race, yields
 *   xchg(state, 0) == 1: no wake        sleeps BACKOFF_NS on a private word
 *   CAS(state, 0 -> 1) ...              wakes by its own timeout
 *                                       CAS(state, 0 -> 1), else the usual
 *                                       spin, watch and announced sleep
 *
 * and a holder that dies meanwhile is found by that usual path, 50 us
 * later than without the back-off.
 */
#define BACKOFF_LOST 1u
#define BACKOFF_AFTER 8u
#define BACKOFF_NS (50ull * DK_NSEC_PER_USEC)
#define YIELD_IDLE_NS (10ull * DK_NSEC_PER_USEC)

/* Whether the calling thread should give way before its next attempt
 * on its memo's mutex. */
static bool
due_to_give_way(void)
{
    return watch_memo.lost >= BACKOFF_LOST ||
           watch_memo.quick >= BACKOFF_AFTER;
}

uint32_t
dk__shm_mutex_backoffs(void)
{
    return watch_memo.backoffs;
}

uint32_t
dk__shm_mutex_races_lost(void)
{
    return watch_memo.races_lost;
}

int
dk_shm_mutex_lock_after_try(dk_shm_mutex_t *m, uint64_t deadline, int spin,
                            unsigned flags)
{
    if (deadline == 0 || (flags & ~(DK_SHARED | DK_SHM_INTERRUPTIBLE))) {
        return dk_shm_mutex_lock(m, deadline, spin, flags);
    }
    bool shared = (flags & DK_SHARED) != 0;
    bool interruptible = (flags & DK_SHM_INTERRUPTIBLE) != 0;
    memo_for(m);
    bool watched = watch_memo.watching;
    watch_memo.watching = false;
    bool slept = due_to_give_way();
    if (slept) {
        watch_memo.lost = 0;
        watch_memo.quick = 0;
        watch_memo.backoffs++;
        /* Give way first: if another thread was waiting for this CPU it
         * runs now, and leaving the CPU idle on top of that would only
         * make us preempt someone (perhaps the holder) when we wake. A
         * yield that comes straight back means this CPU has nothing else
         * to do: let it idle for a while. */
        uint64_t t0 = dk__os_monotonic_ns();
        dk__os_yield();
        uint64_t t1 = dk__os_monotonic_ns();
        if (t1 - t0 < YIELD_IDLE_NS) {
            uint32_t quiet = 0;
            uint64_t until = t1 + BACKOFF_NS;
            int rc = dk__os_futex_wait(
                &quiet, 0, until < deadline ? until : deadline, false);
            if (rc == -EINTR && interruptible) {
                return -EINTR;
            }
        }
    }
    uint32_t s = 0;
    if (dk__atomic_cas_acquire(&m->state, &s, 1)) { /* A1 */
        took_lock(m);
        /* Found free after a back-off, or after a watching try (which
         * counts races lost itself): that says nothing of the holds. */
        watch_memo.quick = slept || watched ? 0 : watch_memo.quick + 1;
        return 0;
    }
    watch_memo.quick = 0;
    return lock_contended(m, deadline, shared, spin, interruptible);
}

/*
 * A try that watches (dk_shm_mutex_lock_try_spin), for a caller that may
 * not block yet: the Python binding, which holds its interpreter lock
 * here. Letting that lock go and taking it back costs a waiter more than
 * a short critical section lasts, and a waiter that wins the mutex in
 * dk_shm_mutex_lock_after_try still has to take the interpreter lock back
 * before it can run its critical section: the mutex is held, by nobody
 * doing anything, for that long on every hand-over. So, before letting
 * go, the caller watches the word for up to TRY_SPIN_NS and takes the
 * mutex the moment it comes free. It does not announce itself (it never
 * sets 2), so no release owes it a wake-up, exactly as in the watch of
 * lock_contended:
 *
 *   CPU0 (holder)                       CPU1 (try_spin, GIL held)
 *   CAS(state, 0 -> 1)         (A1)     CAS(state, 0 -> 1) fails
 *   ... critical section ...            load(state) == 1, pause, ...
 *   owner = 0                  (R1)
 *   xchg(state, 0) == 1: no wake (R2)   load(state) == 0
 *                                       CAS(state, 0 -> 1)   (A1)
 *                                       owner = CPU1's pid   (A2)
 *
 * It stops at once when sleepers are announced (2: the holder is a long
 * one, and they queue ahead of us), when this thread is due to give way
 * (a race for the word lost to a holder that took it straight back: the
 * back-off above), and it does not start when the watch of this thread's
 * blocking waits has stopped paying (budget 0: holds are long, or the
 * holder is often preempted); then dk_shm_mutex_lock_after_try, without
 * the interpreter lock, does the rest. Budget 0 skips only
 * SPIN_PROBE_EVERY - 1 watches in a row: every SPIN_PROBE_EVERY-th
 * watches anyway, and one that takes the lock brings the blocking waits'
 * budget back in full, as their own probe does. Without that, a budget
 * lost at start-up (the two processes' first turns on one CPU, before the
 * scheduler spreads them) kept this watch off for the whole run: its
 * waits took the lock in dk_shm_mutex_lock_after_try, which rarely
 * watches (the lock is free by then), so the budget never came back.
 */
#define TRY_SPIN_NS 2000u

static uint32_t try_spin_wins; /* per process, for tests */

static __attribute__((noinline)) int
try_spin_contended(dk_shm_mutex_t *m)
{
    if (dk__atomic_load_relaxed(&m->owner_pid) ==
            (uint32_t)dk__os_pid_cached() &&
        dk__atomic_load_relaxed(&m->owner_tid) ==
            (uint32_t)dk__os_tid_cached()) {
        return -EDEADLK;
    }
    memo_for(m);
    if (due_to_give_way() || dk__os_ncpu_cached() < 2) {
        return -ETIMEDOUT;
    }
    /* A watching try from here on, even when it skips the watch for a
     * budget of 0: its waits are the races' business, not the quick
     * waits' (see the back-off above). */
    watch_memo.watching = true;
    bool probe = watch_memo.budget_ns == 0;
    if (probe && ++watch_memo.skipped % SPIN_PROBE_EVERY != 0) {
        return -ETIMEDOUT;
    }
    uint64_t until = 0;
    for (uint32_t i = 1;; i++) {
        dk_cpu_relax();
        uint32_t s = dk__atomic_load_relaxed(&m->state);
        if (s == 0) {
            if (dk__atomic_cas_acquire(&m->state, &s, 1)) { /* A1 */
                took_lock(m);
                watch_memo.watching = false;
                watch_memo.quick = 0;
                if (probe) {
                    watch_paid(true);
                }
                dk__atomic_add_relaxed(&try_spin_wins, 1);
                return 0;
            }
            /* Taken between our load and our CAS: a race lost. */
            watch_memo.races_lost++;
            if (++watch_memo.lost >= BACKOFF_LOST) {
                break;
            }
        }
        if (s == 2) {
            break;
        }
        if (i % 16 == 0) {
            uint64_t now = dk__os_monotonic_ns();
            if (until == 0) {
                until = now + TRY_SPIN_NS;
            } else if (now >= until) {
                break;
            }
        }
    }
    return -ETIMEDOUT;
}

uint32_t
dk__shm_mutex_try_spin_wins(void)
{
    return dk__atomic_load_relaxed(&try_spin_wins);
}

int
dk_shm_mutex_lock_try_spin(dk_shm_mutex_t *m, unsigned flags)
{
    if (dk_unlikely(flags & ~DK_SHARED)) {
        return -EINVAL;
    }
    uint32_t s = 0;
    if (dk_likely(dk__atomic_cas_acquire(&m->state, &s, 1))) { /* A1 */
        took_lock(m);
        return 0;
    }
    return try_spin_contended(m);
}

int
dk_shm_mutex_lock(dk_shm_mutex_t *m, uint64_t deadline, int spin,
                  unsigned flags)
{
    if (dk_unlikely(flags & ~(DK_SHARED | DK_SHM_INTERRUPTIBLE))) {
        return -EINVAL;
    }
    uint32_t s = 0;
    if (dk_likely(dk__atomic_cas_acquire(&m->state, &s, 1))) { /* A1 */
        took_lock(m);
        return 0;
    }
    return lock_contended(m, deadline, (flags & DK_SHARED) != 0, spin,
                          (flags & DK_SHM_INTERRUPTIBLE) != 0);
}

int
dk_shm_mutex_unlock(dk_shm_mutex_t *m, unsigned flags)
{
    if (flags & ~(DK_SHARED | DK_SHM_FORCE)) {
        return -EINVAL;
    }
    bool force = (flags & DK_SHM_FORCE) != 0;
    /* Ownership is per thread: when a thread id is recorded (every lock
     * of ours records one), only that thread may unlock, so another
     * thread of the holder's process cannot end its mutual exclusion
     * behind its back. With none recorded (a fastipc holder, which does
     * not write +0x18), the pid decides, as in fastipc. The thread id
     * also covers fastipc's defect F2: a fastipc process releasing just
     * before we acquired can clear the pid after we wrote it, but never
     * touches the thread id, which only the holder sets and clears. */
    uint32_t tid = dk__atomic_load_relaxed(&m->owner_tid);
    if (!force && (tid != 0 ? tid != (uint32_t)dk__os_tid_cached()
                            : dk__atomic_load_relaxed(&m->owner_pid) !=
                                  (uint32_t)dk__os_pid_cached())) {
        return -EPERM;
    }
    dk__atomic_store_relaxed(&m->owner_tid, 0);
    dk__atomic_store_release(&m->owner_pid, 0);       /* R1 */
    if (dk__atomic_xchg_release(&m->state, 0) == 2) { /* R2 */
        dk__os_futex_wake(&m->state, 1, (flags & DK_SHARED) != 0);
    }
    return 0;
}

int
dk_shm_semaphore_init(dk_shm_semaphore_t *s, uint32_t count, unsigned flags)
{
    if ((uintptr_t)s % 4 != 0 || (flags & ~DK_SHM_SET_COUNT)) {
        return -EINVAL;
    }
    uint32_t magic = dk__atomic_load_acquire(&s->magic);
    if (magic != DK_SEMAPHORE_MAGIC && magic != 0) {
        return -EBADMSG;
    }
    if (magic == 0) {
        uint32_t zero = 0;
        dk__atomic_cas_acq_rel(&s->magic, &zero, DK_SEMAPHORE_MAGIC);
        if (dk__atomic_load_acquire(&s->magic) != DK_SEMAPHORE_MAGIC) {
            return -EBADMSG;
        }
    }
    if (flags & DK_SHM_SET_COUNT) {
        dk__atomic_store_release(&s->count, count);
    }
    return 0;
}

static bool
try_take_order(dk_shm_semaphore_t *s, bool seq_cst)
{
    uint32_t v = seq_cst ? dk__atomic_load_seq_cst(&s->count)
                         : dk__atomic_load_relaxed(&s->count);
    while (v > 0) {
        if (dk__atomic_cas_weak_acq_rel(&s->count, &v, v - 1)) {
            dk__atomic_store_relaxed(&s->last_pid, (uint32_t)dk__os_pid());
            stamp(s);
            return true;
        }
    }
    return false;
}

static bool
try_take(dk_shm_semaphore_t *s)
{
    return try_take_order(s, false);
}

int
dk_shm_semaphore_wait(dk_shm_semaphore_t *s, uint64_t deadline, int spin,
                      unsigned flags)
{
    if (flags & ~(DK_SHARED | DK_SHM_INTERRUPTIBLE)) {
        return -EINVAL;
    }
    bool shared = (flags & DK_SHARED) != 0;
    if (try_take(s)) {
        return 0;
    }
    uint64_t limit = 0;
    for (int i = 0; i < spin && !spin_expired(i, deadline, &limit); i++) {
        dk_cpu_relax();
        if (try_take(s)) {
            return 0;
        }
    }
    /* Not counted in `waiters` yet: a post meanwhile makes no syscall. */
    while (spin > 0 && deadline != 0 && dk__os_ncpu_cached() > 1 &&
           spin_while(&s->count, 0, deadline, SPIN_BUDGET_NS)) {
        if (try_take(s)) {
            return 0;
        }
    }
    for (;;) {
        if (deadline == 0 || dk__os_monotonic_ns() >= deadline) {
            return try_take(s) ? 0 : -ETIMEDOUT;
        }
        dk__atomic_add_seq_cst(&s->waiters, 1); /* W1 */
        if (try_take_order(s, true)) {          /* W2 */
            dk__atomic_sub_relaxed(&s->waiters, 1);
            return 0;
        }
        /* Sleep in slices: a fastipc poster may leave us asleep with a
         * unit available (it wakes only on 0 -> n). */
        uint64_t slice = dk__os_monotonic_ns() + LIVENESS_SLICE_NS;
        int rc = dk__os_futex_wait(
            &s->count, 0, slice < deadline ? slice : deadline, shared);
        dk__atomic_sub_relaxed(&s->waiters, 1);
        if (try_take(s)) {
            return 0;
        }
        if (rc == -EINTR && (flags & DK_SHM_INTERRUPTIBLE)) {
            return -EINTR;
        }
    }
}

int
dk_shm_semaphore_post(dk_shm_semaphore_t *s, uint32_t n, unsigned flags)
{
    if (flags & ~(DK_SHARED | DK_SHM_FASTIPC_COMPAT)) {
        return -EINVAL;
    }
    if (n == 0) {
        return 0;
    }
    uint32_t v = dk__atomic_load_relaxed(&s->count);
    do {
        if (v > UINT32_MAX - n) {
            return -EOVERFLOW;
        }
    } while (!dk__atomic_cas_seq_cst(&s->count, &v, v + n)); /* P1 */
    if (dk__atomic_load_seq_cst(&s->waiters) > 0 ||          /* P2 */
        ((flags & DK_SHM_FASTIPC_COMPAT) && v == 0)) {
        dk__os_futex_wake(&s->count, n > INT_MAX ? INT_MAX : (int)n,
                          (flags & DK_SHARED) != 0);
    }
    return 0;
}

int
dk_shm_alias(void *addr, size_t len, void **alias)
{
    if (len == 0) {
        return -EINVAL;
    }
    void *p = dk__os_map_again(addr, len);
    if (p == NULL) {
        return -errno;
    }
    *alias = p;
    return 0;
}

void
dk_shm_unalias(void *alias, size_t len)
{
    dk__os_unmap_again(alias, len);
}

/* ---- steps for asynchronous waiters (watch.h) ------------------------ */

int
dk__shm_mutex_lock_step(dk_shm_mutex_t *m, bool check_owner,
                        uint64_t *orphan_since, uint32_t **word,
                        uint32_t *busy)
{
    uint32_t s = 0;
    if (dk__atomic_cas_acquire(&m->state, &s, 1)) { /* A1 */
        took_lock(m);
        return 0;
    }
    /* Announce a waiter (2) as a sleeping locker does: whoever releases
     * then wakes the word, and the watcher with it. */
    if (dk__atomic_xchg_acquire(&m->state, 2) == 0) {
        took_lock(m);
        return 0;
    }
    if (check_owner &&
        take_over_if_abandoned(m, (uint32_t)dk__os_pid(),
                               dk__os_monotonic_ns(), orphan_since)) {
        return 1;
    }
    *word = &m->state;
    *busy = 2;
    return -EAGAIN;
}

int
dk__shm_semaphore_wait_step(dk_shm_semaphore_t *s, uint32_t **word,
                            uint32_t *busy)
{
    if (try_take(s)) {
        return 0;
    }
    dk__atomic_add_seq_cst(&s->waiters, 1); /* W1 */
    if (try_take_order(s, true)) {          /* W2 */
        dk__atomic_sub_relaxed(&s->waiters, 1);
        return 0;
    }
    *word = &s->count;
    *busy = 0;
    return -EAGAIN;
}

void
dk__shm_semaphore_unannounce(dk_shm_semaphore_t *s)
{
    dk__atomic_sub_relaxed(&s->waiters, 1);
}
