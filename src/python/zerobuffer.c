/*
 * Binding of the ZeroBuffer core for dispatchkit.zerobuffer: the types
 * ZbReader, ZbWriter (subclassed in Python as Reader and Writer), Frame,
 * and the exporters behind metadata and get_frame_buffer() views.
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
 * space is there), then wait with the GIL released in slices of at most
 * DKPY_SIGNAL_SLICE_NS, running PyErr_CheckSignals() between slices, so Ctrl-C
 * works.
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

/* The exception classes, defined in dispatchkit/zerobuffer/exceptions.py
 * and registered by _zb_set_exceptions() when the package is imported. */
enum {
    EXC_BASE,
    EXC_WRITER_DEAD,
    EXC_READER_DEAD,
    EXC_WRITER_CONNECTED,
    EXC_READER_CONNECTED,
    EXC_BUFFER_FULL,
    EXC_TOO_LARGE,
    EXC_INVALID_SIZE,
    EXC_SEQUENCE,
    EXC_METADATA_WRITTEN,
    EXC_NAME,
    EXC_COUNT
};

static const char *const exc_names[EXC_COUNT] = {
    "ZeroBufferException",
    "WriterDeadException",
    "ReaderDeadException",
    "WriterAlreadyConnectedException",
    "ReaderAlreadyConnectedException",
    "BufferFullException",
    "FrameTooLargeException",
    "InvalidFrameSizeException",
    "SequenceError",
    "MetadataAlreadyWrittenException",
    "InvalidBufferNameException",
};

static PyObject *exc_types[EXC_COUNT];

/* Raise exception `which`, with a message or its default one. */
static PyObject *
zb_raise(int which, const char *msg)
{
    PyObject *t = exc_types[which] ? exc_types[which] : PyExc_RuntimeError;
    if (msg == NULL) {
        PyErr_SetNone(t);
    } else {
        PyErr_SetString(t, msg);
    }
    return NULL;
}

static PyObject *
zb_raise_sequence(uint64_t expected, uint64_t got)
{
    PyObject *t = exc_types[EXC_SEQUENCE];
    if (t == NULL) {
        return zb_raise(EXC_BASE, "sequence error");
    }
    PyObject *e = PyObject_CallFunction(t, "KK", (unsigned long long)expected,
                                        (unsigned long long)got);
    if (e != NULL) {
        PyErr_SetObject(t, e);
        Py_DECREF(e);
    }
    return NULL;
}

static PyObject *
zb_raise_name(PyObject *name, int rc)
{
    PyErr_Format(exc_types[EXC_NAME] ? exc_types[EXC_NAME] : PyExc_ValueError,
                 "invalid buffer name %R: %s", name,
                 rc == -ENAMETOOLONG
                     ? "longer than 240 bytes"
                     : "must be non-empty, without '/', '..', spaces or "
                       "control characters");
    return NULL;
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
        zb_raise_name(name, rc);
        return NULL;
    }
    return cname;
}

static PyObject *
zb_set_exceptions(PyObject *mod, PyObject *src)
{
    (void)mod;
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

/* Deadline from a timeout in seconds (None: forever). */
/* The one argument of a method that takes it by position or by name, as
 * the peers' Python methods do (writer.get_frame_buffer(size=4000) is in
 * zerobuffer-ipc's README). Borrowed; NULL with TypeError otherwise. */
static PyObject *
one_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
        const char *fname, const char *kw)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw != 1) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes exactly one argument (%zd given)", fname,
                     nargs + nkw);
        return NULL;
    }
    if (nkw == 1 && PyUnicode_CompareWithASCIIString(
                        PyTuple_GET_ITEM(kwnames, 0), kw) != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s() got an unexpected keyword argument '%U'", fname,
                     PyTuple_GET_ITEM(kwnames, 0));
        return NULL;
    }
    return args[0];
}

/* ---- Reader ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_zb_reader_t *core;
    PyObject *name;
    Py_ssize_t exports; /* live buffer exports of frames and metadata */
    Py_ssize_t busy;    /* calls running with the GIL released */
    bool closed;
    PyObject *weakrefs;
    PyObject *dict;
} ReaderObject;

typedef struct {
    PyObject_HEAD
    ReaderObject *reader;
    dk_zb_frame_t frame;
    bool released;
} FrameObject;

/* An exporter of read-only or writable bytes inside a segment. */
typedef struct {
    PyObject_HEAD
    PyObject *owner; /* ReaderObject or WriterObject */
    void *buf;
    Py_ssize_t len;
    Py_ssize_t exports; /* buffers exported by this region (GIL held) */
    bool writable;
} RegionObject;

static PyTypeObject *Reader_type;
static PyTypeObject *Frame_type;
static PyTypeObject *Region_type;

static void
reader_maybe_destroy(ReaderObject *self)
{
    if (self->closed && self->exports == 0 && self->busy == 0 &&
        self->core != NULL) {
        dk_zb_reader_destroy(self->core);
        self->core = NULL;
    }
}

static PyObject *
Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "config", "mode", NULL};
    PyObject *name, *config = Py_None;
    unsigned int mode = DK_ZB_MODE_PRIVATE;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|OI:Reader", kwlist,
                                     &name, &config, &mode)) {
        return NULL;
    }
    unsigned long long msize = 1024, psize = 1024ull * 1024;
    if (config != Py_None) {
        static PyObject *metadata_size_str, *payload_size_str;
        PyObject *m =
            dkpy_getattr(config, &metadata_size_str, "metadata_size");
        PyObject *p =
            m ? dkpy_getattr(config, &payload_size_str, "payload_size") : NULL;
        if (p == NULL) {
            Py_XDECREF(m);
            return NULL;
        }
        long long mv = dkpy_index_as_long_long(m),
                  pv = dkpy_index_as_long_long(p);
        Py_DECREF(m);
        Py_DECREF(p);
        if ((mv == -1 || pv == -1) && PyErr_Occurred()) {
            return NULL;
        }
        if (mv < 0 || pv <= 0 || (unsigned long long)mv > DK_ZB_SIZE_MAX ||
            (unsigned long long)pv > DK_ZB_SIZE_MAX) {
            PyErr_Format(PyExc_ValueError,
                         "need 0 <= metadata_size and 0 < payload_size, "
                         "both <= %llu",
                         (unsigned long long)DK_ZB_SIZE_MAX);
            return NULL;
        }
        msize = (unsigned long long)mv;
        psize = (unsigned long long)pv;
    }
    if (mode > 0777) {
        PyErr_SetString(PyExc_ValueError, "mode must be within 0o777");
        return NULL;
    }
    const char *cname = zb_name_utf8(name);
    if (cname == NULL) {
        return NULL;
    }
    int rc;
    ReaderObject *self = (ReaderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->name = Py_NewRef(name);
    Py_BEGIN_ALLOW_THREADS
    rc = dk_zb_reader_create(cname, msize, psize, mode, &self->core);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        self->closed = true;
        Py_DECREF(self);
        if (rc == -EEXIST) {
            return zb_raise(EXC_READER_CONNECTED, NULL);
        }
        if (rc == -EINVAL) {
            PyErr_SetString(PyExc_ValueError, "invalid buffer sizes");
            return NULL;
        }
        if (rc == -EPERM) {
            PyErr_Format(PyExc_PermissionError,
                         "refusing the lock file %s/%s.lock: the directory "
                         "must be owned by root or by this user and be "
                         "sticky if others may write it, and the lock file "
                         "a regular file of this user (not a symlink)",
                         "/tmp/zerobuffer", cname);
            return NULL;
        }
        return dkpy_raise_errno(rc);
    }
    return (PyObject *)self;
}

static int
Reader_traverse(ReaderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
Reader_clear(ReaderObject *self)
{
    Py_CLEAR(self->dict);
    return 0;
}

static void
Reader_dealloc(ReaderObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->core != NULL) {
        dk_zb_reader_destroy(self->core);
        self->core = NULL;
    }
    Py_CLEAR(self->name);
    Reader_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int
reader_check_open(ReaderObject *self)
{
    if (self->closed || self->core == NULL) {
        zb_raise(EXC_BASE, "Reader is closed");
        return -1;
    }
    return 0;
}

static const dkpy_errno_map reader_errors[] = {
    {EPIPE, &exc_types[EXC_WRITER_DEAD], NULL},
    {EBADF, &exc_types[EXC_BASE], "Reader is closed"},
    {0, NULL, NULL},
};

static PyObject *
reader_error(ReaderObject *self, int rc)
{
    const dk_zb_error_t *err =
        self->core ? dk_zb_reader_error(self->core) : NULL;
    if (err == NULL && (rc == -EILSEQ || rc == -EPROTO)) {
        return zb_raise(EXC_BASE, "corrupted segment");
    }
    if (rc == -EILSEQ) {
        return zb_raise_sequence(err->expected, err->got);
    }
    if (rc == -EPROTO) {
        return zb_raise(EXC_BASE, err->message);
    }
    return dkpy_raise_mapped(reader_errors, rc) ? NULL : dkpy_raise_errno(rc);
}

static PyObject *
make_frame(ReaderObject *self, const dk_zb_frame_t *f)
{
    FrameObject *fo = PyObject_New(FrameObject, Frame_type);
    if (fo == NULL) {
        int released = dk_zb_reader_release(self->core, f); /* just read */
        (void)released;
        return NULL;
    }
    fo->reader = (ReaderObject *)Py_NewRef(self);
    fo->frame = *f;
    fo->released = false;
    return (PyObject *)fo;
}

/* A timeout argument, checked now; its deadline is computed only when a
 * wait is needed (no clock read when a frame is there). */
typedef struct {
    PyObject *obj; /* NULL: the default 5 s; None: forever */
    double secs;
} zb_timeout;

static int
timeout_parse(PyObject *obj, zb_timeout *t)
{
    t->obj = obj;
    t->secs = 5.0;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    t->secs = PyFloat_AsDouble(obj);
    if (t->secs == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(t->secs)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number");
        return -1;
    }
    return 0;
}

static uint64_t
timeout_deadline(const zb_timeout *t)
{
    if (t->obj == Py_None || t->secs > 1e9) {
        return DK_TIME_FOREVER;
    }
    return t->secs <= 0 ? 0 : dk_now() + (uint64_t)(t->secs * 1e9);
}

/* The next frame into *f: 0, -ETIMEDOUT, DKPY_RAISED-like -EINTR with
 * an exception set, or another error of the core. Tries, then watches
 * with the GIL held (a frame due within microseconds costs no GIL
 * hand-off), then sleeps with the GIL released, in slices that let
 * signal handlers run. */
static int
reader_next(ReaderObject *self, const zb_timeout *t, dk_zb_frame_t *f)
{
    int rc = dk__zb_reader_read_ex(self->core, 0, 0, f);
    if (rc != -EAGAIN) {
        return rc;
    }
    uint64_t deadline = timeout_deadline(t);
    if (deadline == 0) {
        return dk_zb_reader_read(self->core, 0, f);
    }
    rc = dk__zb_reader_read_ex(self->core, deadline, DK__ZB_SPIN, f);
    while (rc == -EAGAIN) {
        uint64_t end = dkpy_slice_end(deadline);
        dk_zb_reader_t *core = self->core;
        self->busy++;
        Py_BEGIN_ALLOW_THREADS
        rc = dk__zb_reader_read_ex(core, end, DK__ZB_SLEEP, f);
        Py_END_ALLOW_THREADS
        self->busy--;
        if (rc == -ETIMEDOUT || rc == -EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -EINTR;
            }
            if (self->closed) {
                return -EBADF;
            }
            if (rc == -ETIMEDOUT && dk_now() >= deadline) {
                return -ETIMEDOUT;
            }
            rc = -EAGAIN;
        }
    }
    if (rc == 0 && self->closed) {
        /* close() ran while we slept: the frame is not handed out. */
        rc = -EBADF;
    }
    return rc;
}

static PyObject *
Reader_read_frame(ReaderObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    PyObject *timeout = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError,
                     "read_frame() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return NULL;
    }
    if (nargs + nkw == 1) {
        timeout = one_arg(args, nargs, kwnames, "read_frame", "timeout");
        if (timeout == NULL) {
            return NULL;
        }
    }
    zb_timeout t;
    if (timeout_parse(timeout, &t) < 0 || reader_check_open(self) < 0) {
        return NULL;
    }
    dk_zb_frame_t f;
    int rc = reader_next(self, &t, &f);
    if (rc == 0) {
        return make_frame(self, &f);
    }
    if (rc == -EINTR && PyErr_Occurred()) {
        reader_maybe_destroy(self);
        return NULL;
    }
    if (rc == -ETIMEDOUT) {
        reader_maybe_destroy(self);
        Py_RETURN_NONE;
    }
    PyObject *res = reader_error(self, rc);
    reader_maybe_destroy(self);
    return res;
}

/* read_frames(max_frames, timeout=5.0): wait for a frame as read_frame
 * does, then take every frame already there, up to max_frames, with no
 * further wait. A list, empty on timeout. An error after the first frame
 * ends the batch; nothing of it was consumed, so the next call reports
 * it. */
static PyObject *
Reader_read_frames(ReaderObject *self, PyObject *args, PyObject *kwargs)
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
    zb_timeout t;
    if (timeout_parse(timeout, &t) < 0 || reader_check_open(self) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    dk_zb_frame_t f;
    int rc = reader_next(self, &t, &f);
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
    if (PyList_GET_SIZE(list) > 0 || rc == -ETIMEDOUT) {
        reader_maybe_destroy(self);
        return list;
    }
    Py_DECREF(list);
    if (rc == -EINTR && PyErr_Occurred()) {
        reader_maybe_destroy(self);
        return NULL;
    }
    PyObject *res = reader_error(self, rc);
    reader_maybe_destroy(self);
    return res;
}

static PyObject *
Reader_release_frame(ReaderObject *self, PyObject *frame)
{
    if (!PyObject_TypeCheck(frame, Frame_type)) {
        /* Duck-typed frames (a DuplexResponse's, say) have dispose(). */
        static PyObject *dispose_str;
        PyObject *dispose = dkpy_getattr(frame, &dispose_str, "dispose");
        PyObject *r = dispose ? PyObject_CallNoArgs(dispose) : NULL;
        Py_XDECREF(dispose);
        return r;
    }
    FrameObject *fo = (FrameObject *)frame;
    if (fo->reader != self) {
        PyErr_SetString(PyExc_ValueError, "frame belongs to another reader");
        return NULL;
    }
    if (!fo->released) {
        fo->released = true;
        if (self->core != NULL) {
            /* `released` makes this the frame's one release. */
            int rc = dk_zb_reader_release(self->core, &fo->frame);
            (void)rc;
        }
    }
    Py_RETURN_NONE;
}

/* A memoryview of [buf, buf + len) kept alive by owner; *region (if not
 * NULL) gets a new reference to its exporter. */
static PyObject *
make_region_ex(PyObject *owner, void *buf, Py_ssize_t len, bool writable,
               PyObject **region)
{
    RegionObject *r = PyObject_New(RegionObject, Region_type);
    if (r == NULL) {
        return NULL;
    }
    r->owner = Py_NewRef(owner);
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

static PyObject *
make_region(PyObject *owner, void *buf, Py_ssize_t len, bool writable)
{
    return make_region_ex(owner, buf, len, writable, NULL);
}

static PyObject *
Reader_get_metadata(ReaderObject *self, PyObject *unused)
{
    (void)unused;
    if (reader_check_open(self) < 0) {
        return NULL;
    }
    const void *data;
    uint64_t size;
    int rc = dk_zb_reader_metadata(self->core, &data, &size);
    if (rc == -ENODATA) {
        Py_RETURN_NONE;
    }
    if (rc < 0) {
        return reader_error(self, rc);
    }
    return make_region((PyObject *)self, (void *)data, (Py_ssize_t)size,
                       false);
}

static PyObject *
Reader_writer_alive(ReaderObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || self->core == NULL) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(dk_zb_reader_writer_connected(self->core));
}

/* _wait_writer(timeout): True once a live writer is connected, False
 * after timeout seconds (None: no limit) or when closed. */
static PyObject *
Reader_wait_writer(ReaderObject *self, PyObject *timeout)
{
    if (self->closed || self->core == NULL) {
        Py_RETURN_FALSE;
    }
    uint64_t deadline;
    if (dkpy_deadline_zerobuffer(timeout, &deadline) < 0) {
        return NULL;
    }
    for (;;) {
        dk_zb_reader_t *core = self->core;
        int rc;
        self->busy++;
        Py_BEGIN_ALLOW_THREADS
        rc = dk_zb_reader_wait_writer(core, dkpy_slice_end(deadline));
        Py_END_ALLOW_THREADS
        self->busy--;
        if (rc == 0) {
            reader_maybe_destroy(self);
            Py_RETURN_TRUE;
        }
        if (rc == -EBADF || self->closed ||
            (rc == -ETIMEDOUT && !dkpy_wait_goes_on(deadline))) {
            reader_maybe_destroy(self);
            Py_RETURN_FALSE;
        }
        if (PyErr_CheckSignals() < 0) {
            reader_maybe_destroy(self);
            return NULL;
        }
    }
}

static PyObject *
Reader_close(ReaderObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->closed) {
        self->closed = true;
        if (self->core != NULL) {
            dk_zb_reader_close(self->core);
        }
        reader_maybe_destroy(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
Reader_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *
Reader_exit(ReaderObject *self, PyObject *args)
{
    (void)args;
    return Reader_close(self, NULL);
}

static PyObject *
Reader_get_name(ReaderObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->name);
}

static PyObject *
Reader_get_frames(ReaderObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_reader_frames(self->core) : 0);
}

static PyObject *
Reader_get_bytes(ReaderObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_reader_bytes(self->core) : 0);
}

static PyObject *
Reader_get_closed(ReaderObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->closed);
}

/* release_frames(frames): release several frames with one credit of
 * their space. Every item is checked first (a Frame of this reader, or
 * anything with dispose(), as release_frame takes); frames released
 * before are skipped. */
static PyObject *
Reader_release_frames(ReaderObject *self, PyObject *frames)
{
    PyObject *seq = PySequence_Fast(
        frames, "release_frames() takes an iterable of frames");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t ours = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyObject_TypeCheck(items[i], Frame_type)) {
            continue; /* released below, through its dispose() */
        }
        if (((FrameObject *)items[i])->reader != self) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError,
                         "frame %zd belongs to another reader", i);
            return NULL;
        }
        ours++;
    }
    dk_zb_frame_t *batch =
        PyMem_Malloc((size_t)(ours > 0 ? ours : 1) * sizeof *batch);
    if (batch == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    size_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_TypeCheck(items[i], Frame_type)) {
            FrameObject *fo = (FrameObject *)items[i];
            if (!fo->released) {
                fo->released = true;
                batch[k++] = fo->frame;
            }
        }
    }
    if (k > 0 && self->core != NULL) {
        (void)dk_zb_reader_release_many(self->core, batch, k);
    }
    PyMem_Free(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyObject_TypeCheck(items[i], Frame_type)) {
            PyObject *r = Reader_release_frame(self, items[i]);
            if (r == NULL) {
                Py_DECREF(seq);
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *
Reader_release_frame_kw(ReaderObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *frame = one_arg(args, nargs, kwnames, "release_frame", "frame");
    return frame == NULL ? NULL : Reader_release_frame(self, frame);
}

static PyMethodDef Reader_methods[] = {
    {"read_frame", (PyCFunction)(void (*)(void))Reader_read_frame,
     METH_FASTCALL | METH_KEYWORDS,
     "read_frame($self, /, timeout=5.0)\n--\n\nWait for the next frame "
     "(timeout in seconds, None = forever). None on timeout."},
    {"release_frame", (PyCFunction)(void (*)(void))Reader_release_frame_kw,
     METH_FASTCALL | METH_KEYWORDS,
     "release_frame($self, /, frame)\n--\n\nGive the frame's space back to "
     "the writer."},
    {"read_frames", (PyCFunction)(void (*)(void))Reader_read_frames,
     METH_VARARGS | METH_KEYWORDS,
     "read_frames($self, /, max_frames, timeout=5.0)\n--\n\nWait for a "
     "frame as read_frame() does, then take every frame already there, up "
     "to max_frames: a list of frames, empty on timeout."},
    {"release_frames", (PyCFunction)Reader_release_frames, METH_O,
     "release_frames($self, frames, /)\n--\n\nRelease several frames "
     "at once (one credit of their space to the writer)."},
    {"get_metadata", (PyCFunction)Reader_get_metadata, METH_NOARGS,
     "get_metadata($self, /)\n--\n\nThe writer's metadata, "
     "zero-copy."},
    {"_writer_alive", (PyCFunction)Reader_writer_alive, METH_NOARGS,
     "_writer_alive($self, /)\n--\n\nWhether a live writer is attached."},
    {"_wait_writer", (PyCFunction)Reader_wait_writer, METH_O,
     "_wait_writer($self, timeout, /)\n--\n\n"
     "Wait for a live writer: True, or False after timeout seconds."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS,
     "close($self, /)\n--\n\nRemove the buffer. Views still alive stay "
     "readable."},
    {"__enter__", (PyCFunction)Reader_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nReturns self."},
    {"__exit__", (PyCFunction)Reader_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nclose()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"name", (getter)Reader_get_name, NULL, "the buffer's name", NULL},
    {"frames_read", (getter)Reader_get_frames, NULL, "frames read", NULL},
    {"bytes_read", (getter)Reader_get_bytes, NULL, "payload bytes read", NULL},
    {"closed", (getter)Reader_get_closed, NULL, "whether closed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Reader_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ReaderObject, weakrefs),
     READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(ReaderObject, dict), READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Reader_slots[] = {
    {Py_tp_new, Reader_new},
    {Py_tp_dealloc, Reader_dealloc},
    {Py_tp_traverse, Reader_traverse},
    {Py_tp_clear, Reader_clear},
    {Py_tp_methods, Reader_methods},
    {Py_tp_getset, Reader_getset},
    {Py_tp_members, Reader_members},
    {Py_tp_doc, "ZbReader(name, config=None, mode=0o600)\n--\n\nCreates the "
                "buffer NAME and reads frames from it."},
    {0, NULL},
};

/* ---- Frame ------------------------------------------------------------ */

static void
frame_release(FrameObject *self)
{
    if (!self->released) {
        self->released = true;
        if (self->reader->core != NULL) {
            /* `released` makes this the frame's one release. */
            int rc = dk_zb_reader_release(self->reader->core, &self->frame);
            (void)rc;
        }
    }
}

static void
Frame_dealloc(FrameObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    frame_release(self);
    Py_CLEAR(self->reader);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static int
frame_usable(FrameObject *self)
{
    if (self->released) {
        PyErr_SetString(PyExc_ValueError, "the frame has been released");
        return -1;
    }
    if (self->reader->closed || self->reader->core == NULL) {
        zb_raise(EXC_BASE, "Reader is closed");
        return -1;
    }
    return 0;
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
Frame_releasebuffer(FrameObject *self, Py_buffer *view)
{
    (void)view;
    self->reader->exports--;
    reader_maybe_destroy(self->reader);
}

static PyObject *
Frame_get_data(FrameObject *self, void *c)
{
    (void)c;
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *
Frame_get_size(FrameObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->frame.size);
}

static PyObject *
Frame_get_sequence(FrameObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->frame.sequence);
}

static PyObject *
Frame_get_valid(FrameObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(!self->released && !self->reader->closed &&
                           self->frame.size > 0);
}

static Py_ssize_t
Frame_len(FrameObject *self)
{
    return (Py_ssize_t)self->frame.size;
}

static PyObject *
Frame_bytes(FrameObject *self, PyObject *unused)
{
    (void)unused;
    if (frame_usable(self) < 0) {
        return NULL;
    }
    Py_ssize_t n = (Py_ssize_t)self->frame.size;
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (b == NULL) {
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(b);
    ReaderObject *r = self->reader;
    if (n >= NOGIL_COPY) {
        r->busy++;
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, self->frame.data, (size_t)n);
        Py_END_ALLOW_THREADS
        r->busy--;
        reader_maybe_destroy(r);
    } else {
        memcpy(dst, self->frame.data, (size_t)n);
    }
    return b;
}

static PyObject *
Frame_dispose(FrameObject *self, PyObject *unused)
{
    (void)unused;
    frame_release(self);
    Py_RETURN_NONE;
}

static PyObject *
Frame_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *
Frame_exit(FrameObject *self, PyObject *args)
{
    (void)args;
    frame_release(self);
    Py_RETURN_NONE;
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
    {"__enter__", (PyCFunction)Frame_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nReturns self."},
    {"__exit__", (PyCFunction)Frame_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\ndispose()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Frame_getset[] = {
    {"data", (getter)Frame_get_data, NULL,
     "read-only memoryview of the frame in shared memory (zero-copy)", NULL},
    {"size", (getter)Frame_get_size, NULL, "payload bytes", NULL},
    {"sequence", (getter)Frame_get_sequence, NULL, "sequence number", NULL},
    {"is_valid", (getter)Frame_get_valid, NULL,
     "True until the frame is released", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Frame_slots[] = {
    {Py_tp_dealloc, Frame_dealloc},
    {Py_tp_methods, Frame_methods},
    {Py_tp_getset, Frame_getset},
    {Py_tp_repr, Frame_repr},
    {Py_sq_length, Frame_len},
    {Py_bf_getbuffer, Frame_getbuffer},
    {Py_bf_releasebuffer, Frame_releasebuffer},
    {Py_tp_doc, "A frame read from a buffer: a zero-copy view of shared "
                "memory, released by dispose(), a with block, "
                "Reader.release_frame() or garbage collection."},
    {0, NULL},
};

/* ---- Writer ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    dk_zb_writer_t *core;
    PyObject *name;
    /* One writing thread at a time: `owned` (read and set with the GIL
     * held) says whether a thread is in a call; threads that find it
     * set wait on `gate` (kept locked) with the GIL released, and each
     * writer_unlock() that leaves waiters behind lets one through. An
     * uncontended call so costs no lock operation (a PyThread lock reads
     * the clock even to try). */
    PyThread_type_lock gate;
    bool owned;
    int gate_waiters;
    double write_timeout;     /* seconds */
    PyObject *pending_view;   /* the memoryview of get_frame_buffer() */
    PyObject *pending_region; /* its exporter (a RegionObject) */
    Py_ssize_t exports;
    Py_ssize_t busy;
    bool closed;
    PyObject *weakrefs;
    PyObject *dict;
} WriterObject;

static void
writer_maybe_destroy(WriterObject *self)
{
    if (self->closed && self->exports == 0 && self->busy == 0 &&
        self->core != NULL) {
        dk_zb_writer_destroy(self->core);
        self->core = NULL;
    }
}

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", NULL};
    PyObject *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:Writer", kwlist,
                                     &name)) {
        return NULL;
    }
    const char *cname = zb_name_utf8(name);
    if (cname == NULL) {
        return NULL;
    }
    int rc;
    WriterObject *self = (WriterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->name = Py_NewRef(name);
    self->write_timeout = 5.0;
    self->gate = PyThread_allocate_lock();
    if (self->gate != NULL) {
        (void)PyThread_acquire_lock(self->gate, WAIT_LOCK); /* kept shut */
    }
    if (self->gate == NULL) {
        self->closed = true;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    dk_zb_error_t err = {0};
    Py_BEGIN_ALLOW_THREADS
    rc = dk_zb_writer_open(cname, &self->core, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        self->closed = true;
        Py_DECREF(self);
        switch (rc) {
        case -ENOENT:
            PyErr_Format(exc_types[EXC_BASE],
                         "No shared memory found for buffer '%s' - reader "
                         "must be created first",
                         cname);
            return NULL;
        case -EPROTO:
            return zb_raise(EXC_BASE, err.message);
        case -ENOTCONN:
            PyErr_Format(exc_types[EXC_BASE],
                         "No active reader found for buffer '%s'", cname);
            return NULL;
        case -EBUSY:
            return zb_raise(EXC_WRITER_CONNECTED, NULL);
        default:
            return dkpy_raise_errno(rc);
        }
    }
    return (PyObject *)self;
}

static int
Writer_traverse(WriterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->pending_view);
    Py_VISIT(self->pending_region);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
Writer_clear(WriterObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->pending_view);
    Py_CLEAR(self->pending_region);
    return 0;
}

static void
Writer_dealloc(WriterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Writer_clear(self);
    if (self->core != NULL) {
        dk_zb_writer_destroy(self->core);
        self->core = NULL;
    }
    if (self->gate != NULL) {
        PyThread_free_lock(self->gate);
    }
    Py_CLEAR(self->name);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* Take the writer: at once if no thread is in a call, else wait for it
 * with the GIL released, in slices so that Ctrl-C is seen. */
static int
writer_lock(WriterObject *self)
{
    if (!self->owned) {
        self->owned = true;
        return 0;
    }
    self->gate_waiters++;
    for (;;) {
        PyLockStatus st;
        self->busy++;
        Py_BEGIN_ALLOW_THREADS
        st = PyThread_acquire_lock_timed(self->gate, 100000, 0);
        Py_END_ALLOW_THREADS
        self->busy--;
        /* Woken by an unlock (st: acquired), or a slice ended: either
         * way, look. */
        (void)st;
        if (!self->owned) {
            self->owned = true;
            self->gate_waiters--;
            return 0;
        }
        if (PyErr_CheckSignals() < 0) {
            self->gate_waiters--;
            return -1;
        }
    }
}

static void
writer_unlock(WriterObject *self)
{
    self->owned = false;
    if (self->gate_waiters > 0) {
        /* Lets one waiter through the gate (a spare pass, if the waiter
         * had timed out meanwhile, only makes a later waiter look again
         * at once). */
        PyThread_release_lock(self->gate);
    }
    writer_maybe_destroy(self);
}

static const dkpy_errno_map writer_errors[] = {
    {EINVAL, &exc_types[EXC_INVALID_SIZE], NULL},
    {EMSGSIZE, &exc_types[EXC_TOO_LARGE], NULL},
    {EPIPE, &exc_types[EXC_READER_DEAD], NULL},
    {ETIMEDOUT, &exc_types[EXC_BUFFER_FULL], NULL},
    {EBUSY, &exc_types[EXC_BASE],
     "a frame from get_frame_buffer() is waiting for commit_frame()"},
    {EBADF, &exc_types[EXC_BASE], "Writer is closed"},
    {0, NULL, NULL},
};

static PyObject *
writer_error(WriterObject *self, int rc)
{
    if (rc == -EPROTO) {
        return zb_raise(EXC_BASE, self->core
                                      ? dk_zb_writer_error(self->core)->message
                                      : "corrupted segment");
    }
    return dkpy_raise_mapped(writer_errors, rc) ? NULL : dkpy_raise_errno(rc);
}

/* Reserve a frame, waiting for space as write_timeout allows. Lock held.
 * Tries, then watches with the GIL held, then sleeps with it released. */
static int
writer_acquire(WriterObject *self, uint64_t size, void **buf, uint64_t *seq)
{
    if (self->closed || self->core == NULL) {
        return -EBADF;
    }
    int rc = dk__zb_writer_acquire_ex(self->core, size, 0, 0, buf, seq);
    if (rc != -EAGAIN) {
        return rc;
    }
    uint64_t deadline = dk_now() + (uint64_t)(self->write_timeout * 1e9);
    rc = dk__zb_writer_acquire_ex(self->core, size, deadline, DK__ZB_SPIN, buf,
                                  seq);
    if (rc != -EAGAIN) {
        return rc;
    }
    do {
        uint64_t end = dkpy_slice_end(deadline);
        dk_zb_writer_t *core = self->core;
        self->busy++;
        Py_BEGIN_ALLOW_THREADS
        rc = dk__zb_writer_acquire_ex(core, size, end, DK__ZB_SLEEP, buf, seq);
        Py_END_ALLOW_THREADS
        self->busy--;
        if (rc == -ETIMEDOUT || rc == -EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -EINTR; /* exception set */
            }
            if (self->closed) {
                return -EBADF;
            }
        }
    } while ((rc == -ETIMEDOUT && dk_now() < deadline) || rc == -EINTR);
    return rc;
}

static PyObject *
Writer_write_frame(WriterObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (writer_lock(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    void *buf;
    uint64_t seq;
    int rc = writer_acquire(self, (uint64_t)view.len, &buf, &seq);
    if (rc == 0) {
        if (view.len >= NOGIL_COPY) {
            self->busy++;
            Py_BEGIN_ALLOW_THREADS
            memcpy(buf, view.buf, (size_t)view.len);
            Py_END_ALLOW_THREADS
            self->busy--;
        } else {
            memcpy(buf, view.buf, (size_t)view.len);
        }
        rc = dk_zb_writer_commit(self->core);
        if (rc == -EINVAL) {
            rc = -EBADF; /* closed by another thread during the copy */
        }
    }
    PyBuffer_Release(&view);
    PyObject *res;
    if (rc == 0) {
        res = PyLong_FromUnsignedLongLong(seq);
    } else if (rc == -EINTR && PyErr_Occurred()) {
        res = NULL;
    } else {
        res = writer_error(self, rc);
    }
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
Writer_write_frames(WriterObject *self, PyObject *frames)
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
    uint64_t max = self->core && !self->closed
                       ? dk_zb_writer_max_frame(self->core)
                       : UINT64_MAX;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        if (views[got].len == 0) {
            got++;
            PyErr_Format(exc_types[EXC_INVALID_SIZE],
                         "frame %zd is empty: frames need at least 1 byte",
                         got - 1);
            goto done;
        }
        if ((uint64_t)views[got].len > max) {
            got++;
            PyErr_Format(exc_types[EXC_TOO_LARGE],
                         "frame %zd has %zd bytes; this buffer takes at "
                         "most %llu",
                         got - 1, views[got - 1].len, (unsigned long long)max);
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
        if (rc < 0) {
            break;
        }
        if (views[i].len >= NOGIL_COPY) {
            self->busy++;
            Py_BEGIN_ALLOW_THREADS
            memcpy(buf, views[i].buf, (size_t)views[i].len);
            Py_END_ALLOW_THREADS
            self->busy--;
        } else {
            memcpy(buf, views[i].buf, (size_t)views[i].len);
        }
        rc = dk__zb_writer_commit_ex(self->core, false);
        if (rc == -EINVAL) {
            rc = -EBADF; /* closed by another thread during the copy */
        }
    }
    if (self->core != NULL) {
        dk__zb_writer_publish(self->core);
    }
    if (rc == 0) {
        res = PyLong_FromSsize_t(n);
    } else if (!(rc == -EINTR && PyErr_Occurred())) {
        writer_error(self, rc);
    }
    writer_unlock(self);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        if (views[i].obj != NULL || views[i].buf != NULL) {
            PyBuffer_Release(&views[i]);
        }
    }
    PyMem_Free(views);
    Py_DECREF(seq);
    return res;
}

static int revoke_pending(WriterObject *self, const char *what);

static PyObject *
writer_acquire_view(WriterObject *self, PyObject *arg, bool with_seq)
{
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size <= 0) {
        return zb_raise(EXC_INVALID_SIZE, NULL);
    }
    if (writer_lock(self) < 0) {
        return NULL;
    }
    /* A reservation not committed yet is abandoned for the new one, as
     * zerobuffer-ipc does; its view is revoked first, and if a view
     * derived from it is still alive the new reservation (which may
     * start at the same ring bytes) is refused instead. */
    if (self->pending_region != NULL && self->core != NULL && !self->closed) {
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
        PyObject *mv =
            make_region_ex((PyObject *)self, buf, size, true, &region);
        if (mv == NULL) {
            int cancelled = dk_zb_writer_cancel(self->core); /* reserved */
            (void)cancelled;
        } else {
            Py_XSETREF(self->pending_view, Py_NewRef(mv));
            Py_XSETREF(self->pending_region, region);
            res = with_seq ? Py_BuildValue("(KN)", (unsigned long long)seq, mv)
                           : mv;
        }
    } else if (!(rc == -EINTR && PyErr_Occurred())) {
        writer_error(self, rc);
    }
    writer_unlock(self);
    return res;
}

static PyObject *
Writer_acquire(WriterObject *self, PyObject *arg)
{
    return writer_acquire_view(self, arg, true);
}

static PyObject *
Writer_get_frame_buffer(WriterObject *self, PyObject *arg)
{
    return writer_acquire_view(self, arg, false);
}

/* Revoke the view of the pending reservation before it is committed or
 * abandoned: release the memoryview handed out, then check that no view
 * derived from it (a slice, which shares its managed buffer; a NumPy
 * array, which holds an export of it) is alive, since such a view would
 * write into a published frame or into the next reservation: silent
 * corruption. 0, or -1 with BufferError set (nothing committed or
 * abandoned; a released main view stays released). */
static int
revoke_pending(WriterObject *self, const char *what)
{
    PyObject *mv = self->pending_view;
    if (mv != NULL) {
        static PyObject *release_str;
        PyObject *release = dkpy_getattr(mv, &release_str, "release");
        PyObject *r = release ? PyObject_CallNoArgs(release) : NULL;
        Py_XDECREF(release);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
                return -1;
            }
            PyErr_Clear();
        } else {
            Py_DECREF(r);
            Py_CLEAR(self->pending_view);
        }
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
drop_pending_view(WriterObject *self)
{
    Py_CLEAR(self->pending_region);
    PyObject *mv = self->pending_view;
    self->pending_view = NULL;
    if (mv != NULL && Py_REFCNT(mv) > 1) {
        /* Someone else holds it: revoke it, so writing through it after
         * commit fails instead of changing a published frame. */
        static PyObject *release_str;
        PyObject *release = dkpy_getattr(mv, &release_str, "release");
        PyObject *r = release ? PyObject_CallNoArgs(release) : NULL;
        Py_XDECREF(release);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(mv);
}

static PyObject *
Writer_commit_frame(WriterObject *self, PyObject *unused)
{
    (void)unused;
    if (writer_lock(self) < 0) {
        return NULL;
    }
    if (self->pending_region != NULL && self->core != NULL && !self->closed &&
        revoke_pending(self, "commit_frame") < 0) {
        writer_unlock(self);
        return NULL;
    }
    int rc =
        self->core && !self->closed ? dk_zb_writer_commit(self->core) : -EBADF;
    drop_pending_view(self);
    PyObject *res;
    if (rc == 0) {
        res = Py_NewRef(Py_None);
    } else if (rc == -EINVAL) {
        res = zb_raise(EXC_BASE, "No pending frame to commit");
    } else {
        res = writer_error(self, rc);
    }
    writer_unlock(self);
    return res;
}

static PyObject *
Writer_set_metadata(WriterObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (writer_lock(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc = self->core && !self->closed
                 ? dk_zb_writer_set_metadata(self->core, view.buf,
                                             (uint64_t)view.len)
                 : -EBADF;
    PyBuffer_Release(&view);
    static const dkpy_errno_map metadata_errors[] = {
        {EALREADY, &exc_types[EXC_METADATA_WRITTEN], NULL},
        {ENOSPC, &exc_types[EXC_BASE], "Metadata too large for buffer"},
        {EINVAL, &exc_types[EXC_BASE],
         "Metadata must not be empty (readers cannot tell it from no "
         "metadata)"},
        {0, NULL, NULL},
    };
    PyObject *res = NULL;
    if (rc == 0) {
        res = Py_NewRef(Py_None);
    } else if (!dkpy_raise_mapped(metadata_errors, rc)) {
        writer_error(self, rc);
    }
    writer_unlock(self);
    return res;
}

static PyObject *
Writer_reader_connected(WriterObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || self->core == NULL) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(dk_zb_writer_reader_connected(self->core));
}

static PyObject *
Writer_close(WriterObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->closed) {
        self->closed = true;
        if (self->core != NULL) {
            dk_zb_writer_close(self->core);
        }
        drop_pending_view(self);
        writer_maybe_destroy(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
Writer_exit(WriterObject *self, PyObject *args)
{
    (void)args;
    return Writer_close(self, NULL);
}

static PyObject *
Writer_get_name(WriterObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->name);
}

static PyObject *
Writer_get_frames(WriterObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_writer_frames(self->core) : 0);
}

static PyObject *
Writer_get_bytes(WriterObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_writer_bytes(self->core) : 0);
}

static PyObject *
Writer_get_next_seq(WriterObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_writer_next_sequence(self->core) : 0);
}

static PyObject *
Writer_get_max_frame(WriterObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(
        self->core ? dk_zb_writer_max_frame(self->core) : 0);
}

static PyObject *
Writer_get_timeout(WriterObject *self, void *c)
{
    (void)c;
    return PyFloat_FromDouble(self->write_timeout);
}

static int
Writer_set_timeout(WriterObject *self, PyObject *v, void *c)
{
    (void)c;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete");
        return -1;
    }
    double s = PyFloat_AsDouble(v);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(s > 0) || s > 1e9) {
        PyErr_SetString(PyExc_ValueError, "Write timeout must be positive");
        return -1;
    }
    self->write_timeout = s;
    return 0;
}

static PyObject *
Writer_get_closed(WriterObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->closed);
}

static PyObject *
Writer_write_frame_kw(WriterObject *self, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = one_arg(args, nargs, kwnames, "write_frame", "data");
    return data == NULL ? NULL : Writer_write_frame(self, data);
}

static PyObject *
Writer_get_frame_buffer_kw(WriterObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *size = one_arg(args, nargs, kwnames, "get_frame_buffer", "size");
    return size == NULL ? NULL : Writer_get_frame_buffer(self, size);
}

static PyObject *
Writer_set_metadata_kw(WriterObject *self, PyObject *const *args,
                       Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = one_arg(args, nargs, kwnames, "set_metadata", "data");
    return data == NULL ? NULL : Writer_set_metadata(self, data);
}

static PyMethodDef Writer_methods[] = {
    {"write_frame", (PyCFunction)(void (*)(void))Writer_write_frame_kw,
     METH_FASTCALL | METH_KEYWORDS,
     "write_frame($self, /, data)\n--\n\nCopy one frame into the buffer; "
     "returns its sequence number."},
    {"write_frames", (PyCFunction)Writer_write_frames, METH_O,
     "write_frames($self, frames, /)\n--\n\nCopy several frames in, "
     "published together; returns how many. Every frame is checked "
     "before any is written."},
    {"_acquire", (PyCFunction)Writer_acquire, METH_O,
     "_acquire($self, size, /)\n--\n\nget_frame_buffer(size) that also "
     "returns the sequence: (sequence, memoryview)."},
    {"get_frame_buffer",
     (PyCFunction)(void (*)(void))Writer_get_frame_buffer_kw,
     METH_FASTCALL | METH_KEYWORDS,
     "get_frame_buffer($self, /, size)\n--\n\nA writable view of SIZE "
     "bytes in shared memory for the next frame; fill it, then call "
     "commit_frame()."},
    {"commit_frame", (PyCFunction)Writer_commit_frame, METH_NOARGS,
     "commit_frame($self, /)\n--\n\nPublish the frame from "
     "get_frame_buffer(); the "
     "view handed out is released."},
    {"set_metadata", (PyCFunction)(void (*)(void))Writer_set_metadata_kw,
     METH_FASTCALL | METH_KEYWORDS,
     "set_metadata($self, /, data)\n--\n\nStore the metadata (once)."},
    {"is_reader_connected", (PyCFunction)Writer_reader_connected, METH_NOARGS,
     "is_reader_connected($self, /)\n--\n\nWhether the reader's process "
     "is alive and attached."},
    {"close", (PyCFunction)Writer_close, METH_NOARGS,
     "close($self, /)\n--\n\nDisconnect."},
    {"__enter__", (PyCFunction)Reader_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nReturns self."},
    {"__exit__", (PyCFunction)Writer_exit, METH_VARARGS,
     "__exit__($self, /, *exc_info)\n--\n\nclose()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"name", (getter)Writer_get_name, NULL, "the buffer's name", NULL},
    {"frames_written", (getter)Writer_get_frames, NULL, "frames written",
     NULL},
    {"bytes_written", (getter)Writer_get_bytes, NULL, "payload bytes written",
     NULL},
    {"_next_sequence", (getter)Writer_get_next_seq, NULL, NULL, NULL},
    {"max_frame_size", (getter)Writer_get_max_frame, NULL,
     "largest frame this buffer takes", NULL},
    {"_write_timeout_s", (getter)Writer_get_timeout,
     (setter)Writer_set_timeout, NULL, NULL},
    {"closed", (getter)Writer_get_closed, NULL, "whether closed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Writer_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(WriterObject, weakrefs),
     READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(WriterObject, dict), READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_new, Writer_new},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_traverse, Writer_traverse},
    {Py_tp_clear, Writer_clear},
    {Py_tp_methods, Writer_methods},
    {Py_tp_getset, Writer_getset},
    {Py_tp_members, Writer_members},
    {Py_tp_doc, "ZbWriter(name)\n--\n\nConnects to the buffer NAME and writes "
                "frames into it."},
    {0, NULL},
};

/* ---- Region (metadata and get_frame_buffer views) --------------------- */

static Py_ssize_t *
owner_exports(PyObject *owner, bool *reader)
{
    *reader = PyObject_TypeCheck(owner, Reader_type);
    return *reader ? &((ReaderObject *)owner)->exports
                   : &((WriterObject *)owner)->exports;
}

static int
Region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len,
                          !self->writable, flags) < 0) {
        return -1;
    }
    self->exports++;
    bool reader;
    (*owner_exports(self->owner, &reader))++;
    return 0;
}

static void
Region_releasebuffer(RegionObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    bool reader;
    (*owner_exports(self->owner, &reader))--;
    if (reader) {
        reader_maybe_destroy((ReaderObject *)self->owner);
    } else {
        writer_maybe_destroy((WriterObject *)self->owner);
    }
}

static void
Region_dealloc(RegionObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->owner);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyType_Slot Region_slots[] = {
    {Py_tp_dealloc, Region_dealloc},
    {Py_bf_getbuffer, Region_getbuffer},
    {Py_bf_releasebuffer, Region_releasebuffer},
    {0, NULL},
};

/* ---- module ----------------------------------------------------------- */

static PyType_Spec Reader_spec = {
    "dispatchkit.zerobuffer.ZbReader", sizeof(ReaderObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    Reader_slots};
static PyType_Spec Writer_spec = {
    "dispatchkit.zerobuffer.ZbWriter", sizeof(WriterObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    Writer_slots};
static PyType_Spec Frame_spec = {"dispatchkit.zerobuffer.Frame",
                                 sizeof(FrameObject), 0, Py_TPFLAGS_DEFAULT,
                                 Frame_slots};
static PyType_Spec Region_spec = {"dispatchkit.zerobuffer._Region",
                                  sizeof(RegionObject), 0, Py_TPFLAGS_DEFAULT,
                                  Region_slots};

/* For futures.c (async for over a Reader): hold the core of an open
 * Reader for an asynchronous wait, as a blocking read does (busy), so
 * close() defers destroying it; NULL if obj is not a Reader, or closed
 * (no exception set). dkpy_zb_reader_unhold ends the hold. */
struct dk_zb_reader_s *
dkpy_zb_reader_hold(PyObject *obj)
{
    if (Reader_type == NULL || !PyObject_TypeCheck(obj, Reader_type)) {
        return NULL;
    }
    ReaderObject *self = (ReaderObject *)obj;
    if (self->closed || self->core == NULL) {
        return NULL;
    }
    self->busy++;
    return self->core;
}

void
dkpy_zb_reader_unhold(PyObject *obj)
{
    ReaderObject *self = (ReaderObject *)obj;
    self->busy--;
    reader_maybe_destroy(self);
}

static bool
is_writer(PyObject *obj)
{
    for (PyTypeObject *t = Py_TYPE(obj); t != NULL; t = t->tp_base) {
        if (t->tp_dealloc == (destructor)Writer_dealloc) {
            return true;
        }
    }
    return false;
}

/* As dkpy_zb_reader_hold, for a Writer waiting for space. */
struct dk_zb_writer_s *
dkpy_zb_writer_hold(PyObject *obj)
{
    if (!is_writer(obj)) {
        return NULL;
    }
    WriterObject *self = (WriterObject *)obj;
    if (self->closed || self->core == NULL) {
        return NULL;
    }
    self->busy++;
    return self->core;
}

void
dkpy_zb_writer_unhold(PyObject *obj)
{
    WriterObject *self = (WriterObject *)obj;
    self->busy--;
    writer_maybe_destroy(self);
}

bool
dkpy_zb_is_writer(PyObject *obj)
{
    return is_writer(obj);
}

bool
dkpy_zb_is_reader(PyObject *obj)
{
    return Reader_type != NULL && PyObject_TypeCheck(obj, Reader_type);
}

static PyMethodDef zb_functions[] = {
    {"_zb_set_exceptions", zb_set_exceptions, METH_O,
     "_zb_set_exceptions($module, module, /)\n--\n\nRegister "
     "dispatchkit.zerobuffer's exception classes."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_zerobuffer_exec(PyObject *m)
{
    Reader_type = (PyTypeObject *)dkpy_type_from_spec(m, &Reader_spec, NULL);
    PyObject *w = dkpy_type_from_spec(m, &Writer_spec, NULL);
    Frame_type = (PyTypeObject *)dkpy_type_from_spec(m, &Frame_spec, NULL);
    Region_type = (PyTypeObject *)dkpy_type_from_spec(m, &Region_spec, NULL);
    if (Reader_type == NULL || w == NULL || Frame_type == NULL ||
        Region_type == NULL) {
        Py_XDECREF(w);
        return -1;
    }
    if (PyModule_AddObjectRef(m, "ZbReader", (PyObject *)Reader_type) < 0 ||
        PyModule_AddObjectRef(m, "ZbWriter", w) < 0 ||
        PyModule_AddObjectRef(m, "ZbFrame", (PyObject *)Frame_type) < 0 ||
        PyModule_AddFunctions(m, zb_functions) < 0) {
        Py_DECREF(w);
        return -1;
    }
    Py_DECREF(w);
    return 0;
}
