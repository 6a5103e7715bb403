/*
 * GIL management for callbacks run by the dispatch runtime. See gil.h.
 */
#include "python/gil.h"

#include "atomic.h"

#include "dk/queue.h"
#include "dk/time.h"

#include <time.h>

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

/* Times a thread let go of the GIL in a way a waiter may watch for (see
 * group.c, "GIL hand-off"): the binding's blocking waits, and every
 * release after a callback here. A hint: relaxed. */
static uint32_t gil_releases;

void
dkpy_note_gil_released(void)
{
    dk__atomic_add_relaxed(&gil_releases, 1);
}

uint32_t
dkpy_gil_release_count(void)
{
    return dk__atomic_load_relaxed(&gil_releases);
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
    return __atomic_load_n(&finalizing, __ATOMIC_SEQ_CST) != 0;
}

void
dkpy_gil_shutdown(void)
{
    __atomic_store_n(&finalizing, 1, __ATOMIC_SEQ_CST); /* (S1) */
    Py_BEGIN_ALLOW_THREADS
    uint64_t deadline = dk_now() + 2 * DK_NSEC_PER_SEC;
    while ((dk_worker_lock_waiters() > 0 ||
            dk__atomic_load_seq_cst(&event_waiters) > 0) &&
           dk_now() < deadline) { /* (S2) */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    Py_END_ALLOW_THREADS
}

static void
worker_release(void)
{
    if (worker_holds_gil) {
        worker_holds_gil = false;
        worker_tstate = PyEval_SaveThread();
        /* After the GIL is free: pairs with dkpy_workers_hold_gil. */
        dk__atomic_sub_release(&batch_holders, 1);
        dkpy_note_gil_released();
    }
}

/*
 * An event thread runs a handler inline when its queue is idle (the
 * core's event.c), typically while the thread it wakes waits in
 * Semaphore.wait or a Future. It keeps one thread state for its life, as
 * a worker does (PyGILState_Ensure on a thread without one would create
 * and destroy a thread state per callback), but it never keeps the GIL
 * past a callback: it goes back to epoll_wait next, and the thread its
 * handler woke wants the GIL now. The release is counted, so that waiter,
 * watching the count, takes the GIL without sleeping in its queue.
 */
static bool
event_enter(dkpy_gil_t *g)
{
    dk__atomic_add_seq_cst(&event_waiters, 1); /* (W1) */
    if (dkpy_finalizing()) {                   /* (W2) */
        dk__atomic_sub_seq_cst(&event_waiters, 1);
        return false;
    }
    if (!worker_has_tstate) {
        worker_gstate = PyGILState_Ensure();
        worker_has_tstate = true;
    } else {
        PyEval_RestoreThread(worker_tstate);
    }
    dk__atomic_sub_seq_cst(&event_waiters, 1);
    if (dkpy_finalizing()) {
        worker_tstate = PyEval_SaveThread();
        return false;
    }
    worker_holds_gil = true;
    g->kind = 2;
    return true;
}

static void
event_leave(void)
{
    worker_holds_gil = false;
    worker_tstate = PyEval_SaveThread();
    dkpy_note_gil_released();
}

bool
dkpy_workers_hold_gil(void)
{
    /* Pairs with the release in worker_release. */
    return dk__atomic_load_acquire(&batch_holders) != 0;
}

bool
dkpy_enter(dkpy_gil_t *g)
{
    if (dkpy_finalizing()) {
        return false;
    }
    if (dk_is_event_thread()) {
        if (worker_holds_gil) {
            /* A callback run inline by a callback (a sync item). */
            g->kind = 1;
            g->gstate = PyGILState_Ensure();
            return true;
        }
        return event_enter(g);
    }
    if (dk_is_worker_thread()) {
        if (worker_holds_gil) {
            if (PyGILState_Check()) {
                g->kind = 0;
                return true;
            }
            /* Inside a callback that released the GIL (a blocking call)
             * and now runs another callback inline: nest normally. */
            g->kind = 1;
            g->gstate = PyGILState_Ensure();
            return true;
        }
        dk_worker_lock_wait_begin(); /* (W1) */
        if (dkpy_finalizing()) {     /* (W2) */
            dk_worker_lock_wait_end();
            return false;
        }
        if (!worker_has_tstate) {
            worker_gstate = PyGILState_Ensure();
            worker_has_tstate = true;
        } else {
            PyEval_RestoreThread(worker_tstate);
        }
        dk_worker_lock_wait_end();
        worker_holds_gil = true;
        dk__atomic_add_relaxed(&batch_holders, 1);
        worker_since = dk_now();
        worker_batch = 0;
        if (dkpy_finalizing()) {
            worker_release();
            return false;
        }
        g->kind = 0;
        return true;
    }
    g->kind = 1;
    g->gstate = PyGILState_Ensure();
    if (dkpy_finalizing()) {
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
        dkpy_note_gil_released();
        return;
    }
    if (g->kind == 2) {
        event_leave();
        return;
    }
    if ((++worker_batch & 15) == 0 &&
        dk_now() - worker_since > DKPY_GIL_SLICE_NS) {
        worker_release();
    }
}

void
dkpy_release_batch(void)
{
    if (dk_is_worker_thread()) {
        worker_release();
    }
}

static void
hook_idle(void)
{
    worker_release();
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
        dk__atomic_sub_release(&batch_holders, 1); /* as worker_release */
    }
}

static const struct dk_thread_hooks hooks = {hook_idle, hook_exit};

void
dkpy_gil_init(void)
{
    dk_set_thread_hooks(&hooks);
}
