/*
 * Binding of dispatchkit.sync's buffer primitives that mirror fastipc:
 * FutexWord, AtomicU32, AtomicU64, Mutex, Semaphore, and Event (the word
 * under NamedEvent). The atomics are the same core functions
 * dispatchkit.atomics uses (dk_atomic_u32_* / dk_atomic_u64_*). Buffers
 * must be writable, large enough and naturally aligned. An object keeps
 * its memory for its whole life: shared memory through a second mapping
 * of its own (so the caller may close a SharedMemory or mmap under it, as
 * fastipc's documented examples do), anything else by keeping the buffer
 * exported (a bytearray cannot be resized under it).
 */
#include "python/binding.h"

#include <errno.h>
#include <string.h>

#include "dk/atomic.h"
#include "dk/futex.h"
#include "dk/mutex.h"
#include "dk/shm_event.h"
#include "python/futures.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* held (view.obj set) unless the memory is aliased */
    bool aliased;   /* addr is in our own mapping (dk_shm_alias) */
    void *addr;
    unsigned width;
    bool shared;
    bool owner_died;     /* Mutex: the last acquisition took over */
    bool fastipc_compat; /* Semaphore: also wake on 0 -> n */
} WordObject;

/* One blocking call of a word, for dkpy_wait_sliced: its arguments are
 * read with the GIL held and the call runs without it. */
struct word_wait {
    WordObject *self;
    uint64_t expected; /* FutexWord */
    int spin;          /* Mutex, Semaphore */
};

static int
futex_wait_fn(void *arg, uint64_t deadline)
{
    struct word_wait *w = arg;
    return dk_futex_wait(w->self->addr, (uint32_t)w->expected, deadline,
                         w->self->shared ? DK_SHARED : 0);
}

static int
mutex_lock_fn(void *arg, uint64_t deadline)
{
    struct word_wait *w = arg;
    return dk_shm_mutex_lock_after_try(w->self->addr, deadline, w->spin,
                                       (w->self->shared ? DK_SHARED : 0) |
                                           DK_SHM_INTERRUPTIBLE);
}

static int
semaphore_wait_fn(void *arg, uint64_t deadline)
{
    struct word_wait *w = arg;
    return dk_shm_semaphore_wait(w->self->addr, deadline, w->spin,
                                 (w->self->shared ? DK_SHARED : 0) |
                                     DK_SHM_INTERRUPTIBLE);
}

static int
event_wait_fn(void *arg, uint64_t deadline)
{
    struct word_wait *w = arg;
    return dk_shm_event_wait(w->self->addr, deadline,
                             w->self->shared ? DK_SHARED : 0);
}

/* Called with the view held and checked: swap it for a mapping of our
 * own when the memory is shared. A bytearray is heap memory (never
 * shared): skip the syscall. */
static void
hold_memory(WordObject *self)
{
    void *alias;
    if (PyByteArray_Check(self->view.obj) ||
        dk_shm_alias(self->addr, self->width, &alias) < 0) {
        return; /* keep the buffer exported instead */
    }
    self->addr = alias;
    self->aliased = true;
    PyBuffer_Release(&self->view);
    self->view.obj = NULL;
}

/* A new object of `type` on `buffer`, which must be writable, at least
 * `size` bytes long and `align`-aligned. NULL with ValueError if not. */
static WordObject *
word_alloc(PyTypeObject *type, PyObject *buffer, unsigned size, unsigned align,
           int shared)
{
    const char *what = dkpy_type_name(type);
    WordObject *self = (WordObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &self->view,
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "buffer must be writable for %s (a read-only "
                         "buffer cannot hold a synchronisation word)",
                         what);
        }
        Py_DECREF(self);
        return NULL;
    }
    self->addr = self->view.buf;
    self->width = size;
    self->shared = shared != 0;
    if ((size_t)self->view.len < size || (uintptr_t)self->addr % align != 0) {
        Py_DECREF(self); /* releases the view */
        PyErr_Format(PyExc_ValueError,
                     "need %u-byte aligned >=%u buffer for %s", align, size,
                     what);
        return NULL;
    }
    hold_memory(self);
    return self;
}

/* The constructors of FutexWord, Event and Mutex, (buffer, shared=True),
 * and of AtomicU32 and AtomicU64, (buffer): `size` bytes at `align`. */
static WordObject *
word_new(PyTypeObject *type, PyObject *args, PyObject *kwargs, unsigned size,
         unsigned align, bool takes_shared)
{
    static char *kwlist[] = {"buffer", "shared", NULL};
    static char *kwlist_buffer[] = {"buffer", NULL};
    PyObject *buffer;
    int shared = 1;
    char fmt[64];
    snprintf(fmt, sizeof fmt, "O%s:%s", takes_shared ? "|p" : "",
             dkpy_type_name(type));
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, fmt,
                                     takes_shared ? kwlist : kwlist_buffer,
                                     &buffer, &shared)) {
        return NULL;
    }
    return word_alloc(type, buffer, size, align, shared);
}

static void
Word_dealloc(WordObject *self)
{
    if (self->view.obj != NULL) {
        PyBuffer_Release(&self->view);
    }
    if (self->aliased) {
        dk_shm_unalias(self->addr, self->width);
    }
    dkpy_free((PyObject *)self);
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
    return (PyObject *)word_new(type, args, kwargs, 4, 4, true);
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
    struct word_wait w = {.self = self, .expected = expected};
    /* False also for -EAGAIN: the word had changed. */
    return dkpy_wait_bool(futex_wait_fn, &w,
                          dkpy_deadline_fastipc(timeout_ns));
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
    return PyLong_FromLong(
        dk_futex_wake(self->addr, n, self->shared ? DK_SHARED : 0));
}

/* The words go through the public dk_atomic_u32_* / dk_atomic_u64_*
 * functions, the same ones dispatchkit.atomics uses. */
static uint64_t
word_load(WordObject *self)
{
    return self->width == 4 ? dk_atomic_u32_load(self->addr, DK_MO_ACQUIRE)
                            : dk_atomic_u64_load(self->addr, DK_MO_ACQUIRE);
}

static PyObject *
Word_load(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLongLong(word_load(self));
}

static PyObject *
Word_store(WordObject *self, PyObject *v)
{
    uint64_t x;
    if (get_u(v, self->width, &x) < 0) {
        return NULL;
    }
    if (self->width == 4) {
        dk_atomic_u32_store(self->addr, (uint32_t)x, DK_MO_RELEASE);
    } else {
        dk_atomic_u64_store(self->addr, x, DK_MO_RELEASE);
    }
    Py_RETURN_NONE;
}

static PyObject *
Word_cas(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    static const char *const names[] = {"expected", "new"};
    PyObject *a[2];
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, a, "cas") < 0) {
        return NULL;
    }
    PyObject *exp = a[0], *des = a[1];
    if (exp == NULL || des == NULL) {
        PyErr_SetString(PyExc_TypeError, "cas(expected, new)");
        return NULL;
    }
    uint64_t e, d;
    if (get_u(exp, self->width, &e) < 0 || get_u(des, self->width, &d) < 0) {
        return NULL;
    }
    if (self->width == 4) {
        uint32_t e32 = (uint32_t)e;
        return PyBool_FromLong(dk_atomic_u32_cas(self->addr, &e32, (uint32_t)d,
                                                 false, DK_MO_ACQ_REL,
                                                 DK_MO_ACQUIRE));
    }
    return PyBool_FromLong(dk_atomic_u64_cas(self->addr, &e, d, false,
                                             DK_MO_ACQ_REL, DK_MO_ACQUIRE));
}

static PyObject *
Word_repr(WordObject *self)
{
    const char *name = dkpy_type_name(Py_TYPE(self));
    if (self->width == 4 && strcmp(name, "FutexWord") == 0) {
        return PyUnicode_FromFormat("<dispatchkit.sync.FutexWord addr=%p "
                                    "shared=%d>",
                                    self->addr, (int)self->shared);
    }
    return PyUnicode_FromFormat("<dispatchkit.sync.%s addr=%p value=%llu>",
                                name, self->addr,
                                (unsigned long long)word_load(self));
}

static PyMethodDef FutexWord_methods[] = {
    {"wait", DKPY_METH_KW(FutexWord_wait),
     "wait($self, expected, timeout_ns=-1)\n--\n\nSleep while the word equals "
     "expected; True when woken, False if it differed or timed out. "
     "Releases the GIL; Ctrl-C interrupts it."},
    {"wake", DKPY_METH_KW(FutexWord_wake),
     "wake($self, n=1)\n--\n\nWake up to n waiters; returns how many were "
     "woken."},
    {"load_acquire", (PyCFunction)Word_load, METH_NOARGS,
     "load_acquire($self, /)\n--\n\nThe value (acquire)."},
    {"store_release", (PyCFunction)Word_store, METH_O,
     "store_release($self, value, /)\n--\n\nStore value (release)."},
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, FutexWord_spec, "dispatchkit.sync.FutexWord", WordObject, 0,
          {Py_tp_new, FutexWord_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, FutexWord_methods}, {Py_tp_repr, Word_repr},
          {Py_tp_doc,
           "FutexWord(buffer, shared=True)\n--\n\nFutex wait/wake on the "
           "first 4 bytes of a writable, 4-aligned buffer."});

/* ---- AtomicU32 / AtomicU64 ------------------------------------------- */

static PyObject *
AtomicU32_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return (PyObject *)word_new(type, args, kwargs, 4, 4, false);
}

static PyObject *
AtomicU64_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return (PyObject *)word_new(type, args, kwargs, 8, 8, false);
}

static PyMethodDef AtomicWord_methods[] = {
    {"load", (PyCFunction)Word_load, METH_NOARGS,
     "load($self, /)\n--\n\nThe value (acquire)."},
    {"store", (PyCFunction)Word_store, METH_O,
     "store($self, value, /)\n--\n\nStore value (release)."},
    {"cas", DKPY_METH_FAST(Word_cas),
     "cas($self, expected, new)\n--\n\nReplace expected by new; True if it "
     "did (acq_rel; acquire on failure)."},
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, AtomicU32_spec, "dispatchkit.sync.AtomicU32", WordObject, 0,
          {Py_tp_new, AtomicU32_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, AtomicWord_methods}, {Py_tp_repr, Word_repr},
          {Py_tp_doc,
           "AtomicU32(buffer)\n--\n\nAn unsigned 32-bit atomic on the first "
           "4 bytes of a writable, 4-aligned buffer."});

DKPY_TYPE(static, AtomicU64_spec, "dispatchkit.sync.AtomicU64", WordObject, 0,
          {Py_tp_new, AtomicU64_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, AtomicWord_methods}, {Py_tp_repr, Word_repr},
          {Py_tp_doc,
           "AtomicU64(buffer)\n--\n\nAn unsigned 64-bit atomic on the first "
           "8 bytes of a writable, 8-aligned buffer."});

/* ---- Mutex ------------------------------------------------------------ */

static PyObject *
Mutex_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    WordObject *self =
        word_new(type, args, kwargs, DK_SHM_HEADER_SIZE, 4, true);
    if (self == NULL) {
        return NULL;
    }
    int rc = dk_shm_mutex_init(self->addr);
    if (rc < 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError,
                        "buffer does not hold a Mutex (wrong magic): "
                        "refusing to overwrite it");
        return NULL;
    }
    return (PyObject *)self;
}

/* Lock with a deadline: try with the GIL held (watching a busy word for
 * up to 2 us when spinning is allowed: letting the GIL go and taking it
 * back costs more than a short critical section), then wait without it. */
static int
mutex_lock(WordObject *self, long long timeout_ns, int spin)
{
    unsigned flags = self->shared ? DK_SHARED : 0;
    int rc = spin > 0 ? dk_shm_mutex_lock_try_spin(self->addr, flags)
                      : dk_shm_mutex_lock(self->addr, 0, 0, flags);
    if (rc >= 0) {
        self->owner_died = rc == 1;
        return 1;
    }
    if (rc == -EDEADLK) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot re-acquire a mutex already owned by this "
                        "thread");
        return -1;
    }
    if (timeout_ns == 0 && spin <= 0) {
        return 0;
    }
    struct word_wait w = {.self = self, .spin = spin};
    rc =
        dkpy_wait_sliced(mutex_lock_fn, &w, dkpy_deadline_fastipc(timeout_ns));
    if (rc >= 0) {
        self->owner_died = rc == 1;
        return 1;
    }
    return rc == DKPY_RAISED ? -1 : 0;
}

static PyObject *
Mutex_acquire(WordObject *self, PyObject *Py_UNUSED(unused))
{
    int rc = mutex_lock(self, -1, 16);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Mutex_acquire_ns(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout_ns", "spin", NULL};
    long long timeout_ns = -1;
    int spin = 16;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|Li:acquire_ns", kwlist,
                                     &timeout_ns, &spin)) {
        return NULL;
    }
    int rc = mutex_lock(self, timeout_ns, spin);
    if (rc < 0) {
        return NULL;
    }
    return PyBool_FromLong(rc);
}

static PyObject *
Mutex_try_acquire(WordObject *self, PyObject *Py_UNUSED(unused))
{
    int rc = dk_shm_mutex_lock(self->addr, 0, 0, self->shared ? DK_SHARED : 0);
    if (rc >= 0) {
        self->owner_died = rc == 1;
    }
    return PyBool_FromLong(rc >= 0);
}

static PyObject *
Mutex_release(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (dk_shm_mutex_unlock(self->addr, self->shared ? DK_SHARED : 0) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot release a mutex not owned by this thread");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Mutex_force_release(WordObject *self, PyObject *Py_UNUSED(unused))
{
    int rc = dk_shm_mutex_unlock(self->addr, (self->shared ? DK_SHARED : 0) |
                                                 DK_SHM_FORCE);
    if (rc < 0) {
        return dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Mutex_owner_pid(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLong(dk_atomic_u32_load(
        &((dk_shm_mutex_t *)self->addr)->owner_pid, DK_MO_ACQUIRE));
}

static PyObject *
Header_last_ns(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLongLong(dk_shm_header_last_ns(self->addr));
}

static PyObject *
Header_magic(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLong(
        dk_atomic_u32_load((uint32_t *)self->addr, DK_MO_ACQUIRE));
}

static PyObject *
Mutex_enter(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (mutex_lock(self, -1, 16) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
Mutex_exit(WordObject *self, PyObject *const *Py_UNUSED(args),
           Py_ssize_t Py_UNUSED(nargs))
{
    return Mutex_release(self, NULL);
}

static PyObject *
Mutex_get_owner_died(WordObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->owner_died);
}

static PyObject *
Mutex_repr(WordObject *self)
{
    dk_shm_mutex_t *m = self->addr;
    return PyUnicode_FromFormat(
        "<dispatchkit.sync.Mutex buf=%p shared=%d state=%u owner=%u>",
        self->addr, (int)self->shared,
        dk_atomic_u32_load(&m->state, DK_MO_RELAXED),
        dk_atomic_u32_load(&m->owner_pid, DK_MO_RELAXED));
}

static PyMethodDef Mutex_methods[] = {
    {"acquire", (PyCFunction)Mutex_acquire, METH_NOARGS,
     "acquire($self, /)\n--\n\nBlock until held (GIL released; Ctrl-C "
     "interrupts). Takes over from a holder whose process died (see "
     "owner_died); returns True. RuntimeError if this thread already holds "
     "it."},
    {"acquire_ns", DKPY_METH_KW(Mutex_acquire_ns),
     "acquire_ns($self, timeout_ns=-1, spin=16)\n--\n\nAcquire within "
     "timeout_ns (negative: no limit), spinning spin times first; False "
     "on timeout."},
    {"try_acquire", (PyCFunction)Mutex_try_acquire, METH_NOARGS,
     "try_acquire($self, /)\n--\n\nAcquire if free; False otherwise."},
    {"release", (PyCFunction)Mutex_release, METH_NOARGS,
     "release($self, /)\n--\n\nRuntimeError if this process does not hold "
     "it."},
    {"force_release", (PyCFunction)Mutex_force_release, METH_NOARGS,
     "force_release($self, /)\n--\n\nRelease whoever holds it (recovery)."},
    {"owner_pid", (PyCFunction)Mutex_owner_pid, METH_NOARGS,
     "owner_pid($self, /)\n--\n\nThe holder's pid (0: free)."},
    {"last_acquired_ns", (PyCFunction)Header_last_ns, METH_NOARGS,
     "last_acquired_ns($self, /)\n--\n\nWhen it was last acquired "
     "(CLOCK_REALTIME ns)."},
    {"magic", (PyCFunction)Header_magic, METH_NOARGS,
     "magic($self, /)\n--\n\nThe layout's magic number."},
    {"__enter__", (PyCFunction)Mutex_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nacquire(); returns self."},
    {"__exit__", (PyCFunction)(void (*)(void))Mutex_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\nrelease()."},
    DKPY_ASYNC_WITH_METHODS("self", "release()"),
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mutex_getset[] = {
    {"owner_died", (getter)Mutex_get_owner_died, NULL,
     "True if the last acquisition through this object took the mutex over "
     "from a process that died holding it: the data it protects may be "
     "inconsistent.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(static, Mutex_spec, "dispatchkit.sync.Mutex", WordObject, 0,
          {Py_tp_new, Mutex_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, Mutex_methods}, {Py_tp_getset, Mutex_getset},
          {Py_tp_repr, Mutex_repr},
          {Py_tp_doc,
           "Mutex(buffer, shared=True)\n--\n\nA process-shared mutex in a "
           "64-byte buffer, compatible with fastipc's."});

/* ---- Semaphore -------------------------------------------------------- */

static PyObject *
Semaphore_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "initial", "shared", "fastipc_compat",
                             NULL};
    PyObject *buffer, *initial = Py_None;
    int shared = 1, compat = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Opp:Semaphore", kwlist,
                                     &buffer, &initial, &shared, &compat)) {
        return NULL;
    }
    uint64_t count = 0;
    if (initial != Py_None) {
        if (!PyLong_Check(initial)) {
            PyErr_SetString(PyExc_TypeError, "initial must be an int or None");
            return NULL;
        }
        if (dkpy_long_sign(initial) < 0) {
            PyErr_SetString(PyExc_OverflowError,
                            "can't convert negative value to unsigned int");
            return NULL;
        }
        count = PyLong_AsUnsignedLongLong(initial);
        if ((count == (uint64_t)-1 && PyErr_Occurred()) ||
            count > UINT32_MAX) {
            PyErr_Clear();
            PyErr_SetString(PyExc_OverflowError,
                            "initial out of range for uint32");
            return NULL;
        }
    }
    WordObject *self = word_alloc(type, buffer, DK_SHM_HEADER_SIZE, 4, shared);
    if (self == NULL) {
        return NULL;
    }
    self->fastipc_compat = compat != 0;
    unsigned init_flags = initial != Py_None ? DK_SHM_SET_COUNT : 0;
    if (dk_shm_semaphore_init(self->addr, (uint32_t)count, init_flags) < 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError,
                        "buffer does not hold a Semaphore (wrong magic): "
                        "refusing to overwrite it");
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
sem_post(WordObject *self, unsigned long long n)
{
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError,
                        "semaphore increment out of range");
        return NULL;
    }
    if (dk_shm_semaphore_post(
            self->addr, (uint32_t)n,
            (self->shared ? DK_SHARED : 0) |
                (self->fastipc_compat ? DK_SHM_FASTIPC_COMPAT : 0)) < 0) {
        PyErr_SetString(PyExc_OverflowError, "semaphore count overflow");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Semaphore_post(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    if (nargs == 0 && kwnames == NULL) {
        return sem_post(self, 1);
    }
    static const char *const names[] = {"n"};
    PyObject *nobj;
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 1, &nobj, "post") <
        0) {
        return NULL;
    }
    if (!PyLong_Check(nobj) || dkpy_long_sign(nobj) < 0) {
        PyErr_SetString(PyExc_OverflowError,
                        "semaphore increment out of range");
        return NULL;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(nobj);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        n = (unsigned long long)UINT32_MAX + 1;
    }
    return sem_post(self, n);
}

static PyObject *
Semaphore_post1(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return sem_post(self, 1);
}

static PyObject *
Semaphore_wait(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    int blocking = 1, spin = 16;
    long long timeout_ns = -1;
    if (nargs != 0 || kwnames != NULL) {
        static const char *const names[] = {"blocking", "timeout_ns", "spin"};
        PyObject *a[3];
        if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 3, a, "wait") <
            0) {
            return NULL;
        }
        if ((a[0] && (blocking = PyObject_IsTrue(a[0])) < 0) ||
            (a[1] && (timeout_ns = dkpy_index_as_long_long(a[1])) == -1 &&
             PyErr_Occurred()) ||
            (a[2] && (spin = (int)dkpy_index_as_long(a[2])) == -1 &&
             PyErr_Occurred())) {
            return NULL;
        }
    }
    if (dk_shm_semaphore_wait(self->addr, 0, 0,
                              self->shared ? DK_SHARED : 0) == 0) {
        Py_RETURN_TRUE;
    }
    if (!blocking || timeout_ns == 0) {
        Py_RETURN_FALSE;
    }
    struct word_wait w = {.self = self, .spin = spin < 0 ? 0 : spin};
    return dkpy_wait_bool(semaphore_wait_fn, &w,
                          dkpy_deadline_fastipc(timeout_ns));
}

static PyObject *
Semaphore_value(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLong(dk_atomic_u32_load(
        &((dk_shm_semaphore_t *)self->addr)->count, DK_MO_ACQUIRE));
}

static PyObject *
Semaphore_last_pid(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLong(dk_atomic_u32_load(
        &((dk_shm_semaphore_t *)self->addr)->last_pid, DK_MO_RELAXED));
}

/* `with sem:` as threading.Semaphore: wait() with no timeout on entry
 * (returns True), post(1) on exit. */
static PyObject *
Semaphore_enter(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return Semaphore_wait(self, NULL, 0, NULL);
}

static PyObject *
Semaphore_exit(WordObject *self, PyObject *const *Py_UNUSED(args),
               Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = Semaphore_post1(self, NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
Semaphore_repr(WordObject *self)
{
    return PyUnicode_FromFormat(
        "<dispatchkit.sync.Semaphore buf=%p shared=%d value=%u>", self->addr,
        (int)self->shared,
        dk_atomic_u32_load(&((dk_shm_semaphore_t *)self->addr)->count,
                           DK_MO_RELAXED));
}

static PyMethodDef Semaphore_methods[] = {
    {"post", DKPY_METH_FAST(Semaphore_post),
     "post($self, n=1)\n--\n\nAdd n units and wake that many waiters."},
    {"post1", (PyCFunction)Semaphore_post1, METH_NOARGS,
     "post1($self, /)\n--\n\npost(1)."},
    {"wait", DKPY_METH_FAST(Semaphore_wait),
     "wait($self, blocking=True, timeout_ns=-1, spin=16)\n--\n\nTake one "
     "unit; False if none came in time (GIL released while waiting; "
     "Ctrl-C interrupts)."},
    {"value", (PyCFunction)Semaphore_value, METH_NOARGS,
     "value($self, /)\n--\n\nThe count."},
    {"last_pid", (PyCFunction)Semaphore_last_pid, METH_NOARGS,
     "last_pid($self, /)\n--\n\nThe pid that last took a unit."},
    {"last_acquired_ns", (PyCFunction)Header_last_ns, METH_NOARGS,
     "last_acquired_ns($self, /)\n--\n\nWhen a unit was last taken "
     "(CLOCK_REALTIME ns)."},
    {"magic", (PyCFunction)Header_magic, METH_NOARGS,
     "magic($self, /)\n--\n\nThe layout's magic number."},
    {"__enter__", (PyCFunction)Semaphore_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nwait() with no timeout; returns True."},
    {"__exit__", (PyCFunction)(void (*)(void))Semaphore_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\npost(1)."},
    DKPY_ASYNC_WITH_METHODS("True", "post(1)"),
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, Semaphore_spec, "dispatchkit.sync.Semaphore", WordObject, 0,
          {Py_tp_new, Semaphore_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, Semaphore_methods}, {Py_tp_repr, Semaphore_repr},
          {Py_tp_doc,
           "Semaphore(buffer, initial=None, shared=True, "
           "fastipc_compat=False)\n--\n\nA process-shared counting "
           "semaphore in a 64-byte buffer, compatible with fastipc's."});

/* ---- Event ------------------------------------------------------------ */

static PyObject *
Event_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return (PyObject *)word_new(type, args, kwargs, 4, 4, true);
}

static PyObject *
Event_set(WordObject *self, PyObject *Py_UNUSED(unused))
{
    dk_shm_event_set(self->addr, self->shared ? DK_SHARED : 0);
    Py_RETURN_NONE;
}

static PyObject *
Event_clear(WordObject *self, PyObject *Py_UNUSED(unused))
{
    dk_shm_event_clear(self->addr);
    Py_RETURN_NONE;
}

static PyObject *
Event_is_set(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(dk_shm_event_is_set(self->addr));
}

static PyObject *
Event_wait(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout_ns", NULL};
    long long timeout_ns = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|L:wait", kwlist,
                                     &timeout_ns)) {
        return NULL;
    }
    if (dk_shm_event_is_set(self->addr)) {
        Py_RETURN_TRUE;
    }
    if (timeout_ns == 0) {
        Py_RETURN_FALSE;
    }
    struct word_wait w = {.self = self};
    return dkpy_wait_bool(event_wait_fn, &w,
                          dkpy_deadline_fastipc(timeout_ns));
}

static PyObject *
Event_repr(WordObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.sync.Event addr=%p shared=%d "
                                "set=%d>",
                                self->addr, (int)self->shared,
                                (int)dk_shm_event_is_set(self->addr));
}

static PyMethodDef Event_methods[] = {
    {"set", (PyCFunction)Event_set, METH_NOARGS,
     "set($self, /)\n--\n\nSet the event and wake every waiter."},
    {"clear", (PyCFunction)Event_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nClear the event."},
    {"is_set", (PyCFunction)Event_is_set, METH_NOARGS,
     "is_set($self, /)\n--\n\nWhether the event is set."},
    {"wait", DKPY_METH_KW(Event_wait),
     "wait($self, timeout_ns=-1)\n--\n\nTrue once the event is seen set "
     "(at once if it already is), False at the timeout. Releases the GIL; "
     "Ctrl-C interrupts it."},
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, Event_spec, "dispatchkit.sync.Event", WordObject, 0,
          {Py_tp_new, Event_new}, {Py_tp_dealloc, Word_dealloc},
          {Py_tp_methods, Event_methods}, {Py_tp_repr, Event_repr},
          {Py_tp_doc,
           "Event(buffer, shared=True)\n--\n\nA manual-reset event on the "
           "first 4 bytes of a writable, 4-aligned buffer (0 clear, "
           "else set: fastipc's NamedEvent word)."});

static PyType_Spec *const sync_specs[] = {
    &Mutex_spec,     &Semaphore_spec, &FutexWord_spec,
    &AtomicU32_spec, &AtomicU64_spec, &Event_spec,
};

/* The types made from sync_specs, in order (the module holds them). */
static PyTypeObject *sync_types[sizeof sync_specs / sizeof sync_specs[0]];

/* For futures.c (awaitable waits): the memory of a sync Mutex (kind 0),
 * Semaphore (1) or Event (2) and its `shared` flag; *owner_died points at
 * a Mutex's flag (NULL for the others). 0, or -1 if obj is none of
 * them. */
int
dkpy_sync_target(PyObject *obj, int *kind, void **addr, bool *shared,
                 bool **owner_died)
{
    static const int kinds[] = {0, 1, -1, -1, -1, 2};
    for (size_t i = 0; i < sizeof sync_types / sizeof sync_types[0]; i++) {
        if (kinds[i] < 0 || sync_types[i] == NULL ||
            !PyObject_TypeCheck(obj, sync_types[i])) {
            continue;
        }
        WordObject *w = (WordObject *)obj;
        *kind = kinds[i];
        *addr = w->addr;
        *shared = w->shared;
        *owner_died = kinds[i] == 0 ? &w->owner_died : NULL;
        return 0;
    }
    return -1;
}

int
dkpy_sync_exec(PyObject *m)
{
    for (size_t i = 0; i < sizeof sync_specs / sizeof sync_specs[0]; i++) {
        /* The extension module also holds the dispatch Semaphore: sync
         * types are registered as Sync<Name>; dispatchkit.sync renames. */
        sync_types[i] = dkpy_add_type(m, sync_specs[i], NULL, "Sync");
        if (sync_types[i] == NULL) {
            return -1;
        }
    }
    return 0;
}
