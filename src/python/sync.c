/*
 * Binding of dispatchkit.sync's buffer primitives that mirror fastipc:
 * FutexWord, AtomicU32 and AtomicU64. The atomics are the same core
 * functions dispatchkit.atomics uses (dk_atomic_*_w). Buffers are pinned
 * (exported) for the object's life, must be writable, large enough and
 * naturally aligned.
 */
#include "python/binding.h"

#include <errno.h>
#include <string.h>

#include "dk/atomic.h"
#include "dk/futex.h"
#include "dk/time.h"

typedef struct {
    PyObject_HEAD Py_buffer view;
    void *addr;
    unsigned width;
    bool shared;
} WordObject;

static int
word_init(WordObject *self, PyObject *buffer, unsigned width)
{
    if (PyObject_GetBuffer(buffer, &self->view,
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError,
                            "buffer must be writable (a read-only buffer "
                            "cannot hold a synchronisation word)");
        }
        return -1;
    }
    self->addr = self->view.buf;
    self->width = width;
    if ((size_t)self->view.len < width || (uintptr_t)self->addr % width != 0) {
        PyBuffer_Release(&self->view);
        self->view.obj = NULL;
        PyErr_Format(PyExc_ValueError, "need %u-byte aligned >=%u buffer",
                     width, width);
        return -1;
    }
    return 0;
}

static void
Word_dealloc(WordObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->view.obj != NULL) {
        PyBuffer_Release(&self->view);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int
get_u(PyObject *v, unsigned width, uint64_t *out)
{
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "value must be int, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "value out of range for uint%u",
                     width * 8);
        return -1;
    }
    if (width == 4 && x > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for uint32");
        return -1;
    }
    *out = x;
    return 0;
}

/* ---- FutexWord ------------------------------------------------------- */

static PyObject *
FutexWord_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "shared", NULL};
    PyObject *buffer;
    int shared = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:FutexWord", kwlist,
                                     &buffer, &shared)) {
        return NULL;
    }
    WordObject *self = (WordObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (word_init(self, buffer, 4) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->shared = shared != 0;
    return (PyObject *)self;
}

static PyObject *
FutexWord_wait(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"expected", "timeout_ns", NULL};
    PyObject *exp;
    long long timeout_ns = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|L:wait", kwlist, &exp,
                                     &timeout_ns)) {
        return NULL;
    }
    uint64_t expected;
    if (get_u(exp, 4, &expected) < 0) {
        return NULL;
    }
    uint64_t deadline =
        timeout_ns < 0 ? UINT64_MAX : dk_now() + (uint64_t)timeout_ns;
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = dk_futex_wait(
            self->addr, (uint32_t)expected, deadline, self->shared);
        Py_END_ALLOW_THREADS if (rc == 0)
        {
            Py_RETURN_TRUE;
        }
        if (rc == -EAGAIN || rc == -ETIMEDOUT) {
            Py_RETURN_FALSE;
        }
        /* EINTR: run signal handlers (Ctrl-C raises), then keep waiting
         * against the same deadline. */
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
}

static PyObject *
FutexWord_wake(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"n", NULL};
    int n = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:wake", kwlist, &n)) {
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must be >= 0");
        return NULL;
    }
    return PyLong_FromLong(dk_futex_wake(self->addr, n, self->shared));
}

static PyObject *
Word_load(WordObject *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(
        dk_atomic_load_w(self->addr, self->width, DK_MO_ACQUIRE));
}

static PyObject *
Word_store(WordObject *self, PyObject *v)
{
    uint64_t x;
    if (get_u(v, self->width, &x) < 0) {
        return NULL;
    }
    dk_atomic_store_w(self->addr, self->width, x, DK_MO_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
Word_cas(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    PyObject *exp = NULL, *des = NULL;
    if (nargs == 2 && kwnames == NULL) {
        exp = args[0];
        des = args[1];
    } else {
        static const char *names[] = {"expected", "new"};
        PyObject *slot[2] = {NULL, NULL};
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        for (Py_ssize_t i = 0; i < nargs && i < 2; i++) {
            slot[i] = args[i];
        }
        for (Py_ssize_t k = 0; k < nkw; k++) {
            const char *key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
            for (int i = 0; key != NULL && i < 2; i++) {
                if (strcmp(key, names[i]) == 0) {
                    slot[i] = args[nargs + k];
                }
            }
        }
        exp = slot[0];
        des = slot[1];
        if (exp == NULL || des == NULL || nargs > 2) {
            PyErr_SetString(PyExc_TypeError, "cas(expected, new)");
            return NULL;
        }
    }
    uint64_t e, d;
    if (get_u(exp, self->width, &e) < 0 || get_u(des, self->width, &d) < 0) {
        return NULL;
    }
    return PyBool_FromLong(dk_atomic_cas_w(
        self->addr, self->width, &e, d, false, DK_MO_ACQ_REL, DK_MO_ACQUIRE));
}

static PyObject *
Word_repr(WordObject *self)
{
    const char *name = _PyType_Name(Py_TYPE(self));
    if (self->width == 4 && strcmp(name, "FutexWord") == 0) {
        return PyUnicode_FromFormat("<dispatchkit.sync.FutexWord addr=%p "
                                    "shared=%d>",
                                    self->addr, (int)self->shared);
    }
    return PyUnicode_FromFormat("<dispatchkit.sync.%s addr=%p value=%llu>",
                                name, self->addr,
                                (unsigned long long)dk_atomic_load_w(
                                    self->addr, self->width, DK_MO_ACQUIRE));
}

static PyMethodDef FutexWord_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))FutexWord_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait(expected, timeout_ns=-1) -> bool\n\nSleep while the word equals "
     "expected; True when woken, False if it differed or timed out. "
     "Releases the GIL; Ctrl-C interrupts it."},
    {"wake", (PyCFunction)(void (*)(void))FutexWord_wake,
     METH_VARARGS | METH_KEYWORDS, "wake(n=1) -> int\n\nWake up to n."},
    {"load_acquire", (PyCFunction)Word_load, METH_NOARGS,
     "load_acquire() -> int"},
    {"store_release", (PyCFunction)Word_store, METH_O, "store_release(value)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot FutexWord_slots[] = {
    {Py_tp_new, FutexWord_new},
    {Py_tp_dealloc, Word_dealloc},
    {Py_tp_methods, FutexWord_methods},
    {Py_tp_repr, Word_repr},
    {Py_tp_doc, "FutexWord(buffer, shared=True)\n\nFutex wait/wake on the "
                "first 4 bytes of a writable, 4-aligned buffer."},
    {0, NULL},
};

/* ---- AtomicU32 / AtomicU64 ------------------------------------------- */

static PyObject *
atomic_word_new(PyTypeObject *type, PyObject *args, PyObject *kwargs,
                unsigned width)
{
    static char *kwlist[] = {"buffer", NULL};
    PyObject *buffer;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", kwlist, &buffer)) {
        return NULL;
    }
    WordObject *self = (WordObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (word_init(self, buffer, width) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
AtomicU32_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return atomic_word_new(type, args, kwargs, 4);
}

static PyObject *
AtomicU64_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return atomic_word_new(type, args, kwargs, 8);
}

static PyMethodDef AtomicWord_methods[] = {
    {"load", (PyCFunction)Word_load, METH_NOARGS, "load() -> int (acquire)"},
    {"store", (PyCFunction)Word_store, METH_O, "store(value) (release)"},
    {"cas", (PyCFunction)(void (*)(void))Word_cas,
     METH_FASTCALL | METH_KEYWORDS,
     "cas(expected, new) -> bool (acq_rel; acquire on failure)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot AtomicU32_slots[] = {
    {Py_tp_new, AtomicU32_new},
    {Py_tp_dealloc, Word_dealloc},
    {Py_tp_methods, AtomicWord_methods},
    {Py_tp_repr, Word_repr},
    {Py_tp_doc, "AtomicU32(buffer)\n\nAn unsigned 32-bit atomic on the first "
                "4 bytes of a writable, 4-aligned buffer."},
    {0, NULL},
};

static PyType_Slot AtomicU64_slots[] = {
    {Py_tp_new, AtomicU64_new},
    {Py_tp_dealloc, Word_dealloc},
    {Py_tp_methods, AtomicWord_methods},
    {Py_tp_repr, Word_repr},
    {Py_tp_doc, "AtomicU64(buffer)\n\nAn unsigned 64-bit atomic on the first "
                "8 bytes of a writable, 8-aligned buffer."},
    {0, NULL},
};

static PyType_Spec sync_specs[] = {
    {"dispatchkit.sync.FutexWord", sizeof(WordObject), 0, Py_TPFLAGS_DEFAULT,
     FutexWord_slots},
    {"dispatchkit.sync.AtomicU32", sizeof(WordObject), 0, Py_TPFLAGS_DEFAULT,
     AtomicU32_slots},
    {"dispatchkit.sync.AtomicU64", sizeof(WordObject), 0, Py_TPFLAGS_DEFAULT,
     AtomicU64_slots},
};

int
dkpy_sync_exec(PyObject *m)
{
    for (size_t i = 0; i < sizeof sync_specs / sizeof sync_specs[0]; i++) {
        PyObject *t = PyType_FromModuleAndSpec(m, &sync_specs[i], NULL);
        if (t == NULL) {
            return -1;
        }
        int rc =
            PyModule_AddObjectRef(m, strrchr(sync_specs[i].name, '.') + 1, t);
        Py_DECREF(t);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}
