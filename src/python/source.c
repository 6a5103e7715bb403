/*
 * Binding of dispatch sources: Timer, SignalSource, ReadSource,
 * WriteSource, ProcessSource and DataSource. One C struct serves all six;
 * each type has its own constructor and properties.
 *
 * Lifetime: a started source holds a reference to its Python object until
 * its cancel handler has run, so it stays active until cancel() (as in
 * GCD) whether or not the program keeps a reference. The source's context
 * is the Python object itself.
 */
#include "python/binding.h"

#include <errno.h>
#include <math.h>
#include <signal.h>

#include "dk/source.h"
#include "dk/time.h"
#include "python/gil.h"

typedef struct {
    PyObject_HEAD
    dk_source_t *s;
    PyObject *handler;
    bool started;
    bool holds_self;  /* the started-source reference to this object */
    const char *what; /* "timer", "signal source", ... */
    /* Timer configuration, applied at start() and by set_timer(). */
    double interval, start_delay, leeway;
    bool repeating;
    bool delay_given; /* start_delay was passed (not None) */
} SourceObject;

/* An event handler call. The source is started, so it holds this object
 * (holds_self) and its handler until its cancel handler has run, which
 * comes after the last event handler call. */
static void
source_event(void *ctx)
{
    dkpy_callback(((SourceObject *)ctx)->handler, false, NULL);
}

static void
source_cancelled(void *ctx)
{
    SourceObject *self = ctx;
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return;
    }
    if (self->holds_self) {
        self->holds_self = false;
        Py_DECREF(self); /* may deallocate it */
    }
    dkpy_leave(&g);
}

/* The errors of dk_source_create beside dkpy_raise_errno's. */
static const dkpy_errno_map source_errors[] = {
    {EBADF, &PyExc_OSError, "fd %s is not open"},
    {ESRCH, &PyExc_ProcessLookupError, "no process with pid %s"},
    {0, NULL, NULL},
};

static PyObject *
source_create(PyTypeObject *type, dk_source_type_t kind, uintptr_t handle,
              unsigned long mask, PyObject *handler, PyObject *queue,
              const char *what)
{
    if (dkpy_check_callable(handler, "handler") < 0) {
        return NULL;
    }
    dk_queue_t *q;
    if (dkpy_queue_arg(queue, "queue", &q) < 0) {
        return NULL;
    }
    SourceObject *self = (SourceObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->what = what;
    int rc = dk_source_create(kind, handle, mask, q, &self->s);
    if (rc < 0) {
        Py_DECREF(self);
        char detail[24];
        snprintf(detail, sizeof detail, "%zu", (size_t)handle);
        return dkpy_raise_errno_detail(source_errors, rc, detail);
    }
    self->handler = Py_NewRef(handler);
    dk_source_set_context(self->s, self);
    dk_source_set_event_handler_f(self->s, source_event);
    /* The cancel handler is installed by start(), with the reference it
     * drops: a never-started source must not call back into an object
     * that may be gone by the time its cancellation is processed. */
    return (PyObject *)self;
}

static int
Source_traverse(SourceObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handler);
    return 0;
}

static int
Source_clear(SourceObject *self)
{
    Py_CLEAR(self->handler);
    return 0;
}

static void
Source_dealloc(SourceObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->s != NULL) {
        /* Only a never-started source or one whose cancel handler has run
         * gets here: nothing will call back into this object. */
        dk_source_set_event_handler_f(self->s, NULL);
        dk_source_set_cancel_handler_f(self->s, NULL);
        dk_source_cancel(self->s);
        dk_release(self->s);
        self->s = NULL;
    }
    Source_clear(self);
    dkpy_free((PyObject *)self);
}

static int
apply_timer(SourceObject *self)
{
    /* A repeating timer first fires at start_delay. A one-shot timer fires
     * once: at start_delay when one was given (cygcd ignores the interval
     * of a one-shot timer), else after the interval (the seed README's
     * `Timer(1.0, f, repeating=False)` fires after 1 s). */
    double first = self->repeating || self->delay_given ? self->start_delay
                                                        : self->interval;
    int64_t start_ns =
        first * 1e9 >= 9.2e18 ? INT64_MAX : (int64_t)(first * 1e9);
    uint64_t interval =
        self->repeating ? (uint64_t)(self->interval * 1e9) : DK_TIME_FOREVER;
    if (interval == 0) {
        interval = 1;
    }
    uint64_t leeway = (uint64_t)(self->leeway * 1e9);
    int rc = dk_source_set_timer(self->s, dk_time(DK_TIME_NOW, start_ns),
                                 interval, leeway);
    if (rc < 0) {
        dkpy_raise_errno(rc);
        return -1;
    }
    return 0;
}

static PyObject *
Source_start(SourceObject *self, PyObject *Py_UNUSED(unused))
{
    if (dk_source_testcancel(self->s)) {
        PyErr_Format(PyExc_RuntimeError, "Cannot start a cancelled %s",
                     self->what);
        return NULL;
    }
    if (self->started) {
        Py_RETURN_NONE; /* idempotent */
    }
    if (dk_source_get_type(self->s) == DK_SOURCE_TIMER &&
        apply_timer(self) < 0) {
        return NULL;
    }
    self->started = true;
    self->holds_self = true;
    Py_INCREF(self);
    dk_source_set_cancel_handler_f(self->s, source_cancelled);
    int rc = dk_source_resume(self->s);
    if (rc < 0) {
        dk_source_set_cancel_handler_f(self->s, NULL);
        self->started = false;
        self->holds_self = false;
        Py_DECREF(self);
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Source_cancel(SourceObject *self, PyObject *Py_UNUSED(unused))
{
    dk_source_cancel(self->s); /* idempotent; the cancel handler drops
                                  the started-source reference */
    Py_RETURN_NONE;
}

static PyObject *
Source_get_is_cancelled(SourceObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(dk_source_testcancel(self->s));
}

static PyObject *
Source_get_data(SourceObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(dk_source_get_data(self->s));
}

static PyObject *
Source_get_handle(SourceObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(dk_source_get_handle(self->s));
}

/* <dispatchkit.Timer interval=0.5 repeating started>: what the source
 * watches, then its state. */
static PyObject *
Source_repr(SourceObject *self)
{
    const char *state = dk_source_testcancel(self->s) ? "cancelled"
                        : self->started               ? "started"
                                                      : "not started";
    /* The handle's name by type; the others show their data. */
    static const char *const handle_key[] = {
        [DK_SOURCE_SIGNAL] = "signal", [DK_SOURCE_READ] = "fd",
        [DK_SOURCE_WRITE] = "fd",      [DK_SOURCE_PROC] = "pid"};
    dk_source_type_t t = dk_source_get_type(self->s);
    PyObject *what;
    if (t == DK_SOURCE_TIMER) {
        PyObject *interval = PyFloat_FromDouble(self->interval);
        what = interval == NULL
                   ? NULL
                   : PyUnicode_FromFormat("interval=%R %s", interval,
                                          self->repeating ? "repeating"
                                                          : "one-shot");
        Py_XDECREF(interval);
    } else if ((size_t)t < sizeof handle_key / sizeof handle_key[0] &&
               handle_key[t] != NULL) {
        what = PyUnicode_FromFormat(
            "%s=%lu", handle_key[t],
            (unsigned long)dk_source_get_handle(self->s));
    } else {
        what = PyUnicode_FromFormat(
            "data=%lu", (unsigned long)dk_source_get_data(self->s));
    }
    if (what == NULL) {
        return NULL;
    }
    /* tp_name: "dispatchkit.Timer", or a Python subclass's own name. */
    PyObject *r = PyUnicode_FromFormat("<%s %U %s>", Py_TYPE(self)->tp_name,
                                       what, state);
    Py_DECREF(what);
    return r;
}

/* The methods and the property of every source; each type adds its own.
 * Unformatted: clang-format re-indents brace initializers in a macro. */
/* clang-format off */
#define SOURCE_METHODS                                                        \
    {"start", (PyCFunction)Source_start, METH_NOARGS,                         \
     "start($self, /)\n--\n\nStart delivering events. Idempotent; "           \
     "RuntimeError after cancel()."},                                         \
    {"cancel", (PyCFunction)Source_cancel, METH_NOARGS,                       \
     "cancel($self, /)\n--\n\nStop delivering events (a handler already "     \
     "running completes). Idempotent."}
#define IS_CANCELLED                                                          \
    {"is_cancelled", (getter)Source_get_is_cancelled, NULL,                   \
     "True after cancel().", NULL}
/* A source type's properties: two named ones (their getter and doc), then
 * is_cancelled. */
#define SOURCE_GETSET(NAME, A, A_GET, A_DOC, B, B_GET, B_DOC)                 \
    static PyGetSetDef NAME[] = {                                             \
        {A, (getter)A_GET, NULL, A_DOC, NULL},                                \
        {B, (getter)B_GET, NULL, B_DOC, NULL},                                \
        IS_CANCELLED,                                                         \
        {NULL, NULL, NULL, NULL, NULL},                                       \
    }
/* clang-format on */

static PyMethodDef Source_methods[] = {
    SOURCE_METHODS,
    {NULL, NULL, 0, NULL},
};

/* ---- Timer ---------------------------------------------------------- */

static int
parse_seconds(double v, const char *what, bool positive)
{
    if (!isfinite(v) || v < 0 || (positive && v == 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a finite number %s", what,
                     positive ? "> 0" : ">= 0");
        return -1;
    }
    return 0;
}

static int
timer_params(SourceObject *self, double interval, PyObject *start_delay,
             double leeway, int repeating)
{
    bool given = start_delay != NULL && start_delay != Py_None;
    double delay = 0;
    if (given) {
        delay = PyFloat_AsDouble(start_delay);
        if (delay == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (parse_seconds(interval, "interval", repeating != 0) < 0 ||
        parse_seconds(delay, "start_delay", false) < 0 ||
        parse_seconds(leeway, "leeway", false) < 0) {
        return -1;
    }
    self->interval = interval;
    self->start_delay = delay;
    self->delay_given = given;
    self->leeway = leeway;
    self->repeating = repeating != 0;
    return 0;
}

static PyObject *
Timer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"interval", "handler",   "queue", "start_delay",
                             "leeway",   "repeating", NULL};
    double interval, leeway = 0;
    PyObject *handler, *queue = Py_None, *start_delay = Py_None;
    int repeating = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "dO|OOdp:Timer", kwlist,
                                     &interval, &handler, &queue, &start_delay,
                                     &leeway, &repeating)) {
        return NULL;
    }
    SourceObject probe = {.interval = 0};
    if (timer_params(&probe, interval, start_delay, leeway, repeating) < 0) {
        return NULL;
    }
    SourceObject *self = (SourceObject *)source_create(
        type, DK_SOURCE_TIMER, 0, 0, handler, queue, "timer");
    if (self != NULL) {
        timer_params(self, interval, start_delay, leeway, repeating);
    }
    return (PyObject *)self;
}

static PyObject *
Timer_set_timer(SourceObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"interval", "start_delay", "leeway", "repeating",
                             NULL};
    double interval, leeway = 0;
    PyObject *start_delay = Py_None;
    int repeating = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "d|Odp:set_timer", kwlist,
                                     &interval, &start_delay, &leeway,
                                     &repeating)) {
        return NULL;
    }
    if (timer_params(self, interval, start_delay, leeway, repeating) < 0) {
        return NULL;
    }
    if (self->started && !dk_source_testcancel(self->s) &&
        apply_timer(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Timer_methods[] = {
    SOURCE_METHODS,
    {"set_timer", DKPY_METH_KW(Timer_set_timer),
     "set_timer($self, interval, start_delay=None, leeway=0.0, "
     "repeating=True)\n--\n\n"
     "Reconfigure the timer (from now, if it is started)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Timer_getset[] = {
    IS_CANCELLED,
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- SignalSource --------------------------------------------------- */

static PyObject *
SignalSource_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"signum", "handler", "queue", NULL};
    int signum;
    PyObject *handler, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO|O:SignalSource", kwlist,
                                     &signum, &handler, &queue)) {
        return NULL;
    }
    if (signum == SIGKILL || signum == SIGSTOP) {
        PyErr_Format(PyExc_ValueError, "signal %d (%s) cannot be caught",
                     signum, signum == SIGKILL ? "SIGKILL" : "SIGSTOP");
        return NULL;
    }
    /* A handler that returns from a fault makes the faulting instruction
     * run again, forever: a real crash would become a silent hang. */
    if (signum == SIGSEGV || signum == SIGBUS || signum == SIGFPE ||
        signum == SIGILL) {
        PyErr_Format(PyExc_ValueError,
                     "signal %d is a synchronous fault signal: a source "
                     "would turn a crash into an endless loop",
                     signum);
        return NULL;
    }
    if (signum <= 0 || signum >= NSIG) {
        PyErr_Format(PyExc_ValueError, "signal number %d out of range [1, %d]",
                     signum, NSIG - 1);
        return NULL;
    }
    return source_create(type, DK_SOURCE_SIGNAL, (uintptr_t)signum, 0, handler,
                         queue, "signal source");
}

SOURCE_GETSET(SignalSource_getset, "signal", Source_get_handle,
              "The signal number.", "count", Source_get_data,
              "Signals received since the previous handler call (read it in "
              "the handler).");

/* ---- ReadSource / WriteSource --------------------------------------- */

static PyObject *
fd_source_new(PyTypeObject *type, PyObject *args, PyObject *kwargs,
              dk_source_type_t kind, const char *name)
{
    static char *kwlist[] = {"fd", "handler", "queue", NULL};
    PyObject *fdobj, *handler, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O", kwlist, &fdobj,
                                     &handler, &queue)) {
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(fdobj); /* ints and objects with
                                                  fileno() */
    if (fd < 0) {
        return NULL;
    }
    return source_create(type, kind, (uintptr_t)fd, 0, handler, queue, name);
}

static PyObject *
ReadSource_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return fd_source_new(type, args, kwargs, DK_SOURCE_READ, "read source");
}

static PyObject *
WriteSource_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return fd_source_new(type, args, kwargs, DK_SOURCE_WRITE, "write source");
}

SOURCE_GETSET(ReadSource_getset, "fd", Source_get_handle,
              "The file descriptor.", "bytes_available", Source_get_data,
              "Estimated bytes available at the last handler call.");
SOURCE_GETSET(WriteSource_getset, "fd", Source_get_handle,
              "The file descriptor.", "buffer_space", Source_get_data,
              "Estimated buffer space at the last handler call.");

/* ---- ProcessSource -------------------------------------------------- */

static PyObject *
ProcessSource_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"pid", "handler", "events", "queue", NULL};
    long pid;
    unsigned long events = DK_PROC_EXIT;
    PyObject *handler, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "lO|kO:ProcessSource",
                                     kwlist, &pid, &handler, &events,
                                     &queue)) {
        return NULL;
    }
    if (pid <= 0 || pid > INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "pid must be a positive process id, not %ld", pid);
        return NULL;
    }
    unsigned long all =
        DK_PROC_EXIT | DK_PROC_FORK | DK_PROC_EXEC | DK_PROC_SIGNAL;
    if (events == 0 || (events & ~all) != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "events must combine PROC_EXIT, PROC_FORK, "
                        "PROC_EXEC and PROC_SIGNAL");
        return NULL;
    }
    return source_create(type, DK_SOURCE_PROC, (uintptr_t)pid, events, handler,
                         queue, "process source");
}

SOURCE_GETSET(ProcessSource_getset, "pid", Source_get_handle,
              "The process id.", "events_pending", Source_get_data,
              "PROC_* events seen at the last handler call (only PROC_EXIT "
              "is observable on Linux).");

/* ---- DataSource ----------------------------------------------------- */

static PyObject *
DataSource_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"kind", "handler", "queue", NULL};
    long kind;
    PyObject *handler, *queue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "lO|O:DataSource", kwlist,
                                     &kind, &handler, &queue)) {
        return NULL;
    }
    if (kind != DK_SOURCE_DATA_ADD && kind != DK_SOURCE_DATA_OR &&
        kind != DK_SOURCE_DATA_REPLACE) {
        PyErr_Format(PyExc_ValueError,
                     "kind must be DATA_ADD, DATA_OR or DATA_REPLACE, not %ld",
                     kind);
        return NULL;
    }
    return source_create(type, (dk_source_type_t)kind, 0, 0, handler, queue,
                         "data source");
}

static PyObject *
DataSource_merge(SourceObject *self, PyObject *value)
{
    PyObject *index = PyNumber_Index(value);
    if (index == NULL) {
        return NULL;
    }
    size_t v = PyLong_AsSize_t(index);
    Py_DECREF(index);
    if (v == (size_t)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Format(PyExc_OverflowError,
                         "merge value must be in [0, %zu]", (size_t)-1);
        }
        return NULL;
    }
    /* Non-blocking (an atomic merge and at most one wake-up), so the GIL
     * stays held. After cancel() the value is dropped, as in GCD. */
    int rc = dk_source_merge_data(self->s, (uintptr_t)v);
    if (rc < 0) {
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
DataSource_get_kind(SourceObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong((long)dk_source_get_type(self->s));
}

static PyMethodDef DataSource_methods[] = {
    SOURCE_METHODS,
    {"merge", (PyCFunction)DataSource_merge, METH_O,
     "merge($self, value, /)\n--\n\nMerge a non-negative int into the "
     "pending "
     "data (added, OR-ed or replacing it, by kind) and schedule the "
     "handler. "
     "Any thread may call it; merges made while the handler is queued or "
     "running coalesce into its next call. 0 is no event (DATA_REPLACE: it "
     "replaces a pending value). Dropped after cancel()."},
    {NULL, NULL, 0, NULL},
};

SOURCE_GETSET(DataSource_getset, "data", Source_get_data,
              "The data of this handler call (read it in the handler): the "
              "sum (DATA_ADD), the OR (DATA_OR) or the last value "
              "(DATA_REPLACE) of the values merged since the previous call.",
              "kind", DataSource_get_kind,
              "DATA_ADD, DATA_OR or DATA_REPLACE.");

/* ---- types ---------------------------------------------------------- */

/* A source type: its constructor, methods, properties and doc; the rest
 * is shared. */
#define SOURCE_TYPE(NAME, METHODS, GETSET, DOC)                               \
    DKPY_TYPE(static, NAME##_spec, "dispatchkit." #NAME, SourceObject,        \
              Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,                       \
              {Py_tp_new, NAME##_new}, {Py_tp_dealloc, Source_dealloc},       \
              {Py_tp_traverse, Source_traverse}, {Py_tp_clear, Source_clear}, \
              {Py_tp_methods, METHODS}, {Py_tp_getset, GETSET},               \
              {Py_tp_repr, Source_repr}, {Py_tp_doc, DOC})

SOURCE_TYPE(
    Timer, Timer_methods, Timer_getset,
    "Timer(interval, handler, queue=None, start_delay=None, leeway=0.0, "
    "repeating=True)\n--\n\nA repeating timer fires start_delay (default "
    "0) seconds after start(), then every interval seconds. A one-shot "
    "timer fires once: start_delay seconds after start() when start_delay "
    "is given (interval is then ignored, as in cygcd), else interval "
    "seconds after start(). Missed fires coalesce.");
SOURCE_TYPE(
    SignalSource, Source_methods, SignalSource_getset,
    "SignalSource(signum, handler, queue=None)\n--\n\nCall handler on a queue "
    "when the process receives signum (also when it was set to SIG_IGN).");
SOURCE_TYPE(
    ReadSource, Source_methods, ReadSource_getset,
    "ReadSource(fd, handler, queue=None)\n--\n\nCall handler while fd is "
    "readable (level-triggered).");
SOURCE_TYPE(
    WriteSource, Source_methods, WriteSource_getset,
    "WriteSource(fd, handler, queue=None)\n--\n\nCall handler while fd is "
    "writable (level-triggered).");
SOURCE_TYPE(
    ProcessSource, Source_methods, ProcessSource_getset,
    "ProcessSource(pid, handler, events=0x80000000, queue=None)\n--\n\n"
    "Call handler when the process exits (events: PROC_* flags, default "
    "PROC_EXIT).");
SOURCE_TYPE(
    DataSource, DataSource_methods, DataSource_getset,
    "DataSource(kind, handler, queue=None)\n--\n\nA user data source "
    "(GCD's DISPATCH_SOURCE_TYPE_DATA_*): any thread calls merge(value); "
    "handler() runs on the queue, never concurrently with itself, and reads "
    "the coalesced value as data. kind is DATA_ADD (sum), DATA_OR (bitwise "
    "OR) or DATA_REPLACE (last value).");

static PyType_Spec *const source_specs[] = {
    &Timer_spec,       &SignalSource_spec,  &ReadSource_spec,
    &WriteSource_spec, &ProcessSource_spec, &DataSource_spec,
};

int
dkpy_source_exec(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "DATA_ADD", DK_SOURCE_DATA_ADD) < 0 ||
        PyModule_AddIntConstant(m, "DATA_OR", DK_SOURCE_DATA_OR) < 0 ||
        PyModule_AddIntConstant(m, "DATA_REPLACE", DK_SOURCE_DATA_REPLACE) <
            0) {
        return -1;
    }
    for (size_t i = 0; i < sizeof source_specs / sizeof source_specs[0]; i++) {
        PyTypeObject *t = dkpy_add_type(m, source_specs[i], NULL, "");
        if (t == NULL) {
            return -1;
        }
        Py_DECREF(t); /* the module holds it */
    }
    return 0;
}
