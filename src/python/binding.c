/*
 * The binding's toolkit: what every subsystem file needs and writes the
 * same way, written once. Errors from the core map to exceptions through
 * one table; each seed's timeout rule has one parser; blocking calls wait
 * through one loop that releases the GIL in slices and runs the signal
 * handlers between them; callbacks from the runtime's threads report
 * their exceptions through one function.
 */
#include "python/binding.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include "dk/time.h"
#include "python/gil.h"

/* ---- errors ----------------------------------------------------------- */

/* The exception of each errno the core returns that is not an OSError:
 * the rule of STYLE.md ("map errors in one function"). */
static const dkpy_errno_map errno_table[] = {
    {ENOMEM, NULL, NULL},
    {EINVAL, &PyExc_ValueError, "invalid argument"},
    {ETIMEDOUT, &PyExc_TimeoutError, "timed out"},
    {0, NULL, NULL},
};

bool
dkpy_raise_mapped(const dkpy_errno_map *map, int neg_errno)
{
    for (; map->err != 0; map++) {
        if (map->err != -neg_errno) {
            continue;
        }
        if (map->type == NULL) {
            PyErr_NoMemory();
            return true;
        }
        /* A type the module has not set up yet (zerobuffer's exceptions
         * come from Python after import). */
        PyObject *type = *map->type ? *map->type : PyExc_RuntimeError;
        if (map->message == NULL) {
            PyErr_SetNone(type);
        } else {
            PyErr_SetString(type, map->message);
        }
        return true;
    }
    return false;
}

/* OSError for a negative errno whatever it is. Returns NULL. */
static PyObject *
raise_oserror(int neg_errno)
{
    errno = -neg_errno;
    return PyErr_SetFromErrno(PyExc_OSError);
}

PyObject *
dkpy_raise_errno(int neg_errno)
{
    return dkpy_raise_mapped(errno_table, neg_errno)
               ? NULL
               : raise_oserror(neg_errno);
}

PyObject *
dkpy_raise_errno_in(const dkpy_errno_map *map, int neg_errno)
{
    return dkpy_raise_mapped(map, neg_errno) ? NULL
                                             : dkpy_raise_errno(neg_errno);
}

/* ---- callbacks -------------------------------------------------------- */

void
dkpy_call_reporting(PyObject *func, PyObject *args)
{
    PyObject *r;
    if (args == NULL && PyErr_Occurred()) {
        r = NULL; /* the caller could not build the arguments */
    } else if (args == NULL) {
        r = PyObject_CallNoArgs(func);
    } else {
        r = PyObject_Call(func, args, NULL);
        Py_DECREF(args);
    }
    if (r == NULL) {
        PyErr_WriteUnraisable(func);
    } else {
        Py_DECREF(r);
    }
}

void
dkpy_callback(PyObject *func, bool consume, const char *fmt, ...)
{
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return; /* finalizing: drop it */
    }
    PyObject *args = NULL;
    if (fmt != NULL) {
        va_list va;
        va_start(va, fmt);
        args = Py_VaBuildValue(fmt, va);
        va_end(va);
    }
    dkpy_call_reporting(func, args);
    if (consume) {
        Py_DECREF(func);
    }
    dkpy_leave(&g);
}

PyObject *
dkpy_submitted(int rc, PyObject *func)
{
    if (rc >= 0) {
        Py_RETURN_NONE;
    }
    Py_DECREF(func);
    return dkpy_raise_errno(rc);
}

int
dkpy_check_callable(PyObject *func, const char *what)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable, not %.100s", what,
                     Py_TYPE(func)->tp_name);
        return -1;
    }
    return 0;
}

/* ---- arguments -------------------------------------------------------- */

int
dkpy_parse_keywords(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                    const char *const *names, const char *const *aliases,
                    int n, PyObject **out, const char *fname)
{
    for (int i = 0; i < n; i++) {
        out[i] = NULL;
    }
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments", fname,
                     n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = args[i];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        const char *key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
        int slot = -1;
        for (int i = 0; key != NULL && i < n; i++) {
            if (strcmp(key, names[i]) == 0 ||
                (aliases != NULL && aliases[i] != NULL &&
                 strcmp(key, aliases[i]) == 0)) {
                slot = i;
            }
        }
        if (slot < 0 || out[slot] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected or repeated keyword "
                         "argument '%s'",
                         fname, key ? key : "?");
            return -1;
        }
        out[slot] = args[nargs + k];
    }
    return 0;
}

PyObject *
dkpy_either(PyObject *a, PyObject *b, const char *names)
{
    a = a == Py_None ? NULL : a;
    b = b == Py_None ? NULL : b;
    if (a != NULL && b != NULL) {
        PyErr_Format(PyExc_TypeError, "give %s, not both", names);
        return NULL;
    }
    return a != NULL ? a : b != NULL ? b : Py_None;
}

/* ---- types and attributes --------------------------------------------- */

void
dkpy_free(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

PyTypeObject *
dkpy_add_type(PyObject *m, PyType_Spec *spec, PyObject *bases,
              const char *prefix)
{
    PyObject *t = dkpy_type_from_spec(m, spec, bases);
    if (t == NULL) {
        return NULL;
    }
    const char *dot = strrchr(spec->name, '.');
    char name[64];
    snprintf(name, sizeof name, "%s%s", prefix, dot ? dot + 1 : spec->name);
    if (PyModule_AddObjectRef(m, name, t) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyTypeObject *)t;
}

PyObject *
dkpy_getattr(PyObject *obj, PyObject **slot, const char *name)
{
    if (*slot == NULL) {
        *slot = PyUnicode_InternFromString(name);
        if (*slot == NULL) {
            return NULL;
        }
    }
    return PyObject_GetAttr(obj, *slot);
}

PyObject *
dkpy_type_from_spec(PyObject *m, PyType_Spec *spec, PyObject *bases)
{
    /* 3.9 takes the bases as a tuple only. */
    PyObject *tuple = NULL;
    if (bases != NULL && !PyTuple_Check(bases)) {
        tuple = PyTuple_Pack(1, bases);
        if (tuple == NULL) {
            return NULL;
        }
        bases = tuple;
    }
    PyObject *t = PyType_FromModuleAndSpec(m, spec, bases);
    Py_XDECREF(tuple);
#if PY_VERSION_HEX < 0x030A0000
    const char *doc = NULL;
    for (PyType_Slot *s = spec->slots; t != NULL && s->slot != 0; s++) {
        if (s->slot == Py_tp_doc) {
            doc = s->pfunc;
        }
    }
    if (doc != NULL) {
        /* Heap types free tp_doc with PyObject_Free (3.9's type_dealloc);
         * __doc__ keeps the text without the signature. */
        size_t len = strlen(doc) + 1;
        char *copy = PyObject_Malloc(len);
        if (copy == NULL) {
            Py_DECREF(t);
            return PyErr_NoMemory();
        }
        memcpy(copy, doc, len);
        PyTypeObject *type = (PyTypeObject *)t;
        PyObject_Free((void *)type->tp_doc);
        type->tp_doc = copy;
    }
#endif
    return t;
}

/* The thread that runs Python's signal handlers: the main thread, or in
 * a child the thread that forked (CPython makes it the main thread). */
static unsigned long handler_thread;

static void
forked_child(void)
{
    handler_thread = PyThread_get_thread_ident();
}

int
dkpy_binding_init(void)
{
    static bool hooked;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading == NULL
                         ? NULL
                         : PyObject_CallMethod(threading, "main_thread", NULL);
    PyObject *ident =
        main == NULL ? NULL : PyObject_GetAttrString(main, "ident");
    Py_XDECREF(threading);
    Py_XDECREF(main);
    if (ident == NULL) {
        return -1;
    }
    handler_thread = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (!hooked) {
        hooked = pthread_atfork(NULL, NULL, forked_child) == 0;
    }
    return 0;
}

/* The end of the next slice of a wait for `deadline` (DK_TIME_FOREVER:
 * forever; 0: poll). Other threads never run handlers, so they sleep to
 * the deadline: a slice there would only wake them (and, during
 * finalization, have CPython end them with pthread_exit when they take
 * the GIL back). */
static uint64_t
slice_end(uint64_t deadline)
{
    if (PyThread_get_thread_ident() != handler_thread) {
        return deadline;
    }
    uint64_t now = dk_now();
    return deadline > now && deadline - now > DKPY_SIGNAL_SLICE_NS
               ? now + DKPY_SIGNAL_SLICE_NS
               : deadline;
}

/* After a slice returned -ETIMEDOUT: true if the wait goes on (the
 * caller runs the signal handlers and sleeps another slice). */
static bool
wait_goes_on(uint64_t deadline)
{
    return deadline == DK_TIME_FOREVER || dk_now() < deadline;
}

/* ---- timeouts --------------------------------------------------------- */

/* Seconds as a double to a deadline after now, DK_TIME_FOREVER where it would
 * not fit (or is infinite). s > 0. */
static uint64_t
deadline_after_seconds(double s)
{
    double ns = s * 1e9;
    uint64_t now = dk_now();
    return ns >= (double)(UINT64_MAX - now - 1) ? DK_TIME_FOREVER
                                                : now + (uint64_t)ns;
}

/* The two rules in seconds: None (or no argument) waits forever and NaN
 * is a ValueError in both; they differ on what a number means. */
enum seconds_rule { RULE_CYGCD, RULE_ZEROBUFFER };

static int
deadline_in_seconds(PyObject *timeout, enum seconds_rule rule,
                    uint64_t *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = DK_TIME_FOREVER;
        return 0;
    }
    double s = PyFloat_AsDouble(timeout);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(s)) {
        PyErr_SetString(PyExc_ValueError, rule == RULE_CYGCD
                                              ? "timeout must not be NaN"
                                              : "timeout must be a number");
        return -1;
    }
    if (rule == RULE_CYGCD) { /* negative or inf: forever; 0 polls */
        *deadline = s < 0 || isinf(s) ? DK_TIME_FOREVER
                    : s == 0          ? 0
                                      : deadline_after_seconds(s);
    } else { /* 0 and negatives poll; past 1e9 s (inf too): forever */
        *deadline = s <= 0    ? 0
                    : s > 1e9 ? DK_TIME_FOREVER
                              : dk_now() + (uint64_t)(s * 1e9);
    }
    return 0;
}

int
dkpy_deadline_cygcd(PyObject *timeout, uint64_t *deadline)
{
    return deadline_in_seconds(timeout, RULE_CYGCD, deadline);
}

int
dkpy_deadline_zerobuffer(PyObject *timeout, uint64_t *deadline)
{
    return deadline_in_seconds(timeout, RULE_ZEROBUFFER, deadline);
}

int
dkpy_parse_wait_timeout(PyObject *args, PyObject *kwargs, uint64_t *deadline)
{
    static char *kwlist[] = {"timeout", "timeout_seconds", NULL};
    PyObject *timeout = NULL, *timeout_seconds = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:wait", kwlist,
                                     &timeout, &timeout_seconds)) {
        return -1;
    }
    timeout =
        dkpy_either(timeout, timeout_seconds, "timeout or timeout_seconds");
    return timeout == NULL ? -1 : dkpy_deadline_cygcd(timeout, deadline);
}

int
dkpy_seconds_to_ns(PyObject *obj, const char *what, int64_t *ns)
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

uint64_t
dkpy_deadline_fastipc(long long timeout_ns)
{
    if (timeout_ns < 0) {
        return DK_TIME_FOREVER;
    }
    if (timeout_ns == 0) {
        return 0;
    }
    /* Cannot wrap: dk_now() is far below 2^63 and timeout_ns < 2^63. */
    return dk_now() + (uint64_t)timeout_ns;
}

/* ---- waiting ---------------------------------------------------------- */

int
dkpy_wait_sliced(dkpy_wait_fn fn, void *arg, uint64_t deadline)
{
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = fn(arg, slice_end(deadline));
        Py_END_ALLOW_THREADS
        if (rc != -ETIMEDOUT && rc != -EINTR) {
            return rc;
        }
        if (rc == -ETIMEDOUT && !wait_goes_on(deadline)) {
            return -ETIMEDOUT;
        }
        /* EINTR or the end of a slice: run the signal handlers (Ctrl-C
         * raises), then sleep again against the same deadline. */
        if (PyErr_CheckSignals() < 0) {
            return DKPY_RAISED;
        }
    }
}

PyObject *
dkpy_wait_bool(dkpy_wait_fn fn, void *arg, uint64_t deadline)
{
    int rc = dkpy_wait_sliced(fn, arg, deadline);
    return rc == DKPY_RAISED ? NULL : PyBool_FromLong(rc == 0);
}

PyObject *
dkpy_none_or_raise(bool ok, PyObject *type, const char *message)
{
    if (!ok) {
        PyErr_SetString(type, message);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
dkpy_raise_call(PyObject *type, PyObject *args, PyObject *kwargs)
{
    if (args == NULL || PyErr_Occurred()) {
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
        return NULL;
    }
    PyObject *e = PyObject_Call(type, args, kwargs);
    Py_DECREF(args);
    Py_XDECREF(kwargs);
    if (e != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
        Py_DECREF(e);
    }
    return NULL;
}

/* ---- errors with a detail --------------------------------------------- */

/* The first row for neg_errno decides, as in dkpy_raise_mapped; rows
 * without a type or a message go the way dkpy_raise_errno_in takes them. */
PyObject *
dkpy_raise_errno_detail(const dkpy_errno_map *map, int neg_errno,
                        const char *detail)
{
    const dkpy_errno_map *row = map;
    while (row->err != 0 && row->err != -neg_errno) {
        row++;
    }
    if (row->err == 0 || row->type == NULL || row->message == NULL) {
        return dkpy_raise_errno_in(map, neg_errno);
    }
    PyErr_Format(*row->type ? *row->type : PyExc_RuntimeError, row->message,
                 detail);
    return NULL;
}

void
dkpy_carry(dkpy_carried *c, PyObject *func)
{
    if (c->abandoned) {
        PyErr_WriteUnraisable(func);
    } else if (c->type != NULL) {
        PyErr_Clear();
    } else {
        PyErr_Fetch(&c->type, &c->value, &c->tb);
    }
}

bool
dkpy_call_carrying(PyObject *func, dkpy_carried *c)
{
    PyObject *r = PyObject_CallNoArgs(func);
    if (r == NULL) {
        dkpy_carry(c, func);
        return false;
    }
    Py_DECREF(r);
    return true;
}

bool
dkpy_callback_carrying(PyObject *func, bool consume, dkpy_carried *c)
{
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return false; /* finalizing: drop it */
    }
    dkpy_call_carrying(func, c);
    if (consume) {
        Py_DECREF(func);
    }
    dkpy_leave(&g);
    return true;
}

PyObject *
dkpy_carried_result(dkpy_carried *c)
{
    if (c->type == NULL) {
        Py_RETURN_NONE;
    }
    PyErr_Restore(c->type, c->value, c->tb);
    c->type = c->value = c->tb = NULL;
    return NULL;
}

void
dkpy_carried_abandon(dkpy_carried *c)
{
    Py_CLEAR(c->type);
    Py_CLEAR(c->value);
    Py_CLEAR(c->tb);
    c->abandoned = true;
}

int
dkpy_size_arg(PyObject *obj, const char *what, size_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyLong_AsSize_t(obj);
    if (*out == (size_t)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_OverflowError, "%s must be >= 0 and fit in size_t",
                     what);
        return -1;
    }
    return 0;
}
