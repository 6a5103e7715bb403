/*
 * Binding of the dispatch synchronisation objects: Group, Semaphore and
 * Once, whose waits release the GIL through the binding's sliced wait
 * with gil.c's hand-off, which spares a woken Semaphore waiter a second
 * sleep.
 */
#include "python/binding.h"

#include <errno.h>
#include <stdint.h>

#include "dk/group.h"
#include "dk/once.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/time.h"
#include "python/dispatch.h"
#include "python/futures.h"
#include "python/gil.h"

/* The core's waits as dkpy_wait_fn, run with the GIL released by
 * dkpy_wait_handoff (gil.h). */
static int
group_wait_fn(void *g, uint64_t deadline)
{
    return dk_group_wait_interruptible(g, deadline);
}

static int
semaphore_wait_fn(void *s, uint64_t deadline)
{
    return dk_semaphore_wait_interruptible(s, deadline);
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
    if (dk_group_create(&self->g) < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Group_dealloc(GroupObject *self)
{
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
    dkpy_free((PyObject *)self);
}

/* run_async(queue, func) and notify(queue, func): submit through `fn`. */
static PyObject *
group_submit(GroupObject *self, PyObject *args, const char *fmt,
             int (*fn)(dk_group_t *, dk_queue_t *, void *, dk_function_t))
{
    PyObject *queue, *func;
    if (!PyArg_ParseTuple(args, fmt, &queue, &func)) {
        return NULL;
    }
    QueueObject *q = dkpy_as_queue(queue, "queue");
    if (q == NULL || dkpy_check_callable(func, "func") < 0) {
        return NULL;
    }
    Py_INCREF(func);
    return dkpy_submitted(fn(self->g, q->q, func, dkpy_call_async), func);
}

static PyObject *
Group_run_async(GroupObject *self, PyObject *args)
{
    return group_submit(self, args, "OO:run_async", dk_group_async_f);
}

static PyObject *
Group_notify(GroupObject *self, PyObject *args)
{
    return group_submit(self, args, "OO:notify", dk_group_notify_f);
}

static PyObject *
Group_wait(GroupObject *self, PyObject *args, PyObject *kwargs)
{
    uint64_t deadline;
    if (dkpy_parse_wait_timeout(args, kwargs, &deadline) < 0) {
        return NULL;
    }
    return dkpy_wait_handoff(dk_group_wait(self->g, 0) == 0, group_wait_fn,
                             self->g, deadline, NULL);
}

static PyObject *
Group_enter(GroupObject *self, PyObject *Py_UNUSED(unused))
{
    dk_group_enter(self->g);
    Py_RETURN_NONE;
}

static PyObject *
Group_leave(GroupObject *self, PyObject *Py_UNUSED(unused))
{
    return dkpy_none_or_raise(
        dk_group_leave(self->g) >= 0, PyExc_RuntimeError,
        "leave() without a matching enter() (unbalanced)");
}

static PyObject *
Group_get_count(GroupObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(dk_group_count(self->g));
}

/* `with group:` counts the block as one task: enter(), then leave(). */
static PyObject *
Group_cm_enter(GroupObject *self, PyObject *Py_UNUSED(unused))
{
    dk_group_enter(self->g);
    Py_INCREF(self);
    return (PyObject *)self;
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
    {"wait", DKPY_METH_KW(Group_wait),
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
    /* leave() ignores its argument: here the exc_info tuple. */
    {"__exit__", (PyCFunction)Group_leave, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nleave()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Group_getset[] = {
    {"count", (getter)Group_get_count, NULL, "Outstanding tasks (a snapshot).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(, dkpy_group_spec, "dispatchkit.Group", GroupObject,
          Py_TPFLAGS_BASETYPE, {Py_tp_new, Group_new},
          {Py_tp_dealloc, Group_dealloc}, {Py_tp_methods, Group_methods},
          {Py_tp_getset, Group_getset}, {Py_tp_repr, Group_repr},
          {Py_tp_doc, "Group()\n--\n\nTrack completion of a set of tasks."});

/* ---- Semaphore ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    dk_semaphore_t *s;
    uint32_t signal_seen; /* dkpy_handoff_mark at the last Python signal */
} SemaphoreObject;

/* wait(), after a try without releasing the GIL: no syscall when a unit
 * is there. */
static PyObject *
semaphore_wait(SemaphoreObject *self, uint64_t deadline)
{
    return dkpy_wait_handoff(dk_semaphore_wait(self->s, 0) == 0,
                             semaphore_wait_fn, self->s, deadline,
                             &self->signal_seen);
}

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
    if (dk_semaphore_create((long)value, &self->s) < 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Semaphore_dealloc(SemaphoreObject *self)
{
    if (self->s != NULL) {
        dk_release(self->s);
    }
    dkpy_free((PyObject *)self);
}

static PyObject *
Semaphore_wait(SemaphoreObject *self, PyObject *args, PyObject *kwargs)
{
    uint64_t deadline;
    if (dkpy_parse_wait_timeout(args, kwargs, &deadline) < 0) {
        return NULL;
    }
    return semaphore_wait(self, deadline);
}

/* signal() (exc_info: NULL, METH_NOARGS) and __exit__(*exc_info), which
 * returns None. */
static PyObject *
Semaphore_signal(SemaphoreObject *self, PyObject *exc_info)
{
    dkpy_handoff_mark(&self->signal_seen); /* before the waiter wakes */
    bool woke = dk_semaphore_signal(self->s);
    return exc_info == NULL ? PyBool_FromLong(woke) : Py_NewRef(Py_None);
}

static PyObject *
Semaphore_get_value(SemaphoreObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(dk_semaphore_value(self->s));
}

/* `with sem:` as threading.Semaphore: wait() without a timeout on entry
 * (returns True), signal() on exit. */
static PyObject *
Semaphore_cm_enter(SemaphoreObject *self, PyObject *Py_UNUSED(unused))
{
    return semaphore_wait(self, DK_TIME_FOREVER);
}

static PyObject *
Semaphore_repr(SemaphoreObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.Semaphore value=%ld>",
                                (long)dk_semaphore_value(self->s));
}

static PyMethodDef Semaphore_methods[] = {
    {"wait", DKPY_METH_KW(Semaphore_wait),
     "wait($self, timeout=None, timeout_seconds=None)\n--\n\nTake one "
     "unit, blocking while none is available; False on timeout (seconds; "
     "None or negative waits forever, 0 polls). timeout_seconds is "
     "cygcd's name for timeout."},
    {"signal", (PyCFunction)Semaphore_signal, METH_NOARGS,
     "signal($self, /)\n--\n\nRelease one unit; True if a waiter was woken."},
    {"__enter__", (PyCFunction)Semaphore_cm_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nwait() without a timeout; returns True."},
    {"__exit__", (PyCFunction)Semaphore_signal, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nsignal()."},
    DKPY_ASYNC_WITH_METHODS("True", "signal()"),
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Semaphore_getset[] = {
    {"value", (getter)Semaphore_get_value, NULL,
     "Current value (negative: that many waiters).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(, dkpy_semaphore_spec, "dispatchkit.Semaphore", SemaphoreObject,
          Py_TPFLAGS_BASETYPE, {Py_tp_new, Semaphore_new},
          {Py_tp_dealloc, Semaphore_dealloc},
          {Py_tp_methods, Semaphore_methods}, {Py_tp_getset, Semaphore_getset},
          {Py_tp_repr, Semaphore_repr},
          {Py_tp_doc, "Semaphore(value=0)\n--\n\nA counting semaphore."});

/* ---- Once ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_once_t pred;
    unsigned long owner; /* thread running the function (GIL held) */
} OnceObject;

struct once_call {
    PyObject *func;
    dkpy_carried exc;
    OnceObject *self;
};

/* On the caller's own thread (dk_once_f runs it inline), which released
 * the GIL to wait beside other callers: func runs as a direct call would,
 * whatever the runtime's state, so not through dkpy_enter. */
static void
once_trampoline(void *ctx)
{
    struct once_call *c = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    c->self->owner = PyThread_get_thread_ident();
    dkpy_call_carrying(c->func, &c->exc);
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

static PyObject *
Once_call(OnceObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *func;
    if (!dkpy_no_args("Once", NULL, kwargs) ||
        !PyArg_ParseTuple(args, "O:Once", &func)) {
        return NULL;
    }
    if (dkpy_check_callable(func, "func") < 0) {
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
    struct once_call c = {.func = func, .self = self};
    Py_INCREF(self);
    Py_BEGIN_ALLOW_THREADS
    dk_once_f(&self->pred, &c, once_trampoline);
    Py_END_ALLOW_THREADS
    Py_DECREF(self);
    return dkpy_carried_result(&c.exc);
}

static PyObject *
Once_get_done(OnceObject *self, void *Py_UNUSED(closure))
{
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

DKPY_TYPE(, dkpy_once_spec, "dispatchkit.Once", OnceObject,
          Py_TPFLAGS_BASETYPE, {Py_tp_new, Once_new},
          {Py_tp_dealloc, dkpy_free}, {Py_tp_call, Once_call},
          {Py_tp_methods, Once_methods}, {Py_tp_repr, Once_repr},
          {Py_tp_getset, Once_getset},
          {Py_tp_doc,
           "Once()\n--\n\nCall once(func) to run func exactly once; "
           "concurrent callers wait until it has returned."});

/* For futures.c (awaitable waits): the core object behind a dispatch
 * Semaphore (kind 3) or Group (kind 4); 0, or -1 if obj is neither. */
int
dkpy_dispatch_target(PyObject *obj, int *kind, void **ptr)
{
    if (PyObject_TypeCheck(obj, dkpy_dispatch.semaphore_type)) {
        *kind = 3;
        *ptr = ((SemaphoreObject *)obj)->s;
        return 0;
    }
    if (PyObject_TypeCheck(obj, dkpy_dispatch.group_type)) {
        *kind = 4;
        *ptr = ((GroupObject *)obj)->g;
        return 0;
    }
    return -1;
}
