/*
 * Binding of dispatch queues: Queue and Workloop over the dk core, and the
 * C trampolines that run Python callables submitted to them (they take the
 * GIL through gil.h). Every misuse that would crash libdispatch is turned
 * into an exception here, before the core sees it.
 */
#include "python/binding.h"

#include <errno.h>
#include <stdint.h>

#include <structmember.h>

#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/time.h"
#include "python/dispatch.h"
#include "python/futures.h"
#include "python/gil.h"

#include "atomic.h"

/* ---- callbacks ------------------------------------------------------ */

void
dkpy_call_async(void *ctx)
{
    dkpy_callback(ctx, true, NULL);
}

/* A queue's finalizer, once the queue is gone. ctx: a new reference to a
 * tuple (finalizer, value): the finalizer is called with no arguments,
 * and the value released after it. */
static void
call_finalizer_async(void *ctx)
{
    dkpy_gil_t g;
    if (dkpy_enter(&g)) {
        dkpy_call_reporting(PyTuple_GET_ITEM(ctx, 0), NULL);
        Py_DECREF(ctx);
        dkpy_leave(&g);
    }
}

/* ---- Queue ---------------------------------------------------------- */

const char dkpy_specifics_key;

/* A new wrapper of `type` for q, made by a core call that returned rc
 * (its only failure: -ENOMEM); immortal: q is a global or main queue. */
static PyObject *
queue_wrap(PyTypeObject *type, int rc, dk_queue_t *q, bool immortal)
{
    if (rc < 0) {
        return PyErr_NoMemory();
    }
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        if (!immortal) {
            dk_release(q);
        }
        return NULL;
    }
    self->q = q;
    self->immortal = immortal;
    self->created_inactive = dk_queue_is_inactive(q);
    return (PyObject *)self;
}

/* A label argument: a str or None (-> NULL). 0, or -1 with an exception
 * set. */
static int
label_arg(PyObject *label, const char **out)
{
    *out = NULL;
    if (label == Py_None) {
        return 0;
    }
    if (!PyUnicode_Check(label)) {
        PyErr_Format(PyExc_TypeError, "label must be str or None, not %.100s",
                     Py_TYPE(label)->tp_name);
        return -1;
    }
    *out = PyUnicode_AsUTF8(label);
    return *out == NULL ? -1 : 0;
}

int
dkpy_qos_arg(long qos)
{
    if (qos == 0 || qos == 0x09 || qos == 0x11 || qos == 0x15 || qos == 0x19 ||
        qos == 0x21) {
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "qos must be one of the QOS_CLASS_* constants, not %ld", qos);
    return -1;
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
    const char *clabel;
    if (label_arg(label, &clabel) < 0 || dkpy_qos_arg(qos) < 0) {
        return NULL;
    }
    if (relpri < -15 || relpri > 0) {
        PyErr_SetString(PyExc_ValueError,
                        "relative_priority must be in [-15, 0]");
        return NULL;
    }
    dk_queue_t *t;
    if (dkpy_queue_arg(target, "target", &t) < 0) {
        return NULL;
    }
    unsigned attrs = (concurrent ? DK_QUEUE_CONCURRENT : 0) |
                     (inactive ? DK_QUEUE_INACTIVE : 0);
    dk_queue_t *q;
    int rc = dk_queue_create(clabel, attrs, (int)qos, (int)relpri, t, &q);
    return queue_wrap(type, rc, q, false);
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
            int removed = /* removing a value cannot fail */
                dk_queue_set_specific(self->q, &dkpy_specifics_key, NULL,
                                      NULL);
            (void)removed;
        }
        /* libdispatch crashes when a suspended or inactive queue is
         * released; we resume and activate it so its work drains. */
        int rc = dk_queue_activate(self->q); /* -EALREADY: active */
        while (rc != -EOVERFLOW && dk_queue_suspend_count(self->q) > 0) {
            rc = dk_queue_resume(self->q);
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

/* The wrapper of a global queue or the main queue, made once and cached
 * in *slot. */
static PyObject *
immortal_queue(PyObject **slot, dk_queue_t *q)
{
    if (*slot == NULL) {
        *slot = queue_wrap(dkpy_dispatch.queue_type, 0, q, true);
    }
    return Py_XNewRef(*slot);
}

static PyObject *
Queue_global_queue(PyObject *Py_UNUSED(cls), PyObject *args, PyObject *kwargs)
{
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
            return immortal_queue(&dkpy_dispatch.globals[i], q);
        }
    }
    PyErr_SetString(PyExc_SystemError, "global queue not found");
    return NULL;
}

static PyObject *
Queue_main_queue(PyObject *Py_UNUSED(cls), PyObject *Py_UNUSED(unused))
{
    return immortal_queue(&dkpy_dispatch.main_queue, dk_queue_main());
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
 * waiting caller and the trampoline, freed by whichever finishes last. */
struct sync_call {
    PyObject *func;
    dkpy_carried exc;
    dk_semaphore_t *done;
    bool drain_main; /* the main thread waits for the main queue */
    uint32_t refs;
};

static void
sync_call_unref(struct sync_call *c)
{
    /* Acq_rel, paired with the other holder's unref: whichever drops the
     * last reference sees all the other wrote before it frees. */
    if (dk__atomic_sub_acq_rel(&c->refs, 1) == 1) {
        dk_release(c->done);
        PyMem_RawFree(c);
    }
}

static void
call_sync(void *ctx)
{
    struct sync_call *c = ctx;
    dkpy_callback_carrying(c->func, true, &c->exc);
    dk_semaphore_signal(c->done);
    sync_call_unref(c);
}

/* One slice of a sync call's wait (dkpy_wait_sliced). The main thread
 * waiting for the main queue runs its items meanwhile, 50 ms at a time. */
static int
sync_wait_fn(void *arg, uint64_t deadline)
{
    struct sync_call *c = arg;
    if (!c->drain_main) {
        return dk_semaphore_wait_interruptible(c->done, deadline);
    }
    long n = dk_main_drain(dk_now() + 50 * DK_NSEC_PER_MSEC);
    int rc = dk_semaphore_wait(c->done, 0);
    return rc != 0 && n == -EINTR ? -EINTR : rc;
}

/* Wait for a sync call with the GIL released; Ctrl-C abandons it (the
 * callable still runs later; its exception is then reported). */
static PyObject *
sync_wait(dk_queue_t *q, struct sync_call *c)
{
    c->drain_main = q == dk_queue_main() && dk_is_main_thread();
    PyObject *r = NULL;
    if (dkpy_wait_sliced(sync_wait_fn, c, DK_TIME_FOREVER) == DKPY_RAISED) {
        dkpy_carried_abandon(&c->exc);
    } else {
        r = dkpy_carried_result(&c->exc);
    }
    sync_call_unref(c);
    return r;
}

#define NO_QOS LONG_MIN

/* qos: NO_QOS, or the QoS class to submit with when the call cannot run
 * inline. */
static PyObject *
run_sync(dk_queue_t *q, PyObject *func, bool barrier, long qos)
{
    bool cq_barrier =
        barrier && dk_queue_is_concurrent(q) && !dk_queue_is_global(q);
    unsigned sync_flags = cq_barrier ? DK_SYNC_BARRIER : 0;
    if (dk_queue_sync_would_deadlock(q, sync_flags)) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s() on '%s' from a task running on it (or on a queue "
                     "it targets) would deadlock",
                     barrier ? "barrier_sync" : "run_sync", dk_queue_label(q));
        return NULL;
    }
    dk_sync_frame_t frame;
    if (dk_queue_sync_enter(q, sync_flags, &frame) == 0) {
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
    if (dk_semaphore_create(0, &c->done) < 0) {
        PyMem_RawFree(c);
        return PyErr_NoMemory();
    }
    c->func = Py_NewRef(func);
    c->refs = 2;
    int rc = cq_barrier      ? dk_queue_barrier_async_f(q, c, call_sync)
             : qos != NO_QOS ? dk_queue_async_qos_f(q, (int)qos, c, call_sync)
                             : dk_queue_async_f(q, c, call_sync);
    if (rc < 0) {
        Py_DECREF(func);
        dk_release(c->done);
        PyMem_RawFree(c);
        return dkpy_raise_errno(rc);
    }
    return sync_wait(q, c);
}

/* Every run_ and barrier_ method: submit func (as a barrier; with a qos
 * other than NO_QOS, at that QoS class, checked after func), or with
 * `sync` run it on the queue and wait. */
static PyObject *
queue_call(QueueObject *self, PyObject *func, bool sync, bool barrier,
           long qos)
{
    if (dkpy_check_callable(func, "func") < 0 ||
        (qos != NO_QOS && dkpy_qos_arg(qos) < 0)) {
        return NULL;
    }
    if (sync) {
        return run_sync(self->q, func, barrier, qos);
    }
    Py_INCREF(func);
    int rc =
        barrier ? dk_queue_barrier_async_f(self->q, func, dkpy_call_async)
        : qos != NO_QOS
            ? dk_queue_async_qos_f(self->q, (int)qos, func, dkpy_call_async)
            : dk_queue_async_f(self->q, func, dkpy_call_async);
    return dkpy_submitted(rc, func);
}

static PyObject *
Queue_run_async(QueueObject *self, PyObject *func)
{
    return queue_call(self, func, false, false, NO_QOS);
}

static PyObject *
Queue_barrier_async(QueueObject *self, PyObject *func)
{
    return queue_call(self, func, false, true, NO_QOS);
}

static PyObject *
Queue_run_sync(QueueObject *self, PyObject *func)
{
    return queue_call(self, func, true, false, NO_QOS);
}

static PyObject *
Queue_barrier_sync(QueueObject *self, PyObject *func)
{
    return queue_call(self, func, true, true, NO_QOS);
}

static PyObject *
Queue_after(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    static const char *const names[] = {"delay_seconds", "func"};
    PyObject *vals[2];
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, vals, "after") <
        0) {
        return NULL;
    }
    if (vals[0] == NULL || vals[1] == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "after() takes 2 arguments (delay_seconds, func)");
        return NULL;
    }
    int64_t ns;
    if (dkpy_seconds_to_ns(vals[0], "delay_seconds", &ns) < 0 ||
        dkpy_check_callable(vals[1], "func") < 0) {
        return NULL;
    }
    Py_INCREF(vals[1]);
    int rc = dk_queue_after_f(self->q, dk_time(DK_TIME_NOW, ns), vals[1],
                              dkpy_call_async);
    return dkpy_submitted(rc, vals[1]);
}

static PyObject *
Queue_suspend(QueueObject *self, PyObject *Py_UNUSED(unused))
{
    dk_queue_suspend(self->q);
    Py_RETURN_NONE;
}

static PyObject *
Queue_resume(QueueObject *self, PyObject *Py_UNUSED(unused))
{
    return dkpy_none_or_raise(
        dk_queue_resume(self->q) >= 0, PyExc_RuntimeError,
        "resume() without a matching suspend() (over-resume)");
}

static PyObject *
Queue_activate(QueueObject *self, PyObject *Py_UNUSED(unused))
{
    return dkpy_none_or_raise(dk_queue_activate(self->q) >= 0,
                              PyExc_RuntimeError,
                              "Queue was not created as inactive");
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
    target = dkpy_either(target, queue, "target or queue");
    dk_queue_t *t;
    if (target == NULL || dkpy_queue_arg(target, "target", &t) < 0) {
        return NULL;
    }
    bool fixed = dk_queue_is_global(self->q) || self->q == dk_queue_main();
    const dkpy_errno_map errors[] = {
        {EPERM, &PyExc_RuntimeError,
         fixed ? "the target of a global or main queue cannot be changed"
               : "cannot change the target of a queue after it has been "
                 "activated"},
        {EBUSY, &PyExc_RuntimeError,
         "cannot change the target of a queue while it has work queued or "
         "running"},
        {ELOOP, &PyExc_ValueError,
         "target queue hierarchy would contain a cycle"},
        {0, NULL, NULL},
    };
    int rc = dk_queue_set_target(self->q, t);
    if (rc < 0) {
        return dkpy_raise_errno_in(errors, rc);
    }
    Py_RETURN_NONE;
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
    if (finalizer != Py_None &&
        dkpy_check_callable(finalizer, "finalizer") < 0) {
        return NULL;
    }
    PyObject *old_value = self->context, *old_finalizer = self->finalizer;
    self->context = value == Py_None ? NULL : Py_NewRef(value);
    self->finalizer = finalizer == Py_None ? NULL : Py_NewRef(finalizer);
    /* Replacing a context finalizes the old one now, with no arguments
     * (cygcd does both). */
    PyObject *r = old_finalizer ? PyObject_CallNoArgs(old_finalizer) : NULL;
    bool failed = old_finalizer != NULL && r == NULL;
    Py_XDECREF(r);
    Py_XDECREF(old_value);
    Py_XDECREF(old_finalizer);
    return failed ? NULL : Py_NewRef(Py_None);
}

static PyObject *
Queue_get_context(QueueObject *self, PyObject *Py_UNUSED(unused))
{
    return Py_NewRef(self->context != NULL ? self->context : Py_None);
}

static PyObject *
Queue_set_specific(QueueObject *self, PyObject *args)
{
    PyObject *key, *value;
    if (!PyArg_ParseTuple(args, "OO:set_specific", &key, &value)) {
        return NULL;
    }
    if (self->specifics == NULL && value != Py_None) {
        self->specifics = PyDict_New();
        int rc = self->specifics == NULL
                     ? -ENOMEM
                     : dk_queue_set_specific(self->q, &dkpy_specifics_key,
                                             self->specifics, NULL);
        if (rc < 0) {
            Py_CLEAR(self->specifics);
            return dkpy_raise_errno(rc);
        }
    } else if (self->specifics == NULL) {
        Py_RETURN_NONE; /* nothing to remove */
    }
    int rc = value == Py_None
                 ? PyDict_Contains(self->specifics, key) /* 1: del */
                 : PyDict_SetItem(self->specifics, key, value);
    if (rc > 0 && value == Py_None) {
        rc = PyDict_DelItem(self->specifics, key);
    }
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
Queue_get_specific(QueueObject *self, PyObject *key)
{
    PyObject *v = self->specifics == NULL
                      ? NULL
                      : PyDict_GetItemWithError(self->specifics, key);
    return v == NULL && PyErr_Occurred() ? NULL : Py_NewRef(v ? v : Py_None);
}

static PyObject *
Queue_get_label(QueueObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(dk_queue_label(self->q));
}

/* is_concurrent (closure: non-NULL) and is_inactive. */
static PyObject *
Queue_get_flag(QueueObject *self, void *concurrent)
{
    return PyBool_FromLong(concurrent ? dk_queue_is_concurrent(self->q)
                                      : dk_queue_is_inactive(self->q));
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
    {"submit", DKPY_METH_FAST(Queue_submit),
     "submit($self, fn, /, *args, **kwargs)\n--\n\n"
     "Run fn(*args, **kwargs) on the queue; a concurrent.futures.Future."},
    {"run_sync", (PyCFunction)Queue_run_sync, METH_O,
     "run_sync($self, func, /)\n--\n\nRun func on the queue and wait; "
     "re-raises its exception."},
    {"barrier_async", (PyCFunction)Queue_barrier_async, METH_O,
     "barrier_async($self, func, /)\n--\n\nSubmit a barrier (exclusive on "
     "concurrent queues)."},
    {"barrier_sync", (PyCFunction)Queue_barrier_sync, METH_O,
     "barrier_sync($self, func, /)\n--\n\nRun a barrier and wait; re-raises "
     "its exception."},
    {"after", DKPY_METH_FAST(Queue_after),
     "after($self, delay_seconds, func)\n--\n\nSubmit func after a delay."},
    {"suspend", (PyCFunction)Queue_suspend, METH_NOARGS,
     "suspend($self, /)\n--\n\nStop starting work items (counts nest)."},
    {"resume", (PyCFunction)Queue_resume, METH_NOARGS,
     "resume($self, /)\n--\n\nUndo one suspend(); RuntimeError on "
     "over-resume."},
    {"activate", (PyCFunction)Queue_activate, METH_NOARGS,
     "activate($self, /)\n--\n\nActivate a queue created with inactive=True."},
    {"set_target_queue", DKPY_METH_KW(Queue_set_target_queue),
     "set_target_queue($self, target=None, queue=None)\n--\n\nSet the "
     "target queue (None: default); queue= is another spelling of target."},
    {"set_context", DKPY_METH_KW(Queue_set_context),
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
    {"is_inactive", (getter)Queue_get_flag, NULL,
     "True until an inactive queue is activated.", NULL},
    {"is_concurrent", (getter)Queue_get_flag, NULL,
     "True for concurrent (and global) queues.", "concurrent"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Queue_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(QueueObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

DKPY_TYPE(, dkpy_queue_spec, "dispatchkit.Queue", QueueObject,
          Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, {Py_tp_new, Queue_new},
          {Py_tp_dealloc, Queue_dealloc}, {Py_tp_traverse, Queue_traverse},
          {Py_tp_clear, Queue_clear}, {Py_tp_methods, Queue_methods},
          {Py_tp_getset, Queue_getset}, {Py_tp_members, Queue_members},
          {Py_tp_repr, Queue_repr},
          {Py_tp_doc,
           "Queue(label=None, concurrent=False, qos=0, "
           "relative_priority=0, target=None, inactive=False)\n--\n\n"
           "A dispatch queue: serial (FIFO, one item at a time) or "
           "concurrent."});

int
dkpy_queue_arg(PyObject *obj, const char *what, dk_queue_t **out)
{
    if (obj == NULL || obj == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!PyObject_TypeCheck(obj, dkpy_dispatch.queue_type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a Queue or None, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = ((QueueObject *)obj)->q;
    return 0;
}

QueueObject *
dkpy_as_queue(PyObject *obj, const char *what)
{
    if (!PyObject_TypeCheck(obj, dkpy_dispatch.queue_type)) {
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
    const char *clabel;
    if (label_arg(label, &clabel) < 0) {
        return NULL;
    }
    dk_queue_t *q;
    int rc = dk_queue_create(
        clabel, DK_QUEUE_WORKLOOP | (inactive ? DK_QUEUE_INACTIVE : 0), 0, 0,
        NULL, &q);
    return queue_wrap(type, rc, q, false);
}

/* run_async(func, qos=0x15) and run_sync(func, qos=0x15). */
static PyObject *
workloop_run(QueueObject *self, PyObject *args, PyObject *kwargs, bool sync)
{
    static char *kwlist[] = {"func", "qos", NULL};
    PyObject *func;
    long qos = 0x15;
    if (dk_queue_is_inactive(self->q)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Cannot submit work to an inactive workloop");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     sync ? "O|l:run_sync" : "O|l:run_async",
                                     kwlist, &func, &qos)) {
        return NULL;
    }
    return queue_call(self, func, sync, false, qos);
}

static PyObject *
Workloop_run_async(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    return workloop_run(self, args, kwargs, false);
}

static PyObject *
Workloop_run_sync(QueueObject *self, PyObject *args, PyObject *kwargs)
{
    return workloop_run(self, args, kwargs, true);
}

static PyObject *
Workloop_activate(QueueObject *self, PyObject *Py_UNUSED(unused))
{
    return dkpy_none_or_raise(
        self->created_inactive && dk_queue_activate(self->q) >= 0,
        PyExc_RuntimeError, "Workloop was not created as inactive");
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
    {"run_async", DKPY_METH_KW(Workloop_run_async),
     "run_async($self, func, qos=0x15)\n--\n\nSubmit func; pending work "
     "runs highest QoS first (qos is a dispatchkit extension)."},
    {"submit", DKPY_METH_FAST(Queue_submit),
     "submit($self, fn, /, *args, qos=0x15, **kwargs)\n--\n\nRun fn(*args, "
     "**kwargs) on the workloop at qos; a concurrent.futures.Future."},
    {"run_sync", DKPY_METH_KW(Workloop_run_sync),
     "run_sync($self, func, qos=0x15)\n--\n\nRun func on the workloop and "
     "wait; re-raises its exception."},
    {"activate", (PyCFunction)Workloop_activate, METH_NOARGS,
     "activate($self, /)\n--\n\nActivate a workloop created with "
     "inactive=True."},
    {"set_autorelease_frequency",
     (PyCFunction)Workloop_set_autorelease_frequency, METH_O,
     "set_autorelease_frequency($self, frequency, /)\n--\n\nAccepted before "
     "activate() (there are no autorelease pools on Linux)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Workloop_getset[] = {
    {"label", (getter)Queue_get_label, NULL, "The workloop's label.", NULL},
    {"is_inactive", (getter)Queue_get_flag, NULL,
     "True until an inactive workloop is activated.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(, dkpy_workloop_spec, "dispatchkit.Workloop", QueueObject,
          Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, {Py_tp_new, Workloop_new},
          {Py_tp_dealloc, Queue_dealloc}, {Py_tp_traverse, Queue_traverse},
          {Py_tp_clear, Queue_clear}, {Py_tp_methods, Workloop_methods},
          {Py_tp_getset, Workloop_getset}, {Py_tp_members, Queue_members},
          {Py_tp_repr, Workloop_repr},
          {Py_tp_doc,
           "Workloop(label, inactive=False)\n--\n\nA serial queue whose "
           "pending work runs highest QoS first."});
