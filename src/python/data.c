/*
 * Binding of data objects: dispatchkit.Data. Immutable; concat and
 * subrange share memory; the buffer protocol exposes a single-region Data
 * without copying (a multi-region one is flattened once and cached).
 */
#include "python/binding.h"

#include "dk/data.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    dk_data_t *d;
    dk_data_t *flat; /* cached contiguous copy for the buffer protocol */
    const void *flat_bytes;
} DataObject;

static PyTypeObject *data_type;

/* A new Data of `type` holding d, made by a core call that returned rc
 * (its only failure: -ENOMEM). */
static PyObject *
data_wrap(PyTypeObject *type, int rc, dk_data_t *d)
{
    if (rc < 0) {
        return PyErr_NoMemory();
    }
    DataObject *self = (DataObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        dk_release(d);
        return NULL;
    }
    self->d = d;
    return (PyObject *)self;
}

static PyObject *
Data_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"bytes", "data", NULL};
    PyObject *src = NULL, *alt = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:Data", kwlist, &src,
                                     &alt)) {
        return NULL;
    }
    src = dkpy_either(src, alt, "bytes or data"); /* data= is cygcd's name */
    if (src == NULL) {
        return NULL;
    }
    if (src == Py_None) {
        return data_wrap(type, 0, dk_data_empty());
    }
    if (PyUnicode_Check(src) || !PyObject_CheckBuffer(src)) {
        PyErr_Format(PyExc_TypeError,
                     "Data() needs a bytes-like object, not %.100s",
                     Py_TYPE(src)->tp_name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(src, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    /* A large copy runs without the GIL; a small one is not worth it. */
    PyThreadState *ts = view.len >= (1 << 20) ? PyEval_SaveThread() : NULL;
    dk_data_t *d;
    int rc = dk_data_create(view.buf, (size_t)view.len, &d);
    if (ts != NULL) {
        PyEval_RestoreThread(ts);
    }
    PyBuffer_Release(&view);
    return data_wrap(type, rc, d);
}

static void
Data_dealloc(DataObject *self)
{
    if (self->flat != NULL) {
        dk_release(self->flat);
    }
    if (self->d != NULL) {
        dk_release(self->d);
    }
    dkpy_free((PyObject *)self);
}

static DataObject *
as_data(PyObject *obj, const char *what)
{
    if (!PyObject_TypeCheck(obj, data_type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a Data, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (DataObject *)obj;
}

static PyObject *
Data_concat(DataObject *self, PyObject *other)
{
    DataObject *o = as_data(other, "other");
    if (o == NULL) {
        return NULL;
    }
    dk_data_t *d;
    int rc = dk_data_create_concat(self->d, o->d, &d);
    return data_wrap(data_type, rc, d);
}

static PyObject *
Data_subrange(DataObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"offset", "length", NULL};
    PyObject *off, *len;
    size_t o, n;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:subrange", kwlist, &off,
                                     &len) ||
        dkpy_size_arg(off, "offset", &o) < 0 ||
        dkpy_size_arg(len, "length", &n) < 0) {
        return NULL;
    }
    dk_data_t *d;
    int rc = dk_data_create_subrange(self->d, o, n, &d);
    return data_wrap(data_type, rc, d);
}

static PyObject *
Data_copy_region(DataObject *self, PyObject *arg)
{
    size_t loc, off;
    if (dkpy_size_arg(arg, "location", &loc) < 0) {
        return NULL;
    }
    if (dk_data_get_size(self->d) == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "location out of bounds for empty data");
        return NULL;
    }
    dk_data_t *d;
    int rc = dk_data_copy_region(self->d, loc, &off, &d);
    PyObject *r = data_wrap(data_type, rc, d);
    return r == NULL ? NULL : Py_BuildValue("(Nn)", r, (Py_ssize_t)off);
}

struct apply_ctx {
    PyObject *func;
    int error;
};

static bool
apply_region(void *p, size_t offset, const void *bytes, size_t len)
{
    struct apply_ctx *c = p;
    PyObject *r = PyObject_CallFunction(c->func, "ny#", (Py_ssize_t)offset,
                                        (const char *)bytes, (Py_ssize_t)len);
    if (r == NULL) {
        c->error = 1;
        return false;
    }
    int keep = r == Py_None ? 1 : PyObject_IsTrue(r);
    Py_DECREF(r);
    if (keep < 0) {
        c->error = 1;
        return false;
    }
    return keep != 0;
}

static PyObject *
Data_apply(DataObject *self, PyObject *func)
{
    if (dkpy_check_callable(func, "func") < 0) {
        return NULL;
    }
    struct apply_ctx c = {func, 0};
    bool all = dk_data_apply(self->d, &c, apply_region);
    if (c.error) {
        return NULL;
    }
    return PyBool_FromLong(all);
}

static bool
copy_out(void *p, size_t offset, const void *bytes, size_t len)
{
    memcpy((char *)p + offset, bytes, len);
    return true;
}

static PyObject *
Data_bytes(DataObject *self, PyObject *Py_UNUSED(unused))
{
    size_t n = dk_data_get_size(self->d);
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (b != NULL) {
        dk_data_apply(self->d, PyBytes_AS_STRING(b), copy_out);
    }
    return b;
}

static Py_ssize_t
Data_len(DataObject *self)
{
    return (Py_ssize_t)dk_data_get_size(self->d);
}

/* regions (closure: non-NULL) and size. */
static PyObject *
Data_get_count(DataObject *self, void *regions)
{
    return PyLong_FromSize_t(regions ? dk_data_region_count(self->d)
                                     : dk_data_get_size(self->d));
}

static int
Data_getbuffer(DataObject *self, Py_buffer *view, int flags)
{
    if (self->flat == NULL) {
        size_t size;
        if (dk_data_create_map(self->d, &self->flat_bytes, &size,
                               &self->flat) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->flat_bytes,
                             (Py_ssize_t)dk_data_get_size(self->d), 1, flags);
}

static PyObject *
Data_richcompare(DataObject *self, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) ||
        !PyObject_TypeCheck(other, data_type)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *a = Data_bytes(self, NULL);
    PyObject *b = a ? Data_bytes((DataObject *)other, NULL) : NULL;
    PyObject *r = b ? PyObject_RichCompare(a, b, op) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return r;
}

static Py_hash_t
Data_hash(DataObject *self)
{
    PyObject *b = Data_bytes(self, NULL);
    if (b == NULL) {
        return -1;
    }
    Py_hash_t h = PyObject_Hash(b);
    Py_DECREF(b);
    return h;
}

static PyObject *
Data_repr(DataObject *self)
{
    return PyUnicode_FromFormat("<dispatchkit.Data size=%zu regions=%zu>",
                                dk_data_get_size(self->d),
                                dk_data_region_count(self->d));
}

static PyMethodDef Data_methods[] = {
    {"concat", (PyCFunction)Data_concat, METH_O,
     "concat($self, other, /)\n--\n\nThis data followed by other (no copy)."},
    {"subrange", DKPY_METH_KW(Data_subrange),
     "subrange($self, offset, length)\n--\n\nA clipped slice (no copy)."},
    {"copy_region", (PyCFunction)Data_copy_region, METH_O,
     "copy_region($self, location, /)\n--\n\nThe contiguous region containing "
     "location, and its start offset in this data: (Data, offset)."},
    {"apply", (PyCFunction)Data_apply, METH_O,
     "apply($self, func, /)\n--\n\nfunc(offset, chunk) once per region; stops "
     "and returns False when func returns a false value (None continues)."},
    {"__bytes__", (PyCFunction)Data_bytes, METH_NOARGS,
     "__bytes__($self, /)\n--\n\nA bytes copy."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Data_getset[] = {
    {"size", (getter)Data_get_count, NULL, "Size in bytes.", NULL},
    {"regions", (getter)Data_get_count, NULL, "Number of contiguous regions.",
     "regions"},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(
    static, Data_spec, "dispatchkit.Data", DataObject, Py_TPFLAGS_BASETYPE,
    {Py_tp_new, Data_new}, {Py_tp_dealloc, Data_dealloc},
    {Py_tp_methods, Data_methods}, {Py_tp_getset, Data_getset},
    {Py_sq_length, Data_len}, {Py_mp_length, Data_len},
    {Py_bf_getbuffer, Data_getbuffer}, {Py_tp_richcompare, Data_richcompare},
    {Py_tp_hash, Data_hash}, {Py_tp_repr, Data_repr},
    {Py_tp_doc,
     "Data(bytes=None, data=None)\n--\n\nAn immutable buffer made of regions; "
     "concat and subrange share memory."});

int
dkpy_data_exec(PyObject *m)
{
    data_type = dkpy_add_type(m, &Data_spec, NULL, "");
    return data_type == NULL ? -1 : 0;
}
