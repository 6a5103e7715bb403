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

/* The errors of starting I/O on an fd, beside dkpy_raise_errno's. */
static const dkpy_errno_map io_errors[] = {
    {EBADF, &PyExc_OSError, "fd %s is not open"},
    {ESPIPE, &PyExc_OSError, "IO_RANDOM needs a seekable fd; this one "
                             "cannot seek"},
    {0, NULL, NULL},
};

/* io_errors' exception, the fd named in its message. */
static PyObject *
raise_fd_error(int rc, int fd)
{
    char detail[16];
    snprintf(detail, sizeof detail, "%d", fd);
    return dkpy_raise_errno_detail(io_errors, rc, detail);
}

/* ---- read_async / write_async ---------------------------------------- */

/* read_async's and write_async's: handler(bytes, error), once. */
static void
io_done(void *ctx, const void *data, size_t len, int error)
{
    dkpy_callback(ctx, true, "(y#i)", (const char *)data, (Py_ssize_t)len,
                  error);
}

/* read_async(fd, length, ...) and write_async(fd, data, ...): the handler
 * given as callback= (the stub's name) or handler=, then queue=. */
static PyObject *
async_io(PyObject *args, PyObject *kwargs, bool write)
{
    static char *rkw[] = {"fd", "length", "callback", "queue", "handler",
                          NULL};
    static char *wkw[] = {"fd", "data", "callback", "queue", "handler", NULL};
    PyObject *fdobj, *callback = NULL, *queue = Py_None, *handler = NULL;
    Py_ssize_t length = 0;
    Py_buffer data = {.buf = NULL};
    if (!(write ? PyArg_ParseTupleAndKeywords(
                      args, kwargs, "Oy*|OOO:write_async", wkw, &fdobj, &data,
                      &callback, &queue, &handler)
                : PyArg_ParseTupleAndKeywords(
                      args, kwargs, "On|OOO:read_async", rkw, &fdobj, &length,
                      &callback, &queue, &handler))) {
        return NULL;
    }
    int fd, rc = -1;
    dk_queue_t *q;
    PyObject *h = dkpy_either(callback, handler, "callback or handler");
    if (h == Py_None) {
        PyErr_SetString(PyExc_TypeError, "callback must be a callable");
    } else if (h != NULL && (fd = PyObject_AsFileDescriptor(fdobj)) >= 0 &&
               dkpy_check_callable(h, "callback") == 0 &&
               dkpy_queue_arg(queue, "queue", &q) == 0) {
        if (length < 0) {
            PyErr_SetString(PyExc_ValueError, "length must be >= 0");
        } else {
            Py_INCREF(h);
            rc = write ? dk_write_f(fd, data.buf, (size_t)data.len, q, h,
                                    io_done)
                       : dk_read_f(fd, (size_t)length, q, h, io_done);
            if (rc < 0) {
                Py_DECREF(h);
                raise_fd_error(rc, fd);
            }
        }
    }
    if (write) {
        PyBuffer_Release(&data);
    }
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
dk_py_read_async(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    return async_io(args, kwargs, false);
}

static PyObject *
dk_py_write_async(PyObject *Py_UNUSED(module), PyObject *args,
                  PyObject *kwargs)
{
    return async_io(args, kwargs, true);
}

/* ---- IOChannel ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_io_t *io;
    int fd;
    int io_type; /* IO_STREAM or IO_RANDOM, for the repr */
    /* Chunks handed out to this channel's reads and not back yet (under
     * spare_lock). The allocator's context: it allocates only during a
     * read, and each read holds a reference to the channel. */
    long handed_out;
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
 * only), bounded in number and bytes, and trimmed to SPARE_KEEP_BYTES when
 * a read ends, so that the next read starts in warm memory while an idle
 * process holds little. They are put back and dropped with the GIL held
 * (reference counts), but taken under spare_lock alone: a spare's one
 * reference passes to the reader as is, so the reading thread need not
 * wait for the GIL, which the handler's worker often holds across its
 * callbacks. Lock order: the GIL, then spare_lock; nothing takes the GIL
 * or touches a reference count while holding spare_lock.
 *
 * When the reader runs ahead of the handler (its thread not scheduled
 * yet), every chunk it reads meanwhile would be fresh memory. So with
 * SPARE_AHEAD chunks of a channel handed out and not yet back, the reader
 * waits for one to come back, at most SPARE_WAIT_NS per chunk, and then
 * reads into fresh memory anyway: a handler that keeps its chunks or takes
 * long slows the read down, never stops it. The reader holds no GIL
 * while it waits (see bytes_alloc).
 */
#define SPARE_MAX 64
#define SPARE_BYTES_MAX ((Py_ssize_t)64 << 20)
#define SPARE_KEEP_BYTES ((Py_ssize_t)4 << 20)
#define SPARE_AHEAD 4
#define SPARE_WAIT_NS 2000000L

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static PyObject *spares[SPARE_MAX];
static Py_ssize_t spare_size[SPARE_MAX];
static int nspares;
static Py_ssize_t spare_bytes;    /* spare_size summed */
static pthread_cond_t spare_back; /* a chunk came back (spare_lock) */

/* spare_back waits on the monotonic clock. */
static void
spare_back_init(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&spare_back, &a);
    pthread_condattr_destroy(&a);
}

/*
 * fork() copies spare_lock and spare_back as they are: held by a thread
 * the child does not have, or counting such a thread as a waiter (a
 * reader in spare_take). glibc's broadcast closes the group of waiters
 * it signals and, at the next broadcast that finds a new waiter, waits
 * for every member of that group to leave, which the parent's waiter
 * never does in the child: its handler call stops there, holding the
 * GIL. So the forking thread holds spare_lock across fork(), and no
 * other thread is between lock and unlock then (a waiter has released
 * it): the spares are whole in the child, which makes the lock and the
 * condition variable anew, with no waiter. Lock order: os.fork() holds
 * the GIL, then spare_lock (the order above).
 */
static void
spares_prefork(void)
{
    pthread_mutex_lock(&spare_lock);
}

static void
spares_postfork_parent(void)
{
    pthread_mutex_unlock(&spare_lock);
}

static void
spares_postfork_child(void)
{
    pthread_mutex_init(&spare_lock, NULL);
    spare_back_init();
}

static void
spares_init(void)
{
    spare_back_init();
    pthread_atfork(spares_prefork, spares_postfork_parent,
                   spares_postfork_child);
}

/* A chunk bytes_alloc handed out for ch is back: delivered and its
 * handler returned, or freed by the core. */
static void
spare_returned(ChannelObject *ch)
{
    pthread_mutex_lock(&spare_lock);
    ch->handed_out--;
    pthread_cond_broadcast(&spare_back);
    pthread_mutex_unlock(&spare_lock);
}

/* Take a spare of exactly size bytes, or NULL; the GIL need not be held.
 * The caller gets the spare's one reference. */
static PyObject *
spare_take(ChannelObject *ch, Py_ssize_t size)
{
    PyObject *b = NULL;
    struct timespec until = {0, 0};
    pthread_mutex_lock(&spare_lock);
    for (;;) {
        for (int i = nspares - 1; i >= 0 && b == NULL; i--) {
            if (spare_size[i] == size) {
                b = spares[i];
                spare_bytes -= size;
                nspares--;
                spares[i] = spares[nspares];
                spare_size[i] = spare_size[nspares];
                spares[nspares] = NULL;
            }
        }
        if (b != NULL || ch->handed_out < SPARE_AHEAD) {
            break;
        }
        if (until.tv_sec == 0) {
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
    ch->handed_out++; /* this one, spare or fresh (undone if none is made) */
    pthread_mutex_unlock(&spare_lock);
    return b;
}

/* Drop the oldest spares until at most n stay, of at most max_bytes.
 * GIL held. */
static void
spares_trim(int n, Py_ssize_t max_bytes)
{
    PyObject *dropped[SPARE_MAX];
    int ndropped = 0;
    pthread_mutex_lock(&spare_lock);
    while (nspares > n || (nspares > 0 && spare_bytes > max_bytes)) {
        dropped[ndropped++] = spares[0];
        spare_bytes -= spare_size[0];
        nspares--;
        memmove(spares, spares + 1, (size_t)nspares * sizeof spares[0]);
        memmove(spare_size, spare_size + 1,
                (size_t)nspares * sizeof spare_size[0]);
        spares[nspares] = NULL;
    }
    pthread_mutex_unlock(&spare_lock);
    while (ndropped > 0) {
        Py_DECREF(dropped[--ndropped]);
    }
}

/* Keep b (our reference, taken) as a spare if nobody else holds it, else
 * drop our reference. GIL held, so no other thread puts one meanwhile. */
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
    spares_trim(SPARE_MAX - 1, SPARE_BYTES_MAX - size);
    pthread_mutex_lock(&spare_lock);
    spares[nspares] = b;
    spare_size[nspares++] = size;
    spare_bytes += size;
    pthread_mutex_unlock(&spare_lock);
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
    dkpy_gil_t g;
    if (b == NULL && dkpy_enter(&g)) {
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

/* A channel read's context: its Python handler and a reference to its
 * channel (the allocator's count lives there). */
struct read_op {
    PyObject *handler;
    ChannelObject *channel;
};

/* The bytes of a delivery (data: from bytes_alloc, or NULL when the
 * allocator failed and error says ENOMEM), or NULL with an exception. */
static PyObject *
chunk_of(const void *data, size_t len)
{
    if (data == NULL) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    PyObject *b = bytes_of(data);
    size_t cap = (size_t)PyBytes_GET_SIZE(b);
    if (cap == len) {
        return b;
    }
    /* A short read: shrink the bytes we allocated in place when only we
     * hold it and little of it goes unused (a fresh or recycled bytes has
     * no hash, and its memory is freed whatever its size says), otherwise
     * copy the part that was read. */
    if (Py_REFCNT(b) == 1 && len >= cap / 2) {
        Py_SET_SIZE(b, (Py_ssize_t)len);
        PyBytes_AS_STRING(b)[len] = '\0';
        return b;
    }
    PyObject *copy = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    spare_put(b);
    return copy;
}

static void
read_op_handler(void *ctx, bool done, const void *data, size_t len, int error)
{
    struct read_op *op = ctx;
    dkpy_gil_t g;
    if (!dkpy_enter(&g)) {
        return;
    }
    PyObject *b = chunk_of(data, len);
    if (b != NULL) {
        dkpy_call_reporting(op->handler, Py_BuildValue("(OOi)", done ? Py_True
                                                                     : Py_False,
                                                       b, error));
        /* The handler has returned: if it kept no reference, the chunk is
         * free for the next read. */
        spare_put(b);
    } else {
        PyErr_WriteUnraisable(op->handler);
    }
    if (data != NULL) {
        spare_returned(op->channel); /* the chunk bytes_alloc handed out */
    }
    if (done) {
        spares_trim(SPARE_MAX, SPARE_KEEP_BYTES);
        Py_DECREF(op->handler);
        Py_DECREF(op->channel);
        PyMem_RawFree(op);
    }
    dkpy_leave(&g);
    if (done) {
        /* Whoever waited for this call needs the GIL now, not once this
         * worker runs out of work. */
        dkpy_release_batch();
    }
}

struct barrier_call {
    PyObject *handler;
    dk_queue_t *queue; /* run there, synchronously, if not NULL */
};

/* A barrier's one call, which drops the handler. */
static void
barrier_python(void *handler)
{
    dkpy_callback(handler, true, NULL);
}

static void
barrier_run(void *ctx)
{
    struct barrier_call *b = ctx;
    if (b->queue == NULL ||
        dk_queue_sync_f(b->queue, b->handler, barrier_python) < 0) {
        barrier_python(b->handler); /* no queue=, or already on it */
    }
    if (b->queue != NULL) {
        dk_release(b->queue);
    }
    PyMem_RawFree(b);
}

static PyObject *
Channel_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"fd", "io_type", "queue", "cleanup_handler",
                             NULL};
    PyObject *fdobj, *queue = Py_None, *cleanup = Py_None;
    int io_type = DK_IO_STREAM, fd;
    dk_queue_t *q;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|iOO:IOChannel", kwlist,
                                     &fdobj, &io_type, &queue, &cleanup) ||
        (fd = PyObject_AsFileDescriptor(fdobj)) < 0 ||
        dkpy_queue_arg(queue, "queue", &q) < 0 ||
        (cleanup != Py_None &&
         dkpy_check_callable(cleanup, "cleanup_handler") < 0)) {
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
    PyObject *ch = cleanup != Py_None ? Py_NewRef(cleanup) : NULL;
    self->fd = fd;
    self->io_type = io_type;
    int rc = dk_io_create(io_type, fd, q, ch,
                          ch != NULL ? cleanup_handler : NULL, &self->io);
    if (rc < 0) {
        Py_XDECREF(ch);
        Py_DECREF(self);
        return raise_fd_error(rc, fd);
    }
    dk_io_set_allocator(self->io, bytes_alloc, bytes_free, self);
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

/* An operation's handler and queue=, and its numbers (negative: ValueError
 * `message`): 0, or -1 with an exception set. */
static int
op_args(PyObject *handler, PyObject *queue, long long number,
        const char *message, dk_queue_t **q)
{
    if (dkpy_check_callable(handler, "handler") < 0 ||
        dkpy_queue_arg(queue, "queue", q) < 0) {
        return -1;
    }
    if (number < 0) {
        PyErr_SetString(PyExc_ValueError, message);
        return -1;
    }
    return 0;
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
    dk_queue_t *q;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "nO|LO:read", kwlist,
                                     &length, &handler, &offset, &queue) ||
        op_args(handler, queue, length < 0 ? -1 : offset,
                "length and offset must be >= 0", &q) < 0) {
        return NULL;
    }
    struct read_op *op = PyMem_RawMalloc(sizeof *op);
    if (op == NULL) {
        return PyErr_NoMemory();
    }
    op->handler = Py_NewRef(handler);
    op->channel = (ChannelObject *)Py_NewRef(self);
    int rc = dk_io_read(self->io, (off_t)offset, (size_t)length, q, op,
                        read_op_handler);
    if (rc < 0) {
        Py_DECREF(self);
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
    dk_queue_t *q;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "y*O|LO:write", kwlist,
                                     &data, &handler, &offset, &queue)) {
        return NULL;
    }
    if (op_args(handler, queue, offset, "offset must be >= 0", &q) < 0) {
        PyBuffer_Release(&data);
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

/* set_high_water and set_low_water: a size >= 0 for `set`. */
static PyObject *
set_water(ChannelObject *self, PyObject *arg,
          void (*set)(dk_io_t *io, size_t size))
{
    Py_ssize_t v;
    if (check_open(self) < 0 ||
        ((v = PyNumber_AsSsize_t(arg, PyExc_OverflowError)) == -1 &&
         PyErr_Occurred())) {
        return NULL;
    }
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    set(self->io, (size_t)v);
    Py_RETURN_NONE;
}

static PyObject *
Channel_set_high_water(ChannelObject *self, PyObject *arg)
{
    return set_water(self, arg, dk_io_set_high_water);
}

static PyObject *
Channel_set_low_water(ChannelObject *self, PyObject *arg)
{
    return set_water(self, arg, dk_io_set_low_water);
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
    dk_queue_t *q;
    if (check_open(self) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:barrier", kwlist,
                                     &handler, &queue) ||
        op_args(handler, queue, 0, NULL, &q) < 0) {
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
    if (rc < 0 && q != NULL) {
        dk_release(q);
    }
    if (rc < 0) {
        PyMem_RawFree(b);
    }
    return op_started(self, rc, handler);
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
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, spares_init);
    PyTypeObject *t = dkpy_add_type(m, &Channel_spec, NULL, "");
    if (t == NULL) {
        return -1;
    }
    Py_DECREF(t); /* the module holds it */
    return PyModule_AddFunctions(m, io_functions);
}
