/*
 * Binding of asynchronous I/O: read_async, write_async and IOChannel.
 * Each operation's Python handler is owned by the operation and released
 * after its final (done) call.
 */
#include "python/binding.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "dk/io.h"
#include "dk/queue.h"
#include "python/gil.h"

/* ---- read_async / write_async ---------------------------------------- */

/* read_async's and write_async's: handler(bytes, error), once. */
static void
io_done(void *ctx, const void *data, size_t len, int error)
{
    dkpy_callback(ctx, true, "(y#i)", (const char *)data, (Py_ssize_t)len,
                  error);
}

static int
parse_fd(PyObject *obj, int *fd)
{
    *fd = PyObject_AsFileDescriptor(obj);
    return *fd < 0 ? -1 : 0;
}

static PyObject *
raise_io(int rc, int fd)
{
    if (rc == -EBADF) {
        errno = EBADF;
        PyErr_Format(PyExc_OSError, "fd %d is not open", fd);
        return NULL;
    }
    return dkpy_raise_errno(rc);
}

/* The arguments read_async and write_async share: the fd, the handler,
 * given as callback= (the stub's name) or handler=, and queue=. Returns
 * the handler (borrowed), or NULL with an exception set. */
static PyObject *
io_args(PyObject *fdobj, PyObject *callback, PyObject *handler,
        PyObject *queue, int *fd, dk_queue_t **q)
{
    PyObject *h = dkpy_either(callback, handler, "callback or handler");
    if (h == Py_None) {
        PyErr_SetString(PyExc_TypeError, "callback must be a callable");
        return NULL;
    }
    if (h == NULL || parse_fd(fdobj, fd) < 0 ||
        dkpy_check_callable(h, "callback") < 0 ||
        dkpy_queue_arg(queue, "queue", q) < 0) {
        return NULL;
    }
    return h;
}

static PyObject *
dk_py_read_async(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"fd",    "length",  "callback",
                             "queue", "handler", NULL};
    PyObject *fdobj, *callback = NULL, *queue = Py_None, *handler = NULL;
    Py_ssize_t length;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On|OOO:read_async", kwlist,
                                     &fdobj, &length, &callback, &queue,
                                     &handler)) {
        return NULL;
    }
    int fd;
    dk_queue_t *q;
    PyObject *h = io_args(fdobj, callback, handler, queue, &fd, &q);
    if (h == NULL) {
        return NULL;
    }
    if (length < 0) {
        PyErr_SetString(PyExc_ValueError, "length must be >= 0");
        return NULL;
    }
    Py_INCREF(h);
    int rc = dk_read_f(fd, (size_t)length, q, h, io_done);
    if (rc < 0) {
        Py_DECREF(h);
        return raise_io(rc, fd);
    }
    Py_RETURN_NONE;
}

static PyObject *
dk_py_write_async(PyObject *Py_UNUSED(module), PyObject *args,
                  PyObject *kwargs)
{
    static char *kwlist[] = {"fd",    "data",    "callback",
                             "queue", "handler", NULL};
    PyObject *fdobj, *callback = NULL, *queue = Py_None, *handler = NULL;
    Py_buffer data;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oy*|OOO:write_async",
                                     kwlist, &fdobj, &data, &callback, &queue,
                                     &handler)) {
        return NULL;
    }
    int fd;
    dk_queue_t *q;
    PyObject *h = io_args(fdobj, callback, handler, queue, &fd, &q);
    if (h == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    Py_INCREF(h);
    int rc = dk_write_f(fd, data.buf, (size_t)data.len, q, h, io_done);
    PyBuffer_Release(&data);
    if (rc < 0) {
        Py_DECREF(h);
        return raise_io(rc, fd);
    }
    Py_RETURN_NONE;
}

/* ---- IOChannel ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_io_t *io;
    int fd;
    int io_type; /* IO_STREAM or IO_RANDOM, for the repr */
    struct ahead *ahead; /* the allocator's context (reads' chunks) */
} ChannelObject;

static void
op_handler(void *ctx, bool done, const void *data, size_t len, int error)
{
    dkpy_callback(ctx, done, "(Oy#i)", done ? Py_True : Py_False,
                  (const char *)data, (Py_ssize_t)len, error);
}

static void
cleanup_handler(void *ctx, int error)
{
    dkpy_callback(ctx, true, "(i)", error);
}

/* Channel reads deliver bytes objects that the core read straight into:
 * the allocator hands out a new bytes object's storage, and the handler
 * recovers the object from the data pointer. */
static PyObject *
bytes_of(const void *data)
{
    return (PyObject *)((char *)data - offsetof(PyBytesObject, ob_sval));
}

/*
 * Spare chunks. A fresh bytes object of a megabyte is fresh memory: the
 * kernel faults in and zeroes each of its pages again on the first read
 * into it, which costs more than the read itself. So when a handler has
 * let go of its chunk (we hold the only reference once it returns), the
 * chunk waits here and the next read of the same size goes into it. Only
 * an object nobody else can see is reused: a memoryview or any other
 * holder keeps a reference, and then the chunk is simply dropped. Its
 * cached hash, if something hashed it, is reset: its contents change.
 *
 * The spares are process-wide (the module lives in the main interpreter
 * only), bounded in number and bytes, and dropped when a read operation
 * ends so that an idle channel holds no memory. They are put back and
 * dropped with the GIL held (reference counts), but taken under
 * spare_lock alone: a spare's one reference passes to the reader as is,
 * so the reading thread need not wait for the GIL, which the handler's
 * worker often holds across its callbacks. Lock order: the GIL, then
 * spare_lock; nothing takes the GIL or touches a reference count while
 * holding spare_lock.
 *
 * When the reader runs ahead of the handler (its thread not scheduled
 * yet), every chunk it reads meanwhile would be fresh memory. So with
 * SPARE_AHEAD chunks already handed out and not yet back, the reader
 * waits for one to come back, at most SPARE_WAIT_NS per chunk, and then
 * reads into fresh memory anyway: a handler that keeps its chunks or takes
 * long slows the read down, never stops it. The reader holds no GIL
 * while it waits (see bytes_alloc). The count is per channel (struct
 * ahead), so one channel's slow handler never slows another's reads.
 */
#define SPARE_MAX 64
#define SPARE_BYTES_MAX ((Py_ssize_t)64 << 20)

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static PyObject *spares[SPARE_MAX];
static Py_ssize_t spare_size[SPARE_MAX];
static int nspares;
static Py_ssize_t spare_bytes; /* spare_size summed */
static pthread_cond_t spare_back; /* a spare was put back (spare_lock) */
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

/* A channel's chunks handed out to reads and not back yet. Shared by the
 * channel object and each of its read operations (refs, under
 * spare_lock): the last one frees it. An allocation happens only during a
 * read operation, and a chunk comes back at the latest with its
 * operation's last handler call, so the operation's reference covers
 * both. */
struct ahead {
    long handed_out;
    long refs;
};

static struct ahead *
ahead_new(void)
{
    struct ahead *a = PyMem_RawCalloc(1, sizeof *a);
    if (a != NULL) {
        a->refs = 1;
    }
    return a;
}

static void
ahead_retain(struct ahead *a)
{
    pthread_mutex_lock(&spare_lock);
    a->refs++;
    pthread_mutex_unlock(&spare_lock);
}

static void
ahead_release(struct ahead *a)
{
    pthread_mutex_lock(&spare_lock);
    bool last = --a->refs == 0;
    pthread_mutex_unlock(&spare_lock);
    if (last) {
        PyMem_RawFree(a);
    }
}

#define SPARE_AHEAD 4
#define SPARE_WAIT_NS 2000000L

static void
spare_init(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&spare_back, &a);
    pthread_condattr_destroy(&a);
}

/* A chunk handed out by bytes_alloc is back: delivered and its handler
 * returned, or freed by the core. */
static void
spare_returned(struct ahead *a)
{
    pthread_mutex_lock(&spare_lock);
    a->handed_out--;
    pthread_cond_broadcast(&spare_back);
    pthread_mutex_unlock(&spare_lock);
}

/* Take a spare of exactly size bytes, or NULL; the GIL need not be held.
 * The caller gets the spare's one reference. */
static PyObject *
spare_take(struct ahead *a, Py_ssize_t size)
{
    PyObject *b = NULL;
    struct timespec until;
    bool waited = false;
    pthread_once(&spare_once, spare_init);
    pthread_mutex_lock(&spare_lock);
    for (;;) {
        for (int i = nspares - 1; i >= 0; i--) {
            if (spare_size[i] == size) {
                b = spares[i];
                spare_bytes -= size;
                nspares--;
                spares[i] = spares[nspares];
                spare_size[i] = spare_size[nspares];
                spares[nspares] = NULL;
                break;
            }
        }
        if (b != NULL || a->handed_out < SPARE_AHEAD) {
            break;
        }
        if (!waited) {
            waited = true;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += SPARE_WAIT_NS;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
        }
        if (pthread_cond_timedwait(&spare_back, &spare_lock, &until) != 0) {
            break; /* timed out: fresh memory after all */
        }
    }
    a->handed_out++; /* this one, spare or fresh (undone if none is made) */
    pthread_mutex_unlock(&spare_lock);
    return b;
}

/* Keep b (our reference, taken) as a spare if nobody else holds it, else
 * drop our reference. GIL held. */
static void
spare_put(PyObject *b)
{
    Py_ssize_t size = PyBytes_GET_SIZE(b);
    if (Py_REFCNT(b) != 1 || size > SPARE_BYTES_MAX ||
        !PyBytes_CheckExact(b)) {
        Py_DECREF(b);
        return;
    }
    /* ob_shash is a public member of PyBytesObject (deprecated for
     * reading since 3.11, still there in 3.13); -1 means "not computed". */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    ((PyBytesObject *)b)->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    PyObject *evicted[SPARE_MAX];
    int nevicted = 0;
    pthread_mutex_lock(&spare_lock);
    while (nspares == SPARE_MAX || spare_bytes + size > SPARE_BYTES_MAX) {
        evicted[nevicted++] = spares[0]; /* the oldest goes */
        spare_bytes -= spare_size[0];
        nspares--;
        memmove(spares, spares + 1, (size_t)nspares * sizeof spares[0]);
        memmove(spare_size, spare_size + 1,
                (size_t)nspares * sizeof spare_size[0]);
        spares[nspares] = NULL;
    }
    spares[nspares] = b;
    spare_size[nspares] = size;
    nspares++;
    spare_bytes += size;
    pthread_mutex_unlock(&spare_lock);
    while (nevicted > 0) {
        Py_DECREF(evicted[--nevicted]);
    }
}

/* Drop every spare. GIL held. */
static void
spares_clear(void)
{
    PyObject *dropped[SPARE_MAX];
    pthread_mutex_lock(&spare_lock);
    int n = nspares;
    memcpy(dropped, spares, (size_t)n * sizeof spares[0]);
    memset(spares, 0, sizeof spares);
    nspares = 0;
    spare_bytes = 0;
    pthread_mutex_unlock(&spare_lock);
    while (n > 0) {
        Py_DECREF(dropped[--n]);
    }
}

static void *
bytes_alloc(void *actx, size_t size)
{
    if (size > (size_t)PY_SSIZE_T_MAX) {
        return NULL;
    }
    /* A worker may still hold the GIL from its last callback: drop it
     * before waiting for a spare and before the caller's read(2). */
    dkpy_release_batch();
    PyObject *b = spare_take(actx, (Py_ssize_t)size);
    if (b != NULL) {
        return PyBytes_AS_STRING(b);
    }
    dkpy_gil_t g;
    if (dkpy_enter(&g)) {
        b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (b == NULL) {
            PyErr_Clear();
        }
        dkpy_leave(&g);
        dkpy_release_batch();
    }
    if (b == NULL) {
        spare_returned(actx); /* none was handed out after all */
        return NULL;
    }
    return PyBytes_AS_STRING(b);
}

static void
bytes_free(void *actx, void *buf)
{
    dkpy_gil_t g;
    if (dkpy_enter(&g)) {
        spare_put(bytes_of(buf));
        dkpy_leave(&g);
    }
    spare_returned(actx);
}

/* A channel read's context: its Python handler and its channel's count. */
struct read_op {
    PyObject *handler;
    struct ahead *ahead;
};

static void
read_op_handler(void *ctx, bool done, const void *data, size_t len, int error)
{
    struct read_op *op = ctx;
    PyObject *handler = op->handler;
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return;
    }
    PyObject *b;
    if (data == NULL) {
        /* No buffer: the allocator failed (error says ENOMEM). */
        b = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        b = bytes_of(data);
        size_t cap = (size_t)PyBytes_GET_SIZE(b);
        if (cap != len) {
            /* A short read: shrink the bytes we allocated in place when
             * only we hold it and little of it goes unused (a fresh or
             * recycled bytes has no hash, and its memory is freed whatever
             * its size says), otherwise copy the part that was read. */
            if (Py_REFCNT(b) == 1 && len >= cap / 2) {
                Py_SET_SIZE(b, (Py_ssize_t)len);
                PyBytes_AS_STRING(b)[len] = '\0';
            } else {
                PyObject *copy =
                    PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
                spare_put(b);
                b = copy;
            }
        }
    }
    if (b != NULL) {
        dkpy_call_reporting(
            handler,
            Py_BuildValue("(OOi)", done ? Py_True : Py_False, b, error));
        /* The handler has returned: if it kept no reference, the chunk is
         * free for the next read. */
        spare_put(b);
    } else {
        PyErr_WriteUnraisable(handler);
    }
    if (data != NULL) {
        spare_returned(op->ahead); /* the chunk bytes_alloc handed out */
    }
    if (done) {
        spares_clear();
        Py_DECREF(handler);
        ahead_release(op->ahead);
        PyMem_RawFree(op);
    }
    dkpy_leave(&g);
}

struct barrier_call {
    PyObject *handler;
    dk_queue_t *queue; /* run there, synchronously, if not NULL */
};

static void
barrier_python(void *ctx)
{
    dkpy_callback(ctx, false, NULL);
}

static void
barrier_run(void *ctx)
{
    struct barrier_call *b = ctx;
    if (b->queue != NULL) {
        if (dk_queue_sync_f(b->queue, b->handler, barrier_python) < 0) {
            barrier_python(b->handler); /* -EDEADLK: already on it */
        }
        dk_release(b->queue);
    } else {
        barrier_python(b->handler);
    }
    dkpy_gil_t g;
    if (dkpy_enter(&g)) {
        Py_DECREF(b->handler);
        dkpy_leave(&g);
    }
    PyMem_RawFree(b);
}

static PyObject *
Channel_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"fd", "io_type", "queue", "cleanup_handler",
                             NULL};
    PyObject *fdobj, *queue = Py_None, *cleanup = Py_None;
    int io_type = DK_IO_STREAM;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|iOO:IOChannel", kwlist,
                                     &fdobj, &io_type, &queue, &cleanup)) {
        return NULL;
    }
    int fd;
    dk_queue_t *q;
    if (parse_fd(fdobj, &fd) < 0 || dkpy_queue_arg(queue, "queue", &q) < 0) {
        return NULL;
    }
    if (cleanup != Py_None &&
        dkpy_check_callable(cleanup, "cleanup_handler") < 0) {
        return NULL;
    }
    if (io_type != DK_IO_STREAM && io_type != DK_IO_RANDOM) {
        PyErr_Format(PyExc_ValueError,
                     "io_type must be IO_STREAM or IO_RANDOM, not %d",
                     io_type);
        return NULL;
    }
    ChannelObject *self = (ChannelObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->ahead = ahead_new();
    if (self->ahead == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    PyObject *ch = cleanup != Py_None ? Py_NewRef(cleanup) : NULL;
    self->fd = fd;
    self->io_type = io_type;
    int rc = dk_io_create(io_type, fd, q, ch,
                          ch != NULL ? cleanup_handler : NULL, &self->io);
    if (rc < 0) {
        int err = -rc;
        Py_XDECREF(ch);
        Py_DECREF(self);
        if (err == ESPIPE) {
            errno = ESPIPE;
            PyErr_Format(PyExc_OSError,
                         "IO_RANDOM needs a seekable fd; fd %d cannot seek",
                         fd);
            return NULL;
        }
        return raise_io(-err, fd);
    }
    dk_io_set_allocator(self->io, bytes_alloc, bytes_free, self->ahead);
    return (PyObject *)self;
}

static void
Channel_dealloc(ChannelObject *self)
{
    if (self->io != NULL) {
        if (!dk_io_is_closed(self->io)) {
            dk_io_close(self->io, 0); /* pending operations complete */
        }
        dk_io_release(self->io);
    }
    if (self->ahead != NULL) {
        ahead_release(self->ahead); /* its reads hold their own */
    }
    dkpy_free((PyObject *)self);
}

static int
check_open(ChannelObject *self)
{
    if (dk_io_is_closed(self->io)) {
        PyErr_SetString(PyExc_RuntimeError, "Channel is closed");
        return -1;
    }
    return 0;
}

/* A channel operation's handler and queue=: 0, or -1 with an exception
 * set. */
static int
handler_and_queue(PyObject *handler, PyObject *queue, dk_queue_t **q)
{
    if (dkpy_check_callable(handler, "handler") < 0) {
        return -1;
    }
    return dkpy_queue_arg(queue, "queue", q);
}

/* The result of starting an operation that owns a reference to its
 * handler: None, or the core's refusal (the reference dropped), EPIPE
 * from a channel closed meanwhile said as a closed channel's operations
 * say it. */
static PyObject *
op_started(ChannelObject *self, int rc, PyObject *handler)
{
    if (rc >= 0) {
        Py_RETURN_NONE;
    }
    Py_DECREF(handler);
    if (rc == -EPIPE && check_open(self) < 0) {
        return NULL;
    }
    return dkpy_raise_errno(rc);
}

static PyObject *
Channel_read(ChannelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"length", "handler", "offset", "queue", NULL};
    Py_ssize_t length;
    long long offset = 0;
    PyObject *handler, *queue = Py_None;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "nO|LO:read", kwlist,
                                     &length, &handler, &offset, &queue)) {
        return NULL;
    }
    dk_queue_t *q;
    if (handler_and_queue(handler, queue, &q) < 0) {
        return NULL;
    }
    if (length < 0 || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "length and offset must be >= 0");
        return NULL;
    }
    struct read_op *op = PyMem_RawMalloc(sizeof *op);
    if (op == NULL) {
        return PyErr_NoMemory();
    }
    op->handler = Py_NewRef(handler);
    op->ahead = self->ahead;
    ahead_retain(op->ahead);
    int rc = dk_io_read(self->io, (off_t)offset, (size_t)length, q, op,
                        read_op_handler);
    if (rc < 0) {
        ahead_release(op->ahead);
        PyMem_RawFree(op);
    }
    return op_started(self, rc, handler);
}

static PyObject *
Channel_write(ChannelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "handler", "offset", "queue", NULL};
    Py_buffer data;
    long long offset = 0;
    PyObject *handler, *queue = Py_None;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "y*O|LO:write", kwlist,
                                     &data, &handler, &offset, &queue)) {
        return NULL;
    }
    dk_queue_t *q;
    if (handler_and_queue(handler, queue, &q) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (offset < 0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
        return NULL;
    }
    Py_INCREF(handler);
    int rc = dk_io_write(self->io, (off_t)offset, data.buf, (size_t)data.len,
                         q, handler, op_handler);
    PyBuffer_Release(&data);
    return op_started(self, rc, handler);
}

static PyObject *
Channel_close(ChannelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"stop", NULL};
    int stop = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:close", kwlist,
                                     &stop)) {
        return NULL;
    }
    if (!dk_io_is_closed(self->io) || stop) {
        dk_io_close(self->io, stop ? DK_IO_STOP : 0);
    }
    Py_RETURN_NONE;
}

static int
parse_size(PyObject *arg, size_t *out)
{
    Py_ssize_t v = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static PyObject *
Channel_set_high_water(ChannelObject *self, PyObject *arg)
{
    size_t v;
    if (check_open(self) < 0 || parse_size(arg, &v) < 0) {
        return NULL;
    }
    dk_io_set_high_water(self->io, v);
    Py_RETURN_NONE;
}

static PyObject *
Channel_set_low_water(ChannelObject *self, PyObject *arg)
{
    size_t v;
    if (check_open(self) < 0 || parse_size(arg, &v) < 0) {
        return NULL;
    }
    dk_io_set_low_water(self->io, v);
    Py_RETURN_NONE;
}

static PyObject *
Channel_set_interval(ChannelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"interval_ns", "flags", "strict", NULL};
    unsigned long long interval;
    unsigned int flags = 0;
    int strict = 0;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "K|Ip:set_interval", kwlist,
                                     &interval, &flags, &strict)) {
        return NULL;
    }
    dk_io_set_interval(self->io, interval,
                       flags | (strict ? DK_IO_STRICT_INTERVAL : 0));
    Py_RETURN_NONE;
}

static PyObject *
Channel_barrier(ChannelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"handler", "queue", NULL};
    PyObject *handler, *queue = Py_None;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:barrier", kwlist,
                                     &handler, &queue)) {
        return NULL;
    }
    dk_queue_t *q;
    if (handler_and_queue(handler, queue, &q) < 0) {
        return NULL;
    }
    struct barrier_call *b = PyMem_RawMalloc(sizeof *b);
    if (b == NULL) {
        return PyErr_NoMemory();
    }
    b->handler = Py_NewRef(handler);
    b->queue = q;
    if (q != NULL) {
        dk_retain(q);
    }
    int rc = dk_io_barrier_f(self->io, b, barrier_run);
    if (rc < 0) {
        Py_DECREF(handler);
        if (q != NULL) {
            dk_release(q);
        }
        PyMem_RawFree(b);
        return check_open(self) < 0 ? NULL : dkpy_raise_errno(rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
Channel_get_fd(ChannelObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->fd);
}

static PyObject *
Channel_get_is_closed(ChannelObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(dk_io_is_closed(self->io));
}

static PyObject *
Channel_repr(ChannelObject *self)
{
    return PyUnicode_FromFormat(
        "<dispatchkit.IOChannel fd=%d %s %s>", self->fd,
        self->io_type == DK_IO_RANDOM ? "random" : "stream",
        self->io == NULL || dk_io_is_closed(self->io) ? "closed" : "open");
}

static PyMethodDef Channel_methods[] = {
    {"read", DKPY_METH_KW(Channel_read),
     "read($self, length, handler, offset=0, queue=None)\n--\n\nRead up to "
     "length bytes; handler(done, data, error) per chunk, in order."},
    {"write", DKPY_METH_KW(Channel_write),
     "write($self, data, handler, offset=0, queue=None)\n--\n\nWrite all "
     "of data; handler(done, remaining, error)."},
    {"close", DKPY_METH_KW(Channel_close),
     "close($self, stop=False)\n--\n\nClose; stop=True ends pending "
     "operations "
     "with ECANCELED."},
    {"set_high_water", (PyCFunction)Channel_set_high_water, METH_O,
     "set_high_water($self, size, /)\n--\n\nAt most size bytes per handler "
     "call."},
    {"set_low_water", (PyCFunction)Channel_set_low_water, METH_O,
     "set_low_water($self, size, /)\n--\n\nAt least size bytes per handler "
     "call (except the last)."},
    {"set_interval", DKPY_METH_KW(Channel_set_interval),
     "set_interval($self, interval_ns, flags=0, strict=False)\n--\n\n"
     "Deliver partial data at least this often (strict=True: at exactly "
     "this interval)."},
    {"barrier", DKPY_METH_KW(Channel_barrier),
     "barrier($self, handler, queue=None)\n--\n\nRun handler after every "
     "earlier operation; later ones wait for it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"fd", (getter)Channel_get_fd, NULL, "The file descriptor.", NULL},
    {"is_closed", (getter)Channel_get_is_closed, NULL, "True after close().",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(static, Channel_spec, "dispatchkit.IOChannel", ChannelObject,
          Py_TPFLAGS_BASETYPE, {Py_tp_new, Channel_new},
          {Py_tp_dealloc, Channel_dealloc}, {Py_tp_methods, Channel_methods},
          {Py_tp_getset, Channel_getset}, {Py_tp_repr, Channel_repr},
          {Py_tp_doc,
           "IOChannel(fd, io_type=0, queue=None, "
           "cleanup_handler=None)\n--\n\nChunked asynchronous I/O on fd "
           "(never closed by the channel)."});

static PyMethodDef io_functions[] = {
    {"read_async", DKPY_METH_KW(dk_py_read_async),
     "read_async($module, fd, length, callback=None, queue=None, "
     "handler=None)\n--\n\nRead once, as soon as data is available (a regular "
     "file: until length or end of file); "
     "callback(data, error); handler is another spelling of callback."},
    {"write_async", DKPY_METH_KW(dk_py_write_async),
     "write_async($module, fd, data, callback=None, queue=None, "
     "handler=None)\n--\n\nWrite all of data; callback(remaining, "
     "error); handler is another spelling of callback."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_io_exec(PyObject *m)
{
    PyTypeObject *t = dkpy_add_type(m, &Channel_spec, NULL, "");
    if (t == NULL) {
        return -1;
    }
    Py_DECREF(t); /* the module holds it */
    return PyModule_AddFunctions(m, io_functions);
}
