/*
 * GIL management for callbacks run by the dispatch runtime. See gil.h.
 */
#include "python/gil.h"

#include "dk/queue.h"
#include "dk/time.h"

#define DKPY_GIL_SLICE_NS 5000000ull /* as sys.getswitchinterval() */

static int finalizing;

static __thread PyThreadState *worker_tstate; /* saved while GIL dropped */
static __thread PyGILState_STATE worker_gstate;
static __thread bool worker_has_tstate;
static __thread bool worker_holds_gil;
static __thread uint64_t worker_since;
static __thread unsigned worker_batch;

bool
dkpy_finalizing(void)
{
    return __atomic_load_n(&finalizing, __ATOMIC_ACQUIRE) != 0;
}

void
dkpy_gil_shutdown(void)
{
    __atomic_store_n(&finalizing, 1, __ATOMIC_RELEASE);
}

static void
worker_release(void)
{
    if (worker_holds_gil) {
        worker_holds_gil = false;
        worker_tstate = PyEval_SaveThread();
    }
}

bool
dkpy_enter(dkpy_gil_t *g)
{
    if (dkpy_finalizing()) {
        return false;
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
        dk_worker_lock_wait_begin();
        if (!worker_has_tstate) {
            worker_gstate = PyGILState_Ensure();
            worker_has_tstate = true;
        } else {
            PyEval_RestoreThread(worker_tstate);
        }
        dk_worker_lock_wait_end();
        worker_holds_gil = true;
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
    if (!worker_holds_gil) {
        PyEval_RestoreThread(worker_tstate);
    }
    worker_holds_gil = false;
    worker_has_tstate = false;
    PyGILState_Release(worker_gstate); /* deletes the thread state */
}

static const struct dk_thread_hooks hooks = {hook_idle, hook_exit};

void
dkpy_gil_init(void)
{
    dk_set_thread_hooks(&hooks);
}
