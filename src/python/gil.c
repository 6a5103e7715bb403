/*
 * GIL management for callbacks run by the dispatch runtime, and the GIL
 * hand-off of the Group and Semaphore waits. See gil.h.
 */
#include "python/gil.h"

#include "atomic.h"

#include "dk/queue.h"
#include "dk/time.h"
#include "os/linux/os.h"

#define DKPY_GIL_SLICE_NS 5000000ull /* as sys.getswitchinterval() */

/*
 * Exit. A worker queued for the GIL when the interpreter finalizes would be
 * terminated by CPython inside PyEval_RestoreThread. So shutdown sets
 * `finalizing`, releases the GIL and waits until no worker is queued:
 *
 *   worker                                 shutdown (atexit)
 *   lock_wait_begin (waiters += 1)  (W1)   finalizing = 1          (S1)
 *   finalizing? -> end, drop item   (W2)   release the GIL; wait
 *   take the GIL, end, re-check            until waiters == 0      (S2)
 *
 * W1/W2 and S1/S2 are sequentially consistent: either the worker sees the
 * flag and never queues, or shutdown sees it queued and waits for it.
 */
static int finalizing;
/* Event threads between W1 and taking the GIL (workers are counted by the
 * pool: dk_worker_lock_waiters). */
static uint32_t event_waiters;

/*
 * GIL hand-off after a wake-up. A thread woken by Semaphore.signal from
 * another Python thread finds the GIL still held by that thread, sleeps on
 * the GIL's condition variable and is woken again by a futex when the
 * signaller lets go: a second sleep and wake-up on every hand-off, which
 * costs more than the semaphore's own (spinning) hand-off. So we count the
 * times a thread lets go of the GIL in a way a waiter may watch for (the
 * Group and Semaphore waits, dkpy_wait_handoff, and every release after a
 * callback here), Semaphore.signal records the count it saw while holding
 * the GIL (dkpy_handoff_mark), and a waiter that got its unit watches the
 * count, with the GIL still released, for at most GIL_SPIN_NS before it
 * asks for the GIL. In a ping-pong the signaller's next wait releases the
 * GIL within a microsecond or two, and the waiter then takes it without
 * sleeping.
 *
 * It is a hint and needs no ordering (all relaxed): a signaller that keeps
 * the GIL, or lets it go some other way, costs the waiter at most
 * GIL_SPIN_NS of CPU before it asks for the GIL as usual; a unit that came
 * from C, or from a signal older than the waiter's own release, shows a
 * count that has already moved on and costs nothing. With one CPU the
 * waiter never spins (the GIL holder could not run meanwhile). As in the
 * core's semaphore, the budget adapts: a watch that fails halves it (to 0
 * below GIL_SPIN_MIN_NS), one that succeeds restores it, and every
 * GIL_SPIN_PROBE_EVERY-th watch tries the full budget, so that when the
 * signaller shares our CPU (a loaded machine) we stop holding it off.
 */
#define GIL_SPIN_NS 20000u
#define GIL_SPIN_MIN_NS 1000u
#define GIL_SPIN_PROBE_EVERY 64u

static uint32_t gil_releases;
static bool gil_spin_useful; /* set at init: more than one CPU to run on */
static uint32_t gil_spin_ns = GIL_SPIN_NS; /* current budget */
static uint32_t gil_spins;                 /* watches so far, for probes */

static void
note_gil_released(void)
{
    dk__atomic_add_relaxed(&gil_releases, 1);
}

void
dkpy_handoff_mark(uint32_t *seen)
{
    dk__atomic_store_relaxed(seen, dk__atomic_load_relaxed(&gil_releases));
}

/* With the GIL released: until the count moves on from `seen`, at most
 * the current budget. Reads the vDSO clock every 8 pauses (dk_now is the
 * vDSO's CLOCK_MONOTONIC), never a syscall. */
static void
await_gil_release(uint32_t seen)
{
    if (!gil_spin_useful || dk__atomic_load_relaxed(&gil_releases) != seen) {
        return;
    }
    uint32_t kept = dk__atomic_load_relaxed(&gil_spin_ns);
    uint32_t budget = kept;
    if (dk__atomic_add_relaxed(&gil_spins, 1) % GIL_SPIN_PROBE_EVERY == 0) {
        budget = GIL_SPIN_NS;
    }
    if (budget == 0) {
        return;
    }
    uint64_t until = dk_now() + budget;
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (dk__atomic_load_relaxed(&gil_releases) != seen) {
            dk__atomic_store_relaxed(&gil_spin_ns, GIL_SPIN_NS);
            return;
        }
        if (i % 8 == 0 && dk_now() >= until) {
            uint32_t half = kept / 2;
            dk__atomic_store_relaxed(&gil_spin_ns,
                                     half >= GIL_SPIN_MIN_NS ? half : 0);
            return;
        }
    }
}

struct handoff_wait {
    dkpy_wait_fn fn;
    void *arg;
    const uint32_t *seen;
};

/* A slice of dkpy_wait_handoff's wait, run with the GIL released. */
static int
handoff_wait_fn(void *p, uint64_t deadline)
{
    struct handoff_wait *w = p;
    note_gil_released();
    int rc = w->fn(w->arg, deadline);
    if (rc == 0 && w->seen != NULL) {
        /* Written before the signal that gave us our unit (if it came
         * from Python); a stale value only makes the spin end at once. */
        await_gil_release(dk__atomic_load_relaxed(w->seen));
    }
    return rc;
}

PyObject *
dkpy_wait_handoff(bool taken, dkpy_wait_fn fn, void *arg, uint64_t deadline,
                  const uint32_t *seen)
{
    if (taken || deadline == 0) {
        return PyBool_FromLong(taken);
    }
    struct handoff_wait w = {fn, arg, seen};
    return dkpy_wait_bool(handoff_wait_fn, &w, deadline);
}

static __thread PyThreadState *worker_tstate; /* saved while GIL dropped */
static __thread PyGILState_STATE worker_gstate;
static __thread bool worker_has_tstate;
static __thread bool worker_holds_gil;
static __thread uint64_t worker_since;
static __thread unsigned worker_batch;
/* Workers holding the GIL between callbacks (a hint for a thread about to
 * take it: see dkpy_workers_hold_gil). */
static unsigned batch_holders;

bool
dkpy_finalizing(void)
{
    /* (W2) where a thread is about to take the GIL: pairs with (S1). */
    return dk__atomic_load_seq_cst(&finalizing) != 0;
}

void
dkpy_gil_shutdown(void)
{
    dk__atomic_store_seq_cst(&finalizing, 1); /* (S1), pairs with (W2) */
    Py_BEGIN_ALLOW_THREADS
    uint64_t deadline = dk_now() + 2 * DK_NSEC_PER_SEC;
    while ((dk_worker_lock_waiters() > 0 ||
            dk__atomic_load_seq_cst(&event_waiters) > 0) &&
           dk_now() < deadline) { /* (S2) */
        dk__os_sleep_ns(1000000);
    }
    Py_END_ALLOW_THREADS
}

/* Give back the GIL that own_enter took, keeping the thread state. */
static void
own_leave(bool event)
{
    worker_holds_gil = false;
    worker_tstate = PyEval_SaveThread();
    if (!event) { /* a worker's batch ends */
        /* After the GIL is free: pairs with dkpy_workers_hold_gil. */
        dk__atomic_sub_release(&batch_holders, 1);
    }
    note_gil_released();
}

/*
 * A worker or an event thread without the GIL takes it with its own thread
 * state, made on first use (PyGILState_Ensure on a thread without one
 * would create and destroy one per callback), counted between (W1) and
 * taking it as a waiter shutdown waits for: by the pool for a worker, in
 * event_waiters for an event thread.
 *
 * An event thread runs a handler inline when its queue is idle (the
 * core's event.c), typically while the thread it wakes waits in
 * Semaphore.wait or a Future. It never keeps the GIL past a callback: it
 * goes back to epoll_wait next, and the thread its handler woke wants the
 * GIL now. The release is counted, so that waiter, watching the count,
 * takes the GIL without sleeping in its queue.
 */
static bool
own_enter(dkpy_gil_t *g, bool event)
{
    if (event) {
        dk__atomic_add_seq_cst(&event_waiters, 1); /* (W1) */
    } else {
        dk_worker_lock_wait_begin(); /* (W1) */
    }
    bool go = !dkpy_finalizing(); /* (W2) */
    if (go && !worker_has_tstate) {
        worker_gstate = PyGILState_Ensure();
        worker_has_tstate = true;
    } else if (go) {
        PyEval_RestoreThread(worker_tstate);
    }
    if (event) {
        dk__atomic_sub_seq_cst(&event_waiters, 1);
    } else {
        dk_worker_lock_wait_end();
    }
    if (!go) {
        return false;
    }
    worker_holds_gil = true;
    g->kind = event ? 2 : 0;
    if (!event) {
        dk__atomic_add_relaxed(&batch_holders, 1);
        worker_since = dk_now();
        worker_batch = 0;
    }
    if (dkpy_finalizing()) {
        own_leave(event);
        return false;
    }
    return true;
}

bool
dkpy_workers_hold_gil(void)
{
    /* Pairs with the release in own_leave. */
    return dk__atomic_load_acquire(&batch_holders) != 0;
}

bool
dkpy_enter(dkpy_gil_t *g)
{
    if (dkpy_finalizing()) {
        return false;
    }
    bool event = dk_is_event_thread();
    bool nested = worker_holds_gil;
    if ((event || dk_is_worker_thread()) && !nested) {
        return own_enter(g, event);
    }
    if (nested && !event && PyGILState_Check()) {
        g->kind = 0; /* the worker's batch goes on */
        return true;
    }
    /* A callback run inline by a callback (a sync item) on an event thread,
     * or on a worker by a callback that released the GIL (a blocking
     * call): nest normally. Any other thread takes it for this call. */
    g->kind = 1;
    g->gstate = PyGILState_Ensure();
    if (!nested && dkpy_finalizing()) {
        PyGILState_Release(g->gstate);
        return false;
    }
    return true;
}

void
dkpy_leave(dkpy_gil_t *g)
{
    if (g->kind == 1) {
        PyGILState_Release(g->gstate);
        note_gil_released();
        return;
    }
    /* An event thread lets go after every callback, a worker once its
     * batch has held the GIL for a switch interval. */
    bool event = g->kind == 2;
    if (event || ((++worker_batch & 15) == 0 &&
                  dk_now() - worker_since > DKPY_GIL_SLICE_NS)) {
        own_leave(event);
    }
}

void
dkpy_release_batch(void)
{
    if (dk_is_worker_thread() && worker_holds_gil) {
        own_leave(false);
    }
}

static void
hook_exit(void)
{
    if (!worker_has_tstate || dkpy_finalizing()) {
        return; /* at exit the thread state is left to the interpreter */
    }
    bool held = worker_holds_gil;
    if (!held) {
        PyEval_RestoreThread(worker_tstate);
    }
    worker_holds_gil = false;
    worker_has_tstate = false;
    PyGILState_Release(worker_gstate); /* deletes the thread state */
    if (held) {
        dk__atomic_sub_release(&batch_holders, 1); /* as own_leave */
    }
}

/* Idle: drop the GIL before the worker waits for work. */
static const struct dk_thread_hooks hooks = {dkpy_release_batch, hook_exit};

void
dkpy_gil_init(void)
{
    gil_spin_useful = dk__os_ncpu_cached() > 1; /* else the holder waits */
    dk_set_thread_hooks(&hooks);
}
