/*
 * Binding of the dispatch runtime's module level: the cygcd functions
 * (apply, time functions, get_specific, the main queue's drain and main),
 * the constants, and the exec function that adds the types of queue.c and
 * group.c. Callbacks are Python callables submitted as the context of a C
 * trampoline (queue.c); every misuse that would crash libdispatch is
 * turned into an exception before the core sees it.
 */
#include "python/binding.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "dk/apply.h"
#include "dk/atomic.h"
#include "dk/futex.h"
#include "dk/queue.h"
#include "dk/time.h"
#include "python/dispatch.h"
#include "python/gil.h"

/* ---- module functions ----------------------------------------------- */

/*
 * apply(). The caller keeps the GIL and runs its ranges in a tight loop;
 * the pool's helpers take the GIL per range (dkpy_enter), but only once
 * the caller's calls are slow, APPLY_SLOW_CALL_NS or more each over a nap
 * (f releases the GIL for C code, I/O or a sleep, or holds it that long),
 * or it waits for the helpers' last ranges. Until then a helper naps with
 * its range claimed, so a loop of short GIL-holding calls runs with no
 * GIL hand-off, and a loop whose f releases the GIL runs the helpers'
 * iterations beside the caller's. Calls shorter than that gain nothing
 * from helpers that would take the GIL in turns with the caller.
 *
 * The nap needs no ordering: `calls` is a hint, and the caller's wake-up
 * cannot be lost, as the futex compares `waiting` before it sleeps:
 *
 *   helper                              caller
 *   reads waiting == 0
 *                                       waiting = 1; wake(&waiting, all)
 *   futex_wait(&waiting, 0, ...)        (-EAGAIN: it is 1 now)
 *   joins
 */
#define APPLY_NAP_NS 200000u
#define APPLY_NAP_MAX_NS 1600000u
#define APPLY_SLOW_CALL_NS 20000u

struct apply_call {
    PyObject *func;
    vectorcallfunc call;  /* func's own vectorcall (NULL: it has none) */
    dkpy_carried exc;     /* the first error */
    PyThreadState *saved; /* the caller's, while it waits */
    bool nap;             /* helpers nap (false: no caller loop) */
    uint32_t calls;       /* atomic: calls of f so far, a hint */
    uint32_t waiting;     /* atomic: the caller waits for the helpers */
    uint32_t stop;        /* atomic: read without the GIL */
};

/* func(i) for i in [begin, end), GIL held (the caller's ranges); false
 * after an exception, which it keeps for the caller and which stops the
 * loop. */
static bool
apply_calls(void *ctx, size_t begin, size_t end)
{
    struct apply_call *c = ctx;
    PyObject *slots[2] = {NULL, NULL}; /* slots[0]: vectorcall's spare */
    size_t flags = 1 | PY_VECTORCALL_ARGUMENTS_OFFSET;
    for (size_t i = begin; i < end && !c->stop; i++) {
        /* PyLong_FromLong has the fast path for one-digit ints. */
        slots[1] =
            i <= LONG_MAX ? PyLong_FromLong((long)i) : PyLong_FromSize_t(i);
        PyObject *r =
            slots[1] == NULL ? NULL
            : c->call != NULL
                ? c->call(c->func, slots + 1, flags, NULL)
                : PyObject_Vectorcall(c->func, slots + 1, flags, NULL);
        Py_XDECREF(slots[1]);
        /* Every thread counts here with the GIL held, so no count is lost;
         * helpers read it without, as a hint. */
        dk_atomic_u32_store(&c->calls,
                            dk_atomic_u32_load(&c->calls, DK_MO_RELAXED) + 1,
                            DK_MO_RELAXED);
        if (r == NULL) {
            /* Relaxed: the exception itself is read by the caller after
             * the loop, which the loop's completion orders. */
            dk_atomic_u32_store(&c->stop, 1, DK_MO_RELAXED);
            dkpy_carry(&c->exc, c->func);
            return false;
        }
        Py_DECREF(r);
    }
    return !c->stop;
}

/* A helper, before it takes the GIL: nap while the calls are quick (see
 * apply() above), each nap twice the last up to APPLY_NAP_MAX_NS, so that
 * a long loop of short calls wakes it rarely. */
static void
apply_nap(struct apply_call *c)
{
    uint64_t nap = APPLY_NAP_NS;
    while (!dk_atomic_u32_load(&c->waiting, DK_MO_RELAXED) &&
           !dk_atomic_u32_load(&c->stop, DK_MO_RELAXED)) {
        uint32_t seen = dk_atomic_u32_load(&c->calls, DK_MO_RELAXED);
        int rc = dk_futex_wait(&c->waiting, 0, dk_now() + nap, 0);
        uint32_t made = dk_atomic_u32_load(&c->calls, DK_MO_RELAXED) - seen;
        if (rc == -ETIMEDOUT && made < nap / APPLY_SLOW_CALL_NS) {
            return; /* the caller's calls are slow: join */
        }
        nap = nap < APPLY_NAP_MAX_NS ? nap * 2 : nap;
    }
}

/* A helper's range, or, on a serial queue, the whole loop: takes the
 * GIL (false at interpreter shutdown). */
static bool
apply_range(void *ctx, size_t begin, size_t end)
{
    struct apply_call *c = ctx;
    if (c->nap) {
        apply_nap(c);
    }
    if (dk_atomic_u32_load(&c->stop, DK_MO_RELAXED)) {
        return false;
    }
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return false;
    }
    bool go_on = apply_calls(c, begin, end);
    dkpy_leave(&g);
    if (c->nap) {
        dkpy_release_batch(); /* a worker would keep it through its nap */
    }
    return go_on;
}

static void
apply_unlock(void *ctx)
{
    struct apply_call *c = ctx;
    c->saved = PyEval_SaveThread();
    dk_atomic_u32_store(&c->waiting, 1, DK_MO_RELAXED);
    dk_futex_wake(&c->waiting, INT_MAX, 0); /* end the helpers' naps */
}

static void
apply_relock(void *ctx)
{
    PyEval_RestoreThread(((struct apply_call *)ctx)->saved);
}

static const dk_apply_caller_t apply_caller = {apply_calls, apply_unlock,
                                               apply_relock};

static PyObject *
dk_py_apply(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"iterations", "func", "queue", NULL};
    PyObject *iterations, *func, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:apply", kwlist,
                                     &iterations, &func, &queue)) {
        return NULL;
    }
    size_t n;
    dk_queue_t *q;
    /* A negative count is an OverflowError, as in cygcd. */
    if (dkpy_size_arg(iterations, "iterations", &n) < 0 ||
        dkpy_check_callable(func, "func") < 0 ||
        dkpy_queue_arg(queue, "queue", &q) < 0) {
        return NULL;
    }
    if (q != NULL && dk_queue_sync_would_deadlock(q, 0) &&
        !dk_queue_is_concurrent(q)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "apply() on the serial queue the caller is running "
                        "on would deadlock");
        return NULL;
    }
    struct apply_call c = {.func = func, .call = PyVectorcall_Function(func)};
    int rc;
    if (q == NULL || dk_queue_is_concurrent(q)) {
        c.nap = true;
        rc = dk_apply_range_caller_f(n, q, &c, apply_range, &apply_caller);
    } else { /* one range on the queue's thread, which takes the GIL */
        Py_BEGIN_ALLOW_THREADS
        rc = dk_apply_range_while_f(n, q, &c, apply_range);
        Py_END_ALLOW_THREADS
    }
    return rc < 0 ? dkpy_raise_errno(rc) : dkpy_carried_result(&c.exc);
}

/* Finite seconds to nanoseconds, clamped to the int64 range. */
static int64_t
clamp_ns(double s)
{
    double ns = s * 1e9;
    return ns >= 9.2e18 ? INT64_MAX : ns <= -9.2e18 ? INT64_MIN : (int64_t)ns;
}

static PyObject *
dk_py_time_from_now(PyObject *Py_UNUSED(module), PyObject *seconds)
{
    double s = PyFloat_AsDouble(seconds);
    if (s == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!isfinite(s)) {
        PyErr_SetString(PyExc_ValueError, "seconds must be finite");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(dk_time(DK_TIME_NOW, clamp_ns(s)));
}

static PyObject *
dk_py_walltime(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timestamp", "delta_seconds", NULL};
    double ts = 0, delta = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|dd:walltime", kwlist, &ts,
                                     &delta)) {
        return NULL;
    }
    if (!isfinite(ts) || !isfinite(delta) || ts < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "timestamp must be finite and >= 0, delta_seconds "
                        "finite");
        return NULL;
    }
    uint64_t base = (uint64_t)clamp_ns(ts); /* ts >= 0 */
    if (ts != 0 && base == 0) {
        base = 1;
    }
    return PyLong_FromUnsignedLongLong(dk_walltime(base, clamp_ns(delta)));
}

static PyObject *
dk_py_get_specific(PyObject *Py_UNUSED(module), PyObject *key)
{
    for (dk_queue_t *x = dk_queue_current();
         x != NULL && !dk_queue_is_global(x); x = dk_queue_target(x)) {
        PyObject *dict = dk_queue_get_specific(x, &dkpy_specifics_key);
        if (dict == NULL) {
            continue;
        }
        PyObject *v = PyDict_GetItemWithError(dict, key);
        if (v != NULL) {
            return Py_NewRef(v);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* A slice of draining the main queue (dkpy_wait_sliced): the number of
 * items run goes to *arg. */
static int
main_drain_fn(void *arg, uint64_t deadline)
{
    long n = dk_main_drain(deadline);
    *(long *)arg = n;
    return n >= 0 ? 0 : (int)n;
}

/* -EDEADLK: `who` ran inside a main-queue item. Raises and returns true
 * then. */
static bool
main_drain_deadlock(int rc, const char *who)
{
    if (rc != -EDEADLK) {
        return false;
    }
    PyErr_Format(PyExc_RuntimeError, "%s called from a main-queue task", who);
    return true;
}

static PyObject *
dk_py_drain_main_queue(PyObject *Py_UNUSED(module), PyObject *args,
                       PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:drain_main_queue",
                                     kwlist, &timeout)) {
        return NULL;
    }
    uint64_t deadline = 0;
    if (timeout != NULL && dkpy_deadline_cygcd(timeout, &deadline) < 0) {
        return NULL;
    }
    /* cygcd's rule, but for negatives: None waits forever, a negative
     * timeout is a mistake here (docs/dispatch.md: negative delays raise). */
    if (deadline == DK_TIME_FOREVER && timeout != Py_None &&
        PyFloat_AsDouble(timeout) < 0) {
        PyErr_SetString(PyExc_ValueError, "drain_main_queue() timeout must be "
                                          ">= 0 (None waits forever)");
        return NULL;
    }
    if (!dk_is_main_thread()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the main queue can only be drained by the main "
                        "thread");
        return NULL;
    }
    long n = 0;
    int rc = dkpy_wait_sliced(main_drain_fn, &n, deadline);
    if (rc == DKPY_RAISED || main_drain_deadlock(rc, "drain_main_queue()")) {
        return NULL;
    }
    return PyLong_FromLong(rc == 0 ? n : 0); /* else timed out */
}

static PyObject *
dk_py_main(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    if (!dk_is_main_thread()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "dispatchkit.main() must run on the main thread");
        return NULL;
    }
    for (;;) {
        long n;
        int rc = dkpy_wait_sliced(main_drain_fn, &n, DK_TIME_FOREVER);
        /* Ctrl-C or a signal handler's exception ends it, between
         * slices or between batches of items. */
        if (rc == DKPY_RAISED ||
            main_drain_deadlock(rc, "dispatchkit.main()") ||
            PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
}

static PyObject *
dk_py_main_queue_fd(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(dk_main_fd());
}

static PyObject *
dk_py_pool_quiescent(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(dk_pool_quiescent());
}

static PyObject *
dk_py_shutdown(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    dkpy_gil_shutdown();
    Py_RETURN_NONE;
}

static PyMethodDef dispatch_functions[] = {
    {"apply", DKPY_METH_KW(dk_py_apply),
     "apply($module, iterations, func, queue=None)\n--\n\nCall func(i) for i "
     "in range(iterations) in parallel and wait; re-raises the first "
     "exception (remaining iterations are skipped)."},
    {"time_from_now", dk_py_time_from_now, METH_O,
     "time_from_now($module, seconds, /)\n--\n\nA dispatch time (monotonic "
     "clock)."},
    {"walltime", DKPY_METH_KW(dk_py_walltime),
     "walltime($module, timestamp=0.0, delta_seconds=0.0)\n--\n\nA wall-clock "
     "dispatch time (timestamp 0 means now)."},
    {"get_specific", dk_py_get_specific, METH_O,
     "get_specific($module, key, /)\n--\n\nQueue-specific data of the current "
     "queue or its targets, or None."},
    {"drain_main_queue", DKPY_METH_KW(dk_py_drain_main_queue),
     "drain_main_queue($module, timeout=0)\n--\n\nRun the main queue's ready "
     "tasks on the main thread, waiting up to timeout seconds for the "
     "first; returns how many ran."},
    {"main", dk_py_main, METH_NOARGS,
     "main($module, /)\n--\n\nDrain the main queue forever on the main thread "
     "(dispatch_main); returns only by an exception such as "
     "KeyboardInterrupt."},
    {"main_queue_fd", dk_py_main_queue_fd, METH_NOARGS,
     "main_queue_fd($module, /)\n--\n\nAn fd that is readable while "
     "main-queue work is pending (for asyncio's add_reader)."},
    {"_pool_quiescent", dk_py_pool_quiescent, METH_NOARGS,
     "_pool_quiescent($module, /)\n--\n\nTrue when every pool worker is "
     "parked: the sanitizer test run forks only then (GCC 12's ASan "
     "allocator is not fork-safe)."},
    {"_shutdown", dk_py_shutdown, METH_NOARGS,
     "_shutdown($module, /)\n--\n\nStop running callbacks (registered with "
     "atexit)."},
    {NULL, NULL, 0, NULL},
};

/* ---- constants and init --------------------------------------------- */

struct int_const {
    const char *name;
    long long value;
};

static const struct int_const int_consts[] = {
    {"DISPATCH_TIME_NOW", 0},
    {"NSEC_PER_SEC", 1000000000LL},
    {"NSEC_PER_MSEC", 1000000LL},
    {"NSEC_PER_USEC", 1000LL},
    {"USEC_PER_SEC", 1000000LL},
    {"MSEC_PER_SEC", 1000LL},
    {"QUEUE_PRIORITY_HIGH", 2},
    {"QUEUE_PRIORITY_DEFAULT", 0},
    {"QUEUE_PRIORITY_LOW", -2},
    {"QUEUE_PRIORITY_BACKGROUND", -32768},
    {"QOS_CLASS_USER_INTERACTIVE", 0x21},
    {"QOS_CLASS_USER_INITIATED", 0x19},
    {"QOS_CLASS_DEFAULT", 0x15},
    {"QOS_CLASS_UTILITY", 0x11},
    {"QOS_CLASS_BACKGROUND", 0x09},
    {"QOS_CLASS_UNSPECIFIED", 0},
    {"PROC_EXIT", 0x80000000LL},
    {"PROC_FORK", 0x40000000LL},
    {"PROC_EXEC", 0x20000000LL},
    {"PROC_SIGNAL", 0x08000000LL},
    {"IO_STREAM", 0},
    {"IO_RANDOM", 1},
    {"IO_STOP", 1},
    {"AUTORELEASE_FREQUENCY_INHERIT", 0},
    {"AUTORELEASE_FREQUENCY_WORK_ITEM", 1},
    {"AUTORELEASE_FREQUENCY_NEVER", 2},
};

dkpy_dispatch_state dkpy_dispatch;

/* Add a type to the module, keeping it in *out when the binding needs it
 * later (out NULL: the module's attribute is its only reference). */
static int
add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **out)
{
    PyTypeObject *t = dkpy_add_type(m, spec, NULL, "");
    if (t == NULL) {
        return -1;
    }
    if (out != NULL) {
        *out = t;
    } else {
        Py_DECREF(t);
    }
    return 0;
}

int
dkpy_dispatch_exec(PyObject *m)
{
    if (add_type(m, &dkpy_queue_spec, &dkpy_dispatch.queue_type) < 0 ||
        add_type(m, &dkpy_workloop_spec, NULL) < 0 ||
        add_type(m, &dkpy_group_spec, &dkpy_dispatch.group_type) < 0 ||
        add_type(m, &dkpy_semaphore_spec, &dkpy_dispatch.semaphore_type) < 0 ||
        add_type(m, &dkpy_once_spec, NULL) < 0) {
        return -1;
    }
    if (PyModule_AddFunctions(m, dispatch_functions) < 0) {
        return -1;
    }
    for (size_t i = 0; i < sizeof int_consts / sizeof int_consts[0]; i++) {
        if (PyModule_AddObject(m, int_consts[i].name,
                               PyLong_FromLongLong(int_consts[i].value)) < 0) {
            return -1;
        }
    }
    PyObject *forever = PyLong_FromUnsignedLongLong(DK_TIME_FOREVER);
    if (forever == NULL ||
        PyModule_AddObject(m, "DISPATCH_TIME_FOREVER", forever) < 0) {
        Py_XDECREF(forever);
        return -1;
    }
    dkpy_gil_init();
    return 0;
}
