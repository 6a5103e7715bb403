/*
 * Binding of dispatchkit.sync's buffer primitives that mirror fastipc:
 * FutexWord, AtomicU32, AtomicU64, Mutex, Semaphore, and Event (the word
 * under NamedEvent). The atomics are the same core functions
 * dispatchkit.atomics uses (dk_atomic_u32_* / dk_atomic_u64_*). Buffers
 * must be writable, large enough and naturally aligned. An object keeps
 * its memory for its whole life: shared memory through a second mapping
 * of its own (so the caller may close a SharedMemory or mmap under it, as
 * fastipc's documented examples do), anything else by keeping the buffer
 * exported (a bytearray cannot be resized under it). Mutex, Semaphore and
 * Event can be subclassed: NamedMutex, NamedSemaphore and NamedEvent
 * (_sync_named.py) are Python subclasses of C subtypes of them defined
 * here, so that their calls run these methods directly.
 */
#include "python/binding.h"

#include <errno.h>
#include <string.h>

#include "dk/atomic.h"
#include "dk/futex.h"
#include "dk/mutex.h"
#include "dk/shm_event.h"
#include "python/futures.h"

/* The six types, in the order of sync_specs; every object is one struct,
 * its kind saying which. */
enum { K_MUTEX, K_SEMAPHORE, K_FUTEX, K_U32, K_U64, K_EVENT, K_COUNT };

/* Each kind's memory: at least `size` bytes, `align`-aligned. */
static const struct {
    unsigned size, align;
} layout[K_COUNT] = {
    [K_MUTEX] = {DK_SHM_HEADER_SIZE, 4},
    [K_SEMAPHORE] = {DK_SHM_HEADER_SIZE, 4},
    [K_FUTEX] = {4, 4},
    [K_U32] = {4, 4},
    [K_U64] = {8, 8},
    [K_EVENT] = {4, 4},
};

/* The types made from sync_specs, in order (the module holds them). */
static PyTypeObject *sync_types[K_COUNT];
/* The C halves of NamedMutex, NamedSemaphore and NamedEvent
 * (_sync_named.py subclasses them), in this order: subtypes of Mutex,
 * Semaphore and Event with the named objects' own methods. */
static PyTypeObject *named_types[3];
#define named_mutex_type (named_types[0])

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* held (view.obj set) unless the memory is aliased */
    bool aliased;   /* addr is in our own mapping (dk_shm_alias) */
    void *addr;
    unsigned char kind;
    bool shared;
    unsigned flags;      /* DK_SHARED if shared, for the core's calls */
    bool owner_died;     /* Mutex: the last acquisition took over */
    bool fastipc_compat; /* Semaphore: also wake on 0 -> n */
    bool closed;         /* Named*: close() ran; every call refuses */
} WordObject;

/* The core's refusals, in the words fastipc's API raises them with. */
static const dkpy_errno_map sync_errors[] = {
    {EDEADLK, &PyExc_RuntimeError,
     "cannot re-acquire a mutex already owned by this thread"},
    {EPERM, &PyExc_RuntimeError,
     "cannot release a mutex not owned by this thread"},
    {EOVERFLOW, &PyExc_OverflowError, "semaphore count overflow"},
    {0, NULL, NULL},
};

/* ---- waiting ---------------------------------------------------------- */

/* One blocking call of a word, for dkpy_wait_sliced: its arguments are
 * read with the GIL held and the call runs without it. arg: the expected
 * value (FutexWord) or the spin count (Mutex, Semaphore). */
struct word_wait {
    WordObject *self;
    uint64_t arg;
};

static int
word_wait_fn(void *arg, uint64_t deadline)
{
    struct word_wait *w = arg;
    void *p = w->self->addr;
    unsigned flags = w->self->flags;
    switch (w->self->kind) {
    case K_FUTEX:
        return dk_futex_wait(p, (uint32_t)w->arg, deadline, flags);
    case K_MUTEX:
        return dk_shm_mutex_lock_after_try(p, deadline, (int)w->arg,
                                           flags | DK_SHM_INTERRUPTIBLE);
    case K_SEMAPHORE:
        return dk_shm_semaphore_wait(p, deadline, (int)w->arg,
                                     flags | DK_SHM_INTERRUPTIBLE);
    default:
        return dk_shm_event_wait(p, deadline, flags);
    }
}

/* Every wait of this file, after the primitive's own try with the GIL held
 * (where it has one): fastipc's timeout rule (dkpy_deadline_fastipc), the
 * GIL released in slices (dkpy_wait_sliced, whose result this is). */
static int
word_wait(WordObject *self, uint64_t arg, long long timeout_ns)
{
    struct word_wait w = {self, arg};
    return dkpy_wait_sliced(word_wait_fn, &w,
                            dkpy_deadline_fastipc(timeout_ns));
}

/* A wait's answer as the seed API gives it: True when it returned 0,
 * False on a timeout (or a futex word that had changed), NULL with the
 * signal handler's exception. */
static PyObject *
wait_answer(int rc)
{
    return rc == DKPY_RAISED ? NULL : PyBool_FromLong(rc == 0);
}

/* ---- Named* after close() --------------------------------------------- */

/* A Named* object whose close() ran refuses every call (the check each
 * method makes first on `closed`) with this ValueError, as a closed file
 * does. Its memory stays mapped until the object is freed, so a wait
 * another thread is still in stays safe. NULL. */
static PyObject *
refuse_closed(WordObject *self)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)self, "name");
    if (name != NULL) {
        PyErr_Format(PyExc_ValueError, "%s(%R) is closed",
                     dkpy_type_name(Py_TYPE(self)), name);
        Py_DECREF(name);
    }
    return NULL;
}

/* ---- objects ---------------------------------------------------------- */

/* Called with the view held and checked: swap it for a mapping of our
 * own when the memory is shared. A bytearray is heap memory (never
 * shared): skip the syscall. */
static void
hold_memory(WordObject *self)
{
    void *alias;
    if (PyByteArray_Check(self->view.obj) ||
        dk_shm_alias(self->addr, layout[self->kind].size, &alias) < 0) {
        return; /* keep the buffer exported instead */
    }
    self->addr = alias;
    self->aliased = true;
    PyBuffer_Release(&self->view);
    self->view.obj = NULL;
}

/* A new object of `type` on `buffer`, which must be writable and hold
 * its kind's layout. NULL with ValueError if not. */
static WordObject *
word_alloc(PyTypeObject *type, PyObject *buffer, int shared)
{
    const char *what = dkpy_type_name(type);
    int kind = 0; /* type is one of them or a subtype of one */
    while (kind < K_COUNT - 1 && !PyType_IsSubtype(type, sync_types[kind])) {
        kind++;
    }
    unsigned size = layout[kind].size, align = layout[kind].align;
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
    self->kind = (unsigned char)kind;
    self->shared = shared != 0;
    self->flags = shared ? DK_SHARED : 0;
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

/* self, once the core attached to its memory (rc: what its init
 * returned); else NULL with the error. */
static PyObject *
word_attached(WordObject *self, int rc)
{
    if (rc < 0) {
        const char *what = dkpy_type_name(Py_TYPE(self));
        Py_DECREF(self);
        if (rc == -EBADMSG) {
            PyErr_Format(PyExc_ValueError,
                         "buffer does not hold a %s (wrong magic): refusing "
                         "to overwrite it",
                         what);
        } else {
            dkpy_raise_errno(rc);
        }
        return NULL;
    }
    return (PyObject *)self;
}

/* The constructor of FutexWord, Event and Mutex, (buffer, shared=True),
 * and of AtomicU32 and AtomicU64, (buffer). */
static PyObject *
Word_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "shared", NULL};
    static char *kwlist_buffer[] = {"buffer", NULL};
    bool takes_shared = type != sync_types[K_U32] && type != sync_types[K_U64];
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
    WordObject *self = word_alloc(type, buffer, shared);
    if (self == NULL || self->kind != K_MUTEX) {
        return (PyObject *)self;
    }
    return word_attached(self, dk_shm_mutex_init(self->addr));
}

static void
Word_dealloc(WordObject *self)
{
    if (self->view.obj != NULL) {
        PyBuffer_Release(&self->view);
    }
    if (self->aliased) {
        dk_shm_unalias(self->addr, layout[self->kind].size);
    }
    dkpy_free((PyObject *)self);
}

/* ---- FutexWord, AtomicU32, AtomicU64 ---------------------------------- */

/* An unsigned value of `width` bytes; OverflowError past it. */
static int
get_u(PyObject *v, unsigned width, uint64_t *out)
{
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "value must be int, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if ((x == (unsigned long long)-1 && PyErr_Occurred()) ||
        (width == 4 && x > UINT32_MAX)) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "value out of range for uint%u",
                     width * 8);
        return -1;
    }
    *out = x;
    return 0;
}

static PyObject *
FutexWord_wait(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"expected", "timeout_ns", NULL};
    PyObject *exp;
    long long timeout_ns = -1;
    uint64_t expected;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|L:wait", kwlist, &exp,
                                     &timeout_ns) ||
        get_u(exp, 4, &expected) < 0) {
        return NULL;
    }
    /* False also for -EAGAIN: the word had changed. */
    return wait_answer(word_wait(self, expected, timeout_ns));
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
    return PyLong_FromLong(dk_futex_wake(self->addr, n, self->flags));
}

/* The words go through dk/atomic.h's width-generic functions, on the
 * same operations dispatchkit.atomics uses (atomic_raw.h). */
static PyObject *
Word_load(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromUnsignedLongLong(
        dk_atomic_load_w(self->addr, layout[self->kind].size, DK_MO_ACQUIRE));
}

static PyObject *
Word_store(WordObject *self, PyObject *v)
{
    unsigned width = layout[self->kind].size;
    uint64_t x;
    if (get_u(v, width, &x) < 0) {
        return NULL;
    }
    dk_atomic_store_w(self->addr, width, x, DK_MO_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
Word_cas(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    static const char *const names[] = {"expected", "new"};
    unsigned width = layout[self->kind].size;
    PyObject *a[2];
    uint64_t e, d;
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, a, "cas") < 0) {
        return NULL;
    }
    if (a[0] == NULL || a[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "cas(expected, new)");
        return NULL;
    }
    if (get_u(a[0], width, &e) < 0 || get_u(a[1], width, &d) < 0) {
        return NULL;
    }
    return PyBool_FromLong(dk_atomic_cas_w(self->addr, width, &e, d, false,
                                           DK_MO_ACQ_REL, DK_MO_ACQUIRE));
}

/* A method that answers a u32 field of a 64-byte header (dk/mutex.h),
 * loaded with order MO. */
#define HEADER_U32(NAME, TYPE, FIELD, MO)                                     \
    static PyObject *NAME(WordObject *self, PyObject *Py_UNUSED(unused))      \
    {                                                                         \
        if (self->closed) {                                                   \
            return refuse_closed(self);                                       \
        }                                                                     \
        return PyLong_FromUnsignedLong(                                       \
            dk_atomic_u32_load(&((TYPE *)self->addr)->FIELD, MO));            \
    }
HEADER_U32(Header_magic, dk_shm_mutex_t, magic, DK_MO_ACQUIRE)
HEADER_U32(Mutex_owner_pid, dk_shm_mutex_t, owner_pid, DK_MO_ACQUIRE)
HEADER_U32(Semaphore_value, dk_shm_semaphore_t, count, DK_MO_ACQUIRE)
HEADER_U32(Semaphore_last_pid, dk_shm_semaphore_t, last_pid, DK_MO_RELAXED)

/* ---- Mutex ------------------------------------------------------------ */

/* Lock with fastipc's timeout: try with the GIL held (watching a busy
 * word for up to 2 us when spinning is allowed: letting the GIL go and
 * taking it back costs more than a short critical section), then wait
 * without it (timeout 0 with no spin: the try was all). 1 when locked, 0
 * if not, -1 with an exception. */
static int
mutex_lock(WordObject *self, long long timeout_ns, int spin)
{
    int rc = spin > 0 ? dk_shm_mutex_lock_try_spin(self->addr, self->flags)
                      : dk_shm_mutex_lock(self->addr, 0, 0, self->flags);
    if (rc < 0 && rc != -EDEADLK && (timeout_ns != 0 || spin > 0)) {
        rc = word_wait(self, (uint64_t)spin, timeout_ns);
    }
    if (rc >= 0) {
        self->owner_died = rc == 1;
        return 1;
    }
    if (rc == -EDEADLK) {
        dkpy_raise_errno_in(sync_errors, rc);
    }
    return rc == DKPY_RAISED || rc == -EDEADLK ? -1 : 0;
}

/* After a lock that took the mutex over from a dead holder: a NamedMutex
 * logs it (its _took_over; a plain Mutex only sets owner_died). 0, or -1
 * with what _took_over raised (the mutex stays held then, as it did when
 * NamedMutex's Python methods made the call). */
static int
report_takeover(WordObject *self)
{
    if (!PyObject_TypeCheck(self, named_mutex_type)) {
        return 0;
    }
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_took_over", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* mutex_lock as the methods make it: refused on a closed NamedMutex, a
 * takeover reported. The same answers as mutex_lock. */
static int
mutex_lock_checked(WordObject *self, long long timeout_ns, int spin)
{
    if (self->closed) {
        refuse_closed(self);
        return -1;
    }
    int rc = mutex_lock(self, timeout_ns, spin);
    return rc == 1 && self->owner_died && report_takeover(self) < 0 ? -1 : rc;
}

static PyObject *
Mutex_acquire(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return mutex_lock_checked(self, -1, 16) < 0 ? NULL : Py_NewRef(Py_True);
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
    int rc = mutex_lock_checked(self, timeout_ns, spin);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *
Mutex_try_acquire(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    int rc = dk_shm_mutex_lock(self->addr, 0, 0, self->flags);
    if (rc >= 0) {
        self->owner_died = rc == 1;
    }
    if (rc == 1 && report_takeover(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(rc >= 0);
}

/* release(), and force_release() with DK_SHM_FORCE as the closure. */
static PyObject *
mutex_unlock(WordObject *self, unsigned force)
{
    if (self->closed) {
        return refuse_closed(self);
    }
    int rc = dk_shm_mutex_unlock(self->addr, self->flags | force);
    return rc < 0 ? dkpy_raise_errno_in(sync_errors, rc) : Py_NewRef(Py_None);
}

static PyObject *
Mutex_release(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return mutex_unlock(self, 0);
}

static PyObject *
Mutex_force_release(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return mutex_unlock(self, DK_SHM_FORCE);
}

static PyObject *
Mutex_get_owner_died(WordObject *self, void *Py_UNUSED(closure))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    return PyBool_FromLong(self->owner_died);
}

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
    WordObject *self = word_alloc(type, buffer, shared);
    if (self == NULL) {
        return NULL;
    }
    self->fastipc_compat = compat != 0;
    return word_attached(self, dk_shm_semaphore_init(
                                   self->addr, (uint32_t)count,
                                   initial != Py_None ? DK_SHM_SET_COUNT : 0));
}

static PyObject *
sem_post(WordObject *self, unsigned long long n)
{
    if (self->closed) {
        return refuse_closed(self);
    }
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError,
                        "semaphore increment out of range");
        return NULL;
    }
    int rc = dk_shm_semaphore_post(
        self->addr, (uint32_t)n,
        self->flags | (self->fastipc_compat ? DK_SHM_FASTIPC_COMPAT : 0));
    return rc < 0 ? dkpy_raise_errno_in(sync_errors, rc) : Py_NewRef(Py_None);
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
    /* Negative, not an int, or past 64 bits: out of range. */
    unsigned long long n = (unsigned long long)UINT32_MAX + 1;
    if (PyLong_Check(nobj) && dkpy_long_sign(nobj) >= 0) {
        n = PyLong_AsUnsignedLongLong(nobj);
        if (n == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            n = (unsigned long long)UINT32_MAX + 1;
        }
    }
    return sem_post(self, n);
}

static PyObject *
Semaphore_post1(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return sem_post(self, 1);
}

/* The signatures of the semaphore waits: Semaphore.wait, and
 * NamedSemaphore's wait (its timeout in seconds, as fastipc's) and
 * wait_ns, which spin 128 times by default as fastipc's do. */
struct wait_signature {
    const char *fname;
    const char *names[3]; /* blocking, the timeout, spin */
    bool seconds;
    int spin;
};
static const struct wait_signature sem_wait_sig = {
    "wait", {"blocking", "timeout_ns", "spin"}, false, 16};
static const struct wait_signature named_wait_sig = {
    "wait", {"blocking", "timeout", "spin"}, true, 128};
static const struct wait_signature named_wait_ns_sig = {
    "wait_ns", {"blocking", "timeout_ns", "spin"}, false, 128};

/* fastipc's NamedSemaphore.wait timeout: int(timeout * 1_000_000_000)
 * nanoseconds, refused as Python refuses it (NaN: ValueError, infinity:
 * OverflowError, None: TypeError); a float in range skips the objects.
 * 0, or -1 with the exception. */
static int
seconds_to_ns(PyObject *timeout, long long *ns)
{
    if (PyFloat_CheckExact(timeout)) {
        double t = PyFloat_AS_DOUBLE(timeout) * 1e9;
        if (t > -9e18 && t < 9e18) {
            *ns = (long long)t; /* truncated toward zero, as int() does */
            return 0;
        }
    }
    PyObject *billion = PyLong_FromLong(1000000000);
    PyObject *product =
        billion != NULL ? PyNumber_Multiply(timeout, billion) : NULL;
    PyObject *whole = product != NULL ? PyNumber_Long(product) : NULL;
    Py_XDECREF(billion);
    Py_XDECREF(product);
    if (whole == NULL) {
        return -1;
    }
    *ns = dkpy_index_as_long_long(whole);
    Py_DECREF(whole);
    return *ns == -1 && PyErr_Occurred() ? -1 : 0;
}

/* A semaphore wait with the arguments of `sig`: try with the GIL held,
 * then wait without it. */
static PyObject *
sem_wait(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames, const struct wait_signature *sig)
{
    int blocking = 1, spin = sig->spin;
    long long timeout_ns = -1;
    if (self->closed) {
        return refuse_closed(self);
    }
    if (nargs != 0 || kwnames != NULL) {
        PyObject *a[3];
        if (dkpy_parse_fast(args, nargs, kwnames, sig->names, NULL, 3, a,
                            sig->fname) < 0 ||
            (a[0] && (blocking = PyObject_IsTrue(a[0])) < 0) ||
            (a[1] && sig->seconds && seconds_to_ns(a[1], &timeout_ns) < 0) ||
            (a[1] && !sig->seconds &&
             (timeout_ns = dkpy_index_as_long_long(a[1])) == -1 &&
             PyErr_Occurred()) ||
            (a[2] && (spin = (int)dkpy_index_as_long(a[2])) == -1 &&
             PyErr_Occurred())) {
            return NULL;
        }
    }
    if (dk_shm_semaphore_wait(self->addr, 0, 0, self->flags) == 0) {
        Py_RETURN_TRUE;
    }
    if (!blocking || timeout_ns == 0) {
        Py_RETURN_FALSE;
    }
    return wait_answer(
        word_wait(self, (uint64_t)(spin < 0 ? 0 : spin), timeout_ns));
}

static PyObject *
Semaphore_wait(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    return sem_wait(self, args, nargs, kwnames, &sem_wait_sig);
}

/* ---- what Mutex and Semaphore share ----------------------------------- */

static PyObject *
Header_last_ns(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    return PyLong_FromUnsignedLongLong(dk_shm_header_last_ns(self->addr));
}

/* `with`: a Mutex acquires (returns self) and releases; a Semaphore, as
 * threading.Semaphore, waits with no timeout (returns True) and posts
 * one. */
static PyObject *
Mutex_enter(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return mutex_lock_checked(self, -1, 16) < 0 ? NULL : Py_NewRef(self);
}

static PyObject *
Mutex_exit(WordObject *self, PyObject *const *Py_UNUSED(args),
           Py_ssize_t Py_UNUSED(nargs))
{
    return mutex_unlock(self, 0);
}

static PyObject *
Semaphore_enter(WordObject *self, PyObject *Py_UNUSED(unused))
{
    return Semaphore_wait(self, NULL, 0, NULL);
}

static PyObject *
Semaphore_exit(WordObject *self, PyObject *const *Py_UNUSED(args),
               Py_ssize_t Py_UNUSED(nargs))
{
    return sem_post(self, 1);
}

/* ---- Event ------------------------------------------------------------ */

static PyObject *
Event_set(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    dk_shm_event_set(self->addr, self->flags);
    Py_RETURN_NONE;
}

static PyObject *
Event_clear(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    dk_shm_event_clear(self->addr);
    Py_RETURN_NONE;
}

static PyObject *
Event_is_set(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    return PyBool_FromLong(dk_shm_event_is_set(self->addr));
}

static PyObject *
Event_wait(WordObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout_ns", NULL};
    long long timeout_ns = -1;
    if (self->closed) {
        return refuse_closed(self);
    }
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
    return wait_answer(word_wait(self, 0, timeout_ns));
}

/* ---- the C halves of NamedMutex, NamedSemaphore, NamedEvent ----------- */

/* NamedMutex.try_release: release; False (instead of RuntimeError) if
 * the calling thread does not hold it. */
static PyObject *
NamedMutex_try_release(WordObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->closed) {
        return refuse_closed(self);
    }
    int rc = dk_shm_mutex_unlock(self->addr, self->flags);
    if (rc == -EPERM) {
        Py_RETURN_FALSE;
    }
    return rc < 0 ? dkpy_raise_errno_in(sync_errors, rc) : Py_NewRef(Py_True);
}

static PyObject *
NamedSemaphore_wait(WordObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    return sem_wait(self, args, nargs, kwnames, &named_wait_sig);
}

static PyObject *
NamedSemaphore_wait_ns(WordObject *self, PyObject *const *args,
                       Py_ssize_t nargs, PyObject *kwnames)
{
    return sem_wait(self, args, nargs, kwnames, &named_wait_ns_sig);
}

/* close() calls it first (then closes the segment): every later call
 * refuses (refuse_closed). */
static PyObject *
Named_close(WordObject *self, PyObject *Py_UNUSED(unused))
{
    self->closed = true;
    Py_RETURN_NONE;
}

static PyObject *
Named_get_closed(WordObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed);
}

/* ---- types ------------------------------------------------------------ */

static PyObject *
Word_repr(WordObject *self)
{
    void *p = self->addr;
    int shared = self->shared;
    switch (self->kind) {
    case K_MUTEX:
        return PyUnicode_FromFormat(
            "<dispatchkit.sync.Mutex buf=%p shared=%d state=%u owner=%u>", p,
            shared,
            dk_atomic_u32_load(&((dk_shm_mutex_t *)p)->state, DK_MO_RELAXED),
            dk_atomic_u32_load(&((dk_shm_mutex_t *)p)->owner_pid,
                               DK_MO_RELAXED));
    case K_SEMAPHORE:
        return PyUnicode_FromFormat(
            "<dispatchkit.sync.Semaphore buf=%p shared=%d value=%u>", p,
            shared,
            dk_atomic_u32_load(&((dk_shm_semaphore_t *)p)->count,
                               DK_MO_RELAXED));
    case K_FUTEX:
        return PyUnicode_FromFormat(
            "<dispatchkit.sync.FutexWord addr=%p shared=%d>", p, shared);
    case K_EVENT:
        return PyUnicode_FromFormat(
            "<dispatchkit.sync.Event addr=%p shared=%d set=%d>", p, shared,
            (int)dk_shm_event_is_set(p));
    default:
        return PyUnicode_FromFormat(
            "<dispatchkit.sync.%s addr=%p value=%llu>",
            dkpy_type_name(Py_TYPE(self)), p,
            (unsigned long long)dk_atomic_load_w(p, layout[self->kind].size,
                                                 DK_MO_ACQUIRE));
    }
}

/* A METH_NOARGS entry: name, function, doc after the text signature. */
/* clang-format off */
#define NOARGS(NAME, FN, DOC)                                                 \
    {NAME, (PyCFunction)(FN), METH_NOARGS, NAME "($self, /)\n--\n\n" DOC}
/* clang-format on */
/* The methods of the 64-byte headers (Mutex, Semaphore): when they were
 * last taken, their magic, and `with` (TYPE##_enter and TYPE##_exit, which
 * do ENTER, return RETURNS and do EXIT). */
#define HEADER_METHODS(TYPE, TAKEN, ENTER, RETURNS, EXIT)                     \
    NOARGS("last_acquired_ns", Header_last_ns,                                \
           "When " TAKEN " (CLOCK_REALTIME ns)."),                            \
        NOARGS("magic", Header_magic, "The layout's magic number."),          \
        NOARGS("__enter__", TYPE##_enter, ENTER "; returns " RETURNS "."),    \
        {"__exit__", (PyCFunction)(void (*)(void))TYPE##_exit, METH_FASTCALL, \
         "__exit__($self, /, *exc_info)\n--\n\n" EXIT "."},                   \
        DKPY_ASYNC_WITH_METHODS(RETURNS, EXIT)

/* One type of this file: its spec NAME##_spec, its flags (BASETYPE for
 * the three under the Named* classes), its tp_new, its methods
 * (NAME##_methods), its getters (NULL: none) and its doc. */
#define WORD_TYPE(NAME, FLAGS, NEW, GETSET, DOC)                              \
    DKPY_TYPE(static, NAME##_spec, "dispatchkit.sync." #NAME, WordObject,     \
              FLAGS, {Py_tp_new, NEW}, {Py_tp_dealloc, Word_dealloc},         \
              {Py_tp_repr, Word_repr}, {Py_tp_methods, NAME##_methods},       \
              {Py_tp_getset, GETSET}, {Py_tp_doc, DOC})

static PyMethodDef FutexWord_methods[] = {
    {"wait", DKPY_METH_KW(FutexWord_wait),
     "wait($self, expected, timeout_ns=-1)\n--\n\nSleep while the word equals "
     "expected; True when woken, False if it differed or timed out. "
     "Releases the GIL; Ctrl-C interrupts it."},
    {"wake", DKPY_METH_KW(FutexWord_wake),
     "wake($self, n=1)\n--\n\nWake up to n waiters; returns how many were "
     "woken."},
    NOARGS("load_acquire", Word_load, "The value (acquire)."),
    {"store_release", (PyCFunction)Word_store, METH_O,
     "store_release($self, value, /)\n--\n\nStore value (release)."},
    {NULL, NULL, 0, NULL},
};
WORD_TYPE(FutexWord, 0, Word_new, NULL,
          "FutexWord(buffer, shared=True)\n--\n\nFutex wait/wake on the "
          "first 4 bytes of a writable, 4-aligned buffer.");

static PyMethodDef AtomicU32_methods[] = {
    NOARGS("load", Word_load, "The value (acquire)."),
    {"store", (PyCFunction)Word_store, METH_O,
     "store($self, value, /)\n--\n\nStore value (release)."},
    {"cas", DKPY_METH_FAST(Word_cas),
     "cas($self, expected, new)\n--\n\nReplace expected by new; True if it "
     "did (acq_rel; acquire on failure)."},
    {NULL, NULL, 0, NULL},
};
#define AtomicU64_methods AtomicU32_methods
WORD_TYPE(AtomicU32, 0, Word_new, NULL,
          "AtomicU32(buffer)\n--\n\nAn unsigned 32-bit atomic on the first "
          "4 bytes of a writable, 4-aligned buffer.");
WORD_TYPE(AtomicU64, 0, Word_new, NULL,
          "AtomicU64(buffer)\n--\n\nAn unsigned 64-bit atomic on the first "
          "8 bytes of a writable, 8-aligned buffer.");

static PyMethodDef Mutex_methods[] = {
    NOARGS("acquire", Mutex_acquire,
           "Block until held (GIL released; Ctrl-C interrupts). Takes over "
           "from a holder whose process died (see owner_died); returns "
           "True. RuntimeError if this thread already holds it."),
    {"acquire_ns", DKPY_METH_KW(Mutex_acquire_ns),
     "acquire_ns($self, timeout_ns=-1, spin=16)\n--\n\nAcquire within "
     "timeout_ns (negative: no limit), spinning spin times first; False "
     "on timeout."},
    NOARGS("try_acquire", Mutex_try_acquire,
           "Acquire if free; False otherwise."),
    NOARGS("release", Mutex_release,
           "RuntimeError if this process does not hold it."),
    NOARGS("force_release", Mutex_force_release,
           "Release whoever holds it (recovery)."),
    NOARGS("owner_pid", Mutex_owner_pid, "The holder's pid (0: free)."),
    HEADER_METHODS(Mutex, "it was last acquired", "acquire()", "self",
                   "release()"),
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
WORD_TYPE(Mutex, Py_TPFLAGS_BASETYPE, Word_new, Mutex_getset,
          "Mutex(buffer, shared=True)\n--\n\nA process-shared mutex in a "
          "64-byte buffer, compatible with fastipc's.");

static PyMethodDef Semaphore_methods[] = {
    {"post", DKPY_METH_FAST(Semaphore_post),
     "post($self, n=1)\n--\n\nAdd n units and wake that many waiters."},
    NOARGS("post1", Semaphore_post1, "post(1)."),
    {"wait", DKPY_METH_FAST(Semaphore_wait),
     "wait($self, blocking=True, timeout_ns=-1, spin=16)\n--\n\nTake one "
     "unit; False if none came in time (GIL released while waiting; "
     "Ctrl-C interrupts)."},
    NOARGS("value", Semaphore_value, "The count."),
    NOARGS("last_pid", Semaphore_last_pid, "The pid that last took a unit."),
    HEADER_METHODS(Semaphore, "a unit was last taken",
                   "wait() with no timeout", "True", "post(1)"),
    {NULL, NULL, 0, NULL},
};
WORD_TYPE(Semaphore, Py_TPFLAGS_BASETYPE, Semaphore_new, NULL,
          "Semaphore(buffer, initial=None, shared=True, "
          "fastipc_compat=False)\n--\n\nA process-shared counting "
          "semaphore in a 64-byte buffer, compatible with fastipc's.");

static PyMethodDef Event_methods[] = {
    NOARGS("set", Event_set, "Set the event and wake every waiter."),
    NOARGS("clear", Event_clear, "Clear the event."),
    NOARGS("is_set", Event_is_set, "Whether the event is set."),
    {"wait", DKPY_METH_KW(Event_wait),
     "wait($self, timeout_ns=-1)\n--\n\nTrue once the event is seen set "
     "(at once if it already is), False at the timeout. Releases the GIL; "
     "Ctrl-C interrupts it."},
    {NULL, NULL, 0, NULL},
};
WORD_TYPE(Event, Py_TPFLAGS_BASETYPE, Word_new, NULL,
          "Event(buffer, shared=True)\n--\n\nA manual-reset event on the "
          "first 4 bytes of a writable, 4-aligned buffer (0 clear, "
          "else set: fastipc's NamedEvent word).");

/* The C halves of the Named* classes: what the named objects have
 * beyond their primitive's methods (NAME##_methods), and _close()
 * (Named_getset: _closed). */
static PyGetSetDef Named_getset[] = {
    {"_closed", (getter)Named_get_closed, NULL, "Whether _close() ran.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
#define NAMED_CLOSE                                                           \
    NOARGS("_close", Named_close,                                             \
           "Refuse every later call with ValueError (close() does it "        \
           "first).")
#define NAMED_TYPE(NAME, NEW, DOC)                                            \
    DKPY_TYPE(static, NAME##_spec, "dispatchkit.sync." #NAME "Base",          \
              WordObject, Py_TPFLAGS_BASETYPE, {Py_tp_new, NEW},              \
              {Py_tp_dealloc, Word_dealloc}, {Py_tp_methods, NAME##_methods}, \
              {Py_tp_getset, Named_getset}, {Py_tp_doc, DOC})

static PyMethodDef NamedMutex_methods[] = {
    NOARGS("try_release", NamedMutex_try_release,
           "Release; False (instead of RuntimeError) if this thread does "
           "not hold it."),
    NAMED_CLOSE,
    {NULL, NULL, 0, NULL},
};
NAMED_TYPE(NamedMutex, Word_new,
           "The C half of dispatchkit.sync.NamedMutex: a Mutex that logs "
           "takeovers through _took_over().");

static PyMethodDef NamedSemaphore_methods[] = {
    {"wait", DKPY_METH_FAST(NamedSemaphore_wait),
     "wait($self, blocking=True, timeout=-1.0, spin=128)\n--\n\nTake one "
     "unit; timeout in seconds (negative: forever); False if none came in "
     "time."},
    {"wait_ns", DKPY_METH_FAST(NamedSemaphore_wait_ns),
     "wait_ns($self, blocking=True, timeout_ns=-1, spin=128)\n--\n\nTake "
     "one unit; timeout in nanoseconds (negative: forever)."},
    NAMED_CLOSE,
    {NULL, NULL, 0, NULL},
};
NAMED_TYPE(NamedSemaphore, Semaphore_new,
           "The C half of dispatchkit.sync.NamedSemaphore: fastipc's "
           "NamedSemaphore waits.");

static PyMethodDef NamedEvent_methods[] = {
    NAMED_CLOSE,
    {NULL, NULL, 0, NULL},
};
NAMED_TYPE(NamedEvent, Word_new, "The C half of dispatchkit.sync.NamedEvent.");

static PyType_Spec *const sync_specs[K_COUNT] = {
    [K_MUTEX] = &Mutex_spec,     [K_SEMAPHORE] = &Semaphore_spec,
    [K_FUTEX] = &FutexWord_spec, [K_U32] = &AtomicU32_spec,
    [K_U64] = &AtomicU64_spec,   [K_EVENT] = &Event_spec,
};

/* For aio_wait.c (awaitable waits): the memory of a sync Mutex (kind 0),
 * Semaphore (1) or Event (2) and its `shared` flag; *owner_died points at
 * a Mutex's flag (NULL for the others). 0, or -1 if obj is none of
 * them. */
int
dkpy_sync_target(PyObject *obj, int *kind, void **addr, bool *shared,
                 bool **owner_died)
{
    static const int kinds[K_COUNT] = {
        [K_MUTEX] = 0, [K_SEMAPHORE] = 1, [K_FUTEX] = -1,
        [K_U32] = -1,  [K_U64] = -1,      [K_EVENT] = 2,
    };
    for (int i = 0; i < K_COUNT; i++) {
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

/* ---- the Named* classes' own method descriptors ----------------------- */

/* Whether `type` is one of this file's types or a subtype of one (the
 * Named* classes, whose descriptors their subclasses get again). */
static bool
is_sync_type(PyTypeObject *type)
{
    for (int i = 0; i < K_COUNT; i++) {
        if (PyType_IsSubtype(type, sync_types[i])) {
            return true;
        }
    }
    return false;
}

/* _sync_rebind_methods(cls): give cls (a Python subclass of these
 * types: the Named* classes and their subclasses, from _Named's
 * __init_subclass__) a descriptor of its own for each C method it
 * inherits or aliases (P = wait), running the same C function. The
 * interpreter's specialised call of a C method (3.11 on) requires the
 * object's type to be the descriptor's very type and falls back to the
 * generic call otherwise: about 20 ns more per call, most of the gap
 * between NamedMutex and Mutex. */
static PyObject *
sync_rebind_methods(PyObject *Py_UNUSED(module), PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "expected a class");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *names = PyObject_Dir(cls);
    if (names == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        PyObject *cur = PyObject_GetAttr(cls, name);
        if (cur == NULL) {
            PyErr_Clear(); /* a name dir() lists but getattr refuses */
            continue;
        }
        PyMethodDescrObject *d = (PyMethodDescrObject *)cur;
        int rc = 0;
        if (Py_IS_TYPE(cur, &PyMethodDescr_Type) &&
            d->d_common.d_type != type && is_sync_type(d->d_common.d_type)) {
            PyObject *own = PyDescr_NewMethod(type, d->d_method);
            rc = own != NULL ? PyObject_SetAttr(cls, name, own) : -1;
            Py_XDECREF(own);
        }
        Py_DECREF(cur);
        if (rc < 0) {
            Py_DECREF(names);
            return NULL;
        }
    }
    Py_DECREF(names);
    Py_RETURN_NONE;
}

static PyMethodDef sync_functions[] = {
    {"_sync_rebind_methods", (PyCFunction)sync_rebind_methods, METH_O,
     "_sync_rebind_methods(cls, /)\n--\n\nGive a subclass of the sync "
     "types its own descriptor of each C method it inherits (their "
     "specialised calls need the exact type)."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_sync_exec(PyObject *m)
{
    for (int i = 0; i < K_COUNT; i++) {
        /* The extension module also holds the dispatch Semaphore: sync
         * types are registered as Sync<Name>; dispatchkit.sync renames. */
        sync_types[i] = dkpy_add_type(m, sync_specs[i], NULL, "Sync");
        if (sync_types[i] == NULL) {
            return -1;
        }
    }
    static PyType_Spec *const named_specs[3] = {
        &NamedMutex_spec, &NamedSemaphore_spec, &NamedEvent_spec};
    static const int named_bases[3] = {K_MUTEX, K_SEMAPHORE, K_EVENT};
    for (int i = 0; i < 3; i++) {
        named_types[i] = dkpy_add_type(
            m, named_specs[i], (PyObject *)sync_types[named_bases[i]], "Sync");
        if (named_types[i] == NULL) {
            return -1;
        }
    }
    return PyModule_AddFunctions(m, sync_functions);
}
