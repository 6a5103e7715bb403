/*
 * Binding of the dispatch runtime: the cygcd API (Queue, Group, Semaphore,
 * Once, apply, time functions, the main queue, constants) over the dk
 * core. Callbacks are Python callables submitted as the context of a C
 * trampoline; the trampolines take the GIL through gil.h. Every misuse
 * that would crash libdispatch is turned into an exception here, before
 * the core sees it.
 */
#include "python/binding.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <structmember.h>

#include "dk/apply.h"
#include "dk/atomic.h"
#include "dk/group.h"
#include "dk/once.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/time.h"
#include "python/futures.h"
#include "python/gil.h"

#include "atomic.h"

typedef struct {
    PyTypeObject *queue_type;
    PyTypeObject *workloop_type;
    PyTypeObject *group_type;
    PyTypeObject *semaphore_type;
    PyTypeObject *once_type;
    PyObject *globals[5]; /* cached wrappers of the global queues */
    PyObject *main_queue;
} dispatch_state;

static dispatch_state *the_state; /* the runtime is process-wide */

/* ---- callbacks ------------------------------------------------------ */

/* Report an exception from an asynchronous callback (the GIL is held). */
static void
report_callback_error(PyObject *func)
{
    PyErr_WriteUnraisable(func);
}

/* ctx: a new reference to a callable, called with no arguments. */
static void
call_async(void *ctx)
{
    PyObject *func = ctx;
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return; /* finalizing: drop it */
    }
    PyObject *r = PyObject_CallNoArgs(func);
    if (r == NULL) {
        report_callback_error(func);
    } else {
        Py_DECREF(r);
    }
    Py_DECREF(func);
    dkpy_leave(&g);
}

/* ctx: a new reference to a tuple (finalizer, value): the finalizer is
 * called with no arguments, and the value released after it. */
static void
call_finalizer_async(void *ctx)
{
    PyObject *pair = ctx;
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return;
    }
    PyObject *func = PyTuple_GET_ITEM(pair, 0);
    PyObject *r = PyObject_CallNoArgs(func);
    if (r == NULL) {
        report_callback_error(func);
    } else {
        Py_DECREF(r);
    }
    Py_DECREF(pair);
    dkpy_leave(&g);
}

static int
check_callable(PyObject *func, const char *what)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable, not %.100s", what,
                     Py_TYPE(func)->tp_name);
        return -1;
    }
    return 0;
}

/* ---- timeouts ------------------------------------------------------- */

/* Convert a timeout in seconds to an absolute deadline: negative or None
 * means forever, 0 means poll. */
static int
timeout_deadline(PyObject *timeout, uint64_t *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = UINT64_MAX;
        return 0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (t < 0 || isinf(t)) {
        *deadline = UINT64_MAX;
    } else if (t == 0) {
        *deadline = 0;
    } else {
        double ns = t * 1e9;
        uint64_t now = dk_now();
        *deadline = ns >= (double)(UINT64_MAX - now - 1) ? UINT64_MAX
                                                         : now + (uint64_t)ns;
    }
    return 0;
}

/* wait(timeout=-1) accepting timeout_seconds= too (cygcd's real name). */
static int
parse_wait_timeout(PyObject *args, PyObject *kwargs, uint64_t *deadline)
{
    static char *kwlist[] = {"timeout", "timeout_seconds", NULL};
    PyObject *timeout = NULL, *timeout_seconds = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:wait", kwlist,
                                     &timeout, &timeout_seconds)) {
        return -1;
    }
    /* None is the default of both (the text signature says so). */
    if (timeout == Py_None) {
        timeout = NULL;
    }
    if (timeout_seconds == Py_None) {
        timeout_seconds = NULL;
    }
    if (timeout != NULL && timeout_seconds != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "give timeout or timeout_seconds, not both");
        return -1;
    }
    return timeout_deadline(timeout != NULL ? timeout : timeout_seconds,
                            deadline);
}

/* Seconds (finite, >= 0) to nanoseconds. */
static int
seconds_to_ns(PyObject *obj, const char *what, int64_t *ns)
{
    double s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!isfinite(s) || s < 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a finite number of seconds >= 0", what);
        return -1;
    }
    double v = s * 1e9;
    *ns = v >= 9.2e18 ? INT64_MAX : (int64_t)v;
    return 0;
}

/* ---- Queue ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_queue_t *q;
    PyObject *context;
    PyObject *finalizer;
    PyObject *specifics; /* dict, or NULL */
    PyObject *weakreflist;
    bool immortal;         /* global or main queue */
    bool created_inactive; /* workloops: for activate's error */
    unsigned autorelease;  /* workloops: accepted, no effect on Linux */
} QueueObject;

/* The per-queue specifics dict is registered in the core under this key,
 * so dispatchkit.get_specific can walk the target chain. */
static const char specifics_key;

static PyObject *
queue_wrap(PyTypeObject *type, dk_queue_t *q, bool immortal)
{
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        if (!immortal) {
            dk_release(q);
        }
        return NULL;
    }
    self->q = q;
    self->immortal = immortal;
    return (PyObject *)self;
}

static int
parse_target(PyObject *target, dk_queue_t **out)
{
    if (target == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!PyObject_TypeCheck(target, the_state->queue_type)) {
        PyErr_Format(PyExc_TypeError,
                     "target must be a Queue or None, not %.100s",
                     Py_TYPE(target)->tp_name);
        return -1;
    }
    *out = ((QueueObject *)target)->q;
    return 0;
}

static bool
valid_qos(long qos)
{
    return qos == 0 || qos == 0x09 || qos == 0x11 || qos == 0x15 ||
           qos == 0x19 || qos == 0x21;
}

static PyObject *
Queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "label",  "concurrent", "qos", "relative_priority",
        "target", "inactive",   NULL};
    PyObject *label = Py_None, *target = Py_None;
    int concurrent = 0, inactive = 0;
    long qos = 0, relpri = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OpllOp:Queue", kwlist,
                                     &label, &concurrent, &qos, &relpri,
                                     &target, &inactive)) {
        return NULL;
    }
    const char *clabel = NULL;
    if (label != Py_None) {
        if (!PyUnicode_Check(label)) {
            PyErr_Format(PyExc_TypeError,
                         "label must be str or None, not "
                         "%.100s",
                         Py_TYPE(label)->tp_name);
            return NULL;
        }
        clabel = PyUnicode_AsUTF8(label);
        if (clabel == NULL) {
            return NULL;
        }
    }
    if (!valid_qos(qos)) {
        PyErr_Format(PyExc_ValueError,
                     "qos must be one of the QOS_CLASS_* constants, not %ld",
                     qos);
        return NULL;
    }
    if (relpri < -15 || relpri > 0) {
        PyErr_SetString(PyExc_ValueError,
                        "relative_priority must be in [-15, 0]");
        return NULL;
    }
    dk_queue_t *t;
    if (parse_target(target, &t) < 0) {
        return NULL;
    }
    unsigned attrs = (concurrent ? DK_QUEUE_CONCURRENT : 0) |
                     (inactive ? DK_QUEUE_INACTIVE : 0);
    dk_queue_t *q = dk_queue_create(clabel, attrs, (int)qos, (int)relpri, t);
    if (q == NULL) {
        return PyErr_NoMemory();
    }
    return queue_wrap(type, q, false);
}

static int
Queue_traverse(QueueObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->context);
    Py_VISIT(self->finalizer);
    Py_VISIT(self->specifics);
    return 0;
}

static int
Queue_clear(QueueObject *self)
{
    Py_CLEAR(self->specifics);
    Py_CLEAR(self->context);
    Py_CLEAR(self->finalizer);
    return 0;
}

static void
Queue_dealloc(QueueObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->q != NULL && !self->immortal) {
        if (self->specifics != NULL) {
            dk_queue_set_specific(self->q, &specifics_key, NULL, NULL);
        }
        /* libdispatch crashes when a suspended or inactive queue is
         * released; we resume and activate it so its work drains. */
        dk_queue_activate(self->q);
        while (dk_queue_suspend_count(self->q) > 0) {
            dk_queue_resume(self->q);
        }
        if (self->finalizer != NULL && !dkpy_finalizing()) {
            /* As in GCD: the finalizer runs asynchronously once the queue
             * is gone; here on the default global queue. It takes no
             * arguments (cygcd's contract); the value is kept alive until
             * it has run. */
            PyObject *pair =
                PyTuple_Pack(2, self->finalizer,
                             self->context != NULL ? self->context : Py_None);
            if (pair == NULL || dk_queue_async_f(dk_queue_global(0), pair,
                                                 call_finalizer_async) < 0) {
                Py_XDECREF(pair);
                PyErr_Clear();
            }
        }
        dk_release(self->q);
    }
    self->q = NULL;
    Queue_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
Queue_global_queue(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    (void)cls;
    static char *kwlist[] = {"priority", NULL};
    long priority = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|l:global_queue", kwlist,
                                     &priority)) {
        return NULL;
    }
    dk_queue_t *q = dk_queue_global(priority);
    if (q == NULL) {
        PyErr_Format(PyExc_ValueError,
                     "unknown priority %ld: use a QUEUE_PRIORITY_* or "
                     "QOS_CLASS_* constant",
                     priority);
        return NULL;
    }
    static const long order[5] = {0x21, 0x19, 0x15, 0x11, 0x09};
    for (int i = 0; i < 5; i++) {
        if (dk_queue_global(order[i]) == q) {
            if (the_state->globals[i] == NULL) {
                the_state->globals[i] =
                    queue_wrap(the_state->queue_type, q, true);
                if (the_state->globals[i] == NULL) {
                    return NULL;
                }
            }
            return Py_NewRef(the_state->globals[i]);
        }
    }
    PyErr_SetString(PyExc_SystemError, "global queue not found");
    return NULL;
}

static PyObject *
Queue_main_queue(PyObject *cls, PyObject *unused)
{
    (void)cls;
    (void)unused;
    if (the_state->main_queue == NULL) {
        the_state->main_queue =
            queue_wrap(the_state->queue_type, dk_queue_main(), true);
        if (the_state->main_queue == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(the_state->main_queue);
}

static PyObject *
submit(QueueObject *self, PyObject *func, bool barrier)
{
    if (check_callable(func, "func") < 0) {
        return NULL;
    }
    Py_INCREF(func);
    int rc = barrier ? dk_queue_barrier_async_f(self->q, func, call_async)
                     : dk_queue_async_f(self->q, func, call_async);
    if (rc < 0) {
        Py_DECREF(func);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Queue_run_async(QueueObject *self, PyObject *func)
{
    return submit(self, func, false);
}

static PyObject *
Queue_barrier_async(QueueObject *self, PyObject *func)
{
    return submit(self, func, true);
}

/* submit(fn, /, *args, **kwargs) -> concurrent.futures.Future (futures.c);
 * a workloop also takes qos=. */
static PyObject *
Queue_submit(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    return dkpy_queue_submit(self->q, dk_queue_is_workloop(self->q), args,
                             nargs, kwnames);
}

/* A synchronous call that could not run inline: shared between the
 * waiting caller and the trampoline, freed by whichever finishes last.
 * `state` is only read and written with the GIL held. */
enum { SYNC_PENDING, SYNC_DONE, SYNC_ABANDONED };

struct sync_call {
    PyObject *func;
    PyObject *exc_type, *exc_value, *exc_tb;
    dk_semaphore_t *done;
    int state;
    uint32_t refs;
};

static void
sync_call_unref(struct sync_call *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        dk_release(c->done);
        PyMem_RawFree(c);
    }
}

static void
call_sync(void *ctx)
{
    struct sync_call *c = ctx;
    dkpy_gil_t g;
    if (dkpy_enter(&g)) {
        PyObject *r = PyObject_CallNoArgs(c->func);
        if (r == NULL) {
            if (c->state == SYNC_ABANDONED) {
                report_callback_error(c->func);
            } else {
                PyErr_Fetch(&c->exc_type, &c->exc_value, &c->exc_tb);
            }
        } else {
            Py_DECREF(r);
        }
        if (c->state == SYNC_PENDING) {
            c->state = SYNC_DONE;
        }
        Py_CLEAR(c->func);
        dkpy_leave(&g);
    }
    dk_semaphore_signal(c->done);
    sync_call_unref(c);
}

/* Wait for a sync call with the GIL released; Ctrl-C abandons it (the
 * callable still runs later; its exception is then reported). */
static PyObject *
sync_wait(dk_queue_t *q, struct sync_call *c)
{
    bool drain_main = q == dk_queue_main() && dk_is_main_thread();
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        if (drain_main) {
            long n = dk_main_drain(dk_now() + 50 * DK_NSEC_PER_MSEC);
            rc = dk_semaphore_wait(c->done, 0);
            if (rc != 0 && n == -EINTR) {
                rc = -EINTR;
            }
        } else {
            rc = dk_semaphore_wait_interruptible(c->done,
                                                 dkpy_slice_end(UINT64_MAX));
        }
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            if (c->state == SYNC_DONE) {
                Py_XDECREF(c->exc_type);
                Py_XDECREF(c->exc_value);
                Py_XDECREF(c->exc_tb);
            } else {
                c->state = SYNC_ABANDONED;
            }
            sync_call_unref(c);
            return NULL;
        }
    }
    PyObject *type = c->exc_type, *value = c->exc_value, *tb = c->exc_tb;
    sync_call_unref(c);
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *run_sync_qos(QueueObject *self, PyObject *func, bool barrier,
                              int qos);

static PyObject *
run_sync(QueueObject *self, PyObject *func, bool barrier)
{
    return run_sync_qos(self, func, barrier, -1);
}

/* qos >= 0: submit with that QoS class when the call cannot run inline. */
static PyObject *
run_sync_qos(QueueObject *self, PyObject *func, bool barrier, int qos)
{
    if (check_callable(func, "func") < 0) {
        return NULL;
    }
    dk_queue_t *q = self->q;
    bool cq_barrier =
        barrier && dk_queue_is_concurrent(q) && !dk_queue_is_global(q);
    if (dk_queue_sync_would_deadlock(q, cq_barrier)) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s() on '%s' from a task running on it (or on a queue "
                     "it targets) would deadlock",
                     barrier ? "barrier_sync" : "run_sync", dk_queue_label(q));
        return NULL;
    }
    dk_sync_frame_t frame;
    if (dk_queue_sync_enter(q, cq_barrier, &frame) == 0) {
        /* Idle queue: run it right here, GIL held, as GCD does. */
        PyObject *r = PyObject_CallNoArgs(func);
        dk_queue_sync_exit(q, &frame);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    struct sync_call *c = PyMem_RawCalloc(1, sizeof *c);
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    c->done = dk_semaphore_create(0);
    if (c->done == NULL) {
        PyMem_RawFree(c);
        return PyErr_NoMemory();
    }
    c->func = Py_NewRef(func);
    c->refs = 2;
    int rc = cq_barrier ? dk_queue_barrier_async_f(q, c, call_sync)
             : qos >= 0 ? dk_queue_async_qos_f(q, qos, c, call_sync)
                        : dk_queue_async_f(q, c, call_sync);
    if (rc < 0) {
        Py_DECREF(func);
        dk_release(c->done);
        PyMem_RawFree(c);
        return dkpy_raise_errno(rc);
    }
    return sync_wait(q, c);
}

static PyObject *
Queue_run_sync(QueueObject *self, PyObject *func)
{
    return run_sync(self, func, false);
}

static PyObject *
Queue_barrier_sync(QueueObject *self, PyObject *func)
{
    return run_sync(self, func, true);
}

static PyObject *
Queue_after(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    static const char *names[] = {"delay_seconds", "func"};
    PyObject *vals[2] = {NULL, NULL};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError,
                        "after() takes 2 arguments (delay_seconds, func)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        vals[i] = args[i];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
        int slot = -1;
        for (int j = 0; j < 2; j++) {
            if (k != NULL && strcmp(k, names[j]) == 0) {
                slot = j;
            }
        }
        if (slot < 0 || vals[slot] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "after() got an unexpected or "
                         "repeated keyword argument '%s'",
                         k ? k : "?");
            return NULL;
        }
        vals[slot] = args[nargs + i];
    }
    if (vals[0] == NULL || vals[1] == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "after() takes 2 arguments (delay_seconds, func)");
        return NULL;
    }
    int64_t ns;
    if (seconds_to_ns(vals[0], "delay_seconds", &ns) < 0 ||
        check_callable(vals[1], "func") < 0) {
        return NULL;
    }
    Py_INCREF(vals[1]);
    int rc = dk_queue_after_f(self->q, dk_time(DK_TIME_NOW, ns), vals[1],
                              call_async);
    if (rc < 0) {
        Py_DECREF(vals[1]);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Queue_suspend(QueueObject *self, PyObject *unused)
{
    (void)unused;
    dk_queue_suspend(self->q);
    Py_RETURN_NONE;
}

static PyObject *
Queue_resume(QueueObject *self, PyObject *unused)
{
    (void)unused;
    if (dk_queue_resume(self->q) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "resume() without a matching suspend() "
                        "(over-resume)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Queue_activate(QueueObject *self, PyObject *unused)
{
    (void)unused;
    if (dk_queue_activate(self->q) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Queue was not created as inactive");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Queue_set_target_queue(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"target", "queue", NULL};
    PyObject *target = NULL, *queue = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:set_target_queue",
                                     kwlist, &target, &queue)) {
        return NULL;
    }
    if (target == Py_None && queue != NULL) {
        target = NULL; /* the default, as the text signature says */
    }
    if (target != NULL && queue != NULL && queue != Py_None) {
        PyErr_SetString(PyExc_TypeError, "give target or queue, not both");
        return NULL;
    }
    if (target == NULL) {
        target = queue != NULL ? queue : Py_None;
    }
    dk_queue_t *t;
    if (parse_target(target, &t) < 0) {
        return NULL;
    }
    int rc = dk_queue_set_target(self->q, t);
    switch (rc) {
    case 0:
        Py_RETURN_NONE;
    case -EPERM:
        PyErr_SetString(PyExc_RuntimeError,
                        dk_queue_is_global(self->q) ||
                                self->q == dk_queue_main()
                            ? "the target of a global or main queue cannot "
                              "be changed"
                            : "cannot change the target of a queue after it "
                              "has been activated");
        return NULL;
    case -EBUSY:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot change the target of a queue while it has "
                        "work queued or running");
        return NULL;
    case -ELOOP:
        PyErr_SetString(PyExc_ValueError,
                        "target queue hierarchy would contain a cycle");
        return NULL;
    default:
        return dkpy_raise_errno(rc);
    }
}

static PyObject *
Queue_set_context(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"value", "finalizer", NULL};
    PyObject *value, *finalizer = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:set_context", kwlist,
                                     &value, &finalizer)) {
        return NULL;
    }
    if (finalizer != Py_None && check_callable(finalizer, "finalizer") < 0) {
        return NULL;
    }
    PyObject *old_value = self->context, *old_finalizer = self->finalizer;
    self->context = value == Py_None ? NULL : Py_NewRef(value);
    self->finalizer = finalizer == Py_None ? NULL : Py_NewRef(finalizer);
    PyObject *result = Py_None;
    if (old_finalizer != NULL) {
        /* Replacing a context finalizes the old one now, with no arguments
         * (cygcd does both). */
        PyObject *r = PyObject_CallNoArgs(old_finalizer);
        if (r == NULL) {
            result = NULL;
        } else {
            Py_DECREF(r);
        }
    }
    Py_XDECREF(old_value);
    Py_XDECREF(old_finalizer);
    return Py_XNewRef(result);
}

static PyObject *
Queue_get_context(QueueObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self->context != NULL ? self->context : Py_None);
}

static PyObject *
Queue_set_specific(QueueObject *self, PyObject *args)
{
    PyObject *key, *value;
    if (!PyArg_ParseTuple(args, "OO:set_specific", &key, &value)) {
        return NULL;
    }
    if (self->specifics == NULL) {
        if (value == Py_None) {
            Py_RETURN_NONE;
        }
        self->specifics = PyDict_New();
        if (self->specifics == NULL) {
            return NULL;
        }
        int rc = dk_queue_set_specific(self->q, &specifics_key,
                                       self->specifics, NULL);
        if (rc < 0) {
            Py_CLEAR(self->specifics);
            return dkpy_raise_errno(rc);
        }
    }
    if (value == Py_None) {
        if (PyDict_DelItem(self->specifics, key) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
                return NULL;
            }
            PyErr_Clear();
        }
        Py_RETURN_NONE;
    }
    if (PyDict_SetItem(self->specifics, key, value) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
lookup_specific(PyObject *dict, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (v == NULL && PyErr_Occurred()) {
        return NULL;
    }
    return v;
}

static PyObject *
Queue_get_specific(QueueObject *self, PyObject *key)
{
    if (self->specifics == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *v = lookup_specific(self->specifics, key);
    if (v == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return Py_NewRef(v);
}

static PyObject *
Queue_get_label(QueueObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(dk_queue_label(self->q));
}

static PyObject *
Queue_get_is_inactive(QueueObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(dk_queue_is_inactive(self->q));
}

static PyObject *
Queue_get_is_concurrent(QueueObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(dk_queue_is_concurrent(self->q));
}

static PyObject *
Queue_repr(QueueObject *self)
{
    return PyUnicode_FromFormat(
        "<dispatchkit.Queue '%s' %s%s>", dk_queue_label(self->q),
        dk_queue_is_concurrent(self->q) ? "concurrent" : "serial",
        dk_queue_is_inactive(self->q) ? " inactive" : "");
}

static PyMethodDef Queue_methods[] = {
    {"global_queue", (PyCFunction)(void (*)(void))Queue_global_queue,
     METH_VARARGS | METH_KEYWORDS | METH_STATIC,
     "global_queue(priority=0)\n--\n\nThe global concurrent queue for "
     "a QUEUE_PRIORITY_* or QOS_CLASS_* value."},
    {"main_queue", (PyCFunction)Queue_main_queue, METH_NOARGS | METH_STATIC,
     "main_queue()\n--\n\nThe main queue, drained by the main thread "
     "(dispatchkit.main, drain_main_queue)."},
    {"run_async", (PyCFunction)Queue_run_async, METH_O,
     "run_async($self, func, /)\n--\n\nSubmit func for asynchronous "
     "execution."},
    {"submit", (PyCFunction)(void (*)(void))Queue_submit,
     METH_FASTCALL | METH_KEYWORDS,
     "submit($self, fn, /, *args, **kwargs)\n--\n\n"
     "Run fn(*args, **kwargs) on the queue; a concurrent.futures.Future."},
    {"run_sync", (PyCFunction)Queue_run_sync, METH_O,
     "run_sync($self, func, /)\n--\n\nRun func on the queue and wait; "
     "re-raises its "
     "exception."},
    {"barrier_async", (PyCFunction)Queue_barrier_async, METH_O,
     "barrier_async($self, func, /)\n--\n\nSubmit a barrier (exclusive on "
     "concurrent "
     "queues)."},
    {"barrier_sync", (PyCFunction)Queue_barrier_sync, METH_O,
     "barrier_sync($self, func, /)\n--\n\nRun a barrier and wait; re-raises "
     "its "
     "exception."},
    {"after", (PyCFunction)(void (*)(void))Queue_after,
     METH_FASTCALL | METH_KEYWORDS,
     "after($self, delay_seconds, func)\n--\n\nSubmit func after a delay."},
    {"suspend", (PyCFunction)Queue_suspend, METH_NOARGS,
     "suspend($self, /)\n--\n\nStop starting work items (counts nest)."},
    {"resume", (PyCFunction)Queue_resume, METH_NOARGS,
     "resume($self, /)\n--\n\nUndo one suspend(); RuntimeError on "
     "over-resume."},
    {"activate", (PyCFunction)Queue_activate, METH_NOARGS,
     "activate($self, /)\n--\n\nActivate a queue created with inactive=True."},
    {"set_target_queue", (PyCFunction)(void (*)(void))Queue_set_target_queue,
     METH_VARARGS | METH_KEYWORDS,
     "set_target_queue($self, target=None, queue=None)\n--\n\nSet the "
     "target queue (None: default); queue= is another spelling of target."},
    {"set_context", (PyCFunction)(void (*)(void))Queue_set_context,
     METH_VARARGS | METH_KEYWORDS,
     "set_context($self, value, finalizer=None)\n--\n\nAttach a value; "
     "finalizer() (no arguments) runs when it is replaced or the queue goes "
     "away."},
    {"get_context", (PyCFunction)Queue_get_context, METH_NOARGS,
     "get_context($self, /)\n--\n\nThe value set by set_context, or None."},
    {"set_specific", (PyCFunction)Queue_set_specific, METH_VARARGS,
     "set_specific($self, key, value, /)\n--\n\nSet queue-specific data (None "
     "removes)."},
    {"get_specific", (PyCFunction)Queue_get_specific, METH_O,
     "get_specific($self, key, /)\n--\n\nQueue-specific data of this queue, "
     "or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Queue_getset[] = {
    {"label", (getter)Queue_get_label, NULL, "The queue's label.", NULL},
    {"is_inactive", (getter)Queue_get_is_inactive, NULL,
     "True until an inactive queue is activated.", NULL},
    {"is_concurrent", (getter)Queue_get_is_concurrent, NULL,
     "True for concurrent (and global) queues.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Queue_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(QueueObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Queue_slots[] = {
    {Py_tp_new, Queue_new},
    {Py_tp_dealloc, Queue_dealloc},
    {Py_tp_traverse, Queue_traverse},
    {Py_tp_clear, Queue_clear},
    {Py_tp_methods, Queue_methods},
    {Py_tp_getset, Queue_getset},
    {Py_tp_members, Queue_members},
    {Py_tp_repr, Queue_repr},
    {Py_tp_doc, "Queue(label=None, concurrent=False, qos=0, "
                "relative_priority=0, target=None, inactive=False)\n--\n\n"
                "A dispatch queue: serial (FIFO, one item at a time) or "
                "concurrent."},
    {0, NULL},
};

static PyType_Spec Queue_spec = {
    .name = "dispatchkit.Queue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Queue_slots,
};

int
dkpy_queue_arg(PyObject *obj, const char *what, dk_queue_t **out)
{
    if (obj == NULL || obj == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!PyObject_TypeCheck(obj, the_state->queue_type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a Queue or None, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = ((QueueObject *)obj)->q;
    return 0;
}

static QueueObject *
as_queue(PyObject *obj, const char *what)
{
    if (!PyObject_TypeCheck(obj, the_state->queue_type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a Queue, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (QueueObject *)obj;
}

/* ---- Workloop ------------------------------------------------------- */

static PyObject *
Workloop_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"label", "inactive", NULL};
    PyObject *label;
    int inactive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:Workloop", kwlist,
                                     &label, &inactive)) {
        return NULL;
    }
    const char *clabel = NULL;
    if (label != Py_None) {
        if (!PyUnicode_Check(label)) {
            PyErr_Format(PyExc_TypeError,
                         "label must be str or None, not %.100s",
                         Py_TYPE(label)->tp_name);
            return NULL;
        }
        clabel = PyUnicode_AsUTF8(label);
        if (clabel == NULL) {
            return NULL;
        }
    }
    dk_queue_t *q = dk_queue_create(
        clabel, DK_QUEUE_WORKLOOP | (inactive ? DK_QUEUE_INACTIVE : 0), 0, 0,
        NULL);
    if (q == NULL) {
        return PyErr_NoMemory();
    }
    QueueObject *self = (QueueObject *)queue_wrap(type, q, false);
    if (self != NULL) {
        self->created_inactive = inactive != 0;
    }
    return (PyObject *)self;
}

static int
workloop_submit_args(QueueObject *self, PyObject *args, PyObject *kwargs,
                     const char *name, PyObject **func, int *qos)
{
    static char *kwlist[] = {"func", "qos", NULL};
    long q = 0x15;
    if (dk_queue_is_inactive(self->q)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Cannot submit work to an inactive workloop");
        return -1;
    }
    char fmt[32];
    snprintf(fmt, sizeof fmt, "O|l:%s", name);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, fmt, kwlist, func, &q)) {
        return -1;
    }
    if (check_callable(*func, "func") < 0) {
        return -1;
    }
    if (!valid_qos(q)) {
        PyErr_Format(PyExc_ValueError,
                     "qos must be one of the QOS_CLASS_* constants, not %ld",
                     q);
        return -1;
    }
    *qos = (int)q;
    return 0;
}

static PyObject *
Workloop_run_async(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *func;
    int qos;
    if (workloop_submit_args(self, args, kwargs, "run_async", &func, &qos) <
        0) {
        return NULL;
    }
    Py_INCREF(func);
    int rc = dk_queue_async_qos_f(self->q, qos, func, call_async);
    if (rc < 0) {
        Py_DECREF(func);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Workloop_run_sync(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *func;
    int qos;
    if (workloop_submit_args(self, args, kwargs, "run_sync", &func, &qos) <
        0) {
        return NULL;
    }
    return run_sync_qos(self, func, false, qos);
}

static PyObject *
Workloop_activate(QueueObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->created_inactive || dk_queue_activate(self->q) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Workloop was not created as inactive");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Workloop_set_autorelease_frequency(QueueObject *self, PyObject *arg)
{
    long freq = dkpy_index_as_long(arg);
    if (freq == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!dk_queue_is_inactive(self->q)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Autorelease frequency can only be set on inactive "
                        "workloops");
        return NULL;
    }
    if (freq < 0 || freq > 2) {
        PyErr_Format(PyExc_ValueError,
                     "frequency must be an AUTORELEASE_FREQUENCY_* constant, "
                     "not %ld",
                     freq);
        return NULL;
    }
    self->autorelease = (unsigned)freq; /* no autorelease pools on Linux */
    Py_RETURN_NONE;
}

static PyObject *
Workloop_repr(QueueObject *self)
{
    return PyUnicode_FromFormat(
        "<dispatchkit.Workloop '%s'%s>", dk_queue_label(self->q),
        dk_queue_is_inactive(self->q) ? " inactive" : "");
}

static PyMethodDef Workloop_methods[] = {
    {"run_async", (PyCFunction)(void (*)(void))Workloop_run_async,
     METH_VARARGS | METH_KEYWORDS,
     "run_async($self, func, qos=0x15)\n--\n\nSubmit func; pending work "
     "runs highest QoS first (qos is a dispatchkit extension)."},
    {"submit", (PyCFunction)(void (*)(void))Queue_submit,
     METH_FASTCALL | METH_KEYWORDS,
     "submit($self, fn, /, *args, qos=0x15, **kwargs)\n--\n\n"
     "Run fn(*args, **kwargs) on the workloop at qos; a "
     "concurrent.futures.Future."},
    {"run_sync", (PyCFunction)(void (*)(void))Workloop_run_sync,
     METH_VARARGS | METH_KEYWORDS,
     "run_sync($self, func, qos=0x15)\n--\n\nRun func on the workloop and "
     "wait; re-raises its exception."},
    {"activate", (PyCFunction)Workloop_activate, METH_NOARGS,
     "activate($self, /)\n--\n\nActivate a workloop created with "
     "inactive=True."},
    {"set_autorelease_frequency",
     (PyCFunction)Workloop_set_autorelease_frequency, METH_O,
     "set_autorelease_frequency($self, frequency, /)\n--\n\nAccepted before "
     "activate() (there "
     "are no autorelease pools on Linux)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Workloop_getset[] = {
    {"label", (getter)Queue_get_label, NULL, "The workloop's label.", NULL},
    {"is_inactive", (getter)Queue_get_is_inactive, NULL,
     "True until an inactive workloop is activated.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Workloop_slots[] = {
    {Py_tp_new, Workloop_new},
    {Py_tp_dealloc, Queue_dealloc},
    {Py_tp_traverse, Queue_traverse},
    {Py_tp_clear, Queue_clear},
    {Py_tp_methods, Workloop_methods},
    {Py_tp_getset, Workloop_getset},
    {Py_tp_members, Queue_members},
    {Py_tp_repr, Workloop_repr},
    {Py_tp_doc, "Workloop(label, inactive=False)\n--\n\nA serial queue whose "
                "pending work runs highest QoS first."},
    {0, NULL},
};

static PyType_Spec Workloop_spec = {
    .name = "dispatchkit.Workloop",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Workloop_slots,
};

/*
 * GIL hand-off after a wake-up. A thread woken by Semaphore.signal from
 * another Python thread finds the GIL still held by that thread, sleeps on
 * the GIL's condition variable and is woken again by a futex when the
 * signaller lets go: a second sleep and wake-up on every hand-off, which
 * costs more than the semaphore's own (spinning) hand-off. So the binding
 * counts the times one of its blocking waits releases the GIL
 * (`gil_releases`), Semaphore.signal records the count it saw while
 * holding the GIL, and a waiter that got its unit watches the count, with
 * the GIL still released, for at most GIL_SPIN_NS before it asks for the
 * GIL. In a ping-pong the signaller's next wait releases the GIL within a
 * microsecond or two, and the waiter then takes it without sleeping.
 *
 * It is a hint and needs no ordering: a signaller that keeps the GIL, or
 * lets it go some other way, costs the waiter at most GIL_SPIN_NS of CPU
 * before it asks for the GIL as usual; a unit that came from C, or from a
 * signal older than the waiter's own release, shows a count that has
 * already moved on and costs nothing. With one CPU the waiter never spins
 * (the GIL holder could not run meanwhile). As in the core's semaphore,
 * the budget adapts: a watch that fails halves it (to 0 below
 * GIL_SPIN_MIN_NS), one that succeeds restores it, and every
 * GIL_SPIN_PROBE_EVERY-th watch tries the full budget, so that when the
 * signaller shares our CPU (a loaded machine) we stop holding it off.
 */
#define GIL_SPIN_NS 20000u
#define GIL_SPIN_MIN_NS 1000u
#define GIL_SPIN_PROBE_EVERY 64u

static uint32_t gil_releases;
static bool gil_spin_useful; /* set by exec: more than one CPU to run on */
static uint32_t gil_spin_ns = GIL_SPIN_NS; /* current budget (a hint) */
static uint32_t gil_spins;                 /* watches so far, for probes */

/* Call right after releasing the GIL before a blocking wait. */
static void
note_gil_released(void)
{
    dk_atomic_add_relaxed(&gil_releases, 1);
}

static uint32_t
gil_release_count(void)
{
    return dk_atomic_load_relaxed(&gil_releases);
}

/* With the GIL released: until the count moves on from `seen`, at most
 * the current budget. Reads the vDSO clock every 8 pauses (dk_now is the
 * vDSO's CLOCK_MONOTONIC), never a syscall. */
static void
await_gil_release(uint32_t seen)
{
    if (!gil_spin_useful || gil_release_count() != seen) {
        return;
    }
    uint32_t kept = dk_atomic_load_relaxed(&gil_spin_ns);
    uint32_t budget = kept;
    if (dk_atomic_add_relaxed(&gil_spins, 1) % GIL_SPIN_PROBE_EVERY == 0) {
        budget = GIL_SPIN_NS;
    }
    if (budget == 0) {
        return;
    }
    uint64_t until = dk_now() + budget;
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (gil_release_count() != seen) {
            dk_atomic_store_relaxed(&gil_spin_ns, GIL_SPIN_NS);
            return;
        }
        if (i % 8 == 0 && dk_now() >= until) {
            uint32_t half = kept / 2;
            dk_atomic_store_relaxed(&gil_spin_ns,
                                    half >= GIL_SPIN_MIN_NS ? half : 0);
            return;
        }
    }
}

/* More than one CPU in this process's affinity mask (from Python's
 * os.sched_getaffinity, or os.cpu_count where it is missing); false on
 * any error, which only turns the hint off. */
static bool
several_cpus(void)
{
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL) {
        PyErr_Clear();
        return false;
    }
    long n = 0;
    PyObject *r = PyObject_CallMethod(os, "sched_getaffinity", "i", 0);
    if (r != NULL) {
        n = (long)PyObject_Length(r);
    } else {
        PyErr_Clear();
        r = PyObject_CallMethod(os, "cpu_count", NULL);
        if (r != NULL && PyLong_Check(r)) {
            n = PyLong_AsLong(r);
        }
    }
    Py_XDECREF(r);
    Py_DECREF(os);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return false;
    }
    return n > 1;
}

/* Wait with the GIL released against a deadline, running signal handlers
 * on EINTR: True when done, False on timeout, NULL if a handler raised. */
static PyObject *
interruptible_wait(int (*wait)(void *obj, uint64_t deadline), void *obj,
                   uint64_t deadline)
{
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        note_gil_released();
        rc = wait(obj, dkpy_slice_end(deadline));
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            Py_RETURN_TRUE;
        }
        if (rc == -ETIMEDOUT && !dkpy_wait_goes_on(deadline)) {
            Py_RETURN_FALSE;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
}

static int
group_wait_adapter(void *g, uint64_t deadline)
{
    return dk_group_wait_interruptible(g, deadline);
}

typedef struct {
    PyObject_HEAD
    dk_semaphore_t *s;
    uint32_t signal_seen; /* gil_releases at the last Python signal */
} SemaphoreObject;

/* Runs with the GIL released; see "GIL hand-off" above. */
static int
semaphore_wait_adapter(void *obj, uint64_t deadline)
{
    SemaphoreObject *self = obj;
    int rc = dk_semaphore_wait_interruptible(self->s, deadline);
    if (rc == 0) {
        /* Written before the signal that gave us our unit (if it came
         * from Python); a stale value only makes the spin end at once. */
        await_gil_release(dk_atomic_load_relaxed(&self->signal_seen));
    }
    return rc;
}

/* ---- Group ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_group_t *g;
} GroupObject;

static PyObject *
Group_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (!dkpy_no_args("Group", args, kwargs)) {
        return NULL;
    }
    GroupObject *self = (GroupObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->g = dk_group_create();
    if (self->g == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Group_dealloc(GroupObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->g != NULL) {
        long n = dk_group_count(self->g);
        if (n > 0) {
            /* Items still running hold their own references; only
             * unmatched enter() calls can leave the count up. libdispatch
             * crashes here; we report it and keep the group alive. */
            PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "Group deallocated with %ld unmatched enter() "
                             "call(s)",
                             n);
            if (PyErr_Occurred()) {
                PyErr_WriteUnraisable((PyObject *)self);
            }
        } else {
            dk_release(self->g);
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
Group_run_async(GroupObject *self, PyObject *args)
{
    PyObject *queue, *func;
    if (!PyArg_ParseTuple(args, "OO:run_async", &queue, &func)) {
        return NULL;
    }
    QueueObject *q = as_queue(queue, "queue");
    if (q == NULL || check_callable(func, "func") < 0) {
        return NULL;
    }
    Py_INCREF(func);
    int rc = dk_group_async_f(self->g, q->q, func, call_async);
    if (rc < 0) {
        Py_DECREF(func);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Group_notify(GroupObject *self, PyObject *args)
{
    PyObject *queue, *func;
    if (!PyArg_ParseTuple(args, "OO:notify", &queue, &func)) {
        return NULL;
    }
    QueueObject *q = as_queue(queue, "queue");
    if (q == NULL || check_callable(func, "func") < 0) {
        return NULL;
    }
    Py_INCREF(func);
    int rc = dk_group_notify_f(self->g, q->q, func, call_async);
    if (rc < 0) {
        Py_DECREF(func);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Group_wait(GroupObject *self, PyObject *args, PyObject *kwargs)
{
    uint64_t deadline;
    if (parse_wait_timeout(args, kwargs, &deadline) < 0) {
        return NULL;
    }
    if (dk_group_wait(self->g, 0) == 0) {
        Py_RETURN_TRUE;
    }
    if (deadline == 0) {
        Py_RETURN_FALSE;
    }
    return interruptible_wait(group_wait_adapter, self->g, deadline);
}

static PyObject *
Group_enter(GroupObject *self, PyObject *unused)
{
    (void)unused;
    dk_group_enter(self->g);
    Py_RETURN_NONE;
}

static PyObject *
Group_leave(GroupObject *self, PyObject *unused)
{
    (void)unused;
    if (dk_group_leave(self->g) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "leave() without a matching enter() (unbalanced)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Group_get_count(GroupObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(dk_group_count(self->g));
}

/* `with group:` counts the block as one task: enter(), then leave(). */
static PyObject *
Group_cm_enter(GroupObject *self, PyObject *unused)
{
    (void)unused;
    dk_group_enter(self->g);
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *
Group_cm_exit(GroupObject *self, PyObject *args)
{
    (void)args;
    return Group_leave(self, NULL);
}

static PyObject *
Group_repr(GroupObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.Group count=%ld>",
                                (long)dk_group_count(self->g));
}

static PyMethodDef Group_methods[] = {
    {"run_async", (PyCFunction)Group_run_async, METH_VARARGS,
     "run_async($self, queue, func, /)\n--\n\nSubmit func to queue as part of "
     "the group."},
    {"wait", (PyCFunction)(void (*)(void))Group_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait($self, timeout=None, timeout_seconds=None)\n--\n\nWait until "
     "every task has finished; False on timeout (seconds; None or negative "
     "waits forever). timeout_seconds is cygcd's name for timeout."},
    {"notify", (PyCFunction)Group_notify, METH_VARARGS,
     "notify($self, queue, func, /)\n--\n\nSubmit func to queue when the "
     "group empties."},
    {"enter", (PyCFunction)Group_enter, METH_NOARGS,
     "enter($self, /)\n--\n\nCount one more outstanding task."},
    {"leave", (PyCFunction)Group_leave, METH_NOARGS,
     "leave($self, /)\n--\n\nFinish one task counted by enter()."},
    {"__enter__", (PyCFunction)Group_cm_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nenter(); returns the group."},
    {"__exit__", (PyCFunction)Group_cm_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nleave()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Group_getset[] = {
    {"count", (getter)Group_get_count, NULL, "Outstanding tasks (a snapshot).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Group_slots[] = {
    {Py_tp_new, Group_new},
    {Py_tp_dealloc, Group_dealloc},
    {Py_tp_methods, Group_methods},
    {Py_tp_getset, Group_getset},
    {Py_tp_repr, Group_repr},
    {Py_tp_doc, "Group()\n--\n\nTrack completion of a set of tasks."},
    {0, NULL},
};

static PyType_Spec Group_spec = {
    .name = "dispatchkit.Group",
    .basicsize = sizeof(GroupObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Group_slots,
};

/* ---- Semaphore ------------------------------------------------------ */

static PyObject *
Semaphore_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"value", NULL};
    Py_ssize_t value = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|n:Semaphore", kwlist,
                                     &value)) {
        return NULL;
    }
    if (value < 0) {
        PyErr_SetString(PyExc_ValueError, "Semaphore value must be >= 0");
        return NULL;
    }
    SemaphoreObject *self = (SemaphoreObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->s = dk_semaphore_create((long)value);
    if (self->s == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Semaphore_dealloc(SemaphoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->s != NULL) {
        dk_release(self->s);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
Semaphore_wait(SemaphoreObject *self, PyObject *args, PyObject *kwargs)
{
    uint64_t deadline;
    if (parse_wait_timeout(args, kwargs, &deadline) < 0) {
        return NULL;
    }
    /* Try without releasing the GIL first: no syscall when available. */
    if (dk_semaphore_wait(self->s, 0) == 0) {
        Py_RETURN_TRUE;
    }
    if (deadline == 0) {
        Py_RETURN_FALSE;
    }
    return interruptible_wait(semaphore_wait_adapter, self, deadline);
}

static PyObject *
Semaphore_signal(SemaphoreObject *self, PyObject *unused)
{
    (void)unused;
    /* We hold the GIL: a waiter we wake watches for its next release. */
    dk_atomic_store_relaxed(&self->signal_seen, gil_release_count());
    return PyBool_FromLong(dk_semaphore_signal(self->s));
}

static PyObject *
Semaphore_get_value(SemaphoreObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(dk_semaphore_value(self->s));
}

/* `with sem:` as threading.Semaphore: wait() without a timeout on entry
 * (returns True), signal() on exit. */
static PyObject *
Semaphore_cm_enter(SemaphoreObject *self, PyObject *unused)
{
    (void)unused;
    if (dk_semaphore_wait(self->s, 0) == 0) {
        Py_RETURN_TRUE;
    }
    return interruptible_wait(semaphore_wait_adapter, self, UINT64_MAX);
}

static PyObject *
Semaphore_cm_exit(SemaphoreObject *self, PyObject *args)
{
    (void)args;
    dk_semaphore_signal(self->s);
    Py_RETURN_NONE;
}

static PyObject *
Semaphore_repr(SemaphoreObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.Semaphore value=%ld>",
                                (long)dk_semaphore_value(self->s));
}

static PyMethodDef Semaphore_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))Semaphore_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait($self, timeout=None, timeout_seconds=None)\n--\n\nTake one "
     "unit, blocking while none is available; False on timeout (seconds; "
     "None or negative waits forever, 0 polls). timeout_seconds is "
     "cygcd's name for timeout."},
    {"signal", (PyCFunction)Semaphore_signal, METH_NOARGS,
     "signal($self, /)\n--\n\nRelease one unit; True if a waiter was woken."},
    {"__enter__", (PyCFunction)Semaphore_cm_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nwait() without a timeout; returns True."},
    {"__exit__", (PyCFunction)Semaphore_cm_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nsignal()."},
    {"__aenter__", (PyCFunction)dkpy_lock_aenter, METH_NOARGS,
     "__aenter__($self, /)\n--\n\nasync with: acquire through "
     "dispatchkit.asyncio (the futex watcher; no thread parked); returns "
     "True."},
    {"__aexit__", (PyCFunction)dkpy_lock_aexit, METH_VARARGS,
     "__aexit__($self, /, *exc_info)\n--\n\nsignal()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Semaphore_getset[] = {
    {"value", (getter)Semaphore_get_value, NULL,
     "Current value (negative: that many waiters).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Semaphore_slots[] = {
    {Py_tp_new, Semaphore_new},
    {Py_tp_dealloc, Semaphore_dealloc},
    {Py_tp_methods, Semaphore_methods},
    {Py_tp_getset, Semaphore_getset},
    {Py_tp_repr, Semaphore_repr},
    {Py_tp_doc, "Semaphore(value=0)\n--\n\nA counting semaphore."},
    {0, NULL},
};

static PyType_Spec Semaphore_spec = {
    .name = "dispatchkit.Semaphore",
    .basicsize = sizeof(SemaphoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Semaphore_slots,
};

/* ---- Once ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_once_t pred;
    unsigned long owner; /* thread running the function (GIL held) */
} OnceObject;

struct once_call {
    PyObject *func;
    PyObject *exc_type, *exc_value, *exc_tb;
    OnceObject *self;
};

static void
once_trampoline(void *ctx)
{
    struct once_call *c = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    c->self->owner = PyThread_get_thread_ident();
    PyObject *r = PyObject_CallNoArgs(c->func);
    if (r == NULL) {
        PyErr_Fetch(&c->exc_type, &c->exc_value, &c->exc_tb);
    } else {
        Py_DECREF(r);
    }
    c->self->owner = 0;
    PyGILState_Release(g);
}

static PyObject *
Once_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (!dkpy_no_args("Once", args, kwargs)) {
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static void
Once_dealloc(OnceObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
Once_call(OnceObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *func;
    if (!dkpy_no_args("Once", NULL, kwargs) ||
        !PyArg_ParseTuple(args, "O:Once", &func)) {
        return NULL;
    }
    if (check_callable(func, "func") < 0) {
        return NULL;
    }
    if (dk_once_done(&self->pred)) {
        Py_RETURN_NONE;
    }
    if (self->owner == PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Once called again from inside its own function "
                        "(it would deadlock)");
        return NULL;
    }
    struct once_call c = {func, NULL, NULL, NULL, self};
    Py_INCREF(self);
    Py_BEGIN_ALLOW_THREADS
    dk_once_f(&self->pred, &c, once_trampoline);
    Py_END_ALLOW_THREADS
    Py_DECREF(self);
    if (c.exc_type != NULL) {
        PyErr_Restore(c.exc_type, c.exc_value, c.exc_tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Once_get_done(OnceObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(dk_once_done(&self->pred));
}

static PyObject *
Once_repr(OnceObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.Once done=%s>",
                                dk_once_done(&self->pred) ? "True" : "False");
}

static PyMethodDef Once_methods[] = {
    /* Over the tp_call slot's (*args, **kwargs) wrapper: the same
     * function, with a text signature. */
    {"__call__", (PyCFunction)(void (*)(void))Once_call,
     METH_VARARGS | METH_KEYWORDS | METH_COEXIST,
     "__call__($self, func, /)\n--\n\nRun func unless this Once has run "
     "a function already."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Once_getset[] = {
    {"done", (getter)Once_get_done, NULL, "True once the function has run.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Once_slots[] = {
    {Py_tp_new, Once_new},
    {Py_tp_dealloc, Once_dealloc},
    {Py_tp_call, Once_call},
    {Py_tp_methods, Once_methods},
    {Py_tp_repr, Once_repr},
    {Py_tp_getset, Once_getset},
    {Py_tp_doc, "Once()\n--\n\nCall once(func) to run func exactly once; "
                "concurrent callers wait until it has returned."},
    {0, NULL},
};

static PyType_Spec Once_spec = {
    .name = "dispatchkit.Once",
    .basicsize = sizeof(OnceObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Once_slots,
};

/* ---- module functions ----------------------------------------------- */

struct apply_call {
    PyObject *func;
    PyObject *exc_type, *exc_value, *exc_tb; /* first error, GIL held */
    uint32_t stop;                           /* atomic: read without the GIL */
};

/* One range of apply(): false after the first exception (or at
 * interpreter shutdown), which stops the loop handing out more ranges. */
static bool
apply_range(void *ctx, size_t begin, size_t end)
{
    struct apply_call *c = ctx;
    /* Relaxed: the exception itself is read by the caller after the
     * loop, which the loop's completion orders. */
    if (dk_atomic_u32_load(&c->stop, DK_MO_RELAXED)) {
        return false;
    }
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return false;
    }
    for (size_t i = begin; i < end && !c->stop; i++) { /* GIL held */
        PyObject *index = PyLong_FromSize_t(i);
        PyObject *r = index ? PyObject_CallOneArg(c->func, index) : NULL;
        Py_XDECREF(index);
        if (r == NULL) {
            dk_atomic_u32_store(&c->stop, 1, DK_MO_RELAXED);
            PyErr_Fetch(&c->exc_type, &c->exc_value, &c->exc_tb);
            break;
        }
        Py_DECREF(r);
    }
    bool go_on = !c->stop;
    dkpy_leave(&g);
    return go_on;
}

static PyObject *
dk_py_apply(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *kwlist[] = {"iterations", "func", "queue", NULL};
    PyObject *iterations, *func, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:apply", kwlist,
                                     &iterations, &func, &queue)) {
        return NULL;
    }
    if (!PyLong_Check(iterations)) {
        PyErr_Format(PyExc_TypeError, "iterations must be an int, not %.100s",
                     Py_TYPE(iterations)->tp_name);
        return NULL;
    }
    size_t n = PyLong_AsSize_t(iterations);
    if (n == (size_t)-1 && PyErr_Occurred()) {
        return NULL; /* negative: OverflowError, as cygcd */
    }
    if (check_callable(func, "func") < 0) {
        return NULL;
    }
    dk_queue_t *q = NULL;
    if (queue != Py_None) {
        QueueObject *qo = as_queue(queue, "queue");
        if (qo == NULL) {
            return NULL;
        }
        q = qo->q;
        if (dk_queue_sync_would_deadlock(q, false) &&
            !dk_queue_is_concurrent(q)) {
            PyErr_SetString(PyExc_RuntimeError,
                            "apply() on the serial queue the caller is "
                            "running on would deadlock");
            return NULL;
        }
    }
    struct apply_call c = {func, NULL, NULL, NULL, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = dk_apply_range_while_f(n, q, &c, apply_range);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return dkpy_raise_errno(rc);
    }
    if (c.exc_type != NULL) {
        PyErr_Restore(c.exc_type, c.exc_value, c.exc_tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
dk_py_time_from_now(PyObject *module, PyObject *seconds)
{
    (void)module;
    double s = PyFloat_AsDouble(seconds);
    if (s == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!isfinite(s)) {
        PyErr_SetString(PyExc_ValueError, "seconds must be finite");
        return NULL;
    }
    double ns = s * 1e9;
    int64_t d = ns >= 9.2e18    ? INT64_MAX
                : ns <= -9.2e18 ? INT64_MIN
                                : (int64_t)ns;
    return PyLong_FromUnsignedLongLong(dk_time(DK_TIME_NOW, d));
}

static PyObject *
dk_py_walltime(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
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
    double dns = delta * 1e9;
    int64_t d = dns >= 9.2e18    ? INT64_MAX
                : dns <= -9.2e18 ? INT64_MIN
                                 : (int64_t)dns;
    double tns = ts * 1e9;
    uint64_t base = tns >= 9.2e18 ? (uint64_t)INT64_MAX : (uint64_t)tns;
    if (ts != 0 && base == 0) {
        base = 1;
    }
    return PyLong_FromUnsignedLongLong(dk_walltime(base, d));
}

static PyObject *
dk_py_get_specific(PyObject *module, PyObject *key)
{
    (void)module;
    for (dk_queue_t *x = dk_queue_current();
         x != NULL && !dk_queue_is_global(x); x = dk_queue_target(x)) {
        PyObject *dict = dk_queue_get_specific(x, &specifics_key);
        if (dict == NULL) {
            continue;
        }
        PyObject *v = lookup_specific(dict, key);
        if (v != NULL) {
            return Py_NewRef(v);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
dk_py_drain_main_queue(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:drain_main_queue",
                                     kwlist, &timeout)) {
        return NULL;
    }
    uint64_t deadline = 0;
    if (timeout != NULL && timeout != Py_None) {
        /* None waits forever; a negative timeout is a mistake here, not
         * "forever" (docs/dispatch.md: negative delays raise). */
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (t < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "drain_main_queue() timeout must be >= 0 "
                            "(None waits forever)");
            return NULL;
        }
    }
    if (timeout != NULL && timeout_deadline(timeout, &deadline) < 0) {
        return NULL;
    }
    if (!dk_is_main_thread()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the main queue can only be drained by the main "
                        "thread");
        return NULL;
    }
    for (;;) {
        long n;
        Py_BEGIN_ALLOW_THREADS
        n = dk_main_drain(dkpy_slice_end(deadline));
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            return PyLong_FromLong(n);
        }
        if (n == -ETIMEDOUT && !dkpy_wait_goes_on(deadline)) {
            return PyLong_FromLong(0);
        }
        if (n == -EDEADLK) {
            PyErr_SetString(PyExc_RuntimeError,
                            "drain_main_queue() called from a main-queue "
                            "task");
            return NULL;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
}

static PyObject *
dk_py_main(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (!dk_is_main_thread()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "dispatchkit.main() must run on the main thread");
        return NULL;
    }
    for (;;) {
        long n;
        Py_BEGIN_ALLOW_THREADS
        n = dk_main_drain(dkpy_slice_end(UINT64_MAX));
        Py_END_ALLOW_THREADS
        if (n == -EDEADLK) {
            PyErr_SetString(PyExc_RuntimeError,
                            "dispatchkit.main() called from a main-queue "
                            "task");
            return NULL;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL; /* Ctrl-C or a signal handler's exception */
        }
    }
}

static PyObject *
dk_py_main_queue_fd(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(dk_main_fd());
}

static PyObject *
dk_py_pool_quiescent(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(dk_pool_quiescent());
}

static PyObject *
dk_py_shutdown(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    dkpy_gil_shutdown();
    Py_RETURN_NONE;
}

/* For futures.c (awaitable waits): the core object behind a dispatch
 * Semaphore (kind 3) or Group (kind 4); 0, or -1 if obj is neither. */
int
dkpy_dispatch_target(PyObject *obj, int *kind, void **ptr)
{
    if (PyObject_TypeCheck(obj, the_state->semaphore_type)) {
        *kind = 3;
        *ptr = ((SemaphoreObject *)obj)->s;
        return 0;
    }
    if (PyObject_TypeCheck(obj, the_state->group_type)) {
        *kind = 4;
        *ptr = ((GroupObject *)obj)->g;
        return 0;
    }
    return -1;
}

static PyMethodDef dispatch_functions[] = {
    {"apply", (PyCFunction)(void (*)(void))dk_py_apply,
     METH_VARARGS | METH_KEYWORDS,
     "apply($module, iterations, func, queue=None)\n--\n\nCall func(i) for i "
     "in "
     "range(iterations) in parallel and wait; re-raises the first "
     "exception (remaining iterations are skipped)."},
    {"time_from_now", dk_py_time_from_now, METH_O,
     "time_from_now($module, seconds, /)\n--\n\nA dispatch time (monotonic "
     "clock)."},
    {"walltime", (PyCFunction)(void (*)(void))dk_py_walltime,
     METH_VARARGS | METH_KEYWORDS,
     "walltime($module, timestamp=0.0, delta_seconds=0.0)\n--\n\nA "
     "wall-clock "
     "dispatch time (timestamp 0 means now)."},
    {"get_specific", dk_py_get_specific, METH_O,
     "get_specific($module, key, /)\n--\n\nQueue-specific data of the current "
     "queue or "
     "its targets, or None."},
    {"drain_main_queue", (PyCFunction)(void (*)(void))dk_py_drain_main_queue,
     METH_VARARGS | METH_KEYWORDS,
     "drain_main_queue($module, timeout=0)\n--\n\nRun the main queue's ready "
     "tasks on the main thread, waiting up to timeout seconds for the "
     "first; returns how many ran."},
    {"main", dk_py_main, METH_NOARGS,
     "main($module, /)\n--\n\nDrain the main queue forever on the main thread "
     "(dispatch_main); returns only by an exception such as "
     "KeyboardInterrupt."},
    {"main_queue_fd", dk_py_main_queue_fd, METH_NOARGS,
     "main_queue_fd($module, /)\n--\n\nAn fd that is readable while "
     "main-queue "
     "work is pending (for asyncio's add_reader)."},
    {"_pool_quiescent", dk_py_pool_quiescent, METH_NOARGS,
     "_pool_quiescent($module, /)\n--\n\nTrue when every pool worker is "
     "parked: the sanitizer test run forks "
     "only then (GCC 12's ASan allocator is not fork-safe)."},
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

static dispatch_state state_storage;

static int
add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **out)
{
    PyObject *t = dkpy_type_from_spec(m, spec, NULL);
    if (t == NULL) {
        return -1;
    }
    *out = (PyTypeObject *)t;
    const char *dot = strrchr(spec->name, '.');
    return PyModule_AddObjectRef(m, dot ? dot + 1 : spec->name, t);
}

int
dkpy_dispatch_exec(PyObject *m)
{
    the_state = &state_storage;
    if (add_type(m, &Queue_spec, &the_state->queue_type) < 0 ||
        add_type(m, &Workloop_spec, &the_state->workloop_type) < 0 ||
        add_type(m, &Group_spec, &the_state->group_type) < 0 ||
        add_type(m, &Semaphore_spec, &the_state->semaphore_type) < 0 ||
        add_type(m, &Once_spec, &the_state->once_type) < 0) {
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
    PyObject *forever = PyLong_FromUnsignedLongLong(UINT64_MAX);
    if (forever == NULL ||
        PyModule_AddObject(m, "DISPATCH_TIME_FOREVER", forever) < 0) {
        Py_XDECREF(forever);
        return -1;
    }
    gil_spin_useful = several_cpus();
    dkpy_gil_init();
    return 0;
}
