/*
 * Binding of the ZeroBuffer core for dispatchkit.zerobuffer: the types
 * ZbReader, ZbWriter (subclassed in Python as Reader and Writer), Frame,
 * and the exporters behind metadata and get_frame_buffer() views.
 *
 * A Reader and a Writer are the two ends of a buffer and share one object
 * layout (EndObject) and everything that does not depend on the end: the
 * lifetime rules, the waits, the attributes, close() and `with`.
 *
 * Lifetimes: a frame holds its reader; a memoryview holds its exporter.
 * close() detaches at once (pid cleared, names unlinked) but the mapping
 * is only unmapped when no view is exported and no thread is inside a
 * call with the GIL released (`exports` and `busy`, both changed only
 * with the GIL held). So a view that outlives close() still points at
 * mapped memory, and a thread waiting in read_frame() is never left on
 * an unmapped semaphore.
 *
 * Waits: try first with the GIL held (no system call when a frame or
 * space is there), then watch with the GIL still held for a bounded,
 * adaptive time (a frame due within microseconds costs no GIL hand-off),
 * then sleep through dkpy_wait_sliced (binding.h), which releases the GIL
 * in slices and runs the signal handlers between them, so Ctrl-C works.
 */
#include "python/binding.h"
#include "python/futures.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include <structmember.h>

#include "dk/time.h"
#include "dk/zerobuffer.h"
#include "zerobuffer_internal.h"

/* Copies at least this large run with the GIL released. */
#define NOGIL_COPY 65536

/* ---- exceptions ------------------------------------------------------- */

/* The exception classes, defined in dispatchkit/zerobuffer/exceptions.py
 * and registered by _zb_set_exceptions() when the package is imported;
 * until then RuntimeError (bad names: ValueError), set at module exec. */
#define ZB_EXCEPTIONS(X)                                                      \
    X(BASE, "ZeroBufferException")                                            \
    X(WRITER_DEAD, "WriterDeadException")                                     \
    X(READER_DEAD, "ReaderDeadException")                                     \
    X(WRITER_CONNECTED, "WriterAlreadyConnectedException")                    \
    X(READER_CONNECTED, "ReaderAlreadyConnectedException")                    \
    X(BUFFER_FULL, "BufferFullException")                                     \
    X(TOO_LARGE, "FrameTooLargeException")                                    \
    X(INVALID_SIZE, "InvalidFrameSizeException")                              \
    X(SEQUENCE, "SequenceError")                                              \
    X(METADATA_WRITTEN, "MetadataAlreadyWrittenException")                    \
    X(NAME, "InvalidBufferNameException")
#define EXC_ENUM(ID, NAME) EXC_##ID,
#define EXC_NAME_OF(ID, NAME) NAME,
enum { ZB_EXCEPTIONS(EXC_ENUM) EXC_COUNT };
static const char *const exc_names[EXC_COUNT] = {ZB_EXCEPTIONS(EXC_NAME_OF)};
static PyObject *exc_types[EXC_COUNT];

static PyObject *
zb_set_exceptions(PyObject *Py_UNUSED(mod), PyObject *src)
{
    for (int i = 0; i < EXC_COUNT; i++) {
        PyObject *t = PyObject_GetAttrString(src, exc_names[i]);
        if (t == NULL) {
            return NULL;
        }
        if (!PyType_Check(t) ||
            !PyType_IsSubtype((PyTypeObject *)t,
                              (PyTypeObject *)PyExc_Exception)) {
            Py_DECREF(t);
            PyErr_Format(PyExc_TypeError, "%s is not an exception class",
                         exc_names[i]);
            return NULL;
        }
        Py_XSETREF(exc_types[i], t);
    }
    Py_RETURN_NONE;
}

/* ---- errors of the core ----------------------------------------------- */

/* What each error of the core means to the user, one table per call (a
 * message's %s is the buffer name, or for -EPROTO the core's account of
 * the corruption); codes in no table go through dkpy_raise_errno. */
#define EXC(which) (&exc_types[EXC_##which])
#define CORRUPTED_ROW                                                         \
    {                                                                         \
        EPROTO, EXC(BASE), "%s"                                               \
    }

static const dkpy_errno_map create_errors[] = {
    {EEXIST, EXC(READER_CONNECTED), NULL},
    {EINVAL, &PyExc_ValueError, "invalid buffer sizes"},
    {EPERM, &PyExc_PermissionError,
     "refusing the lock file /tmp/zerobuffer/%s.lock: the directory must "
     "be owned by root or by this user and be sticky if others may write "
     "it, and the lock file a regular file of this user (not a symlink)"},
    {0, NULL, NULL},
};

static const dkpy_errno_map open_errors[] = {
    {ENOENT, EXC(BASE),
     "No shared memory found for buffer '%s' - reader must be created "
     "first"},
    {ENOTCONN, EXC(BASE), "No active reader found for buffer '%s'"},
    {EBUSY, EXC(WRITER_CONNECTED), NULL},
    CORRUPTED_ROW,
    {0, NULL, NULL},
};

static const dkpy_errno_map read_errors[] = {
    {EPIPE, EXC(WRITER_DEAD), NULL},
    {EBADF, EXC(BASE), "Reader is closed"},
    CORRUPTED_ROW,
    {0, NULL, NULL},
};

static const dkpy_errno_map write_errors[] = {
    {EINVAL, EXC(INVALID_SIZE), NULL},
    {EMSGSIZE, EXC(TOO_LARGE), NULL},
    {EPIPE, EXC(READER_DEAD), NULL},
    {ETIMEDOUT, EXC(BUFFER_FULL), NULL},
    {EBUSY, EXC(BASE),
     "a frame from get_frame_buffer() is waiting for commit_frame()"},
    {EBADF, EXC(BASE), "Writer is closed"},
    CORRUPTED_ROW,
    {0, NULL, NULL},
};

/* Looked up before write_errors. */
static const dkpy_errno_map commit_errors[] = {
    {EINVAL, EXC(BASE), "No pending frame to commit"},
    {0, NULL, NULL},
};

static const dkpy_errno_map metadata_errors[] = {
    {EALREADY, EXC(METADATA_WRITTEN), NULL},
    {ENOSPC, EXC(BASE), "Metadata too large for buffer"},
    {EINVAL, EXC(BASE),
     "Metadata must not be empty (readers cannot tell it from no "
     "metadata)"},
    {0, NULL, NULL},
};

static const dkpy_errno_map name_errors[] = {
    {EINVAL, EXC(NAME),
     "invalid buffer name %s: must be non-empty, without '/', '..', "
     "spaces or control characters"},
    {ENAMETOOLONG, EXC(NAME), "invalid buffer name %s: longer than 240 bytes"},
    {0, NULL, NULL},
};

/* The exception for rc from `map` (then `first`, if not NULL, before it);
 * nothing more for DKPY_RAISED, whose exception is set. Returns NULL. */
static PyObject *
zb_raise(const dkpy_errno_map *first, const dkpy_errno_map *map, int rc,
         const char *detail)
{
    if (rc == DKPY_RAISED || (first != NULL && dkpy_raise_mapped(first, rc))) {
        return NULL;
    }
    return dkpy_raise_errno_detail(map, rc, detail);
}

/* The UTF-8 of a buffer name, checked: an embedded NUL would cut the
 * name short in every C call (and "a\0evil" would open "a"). NULL with
 * an exception set if it is not a usable name. */
static const char *
zb_name_utf8(PyObject *name)
{
    Py_ssize_t len;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &len);
    if (cname == NULL) {
        return NULL;
    }
    int rc = strlen(cname) != (size_t)len ? -EINVAL : dk_zb_name_check(cname);
    if (rc < 0) {
        PyObject *repr = PyObject_Repr(name);
        const char *r = repr ? PyUnicode_AsUTF8(repr) : NULL;
        if (r != NULL) {
            zb_raise(NULL, name_errors, rc, r);
        }
        Py_XDECREF(repr);
        return NULL;
    }
    return cname;
}

/* ---- arguments -------------------------------------------------------- */

/* The one argument of a method that takes it by position or by name, as
 * the peers' Python methods do (writer.get_frame_buffer(size=4000) is in
 * zerobuffer-ipc's README). 0 with *out borrowed (NULL: not given, where
 * `optional`), or -1 with TypeError. */
static int
one_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
        const char *fname, const char *kw, bool optional, PyObject **out)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    *out = nargs + nkw == 1 ? args[0] : NULL;
    if (nargs + nkw > 1 || (nargs + nkw == 0 && !optional)) {
        PyErr_Format(PyExc_TypeError,
                     optional ? "%s() takes at most 1 argument (%zd given)"
                              : "%s() takes exactly one argument (%zd given)",
                     fname, nargs + nkw);
        return -1;
    }
    if (nkw == 1 && PyUnicode_CompareWithASCIIString(
                        PyTuple_GET_ITEM(kwnames, 0), kw) != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s() got an unexpected keyword argument '%U'", fname,
                     PyTuple_GET_ITEM(kwnames, 0));
        return -1;
    }
    return 0;
}

/* A read's timeout argument in seconds (NULL: the default 5 s; None:
 * forever, as inf is), checked now; its deadline is computed only when a
 * wait is needed (no clock read when a frame is there). */
static int
timeout_parse(PyObject *obj, double *secs)
{
    *secs = obj == NULL      ? 5.0
            : obj == Py_None ? INFINITY
                             : PyFloat_AsDouble(obj);
    if (*secs == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(*secs)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number");
        return -1;
    }
    return 0;
}

/* dkpy_deadline_zerobuffer's rule, from the number already read. */
static uint64_t
timeout_deadline(double secs)
{
    return secs > 1e9  ? DK_TIME_FOREVER
           : secs <= 0 ? 0
                       : dk_now() + (uint64_t)(secs * 1e9);
}

/* ---- the two ends ----------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    void *core; /* dk_zb_reader_t or dk_zb_writer_t; NULL once destroyed */
    bool reader;
    bool closed;
    PyObject *name;
    Py_ssize_t exports; /* live buffer exports of frames and regions */
    Py_ssize_t busy;    /* calls running with the GIL released */
    PyObject *weakrefs;
    PyObject *dict;
    /* The writer's. One writing thread at a time: `owned` (read and set
     * with the GIL held) says whether a thread is in a call; threads that
     * find it set wait on `gate` (kept locked) with the GIL released, and
     * each writer_unlock() that leaves waiters behind lets one through.
     * An uncontended call so costs no lock operation (a PyThread lock
     * reads the clock even to try). */
    PyThread_type_lock gate;
    bool owned;
    int gate_waiters;
    double write_timeout;     /* seconds */
    PyObject *pending_view;   /* the memoryview of get_frame_buffer() */
    PyObject *pending_region; /* its exporter (a RegionObject) */
} EndObject;

typedef struct {
    PyObject_HEAD
    EndObject *reader;
    dk_zb_frame_t frame;
    bool released;
} FrameObject;

/* An exporter of read-only or writable bytes inside a segment. */
typedef struct {
    PyObject_HEAD
    EndObject *owner;
    void *buf;
    Py_ssize_t len;
    Py_ssize_t exports; /* buffers exported by this region (GIL held) */
    bool writable;
} RegionObject;

static PyTypeObject *Reader_type;
static PyTypeObject *Writer_type;
static PyTypeObject *Frame_type;
static PyTypeObject *Region_type;

static void
end_destroy(EndObject *self)
{
    if (self->reader) {
        dk_zb_reader_destroy(self->core);
    } else {
        dk_zb_writer_destroy(self->core);
    }
    self->core = NULL;
}

static void
end_maybe_destroy(EndObject *self)
{
    if (self->closed && self->exports == 0 && self->busy == 0 &&
        self->core != NULL) {
        end_destroy(self);
    }
}

static bool
end_open(EndObject *self)
{
    return !self->closed && self->core != NULL;
}

/* A new end for the buffer `name`, its name checked into *cname. NULL
 * with an exception set. */
static EndObject *
end_alloc(PyTypeObject *type, PyObject *name, bool reader, const char **cname)
{
    *cname = zb_name_utf8(name);
    EndObject *self =
        *cname == NULL ? NULL : (EndObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->reader = reader;
        self->name = Py_NewRef(name);
    }
    return self;
}

/* Drop an end whose core could not be made, then raise rc's exception
 * from `map` (detail: a string that outlives self). Returns NULL. */
static PyObject *
end_failed(EndObject *self, const dkpy_errno_map *map, int rc,
           const char *detail)
{
    self->closed = true;
    Py_DECREF(self);
    return zb_raise(NULL, map, rc, detail);
}

static int
End_traverse(EndObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->pending_view);
    Py_VISIT(self->pending_region);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
End_clear(EndObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->pending_view);
    Py_CLEAR(self->pending_region);
    return 0;
}

static void
End_dealloc(EndObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    End_clear(self);
    end_destroy(self); /* no frame, view or call holds it now */
    if (self->gate != NULL) {
        PyThread_free_lock(self->gate);
    }
    Py_CLEAR(self->name);
    dkpy_free((PyObject *)self);
}

/* memcpy, with the GIL released when it is long; into the ring of the
 * writer `w` as it copies frames in (dk__zb_writer_copy), NULL: plain. */
static void
end_copy(EndObject *self, void *dst, const void *src, size_t n,
         const dk_zb_writer_t *w)
{
    if (n < NOGIL_COPY) {
        memcpy(dst, src, n);
        return;
    }
    self->busy++;
    Py_BEGIN_ALLOW_THREADS
    dk__zb_writer_copy(w, dst, src, n);
    Py_END_ALLOW_THREADS
    self->busy--;
}

/* dkpy_wait_sliced, the end kept busy throughout (so close() from another
 * thread, or from a signal handler between slices, defers destroying the
 * core). A slice that timed out at the deadline on a closed end is
 * -EBADF, as the next slice would have said. */
static int
end_wait(EndObject *self, dkpy_wait_fn fn, void *arg, uint64_t deadline)
{
    self->busy++;
    int rc = dkpy_wait_sliced(fn, arg, deadline);
    self->busy--;
    return rc == -ETIMEDOUT && self->closed ? -EBADF : rc;
}

static void drop_pending_view(EndObject *self);

/* close(), and __exit__(*exc_info). */
static PyObject *
End_close(EndObject *self, PyObject *Py_UNUSED(unused))
{
    if (!self->closed) {
        self->closed = true;
        if (self->core != NULL && self->reader) {
            dk_zb_reader_close(self->core);
        } else if (self->core != NULL) {
            dk_zb_writer_close(self->core);
        }
        drop_pending_view(self);
        end_maybe_destroy(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
zb_enter(PyObject *self, PyObject *Py_UNUSED(unused))
{
    return Py_NewRef(self);
}

/* A counter of the core (0 once destroyed), by a getter of its own. */
#define COUNTER_GETTER(FN)                                                    \
    static PyObject *get_##FN(EndObject *self, void *Py_UNUSED(c))            \
    {                                                                         \
        return PyLong_FromUnsignedLongLong(self->core ? FN(self->core) : 0);  \
    }
COUNTER_GETTER(dk_zb_reader_frames)
COUNTER_GETTER(dk_zb_reader_bytes)
COUNTER_GETTER(dk_zb_writer_frames)
COUNTER_GETTER(dk_zb_writer_bytes)
COUNTER_GETTER(dk_zb_writer_max_frame)
#define COUNTER(NAME, FN, DOC)                                                \
    {                                                                         \
        NAME, (getter)get_##FN, NULL, DOC, NULL                               \
    }

/* `with` for the ends and Frame: __exit__ calls EXIT, named NAME. */
/* clang-format off */
#define WITH_METHODS(EXIT, NAME)                                              \
    {"__enter__", (PyCFunction)zb_enter, METH_NOARGS,                         \
     "__enter__($self, /)\n--\n\nReturns self."},                             \
    {"__exit__", (PyCFunction)EXIT, METH_VARARGS,                             \
     "__exit__($self, /, *exc_info)\n--\n\n" NAME "()."},                     \
    {NULL, NULL, 0, NULL}
/* clang-format on */

/* The members both ends have. */
#define END_MEMBERS                                                           \
    {"name", T_OBJECT, offsetof(EndObject, name), READONLY,                   \
     "the buffer's name"},                                                    \
        {"closed", T_BOOL, offsetof(EndObject, closed), READONLY,             \
         "whether closed"},                                                   \
        {"__weaklistoffset__", T_PYSSIZET, offsetof(EndObject, weakrefs),     \
         READONLY, NULL},                                                     \
        {"__dictoffset__", T_PYSSIZET, offsetof(EndObject, dict), READONLY,   \
         NULL},                                                               \
    {                                                                         \
        NULL, 0, 0, 0, NULL                                                   \
    }

static PyMemberDef Reader_members[] = {END_MEMBERS};

/* For aio_wait.c (async for over a Reader, a Writer waiting for space):
 * hold the core of an open end of type `type` for an asynchronous wait,
 * as a blocking call does (busy), so close() defers destroying it; NULL
 * if obj is not one, or closed (no exception set). The unhold functions
 * end the hold. */
static void *
end_hold(PyObject *obj, PyTypeObject *type)
{
    if (type == NULL || !PyObject_TypeCheck(obj, type) ||
        !end_open((EndObject *)obj)) {
        return NULL;
    }
    ((EndObject *)obj)->busy++;
    return ((EndObject *)obj)->core;
}

struct dk_zb_reader_s *
dkpy_zb_reader_hold(PyObject *obj)
{
    return end_hold(obj, Reader_type);
}

void
dkpy_zb_reader_unhold(PyObject *obj)
{
    ((EndObject *)obj)->busy--;
    end_maybe_destroy((EndObject *)obj);
}

struct dk_zb_writer_s *
dkpy_zb_writer_hold(PyObject *obj)
{
    return end_hold(obj, Writer_type);
}

void
dkpy_zb_writer_unhold(PyObject *obj)
{
    dkpy_zb_reader_unhold(obj); /* the same for both ends */
}

bool
dkpy_zb_is_writer(PyObject *obj)
{
    return Writer_type != NULL && PyObject_TypeCheck(obj, Writer_type);
}

bool
dkpy_zb_is_reader(PyObject *obj)
{
    return Reader_type != NULL && PyObject_TypeCheck(obj, Reader_type);
}

/* ---- Reader ----------------------------------------------------------- */

/* The config's sizes into *msize and *psize: 0, or -1 with an exception
 * set. */
static int
reader_sizes(PyObject *config, unsigned long long *msize,
             unsigned long long *psize)
{
    static PyObject *metadata_size_str, *payload_size_str;
    PyObject *m = dkpy_getattr(config, &metadata_size_str, "metadata_size");
    PyObject *p =
        m ? dkpy_getattr(config, &payload_size_str, "payload_size") : NULL;
    long long mv = p ? dkpy_index_as_long_long(m) : -1;
    long long pv = p ? dkpy_index_as_long_long(p) : -1;
    Py_XDECREF(m);
    Py_XDECREF(p);
    if ((mv == -1 || pv == -1) && PyErr_Occurred()) {
        return -1;
    }
    if (mv < 0 || pv <= 0 || (unsigned long long)mv > DK_ZB_SIZE_MAX ||
        (unsigned long long)pv > DK_ZB_SIZE_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "need 0 <= metadata_size and 0 < payload_size, "
                     "both <= %llu",
                     (unsigned long long)DK_ZB_SIZE_MAX);
        return -1;
    }
    *msize = (unsigned long long)mv;
    *psize = (unsigned long long)pv;
    return 0;
}

static PyObject *
Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "config", "mode", NULL};
    PyObject *name, *config = Py_None;
    unsigned int mode = DK_ZB_MODE_PRIVATE;
    unsigned long long msize = 1024, psize = 1024ull * 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|OI:Reader", kwlist,
                                     &name, &config, &mode) ||
        (config != Py_None && reader_sizes(config, &msize, &psize) < 0)) {
        return NULL;
    }
    if (mode > 0777) {
        PyErr_SetString(PyExc_ValueError, "mode must be within 0o777");
        return NULL;
    }
    const char *cname;
    EndObject *self = end_alloc(type, name, true, &cname);
    if (self == NULL) {
        return NULL;
    }
    int rc;
    dk_zb_reader_t *core = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = dk_zb_reader_create(cname, msize, psize, mode, &core);
    Py_END_ALLOW_THREADS
    self->core = core;
    return rc < 0 ? end_failed(self, create_errors, rc, cname)
                  : (PyObject *)self;
}

static int
reader_check_open(EndObject *self)
{
    if (!end_open(self)) {
        zb_raise(NULL, read_errors, -EBADF, NULL);
        return -1;
    }
    return 0;
}

/* The exception for a read's rc (an -EILSEQ is a SequenceError with the
 * numbers the core saw); the reader is destroyed if closed meanwhile. */
static PyObject *
reader_error(EndObject *self, int rc)
{
    const dk_zb_error_t *err =
        self->core ? dk_zb_reader_error(self->core) : NULL;
    PyObject *seq = exc_types[EXC_SEQUENCE];
    if (rc == -EILSEQ && err != NULL) {
        PyObject *e =
            PyObject_CallFunction(seq, "KK", (unsigned long long)err->expected,
                                  (unsigned long long)err->got);
        if (e != NULL) {
            PyErr_SetObject(seq, e);
            Py_DECREF(e);
        }
    } else {
        zb_raise(NULL, read_errors, rc == -EILSEQ ? -EPROTO : rc,
                 err ? err->message : "corrupted segment");
    }
    end_maybe_destroy(self);
    return NULL;
}

static PyObject *
make_frame(EndObject *self, const dk_zb_frame_t *f)
{
    FrameObject *fo = PyObject_New(FrameObject, Frame_type);
    if (fo == NULL) {
        int released = dk_zb_reader_release(self->core, f); /* just read */
        (void)released;
        return NULL;
    }
    fo->reader = (EndObject *)Py_NewRef(self);
    fo->frame = *f;
    fo->released = false;
    return (PyObject *)fo;
}

struct read_wait {
    dk_zb_reader_t *core;
    dk_zb_frame_t *f;
};

static int
read_sleep(void *arg, uint64_t deadline)
{
    struct read_wait *w = arg;
    return dk__zb_reader_read_ex(w->core, deadline, DK__ZB_SLEEP, w->f);
}

/* The next frame into *f: 0, -ETIMEDOUT, DKPY_RAISED (a signal handler's
 * exception) or another error of the core. Tries, watches, then sleeps
 * (the file's opening comment). */
static int
reader_next(EndObject *self, double timeout, dk_zb_frame_t *f)
{
    int rc = dk__zb_reader_read_ex(self->core, 0, 0, f);
    if (rc != -EAGAIN) {
        return rc;
    }
    uint64_t deadline = timeout_deadline(timeout);
    if (deadline == 0) {
        return dk_zb_reader_read(self->core, 0, f);
    }
    rc = dk__zb_reader_read_ex(self->core, deadline, DK__ZB_SPIN, f);
    if (rc == -EAGAIN) {
        struct read_wait w = {self->core, f};
        rc = end_wait(self, read_sleep, &w, deadline);
    }
    /* close() ran while we slept: the frame is not handed out. */
    return rc == 0 && self->closed ? -EBADF : rc;
}

/* read_frame (max 0: a frame, or None on timeout) and read_frames (a
 * list of up to max frames, empty on timeout): wait for a frame, then
 * take every frame already there, up to max, with no further wait. An
 * error after the first frame ends the batch; nothing of it was
 * consumed, so the next call reports it. */
static PyObject *
reader_read(EndObject *self, PyObject *timeout, Py_ssize_t max)
{
    double secs;
    PyObject *list = NULL;
    if (timeout_parse(timeout, &secs) < 0 || reader_check_open(self) < 0 ||
        (max > 0 && (list = PyList_New(0)) == NULL)) {
        return NULL;
    }
    dk_zb_frame_t f;
    int rc = reader_next(self, secs, &f);
    if (rc == 0 && list == NULL) {
        return make_frame(self, &f);
    }
    while (rc == 0) {
        PyObject *fo = make_frame(self, &f);
        if (fo == NULL || PyList_Append(list, fo) < 0) {
            Py_XDECREF(fo);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(fo);
        if (PyList_GET_SIZE(list) >= max || self->closed) {
            break;
        }
        rc = dk__zb_reader_read_ex(self->core, 0, 0, &f);
    }
    if (rc == -ETIMEDOUT || (list != NULL && PyList_GET_SIZE(list) > 0)) {
        end_maybe_destroy(self);
        return list != NULL ? list : Py_NewRef(Py_None);
    }
    Py_XDECREF(list);
    return reader_error(self, rc);
}

static PyObject *
Reader_read_frame(EndObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    PyObject *timeout;
    return one_arg(args, nargs, kwnames, "read_frame", "timeout", true,
                   &timeout) < 0
               ? NULL
               : reader_read(self, timeout, 0);
}

static PyObject *
Reader_read_frames(EndObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_frames", "timeout", NULL};
    PyObject *maxobj, *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:read_frames", kwlist,
                                     &maxobj, &timeout)) {
        return NULL;
    }
    if (PyBool_Check(maxobj) || !PyIndex_Check(maxobj)) {
        PyErr_Format(PyExc_TypeError, "max_frames must be an int, not %.100s",
                     Py_TYPE(maxobj)->tp_name);
        return NULL;
    }
    Py_ssize_t max = PyNumber_AsSsize_t(maxobj, NULL); /* clamps */
    if (max == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max_frames must be at least 1");
        return NULL;
    }
    return reader_read(self, timeout, max);
}

/* Release a frame once: `released` makes this the frame's one release. */
static void
frame_release(FrameObject *self)
{
    if (!self->released && self->reader->core != NULL) {
        int rc = dk_zb_reader_release(self->reader->core, &self->frame);
        (void)rc;
    }
    self->released = true;
}

/* dispose(), and __exit__(*exc_info). */
static PyObject *
Frame_dispose(FrameObject *self, PyObject *Py_UNUSED(unused))
{
    frame_release(self);
    Py_RETURN_NONE;
}

static PyObject *
reader_release_frame(EndObject *self, PyObject *frame)
{
    if (!PyObject_TypeCheck(frame, Frame_type)) {
        /* Duck-typed frames (a DuplexResponse's, say) have dispose(). */
        static PyObject *dispose_str;
        PyObject *dispose = dkpy_getattr(frame, &dispose_str, "dispose");
        PyObject *r = dispose ? PyObject_CallNoArgs(dispose) : NULL;
        Py_XDECREF(dispose);
        return r;
    }
    if (((FrameObject *)frame)->reader != self) {
        PyErr_SetString(PyExc_ValueError, "frame belongs to another reader");
        return NULL;
    }
    return Frame_dispose((FrameObject *)frame, NULL);
}

static PyObject *
Reader_release_frame(EndObject *self, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    PyObject *frame;
    return one_arg(args, nargs, kwnames, "release_frame", "frame", false,
                   &frame) < 0
               ? NULL
               : reader_release_frame(self, frame);
}

/* release_frames(frames): release several frames with one credit of
 * their space. Every item is checked first (a Frame of this reader, or
 * anything with dispose(), as release_frame takes); frames released
 * before are skipped. */
static PyObject *
Reader_release_frames(EndObject *self, PyObject *frames)
{
    PyObject *seq = PySequence_Fast(
        frames, "release_frames() takes an iterable of frames");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_TypeCheck(items[i], Frame_type) &&
            ((FrameObject *)items[i])->reader != self) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError,
                         "frame %zd belongs to another reader", i);
            return NULL;
        }
    }
    dk_zb_frame_t *batch =
        PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof *batch);
    if (batch == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    size_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        FrameObject *fo = (FrameObject *)items[i];
        if (PyObject_TypeCheck(items[i], Frame_type) && !fo->released) {
            fo->released = true;
            batch[k++] = fo->frame;
        }
    }
    if (k > 0 && self->core != NULL) {
        (void)dk_zb_reader_release_many(self->core, batch, k);
    }
    PyMem_Free(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyObject_TypeCheck(items[i], Frame_type)
                          ? Py_NewRef(Py_None)
                          : reader_release_frame(self, items[i]);
        if (r == NULL) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *make_region(EndObject *owner, void *buf, Py_ssize_t len,
                             bool writable, PyObject **region);

static PyObject *
Reader_get_metadata(EndObject *self, PyObject *Py_UNUSED(unused))
{
    if (reader_check_open(self) < 0) {
        return NULL;
    }
    const void *data;
    uint64_t size;
    int rc = dk_zb_reader_metadata(self->core, &data, &size);
    if (rc == -ENODATA) {
        Py_RETURN_NONE;
    }
    return rc < 0 ? reader_error(self, rc)
                  : make_region(self, (void *)data, (Py_ssize_t)size, false,
                                NULL);
}

/* A Reader's _writer_alive(), a Writer's is_reader_connected(). */
static PyObject *
End_peer_alive(EndObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(end_open(self) &&
                           (self->reader
                                ? dk_zb_reader_writer_connected(self->core)
                                : dk_zb_writer_reader_connected(self->core)));
}

static int
wait_writer_fn(void *core, uint64_t deadline)
{
    return dk_zb_reader_wait_writer(core, deadline);
}

/* _wait_writer(timeout): True once a live writer is connected, False
 * after timeout seconds (None: no limit) or when closed. */
static PyObject *
Reader_wait_writer(EndObject *self, PyObject *timeout)
{
    uint64_t deadline;
    if (!end_open(self)) {
        Py_RETURN_FALSE;
    }
    if (dkpy_deadline_zerobuffer(timeout, &deadline) < 0) {
        return NULL;
    }
    int rc = end_wait(self, wait_writer_fn, self->core, deadline);
    end_maybe_destroy(self);
    return rc == DKPY_RAISED ? NULL : PyBool_FromLong(rc == 0);
}

static PyMethodDef Reader_methods[] = {
    {"read_frame", DKPY_METH_FAST(Reader_read_frame),
     "read_frame($self, /, timeout=5.0)\n--\n\nWait for the next frame "
     "(timeout in seconds, None = forever). None on timeout."},
    {"release_frame", DKPY_METH_FAST(Reader_release_frame),
     "release_frame($self, /, frame)\n--\n\nGive the frame's space back to "
     "the writer."},
    {"read_frames", DKPY_METH_KW(Reader_read_frames),
     "read_frames($self, /, max_frames, timeout=5.0)\n--\n\nWait for a "
     "frame as read_frame() does, then take every frame already there, up "
     "to max_frames: a list of frames, empty on timeout."},
    {"release_frames", (PyCFunction)Reader_release_frames, METH_O,
     "release_frames($self, frames, /)\n--\n\nRelease several frames "
     "at once (one credit of their space to the writer)."},
    {"get_metadata", (PyCFunction)Reader_get_metadata, METH_NOARGS,
     "get_metadata($self, /)\n--\n\nThe writer's metadata, "
     "zero-copy."},
    {"_writer_alive", (PyCFunction)End_peer_alive, METH_NOARGS,
     "_writer_alive($self, /)\n--\n\nWhether a live writer is attached."},
    {"_wait_writer", (PyCFunction)Reader_wait_writer, METH_O,
     "_wait_writer($self, timeout, /)\n--\n\n"
     "Wait for a live writer: True, or False after timeout seconds."},
    {"close", (PyCFunction)End_close, METH_NOARGS,
     "close($self, /)\n--\n\nRemove the buffer. Views still alive stay "
     "readable."},
    WITH_METHODS(End_close, "close"),
};

static PyGetSetDef Reader_getset[] = {
    COUNTER("frames_read", dk_zb_reader_frames, "frames read"),
    COUNTER("bytes_read", dk_zb_reader_bytes, "payload bytes read"),
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(static, Reader_spec, "dispatchkit.zerobuffer.ZbReader", EndObject,
          Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, {Py_tp_new, Reader_new},
          {Py_tp_dealloc, End_dealloc}, {Py_tp_traverse, End_traverse},
          {Py_tp_clear, End_clear}, {Py_tp_methods, Reader_methods},
          {Py_tp_getset, Reader_getset}, {Py_tp_members, Reader_members},
          {Py_tp_doc, "ZbReader(name, config=None, mode=0o600)\n--\n\n"
                      "Creates the buffer NAME and reads frames from it."});

/* ---- Frame ------------------------------------------------------------ */

static void
Frame_dealloc(FrameObject *self)
{
    frame_release(self);
    Py_CLEAR(self->reader);
    dkpy_free((PyObject *)self);
}

static int
frame_usable(FrameObject *self)
{
    if (self->released) {
        PyErr_SetString(PyExc_ValueError, "the frame has been released");
        return -1;
    }
    return reader_check_open(self->reader);
}

static int
Frame_getbuffer(FrameObject *self, Py_buffer *view, int flags)
{
    if (frame_usable(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->frame.data,
                          (Py_ssize_t)self->frame.size, 1, flags) < 0) {
        return -1;
    }
    self->reader->exports++;
    return 0;
}

static void
Frame_releasebuffer(FrameObject *self, Py_buffer *Py_UNUSED(view))
{
    self->reader->exports--;
    end_maybe_destroy(self->reader);
}

static PyObject *
Frame_get_data(FrameObject *self, void *Py_UNUSED(c))
{
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *
Frame_get_valid(FrameObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(!self->released && !self->reader->closed &&
                           self->frame.size > 0);
}

static Py_ssize_t
Frame_len(FrameObject *self)
{
    return (Py_ssize_t)self->frame.size;
}

static PyObject *
Frame_bytes(FrameObject *self, PyObject *Py_UNUSED(unused))
{
    if (frame_usable(self) < 0) {
        return NULL;
    }
    Py_ssize_t n = (Py_ssize_t)self->frame.size;
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (b != NULL) {
        end_copy(self->reader, PyBytes_AS_STRING(b), self->frame.data,
                 (size_t)n, NULL);
        end_maybe_destroy(self->reader);
    }
    return b;
}

static PyObject *
Frame_repr(FrameObject *self)
{
    return PyUnicode_FromFormat("Frame(sequence=%llu, size=%llu%s)",
                                (unsigned long long)self->frame.sequence,
                                (unsigned long long)self->frame.size,
                                self->released ? ", released" : "");
}

static PyMethodDef Frame_methods[] = {
    {"dispose", (PyCFunction)Frame_dispose, METH_NOARGS,
     "dispose($self, /)\n--\n\nRelease the frame's space to the writer "
     "(idempotent)."},
    {"__bytes__", (PyCFunction)Frame_bytes, METH_NOARGS,
     "__bytes__($self, /)\n--\n\nA copy of the frame's data."},
    WITH_METHODS(Frame_dispose, "dispose"),
};

static PyGetSetDef Frame_getset[] = {
    {"data", (getter)Frame_get_data, NULL,
     "read-only memoryview of the frame in shared memory (zero-copy)", NULL},
    {"is_valid", (getter)Frame_get_valid, NULL,
     "True until the frame is released", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* The frame's numbers (uint64_t, read as unsigned long long). */
_Static_assert(sizeof(uint64_t) == sizeof(unsigned long long), "T_ULONGLONG");
static PyMemberDef Frame_members[] = {
    {"size", T_ULONGLONG, offsetof(FrameObject, frame.size), READONLY,
     "payload bytes"},
    {"sequence", T_ULONGLONG, offsetof(FrameObject, frame.sequence), READONLY,
     "sequence number"},
    {NULL, 0, 0, 0, NULL},
};

DKPY_TYPE(static, Frame_spec, "dispatchkit.zerobuffer.Frame", FrameObject, 0,
          {Py_tp_dealloc, Frame_dealloc}, {Py_tp_methods, Frame_methods},
          {Py_tp_getset, Frame_getset}, {Py_tp_members, Frame_members},
          {Py_tp_repr, Frame_repr}, {Py_sq_length, Frame_len},
          {Py_bf_getbuffer, Frame_getbuffer},
          {Py_bf_releasebuffer, Frame_releasebuffer},
          {Py_tp_doc, "A frame read from a buffer: a zero-copy view of "
                      "shared memory, released by dispose(), a with block, "
                      "Reader.release_frame() or garbage collection."});

/* ---- Writer ----------------------------------------------------------- */

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", NULL};
    PyObject *name;
    const char *cname;
    EndObject *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:Writer", kwlist,
                                     &name) ||
        (self = end_alloc(type, name, false, &cname)) == NULL) {
        return NULL;
    }
    self->write_timeout = 5.0;
    self->gate = PyThread_allocate_lock();
    if (self->gate == NULL) {
        return end_failed(self, open_errors, -ENOMEM, NULL);
    }
    (void)PyThread_acquire_lock(self->gate, WAIT_LOCK); /* kept shut */
    int rc;
    dk_zb_writer_t *core = NULL;
    dk_zb_error_t err = {0};
    Py_BEGIN_ALLOW_THREADS
    rc = dk_zb_writer_open(cname, &core, &err);
    Py_END_ALLOW_THREADS
    self->core = core;
    return rc < 0 ? end_failed(self, open_errors, rc,
                               rc == -EPROTO ? err.message : cname)
                  : (PyObject *)self;
}

/* A slice of a wait at the writer's gate (dkpy_wait_sliced): 0 once
 * through, -ETIMEDOUT at the slice's end. */
static int
gate_fn(void *gate, uint64_t deadline)
{
    uint64_t now = deadline == DK_TIME_FOREVER ? 0 : dk_now();
    PY_TIMEOUT_T us = deadline == DK_TIME_FOREVER ? -1
                      : deadline > now
                          ? (PY_TIMEOUT_T)((deadline - now) / 1000)
                          : 0;
    return PyThread_acquire_lock_timed(gate, us, 0) == PY_LOCK_ACQUIRED
               ? 0
               : -ETIMEDOUT;
}

/* Take the writer: at once if no thread is in a call, else through the
 * gate (a spare pass, left by a waiter that gave up, only makes the next
 * waiter look again). 0, or -1 with a signal handler's exception. */
static int
writer_lock(EndObject *self)
{
    int rc = 0;
    if (self->owned) {
        self->gate_waiters++;
        while (self->owned && rc != DKPY_RAISED) {
            rc = end_wait(self, gate_fn, self->gate, DK_TIME_FOREVER);
        }
        self->gate_waiters--;
    }
    if (rc == DKPY_RAISED) {
        return -1;
    }
    self->owned = true;
    return 0;
}

static void
writer_unlock(EndObject *self)
{
    self->owned = false;
    if (self->gate_waiters > 0) {
        PyThread_release_lock(self->gate); /* lets one waiter through */
    }
    end_maybe_destroy(self);
}

/* The exception for a write's rc, first from `first` if not NULL. */
static PyObject *
writer_error(EndObject *self, const dkpy_errno_map *first, int rc)
{
    return zb_raise(first, write_errors, rc,
                    self->core ? dk_zb_writer_error(self->core)->message
                               : "corrupted segment");
}

struct acquire_wait {
    dk_zb_writer_t *core;
    uint64_t size;
    void **buf;
    uint64_t *seq;
};

static int
acquire_sleep(void *arg, uint64_t deadline)
{
    struct acquire_wait *w = arg;
    return dk__zb_writer_acquire_ex(w->core, w->size, deadline, DK__ZB_SLEEP,
                                    w->buf, w->seq);
}

/* Reserve a frame, waiting for space as write_timeout allows. Lock held.
 * Tries, watches, then sleeps (the file's opening comment). */
static int
writer_acquire(EndObject *self, uint64_t size, void **buf, uint64_t *seq)
{
    if (!end_open(self)) {
        return -EBADF;
    }
    int rc = dk__zb_writer_acquire_ex(self->core, size, 0, 0, buf, seq);
    if (rc != -EAGAIN) {
        return rc;
    }
    uint64_t deadline = dk_now() + (uint64_t)(self->write_timeout * 1e9);
    rc = dk__zb_writer_acquire_ex(self->core, size, deadline, DK__ZB_SPIN, buf,
                                  seq);
    if (rc == -EAGAIN) {
        struct acquire_wait w = {self->core, size, buf, seq};
        rc = end_wait(self, acquire_sleep, &w, deadline);
    }
    return rc;
}

/* Copy one frame in at the reservation of writer_acquire (rc: its
 * result) and commit it, published now or with the next publish. */
static int
writer_put(EndObject *self, int rc, void *buf, const Py_buffer *view,
           bool publish)
{
    if (rc < 0) {
        return rc;
    }
    end_copy(self, buf, view->buf, (size_t)view->len, self->core);
    rc = dk__zb_writer_commit_ex(self->core, publish);
    return rc == -EINVAL ? -EBADF : rc; /* closed by another thread */
}

/* The one buffer argument of write_frame() and set_metadata(), the
 * writer then locked: 0, or -1 with an exception set (nothing held). */
static int
writer_buffer_arg(EndObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, const char *fname, Py_buffer *view)
{
    PyObject *data;
    if (one_arg(args, nargs, kwnames, fname, "data", false, &data) < 0 ||
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (writer_lock(self) < 0) {
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *
Writer_write_frame(EndObject *self, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    Py_buffer view;
    void *buf;
    uint64_t seq;
    if (writer_buffer_arg(self, args, nargs, kwnames, "write_frame", &view) <
        0) {
        return NULL;
    }
    int rc = writer_acquire(self, (uint64_t)view.len, &buf, &seq);
    rc = writer_put(self, rc, buf, &view, true);
    PyBuffer_Release(&view);
    PyObject *res = rc == 0 ? PyLong_FromUnsignedLongLong(seq)
                            : writer_error(self, NULL, rc);
    writer_unlock(self);
    return res;
}

/* write_frames(frames): copy several frames in, published together.
 * Every item is checked first (a buffer, not empty, not too large), so
 * bad input writes nothing. A wait for space publishes the frames
 * before it, so a batch larger than the ring goes through as the reader
 * frees space; each wait is bounded by write_timeout as write_frame's.
 * Returns the number of frames written. */
static PyObject *
Writer_write_frames(EndObject *self, PyObject *frames)
{
    PyObject *seq = PySequence_Fast(
        frames, "write_frames() takes an iterable of bytes-like objects");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_buffer *views = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *views);
    if (views == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t got = 0;
    PyObject *res = NULL;
    uint64_t max =
        end_open(self) ? dk_zb_writer_max_frame(self->core) : UINT64_MAX;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        if (views[got].len == 0) {
            PyErr_Format(exc_types[EXC_INVALID_SIZE],
                         "frame %zd is empty: frames need at least 1 byte",
                         got++);
            goto done;
        }
        if ((uint64_t)views[got].len > max) {
            PyErr_Format(exc_types[EXC_TOO_LARGE],
                         "frame %zd has %zd bytes; this buffer takes at "
                         "most %llu",
                         got, views[got].len, (unsigned long long)max);
            got++;
            goto done;
        }
    }
    if (writer_lock(self) < 0) {
        goto done;
    }
    int rc = 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        void *buf;
        uint64_t sq;
        rc = writer_acquire(self, (uint64_t)views[i].len, &buf, &sq);
        rc = writer_put(self, rc, buf, &views[i], false);
    }
    if (self->core != NULL) {
        dk__zb_writer_publish(self->core);
    }
    res = rc == 0 ? PyLong_FromSsize_t(n) : writer_error(self, NULL, rc);
    writer_unlock(self);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    Py_DECREF(seq);
    return res;
}

/* Release the memoryview `mv` handed out: true if it is released (or
 * there was none). */
static bool
release_view(PyObject *mv)
{
    static PyObject *release_str;
    PyObject *release = mv ? dkpy_getattr(mv, &release_str, "release") : NULL;
    PyObject *r = release ? PyObject_CallNoArgs(release) : NULL;
    Py_XDECREF(release);
    Py_XDECREF(r);
    return mv == NULL || r != NULL;
}

/* Revoke the view of the pending reservation before it is committed or
 * abandoned: release the memoryview handed out, then check that no view
 * derived from it (a slice, which shares its managed buffer; a NumPy
 * array, which holds an export of it) is alive, since such a view would
 * write into a published frame or into the next reservation: silent
 * corruption. 0, or -1 with BufferError set (nothing committed or
 * abandoned; a released main view stays released). */
static int
revoke_pending(EndObject *self, const char *what)
{
    if (release_view(self->pending_view)) {
        Py_CLEAR(self->pending_view);
    } else if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
        return -1;
    } else {
        PyErr_Clear();
    }
    RegionObject *region = (RegionObject *)self->pending_region;
    if (self->pending_view != NULL ||
        (region != NULL && region->exports > 0)) {
        PyErr_Format(PyExc_BufferError,
                     "%s(): a view derived from the frame buffer (a slice, "
                     "an array) is still alive; release it (del or "
                     "memoryview.release()) first, so that it cannot "
                     "write into a published frame",
                     what);
        return -1;
    }
    Py_CLEAR(self->pending_region);
    return 0;
}

/* Revoke the view handed out by get_frame_buffer(), if nothing derived
 * from it still holds it (then it stays: the memory is still mapped).
 * For close(), which cannot refuse. */
static void
drop_pending_view(EndObject *self)
{
    Py_CLEAR(self->pending_region);
    PyObject *mv = self->pending_view;
    self->pending_view = NULL;
    /* Someone else holding it: revoke it, so writing through it after
     * commit fails instead of changing a published frame. */
    if (mv != NULL && Py_REFCNT(mv) > 1 && !release_view(mv)) {
        PyErr_Clear();
    }
    Py_XDECREF(mv);
}

static PyObject *
writer_acquire_view(EndObject *self, PyObject *arg, bool with_seq)
{
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size <= 0) {
        return zb_raise(NULL, write_errors, -EINVAL, NULL);
    }
    if (writer_lock(self) < 0) {
        return NULL;
    }
    /* A reservation not committed yet is abandoned for the new one, as
     * zerobuffer-ipc does; its view is revoked first, and if a view
     * derived from it is still alive the new reservation (which may
     * start at the same ring bytes) is refused instead. */
    if (self->pending_region != NULL && end_open(self)) {
        if (revoke_pending(self, "get_frame_buffer") < 0) {
            writer_unlock(self);
            return NULL;
        }
        int cancelled = dk_zb_writer_cancel(self->core); /* reserved */
        (void)cancelled;
    }
    void *buf;
    uint64_t seq;
    PyObject *res = NULL;
    int rc = writer_acquire(self, (uint64_t)size, &buf, &seq);
    if (rc == 0) {
        PyObject *region = NULL;
        PyObject *mv = make_region(self, buf, size, true, &region);
        if (mv == NULL) {
            int cancelled = dk_zb_writer_cancel(self->core); /* reserved */
            (void)cancelled;
        } else {
            Py_XSETREF(self->pending_view, Py_NewRef(mv));
            Py_XSETREF(self->pending_region, region);
            res = with_seq ? Py_BuildValue("(KN)", (unsigned long long)seq, mv)
                           : mv;
        }
    } else {
        writer_error(self, NULL, rc);
    }
    writer_unlock(self);
    return res;
}

static PyObject *
Writer_acquire(EndObject *self, PyObject *arg)
{
    return writer_acquire_view(self, arg, true);
}

static PyObject *
Writer_get_frame_buffer(EndObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *size;
    return one_arg(args, nargs, kwnames, "get_frame_buffer", "size", false,
                   &size) < 0
               ? NULL
               : writer_acquire_view(self, size, false);
}

static PyObject *
Writer_commit_frame(EndObject *self, PyObject *Py_UNUSED(unused))
{
    if (writer_lock(self) < 0) {
        return NULL;
    }
    if (self->pending_region != NULL && end_open(self) &&
        revoke_pending(self, "commit_frame") < 0) {
        writer_unlock(self);
        return NULL;
    }
    int rc = end_open(self) ? dk_zb_writer_commit(self->core) : -EBADF;
    drop_pending_view(self);
    PyObject *res =
        rc == 0 ? Py_NewRef(Py_None) : writer_error(self, commit_errors, rc);
    writer_unlock(self);
    return res;
}

static PyObject *
Writer_set_metadata(EndObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    Py_buffer view;
    if (writer_buffer_arg(self, args, nargs, kwnames, "set_metadata", &view) <
        0) {
        return NULL;
    }
    int rc = end_open(self) ? dk_zb_writer_set_metadata(self->core, view.buf,
                                                        (uint64_t)view.len)
                            : -EBADF;
    PyBuffer_Release(&view);
    PyObject *res =
        rc == 0 ? Py_NewRef(Py_None) : writer_error(self, metadata_errors, rc);
    writer_unlock(self);
    return res;
}

static PyMethodDef Writer_methods[] = {
    {"write_frame", DKPY_METH_FAST(Writer_write_frame),
     "write_frame($self, /, data)\n--\n\nCopy one frame into the buffer; "
     "returns its sequence number."},
    {"write_frames", (PyCFunction)Writer_write_frames, METH_O,
     "write_frames($self, frames, /)\n--\n\nCopy several frames in, "
     "published together; returns how many. Every frame is checked "
     "before any is written."},
    {"_acquire", (PyCFunction)Writer_acquire, METH_O,
     "_acquire($self, size, /)\n--\n\nget_frame_buffer(size) that also "
     "returns the sequence: (sequence, memoryview)."},
    {"get_frame_buffer", DKPY_METH_FAST(Writer_get_frame_buffer),
     "get_frame_buffer($self, /, size)\n--\n\nA writable view of SIZE "
     "bytes in shared memory for the next frame; fill it, then call "
     "commit_frame()."},
    {"commit_frame", (PyCFunction)Writer_commit_frame, METH_NOARGS,
     "commit_frame($self, /)\n--\n\nPublish the frame from "
     "get_frame_buffer(); the "
     "view handed out is released."},
    {"set_metadata", DKPY_METH_FAST(Writer_set_metadata),
     "set_metadata($self, /, data)\n--\n\nStore the metadata (once)."},
    {"is_reader_connected", (PyCFunction)End_peer_alive, METH_NOARGS,
     "is_reader_connected($self, /)\n--\n\nWhether the reader's process "
     "is alive and attached."},
    {"close", (PyCFunction)End_close, METH_NOARGS,
     "close($self, /)\n--\n\nDisconnect."},
    WITH_METHODS(End_close, "close"),
};

static PyGetSetDef Writer_getset[] = {
    COUNTER("frames_written", dk_zb_writer_frames, "frames written"),
    COUNTER("bytes_written", dk_zb_writer_bytes, "payload bytes written"),
    COUNTER("max_frame_size", dk_zb_writer_max_frame,
            "largest frame this buffer takes"),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Writer_members[] = {
    /* Writer.write_timeout (core.py) checks it: 0 < seconds <= 1e9. */
    {"_write_timeout_s", T_DOUBLE, offsetof(EndObject, write_timeout), 0,
     NULL},
    END_MEMBERS,
};

DKPY_TYPE(static, Writer_spec, "dispatchkit.zerobuffer.ZbWriter", EndObject,
          Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, {Py_tp_new, Writer_new},
          {Py_tp_dealloc, End_dealloc}, {Py_tp_traverse, End_traverse},
          {Py_tp_clear, End_clear}, {Py_tp_methods, Writer_methods},
          {Py_tp_getset, Writer_getset}, {Py_tp_members, Writer_members},
          {Py_tp_doc, "ZbWriter(name)\n--\n\nConnects to the buffer NAME "
                      "and writes frames into it."});

/* ---- Region (metadata and get_frame_buffer views) --------------------- */

/* A memoryview of [buf, buf + len) kept alive by owner; *region (if not
 * NULL) gets a new reference to its exporter. */
static PyObject *
make_region(EndObject *owner, void *buf, Py_ssize_t len, bool writable,
            PyObject **region)
{
    RegionObject *r = PyObject_New(RegionObject, Region_type);
    if (r == NULL) {
        return NULL;
    }
    r->owner = (EndObject *)Py_NewRef(owner);
    r->buf = buf;
    r->len = len;
    r->exports = 0;
    r->writable = writable;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)r);
    if (mv != NULL && region != NULL) {
        *region = Py_NewRef((PyObject *)r);
    }
    Py_DECREF(r);
    return mv;
}

static int
Region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len,
                          !self->writable, flags) < 0) {
        return -1;
    }
    self->exports++;
    self->owner->exports++;
    return 0;
}

static void
Region_releasebuffer(RegionObject *self, Py_buffer *Py_UNUSED(view))
{
    self->exports--;
    self->owner->exports--;
    end_maybe_destroy(self->owner);
}

static void
Region_dealloc(RegionObject *self)
{
    Py_CLEAR(self->owner);
    dkpy_free((PyObject *)self);
}

DKPY_TYPE(static, Region_spec, "dispatchkit.zerobuffer._Region", RegionObject,
          0, {Py_tp_dealloc, Region_dealloc},
          {Py_bf_getbuffer, Region_getbuffer},
          {Py_bf_releasebuffer, Region_releasebuffer});

/* ---- module ----------------------------------------------------------- */

static PyMethodDef zb_functions[] = {
    {"_zb_set_exceptions", zb_set_exceptions, METH_O,
     "_zb_set_exceptions($module, module, /)\n--\n\nRegister "
     "dispatchkit.zerobuffer's exception classes."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_zerobuffer_exec(PyObject *m)
{
    for (int i = 0; i < EXC_COUNT; i++) {
        if (exc_types[i] == NULL) {
            exc_types[i] = Py_NewRef(i == EXC_NAME ? PyExc_ValueError
                                                   : PyExc_RuntimeError);
        }
    }
    Reader_type = dkpy_add_type(m, &Reader_spec, NULL, "");
    Writer_type =
        Reader_type ? dkpy_add_type(m, &Writer_spec, NULL, "") : NULL;
    Frame_type =
        Writer_type ? dkpy_add_type(m, &Frame_spec, NULL, "Zb") : NULL;
    Region_type =
        Frame_type ? (PyTypeObject *)dkpy_type_from_spec(m, &Region_spec, NULL)
                   : NULL;
    return Region_type == NULL ? -1 : PyModule_AddFunctions(m, zb_functions);
}
