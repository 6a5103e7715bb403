/*
 * Binding of dispatchkit.atomics: the C base type _AtomicAny (properties
 * only) and the seed's class hierarchy, built here (_atomic_class) on it
 * and the Python mixins, every operation a direct C method (no Python
 * wrapper on the hot path): the byte operations (values as bytes), or
 * those plus arithmetic (values as int). The exception classes and OpType
 * live in Python and are handed to us by dispatchkit.atomics at import
 * (_atomics_setup).
 */
#include "python/binding.h"

#include <stdarg.h>
#include <string.h>
#include <structmember.h>

#include "atomic_raw.h"
#include "dk/atomic.h"

/* Values cross to the core as `width` bytes in native order: on the CPUs
 * we support (README: x86_64, aarch64) those are the low bytes of the
 * value's 16-byte little-endian two's complement, which is how every
 * width converts (one path, the core's by-width dispatch left to it). */
#if !PY_LITTLE_ENDIAN
#error "dispatchkit.atomics assumes a little-endian CPU"
#endif

__extension__ typedef unsigned __int128 u128;
__extension__ typedef __int128 i128;

typedef struct {
    PyObject_HEAD
    void *addr;
    Py_buffer view;
    unsigned width;
    bool has_view;
    bool readonly;
    bool integral;
    bool is_signed;
    /* The integers of the width that fit 64 bits: the fast path of
     * every conversion (to_value). */
    long long lo, hi;
} AtomicObject;

/* For the steps of every operation's call (argument conversion, the
 * read-modify-write body): inlined into each method, they cost no call
 * frame of their own, and the method's constants fold into them. */
#define HOT_INLINE static inline __attribute__((always_inline))

/* Text signatures (inspect.signature, help()): the parameters as the
 * atomics package names them, the order defaulting to SEQ_CST. */
#define ORDER "order=dispatchkit.atomics.MemoryOrder.SEQ_CST"
#define ORDERS                                                                \
    "success=dispatchkit.atomics.MemoryOrder.SEQ_CST, "                       \
    "failure=dispatchkit.atomics.MemoryOrder.SEQ_CST"

/* Every operation, in the order of the atomics package's OpType (which
 * numbers them from 1): X(method, body, argument of the body, parameters,
 * doc). The byte operations, then the integral classes' arithmetic. */
#define BYTE_OPS(X)                                                           \
    X(store, store, 0, "desired, " ORDER, "Store desired.")                   \
    X(load, load, 0, ORDER, "The value.")                                     \
    X(exchange, rmw_fetch, DK_AOP_EXCHANGE, "desired, " ORDER,                \
      "Store desired; returns the old value.")                                \
    X(cmpxchg_weak, cmpxchg, true, "expected, desired, " ORDERS,              \
      "Compare and exchange (may fail spuriously); returns a "                \
      "CmpxchgResult.")                                                       \
    X(cmpxchg_strong, cmpxchg, false, "expected, desired, " ORDERS,           \
      "Compare and exchange; returns a CmpxchgResult.")                       \
    X(bit_test, bit_op, DK_ABIT_TEST, "index, " ORDER, "The bit at index.")   \
    X(bit_test_compl, bit_op, DK_ABIT_COMPL, "index, " ORDER,                 \
      "Flip the bit; returns its old value.")                                 \
    X(bit_test_set, bit_op, DK_ABIT_SET, "index, " ORDER,                     \
      "Set the bit; returns its old value.")                                  \
    X(bit_test_reset, bit_op, DK_ABIT_RESET, "index, " ORDER,                 \
      "Clear the bit; returns its old value.")                                \
    X(bin_or, rmw, DK_AOP_OR, "value, " ORDER, "Bitwise or.")                 \
    X(bin_xor, rmw, DK_AOP_XOR, "value, " ORDER, "Bitwise xor.")              \
    X(bin_and, rmw, DK_AOP_AND, "value, " ORDER, "Bitwise and.")              \
    X(bin_not, rmw, DK_AOP_NOT, ORDER, "Bitwise not.")                        \
    X(bin_fetch_or, rmw_fetch, DK_AOP_OR, "value, " ORDER,                    \
      "Bitwise or; returns the old value.")                                   \
    X(bin_fetch_xor, rmw_fetch, DK_AOP_XOR, "value, " ORDER,                  \
      "Bitwise xor; returns the old value.")                                  \
    X(bin_fetch_and, rmw_fetch, DK_AOP_AND, "value, " ORDER,                  \
      "Bitwise and; returns the old value.")                                  \
    X(bin_fetch_not, rmw_fetch, DK_AOP_NOT, ORDER,                            \
      "Bitwise not; returns the old value.")
#define INTEGRAL_OPS(X)                                                       \
    X(add, rmw, DK_AOP_ADD, "value, " ORDER, "Add value.")                    \
    X(sub, rmw, DK_AOP_SUB, "value, " ORDER, "Subtract value.")               \
    X(inc, rmw, DK_AOP_INC, ORDER, "Add 1.")                                  \
    X(dec, rmw, DK_AOP_DEC, ORDER, "Subtract 1.")                             \
    X(neg, rmw, DK_AOP_NEG, ORDER, "Negate.")                                 \
    X(fetch_add, rmw_fetch, DK_AOP_ADD, "value, " ORDER,                      \
      "Add value; returns the old value.")                                    \
    X(fetch_sub, rmw_fetch, DK_AOP_SUB, "value, " ORDER,                      \
      "Subtract value; returns the old value.")                               \
    X(fetch_inc, rmw_fetch, DK_AOP_INC, ORDER,                                \
      "Add 1; returns the old value.")                                        \
    X(fetch_dec, rmw_fetch, DK_AOP_DEC, ORDER,                                \
      "Subtract 1; returns the old value.")                                   \
    X(fetch_neg, rmw_fetch, DK_AOP_NEG, ORDER,                                \
      "Negate; returns the old value.")

/* OpType values: OP_load, OP_fetch_neg, ... */
#define OP_ENUM(NAME, BODY, ARG, PARAMS, DOC) OP_##NAME,
enum { OP_NONE, BYTE_OPS(OP_ENUM) INTEGRAL_OPS(OP_ENUM) };
#undef OP_ENUM

/* The operations a class exposes: which of the method tables below its
 * MRO holds (kind_of). */
enum { KIND_ANY, KIND_BYTES, KIND_INTEGRAL };

static PyTypeObject *any_type;
static PyObject *optype, *cmpxchg_type;

/* ---- errors ---------------------------------------------------------- */

/* The atomics package's exceptions (classes made in Python, in the order
 * _atomics_setup takes them): each takes positional arguments and one
 * keyword flag. */
enum { ERR_ALIGNMENT, ERR_ORDER, ERR_WIDTH, ERR_OPERATION, ERR_COUNT };
static PyObject *error_type[ERR_COUNT];
static const char *const error_flag[ERR_COUNT] = {
    "using_recommended", "is_fail", "readonly", "readonly"};

/* Raise error `which` with the arguments Py_BuildValue makes of fmt and
 * what follows, and its flag. Returns -1. */
static int
raise_error(int which, bool flag, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *args = Py_VaBuildValue(fmt, va);
    va_end(va);
    dkpy_raise_call(
        error_type[which] ? error_type[which] : PyExc_RuntimeError, args,
        Py_BuildValue("{s:O}", error_flag[which], flag ? Py_True : Py_False));
    return -1;
}

static PyObject *
optype_obj(int op)
{
    return PyObject_CallFunction(optype, "i", op);
}

static int
check_live(AtomicObject *self)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError,
                        "Operation forbidden on released AtomicCore object.");
        return -1;
    }
    return 0;
}

static inline int
check_write(AtomicObject *self, int op)
{
    if (check_live(self) < 0) {
        return -1;
    }
    return self->readonly ? raise_error(ERR_OPERATION, true, "(NI)",
                                        optype_obj(op), self->width)
                          : 0;
}

static int
order_of(PyObject *obj, int *mo)
{
    if (obj == NULL) {
        *mo = DK_MO_SEQ_CST;
        return 0;
    }
    long v = dkpy_index_as_long(obj);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0 || v > 5 || v == DK_MO_CONSUME) {
        PyErr_Format(PyExc_ValueError, "%ld is not a valid MemoryOrder", v);
        return -1;
    }
    *mo = (int)v;
    return 0;
}

static int
order_error(int op, int mo, bool is_fail)
{
    PyObject *cls = PyObject_GetAttrString(
        PyImport_AddModule("dispatchkit.atomics"), "MemoryOrder");
    PyObject *order = cls ? PyObject_CallFunction(cls, "i", mo) : NULL;
    Py_XDECREF(cls);
    return raise_error(ERR_ORDER, is_fail, "(NN)", optype_obj(op), order);
}

/* ---- values ---------------------------------------------------------- */

/* The low `width` bytes of x, sign- or zero-extended to all 16. */
HOT_INLINE u128
widen(u128 x, unsigned width, bool is_signed)
{
    unsigned shift = 128 - 8 * width;
    return is_signed ? (u128)((i128)(x << shift) >> shift)
                     : x << shift >> shift;
}

/* The int v as the 16-byte two's complement of a value of the width,
 * with int.to_bytes's errors, when it does not fit [lo, hi]: the rare
 * path of to_value, out of line. Unsigned values past 2^63 convert
 * without an object too; the rest go through compat.h. */
static int
int_value_slow(AtomicObject *self, PyObject *v, unsigned char out[16])
{
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    unsigned long long u = 0;
    u128 x;
    if (overflow == 0 && (s >= 0 || self->is_signed)) {
        x = (u128)(i128)s; /* fits 64 bits, not the width */
    } else if (overflow > 0 && !self->is_signed &&
               !((u = PyLong_AsUnsignedLongLong(v)) ==
                     (unsigned long long)-1 &&
                 PyErr_Occurred())) {
        x = u; /* 2^63 and up */
    } else {
        /* Past 64 bits, or negative for an unsigned object: compat.h
         * converts or raises int.to_bytes's error. */
        PyErr_Clear();
        if (dkpy_long_to_le16(v, out, self->is_signed) < 0) {
            return -1;
        }
        memcpy(&x, out, 16);
    }
    if (widen(x, self->width, self->is_signed) != x) {
        PyErr_SetString(PyExc_OverflowError, "int too big to convert");
        return -1;
    }
    memcpy(out, &x, 16);
    return 0;
}

/* The atomics package converts with int.to_bytes (so inputs never wrap)
 * and checks byte strings with len(); these are its messages. */
HOT_INLINE int
to_value(AtomicObject *self, PyObject *v, unsigned char out[16],
         const char *argname)
{
    if (!self->integral) {
        Py_buffer b;
        if (PyObject_GetBuffer(v, &b, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        bool fits = (size_t)b.len == self->width;
        if (fits) {
            memcpy(out, b.buf, self->width);
        }
        PyBuffer_Release(&b);
        if (!fits) {
            PyErr_Format(PyExc_ValueError,
                         "'%s' object length does not match width.", argname);
        }
        return fits ? 0 : -1;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "'%s' must be int, not %.100s", argname,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow != 0 || s < self->lo || s > self->hi) {
        return int_value_slow(self, v, out);
    }
    u128 x = (u128)(i128)s;
    memcpy(out, &x, 16);
    return 0;
}

/* The object for the `width` bytes at v (bytes past them ignored). */
HOT_INLINE PyObject *
from_value(AtomicObject *self, const unsigned char v[16])
{
    if (!self->integral) {
        return PyBytes_FromStringAndSize((const char *)v, self->width);
    }
    u128 x;
    memcpy(&x, v, 16);
    x = widen(x, self->width, self->is_signed);
    unsigned char b[16];
    memcpy(b, &x, 16);
    return dkpy_long_from_le16(b, self->is_signed);
}

/* ---- construction ---------------------------------------------------- */

/* A new object of `type` on `buffer`: every constructor's end. */
static PyObject *
atomic_make(PyTypeObject *type, PyObject *buffer, bool integral,
            bool is_signed)
{
    AtomicObject *self = (AtomicObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &self->view,
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
        self->readonly = false;
    } else if (PyErr_ExceptionMatches(PyExc_BufferError) ||
               PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        if (PyObject_GetBuffer(buffer, &self->view, PyBUF_C_CONTIGUOUS) < 0) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_SetString(PyExc_TypeError,
                                "Keyword argument 'buffer' must support the "
                                "buffer protocol.");
            }
            Py_DECREF(self);
            return NULL;
        }
        self->readonly = true;
    } else {
        Py_DECREF(self);
        return NULL;
    }
    self->has_view = true;
    self->addr = self->view.buf;
    self->width = (unsigned)self->view.len;
    self->integral = integral;
    self->is_signed = is_signed;
    Py_ssize_t w = self->view.len;
    if (w > 16 || !dk__atomic_width_usable((unsigned)w, self->readonly)) {
        raise_error(ERR_WIDTH, self->readonly, "(n)", w);
    } else if ((uintptr_t)self->addr % (size_t)w != 0) {
        raise_error(ERR_ALIGNMENT, true, "(nK)", w,
                    (unsigned long long)(uintptr_t)self->addr);
    } else {
        /* The largest value, clamped to 64 bits, and the smallest. */
        u128 max = widen(~(u128)0, self->width, false) >> is_signed;
        self->hi = max > INT64_MAX ? INT64_MAX : (long long)max;
        self->lo = !is_signed              ? 0
                   : self->hi == INT64_MAX ? INT64_MIN
                                           : -self->hi - 1;
        return (PyObject *)self;
    }
    Py_DECREF(self);
    return NULL;
}

static PyObject *
Atomic_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "integral", "signed", NULL};
    PyObject *buffer;
    int integral = 0, is_signed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|pp", kwlist, &buffer,
                                     &integral, &is_signed)) {
        return NULL;
    }
    return atomic_make(type, buffer, integral, is_signed);
}

static PyObject *
Atomic_release(AtomicObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->has_view) {
        self->has_view = false;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static void
Atomic_dealloc(AtomicObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_DECREF(Atomic_release(self, NULL));
    dkpy_free((PyObject *)self);
}

static int
Atomic_traverse(AtomicObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    if (self->has_view) {
        Py_VISIT(self->view.obj);
    }
    return 0;
}

/* ---- CmpxchgResult --------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *success;
    PyObject *expected;
} ResultObject;

/* A cmpxchg in a retry loop makes and drops one result per call: keep a
 * few dead ones to skip the allocator (the GIL guards the list). */
#define RESULT_FREE_MAX 16
static ResultObject *result_free[RESULT_FREE_MAX];
static int result_nfree;

static PyObject *
Result_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"success", "expected", NULL};
    PyObject *success, *expected;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:CmpxchgResult", kwlist,
                                     &success, &expected)) {
        return NULL;
    }
    ResultObject *self = (ResultObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        /* Stored as given, as the package's plain attributes are. */
        self->success = Py_NewRef(success);
        self->expected = Py_NewRef(expected);
    }
    return (PyObject *)self;
}

/* Build a result without argument parsing (the hot path); steals
 * `expected`. */
static PyObject *
result_new(bool ok, PyObject *expected)
{
    PyTypeObject *type = (PyTypeObject *)cmpxchg_type;
    ResultObject *r;
    if (result_nfree > 0) {
        r = result_free[--result_nfree];
        PyObject_Init((PyObject *)r, type); /* takes a type reference */
    } else {
        r = (ResultObject *)type->tp_alloc(type, 0);
        if (r == NULL) {
            Py_DECREF(expected);
            return NULL;
        }
    }
    r->success = Py_NewRef(ok ? Py_True : Py_False);
    r->expected = expected;
    return (PyObject *)r;
}

static void
Result_dealloc(ResultObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->success);
    Py_CLEAR(self->expected);
    if (tp == (PyTypeObject *)cmpxchg_type && result_nfree < RESULT_FREE_MAX) {
        result_free[result_nfree++] = self;
    } else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
}

static int
Result_bool(ResultObject *self)
{
    if (self->success == Py_True || self->success == Py_False) {
        return self->success == Py_True;
    }
    return PyObject_IsTrue(self->success);
}

static PyObject *
Result_iter(ResultObject *self)
{
    PyObject *t = PyTuple_Pack(2, self->success, self->expected);
    if (t == NULL) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(t);
    Py_DECREF(t);
    return it;
}

static PyObject *
Result_repr(ResultObject *self)
{
    /* The package formats both fields with str(). */
    return PyUnicode_FromFormat("%s(success=%S, expected=%S)",
                                dkpy_type_name(Py_TYPE(self)), self->success,
                                self->expected);
}

static PyMemberDef Result_members[] = {
    {"success", T_OBJECT_EX, offsetof(ResultObject, success), 0,
     "Whether the exchange took place."},
    {"expected", T_OBJECT_EX, offsetof(ResultObject, expected), 0,
     "The value the object held."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Result_methods[] = {
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "__class_getitem__($cls, item, /)\n--\n\nCmpxchgResult[T]."},
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, Result_spec, "dispatchkit.atomics.CmpxchgResult",
          ResultObject, 0, {Py_tp_new, Result_new},
          {Py_tp_dealloc, Result_dealloc}, {Py_nb_bool, Result_bool},
          {Py_tp_iter, Result_iter}, {Py_tp_repr, Result_repr},
          {Py_tp_members, Result_members}, {Py_tp_methods, Result_methods},
          {Py_tp_doc,
           "CmpxchgResult(success, expected)\n--\n\nThe result of a "
           "compare-exchange: truthy when it succeeded; unpacks as "
           "(success, expected)."});

/* ---- operations ------------------------------------------------------
 *
 * Each body below serves the methods BYTE_OPS and INTEGRAL_OPS give it,
 * called as body(self, args, nargs, kwnames, OpType, argument, name).
 * Width and alignment were checked when self was made, so once a body has
 * checked the order, the core's unchecked operations (atomic_raw.h) are
 * safe.
 */

static PyObject *
do_load(AtomicObject *self, int op, int mo)
{
    if (check_live(self) < 0) {
        return NULL;
    }
    if (!dk__memory_order_valid_load(mo)) {
        order_error(op, mo, false);
        return NULL;
    }
    unsigned char v[16] = {0}; /* from_value reads all 16 */
    dk__atomic_load_raw(self->addr, self->width, v, (dk_memory_order)mo);
    return from_value(self, v);
}

static PyObject *
load(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
     PyObject *kwnames, int op, int Py_UNUSED(unused), const char *name)
{
    static const char *const names[] = {"order"};
    PyObject *order = NULL;
    if ((nargs != 0 || kwnames != NULL) &&
        dkpy_parse_fast(args, nargs, kwnames, names, NULL, 1, &order, name) <
            0) {
        return NULL;
    }
    int mo;
    return order_of(order, &mo) < 0 ? NULL : do_load(self, op, mo);
}

/* The value arguments of a writing operation, converted into vals and
 * checked in the atomics package's order, so that an input with several
 * faults raises what the package raises: a released object fails first,
 * then integral objects convert their arguments (int.to_bytes), then the
 * operation must be supported, then the order (order_ok false: the error
 * of op with mo), then byte objects check their arguments' lengths. */
HOT_INLINE int
to_values(AtomicObject *self, int n, PyObject *const *objs,
          const char *const *argnames, unsigned char (*vals)[16])
{
    for (int i = 0; i < n; i++) {
        if (to_value(self, objs[i], vals[i], argnames[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

HOT_INLINE int
write_args(AtomicObject *self, int op, int n, PyObject *const *objs,
           const char *const *argnames, unsigned char (*vals)[16],
           bool order_ok, int mo)
{
    if (check_live(self) < 0 ||
        (self->integral && to_values(self, n, objs, argnames, vals) < 0) ||
        check_write(self, op) < 0) {
        return -1;
    }
    if (!order_ok) {
        return order_error(op, mo, false);
    }
    return self->integral ? 0 : to_values(self, n, objs, argnames, vals);
}

/* Parse (value, order) or, with no value, (order): a[0] and a[1]. */
HOT_INLINE int
value_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           bool has_value, PyObject **a, const char *name)
{
    static const char *const names[] = {"value", "order"};
    static const char *const aliases[] = {"desired", NULL};
    a[0] = a[1] = NULL;
    if (!has_value) {
        return nargs == 0 && kwnames == NULL
                   ? 0
                   : dkpy_parse_fast(args, nargs, kwnames, names + 1, NULL, 1,
                                     a + 1, name);
    }
    if (dkpy_parse_fast(args, nargs, kwnames, names, aliases, 2, a, name) <
        0) {
        return -1;
    }
    if (a[0] == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing its value", name);
        return -1;
    }
    return 0;
}

static PyObject *
store(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
      PyObject *kwnames, int op, int Py_UNUSED(unused), const char *name)
{
    static const char *const names[] = {"desired", "order"};
    PyObject *a[2];
    int mo;
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, a, name) < 0 ||
        order_of(a[1], &mo) < 0 || check_live(self) < 0) {
        return NULL;
    }
    if (a[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "store() missing 'desired'");
        return NULL;
    }
    unsigned char v[1][16];
    if (write_args(self, op, 1, a, names, v, dk__memory_order_valid_store(mo),
                   mo) < 0) {
        return NULL;
    }
    dk__atomic_store_raw(self->addr, self->width, v[0], (dk_memory_order)mo);
    Py_RETURN_NONE;
}

/* A read-modify-write; fetch: return the previous value (else None).
 * Inlined into each method, where op, aop and fetch are constants: the
 * operation's switch and the argument handling it does not need fold
 * away. Integral add/sub of a negative operand on unsigned objects raises
 * OverflowError through to_value, as the package's (inputs never wrap). */
HOT_INLINE PyObject *
rmw_body(bool fetch, AtomicObject *self, PyObject *const *args,
         Py_ssize_t nargs, PyObject *kwnames, int op, dk_atomic_op_t aop,
         const char *name)
{
    bool has_value = dk__atomic_op_needs_arg(aop);
    PyObject *a[2];
    int mo;
    if (value_args(args, nargs, kwnames, has_value, a, name) < 0 ||
        order_of(a[1], &mo) < 0) {
        return NULL;
    }
    const char *argname = aop == DK_AOP_EXCHANGE ? "desired" : "value";
    unsigned char v[1][16], old[16] = {0};
    /* order_of admits only dk_memory_orders, all valid for a
     * read-modify-write. */
    if (write_args(self, op, has_value, a, &argname, v, true, mo) < 0) {
        return NULL;
    }
    dk__atomic_fetch_op_raw(self->addr, self->width, aop,
                            has_value ? v[0] : NULL, fetch ? old : NULL,
                            (dk_memory_order)mo);
    if (!fetch) {
        Py_RETURN_NONE;
    }
    return from_value(self, old);
}
/* The two bodies the operation tables name: without and with the
 * previous value returned. */
#define rmw(...) rmw_body(false, __VA_ARGS__)
#define rmw_fetch(...) rmw_body(true, __VA_ARGS__)

static PyObject *
bit_op(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
       PyObject *kwnames, int op, dk_atomic_bit_op_t bop, const char *name)
{
    static const char *const names[] = {"index", "order"};
    PyObject *a[2];
    int mo;
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, a, name) < 0 ||
        order_of(a[1], &mo) < 0) {
        return NULL;
    }
    if (a[0] == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing 'index'", name);
        return NULL;
    }
    if (bop == DK_ABIT_TEST ? check_live(self) < 0
                            : check_write(self, op) < 0) {
        return NULL;
    }
    /* A test is a load, so it takes a load order (the atomics package
     * checked it as a store order: defect A2 in our notes). */
    if (bop == DK_ABIT_TEST && !dk__memory_order_valid_load(mo)) {
        order_error(op, mo, false);
        return NULL;
    }
    long index = dkpy_index_as_long(a[0]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0 || (unsigned long)index >= (unsigned long)self->width * 8u) {
        PyErr_SetString(PyExc_ValueError, "'index' value out of range.");
        return NULL;
    }
    int r = dk_atomic_bit(self->addr, self->width, bop, (unsigned)index,
                          (dk_memory_order)mo);
    return r < 0 ? dkpy_raise_errno(r) : PyBool_FromLong(r);
}

HOT_INLINE PyObject *
cmpxchg(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
        PyObject *kwnames, int op, bool weak, const char *name)
{
    static const char *const names[] = {"expected", "desired", "success",
                                        "failure"};
    static const char *const aliases[] = {NULL, NULL, "succ", "fail"};
    PyObject *a[4];
    int succ = DK_MO_SEQ_CST, fail = DK_MO_SEQ_CST;
    if (dkpy_parse_fast(args, nargs, kwnames, names, aliases, 4, a, name) <
            0 ||
        (a[2] != NULL && order_of(a[2], &succ) < 0) ||
        (a[3] != NULL && order_of(a[3], &fail) < 0) || check_live(self) < 0) {
        return NULL;
    }
    if (a[0] == NULL || a[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "cmpxchg needs expected and desired");
        return NULL;
    }
    unsigned char v[2][16]; /* expected, desired */
    if (write_args(self, op, 2, a, names, v, true, 0) < 0) {
        return NULL;
    }
    /* The atomics package's rule (MemoryOrder.is_valid_fail_order): a load
     * order no stronger than the success order. It admits release/acquire,
     * which C11 does not; the core's unchecked cmpxchg is sequentially
     * consistent, at least as strong as any pair admitted. */
    if ((a[2] != NULL || a[3] != NULL) &&
        (!dk__memory_order_valid_load(fail) || fail > succ)) {
        order_error(op, fail, true);
        return NULL;
    }
    bool ok =
        dk__atomic_cmpxchg_raw(self->addr, self->width, v[0], v[1], weak);
    /* On success, what was there is what the caller expected: report the
     * caller's `expected` when it is exactly the type we would build (as
     * the atomics package returns it), else a fresh one (so a bytearray or
     * a bool comes back as bytes or int). */
    PyObject *seen = ok && (self->integral ? PyLong_CheckExact(a[0])
                                           : PyBytes_CheckExact(a[0]))
                         ? Py_NewRef(a[0])
                         : from_value(self, v[0]);
    return seen == NULL ? NULL : result_new(ok, seen);
}

/* Atomic_load, Atomic_fetch_neg, ...: each operation's method. */
#define METHOD(NAME, BODY, ARG, PARAMS, DOC)                                  \
    static PyObject *Atomic_##NAME(AtomicObject *self, PyObject *const *args, \
                                   Py_ssize_t nargs, PyObject *kwnames)       \
    {                                                                         \
        return BODY(self, args, nargs, kwnames, OP_##NAME, ARG, #NAME);       \
    }
BYTE_OPS(METHOD)
INTEGRAL_OPS(METHOD)
#undef METHOD

/* ---- properties and conversions -------------------------------------- */

static PyMethodDef Any_methods[], Bytes_methods[], Integral_methods[];

/* Which operations objects of `type` expose: found by the method table of
 * the class _atomic_class made it from (Python may subclass that). */
static int
kind_of(PyTypeObject *type)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyMethodDef *m =
            ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_methods;
        if (m == Integral_methods || m == Bytes_methods) {
            return m == Integral_methods ? KIND_INTEGRAL : KIND_BYTES;
        }
    }
    return KIND_ANY;
}

/* The plain properties, one getter for all: the closure says which. */
enum { PROP_WIDTH, PROP_READONLY, PROP_SIGNED, PROP_ADDRESS };

static PyObject *
Atomic_get(AtomicObject *self, void *which)
{
    if (check_live(self) < 0) {
        return NULL;
    }
    switch ((intptr_t)which) {
    case PROP_WIDTH:
        return PyLong_FromUnsignedLong(self->width);
    case PROP_READONLY:
        return PyBool_FromLong(self->readonly);
    case PROP_SIGNED:
        return PyBool_FromLong(self->is_signed);
    default:
        return PyLong_FromVoidPtr(self->addr);
    }
}

static PyObject *
Atomic_get_ops_supported(AtomicObject *self, void *Py_UNUSED(closure))
{
    if (check_live(self) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    int kind = kind_of(Py_TYPE(self));
    int last = kind == KIND_INTEGRAL ? OP_fetch_neg
               : kind == KIND_BYTES  ? OP_bin_fetch_not
                                     : 0;
    for (int op = 1; list != NULL && op <= last; op++) {
        if (self->readonly && op != OP_load && op != OP_bit_test) {
            continue;
        }
        PyObject *o = optype_obj(op);
        if (o == NULL || PyList_Append(list, o) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(o);
    }
    return list;
}

static PyObject *
Atomic_int(AtomicObject *self)
{
    return do_load(self, OP_load, DK_MO_SEQ_CST);
}

static PyObject *
Atomic_bytes(AtomicObject *self, PyObject *Py_UNUSED(unused))
{
    return Atomic_int(self);
}

static PyObject *
Atomic_str(AtomicObject *self)
{
    const char *name = dkpy_type_name(Py_TYPE(self));
    const char *ro = self->readonly ? "True" : "False";
    if (check_live(self) < 0) {
        return NULL; /* as the package: any use of a released object */
    }
    int kind = kind_of(Py_TYPE(self));
    if (kind == KIND_ANY) {
        return PyUnicode_FromFormat("%s(width=%u, readonly=%s)", name,
                                    self->width, ro);
    }
    PyObject *v = Atomic_int(self);
    PyObject *s =
        v == NULL ? NULL
        : kind == KIND_INTEGRAL
            ? PyUnicode_FromFormat(
                  "%s(value=%R, width=%u, readonly=%s, signed=%s)", name, v,
                  self->width, ro, self->is_signed ? "True" : "False")
            : PyUnicode_FromFormat("%s(value=%R, width=%u, readonly=%s)", name,
                                   v, self->width, ro);
    Py_XDECREF(v);
    return s;
}

/* The method table entries of BYTE_OPS and INTEGRAL_OPS. */
#define ENTRY(NAME, BODY, ARG, PARAMS, DOC)                                   \
    {#NAME, DKPY_METH_FAST(Atomic_##NAME),                                    \
     #NAME "($self, " PARAMS ")\n--\n\n" DOC},
/* The package's shorter names of the bit operations. */
#define BIT_ALIAS(NAME, OF)                                                   \
    {#NAME, DKPY_METH_FAST(Atomic_##OF),                                      \
     #NAME "($self, index, " ORDER ")\n--\n\nAlias of " #OF "."},
#define BIT_ALIASES                                                           \
    BIT_ALIAS(bit_compl, bit_test_compl)                                      \
    BIT_ALIAS(bit_set, bit_test_set) BIT_ALIAS(bit_reset, bit_test_reset)

static PyMethodDef Any_methods[] = {
    {"_release", (PyCFunction)Atomic_release, METH_NOARGS,
     "_release($self, /)\n--\n\nRelease the buffer (views)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Bytes_methods[] = {
    BYTE_OPS(ENTRY)
        BIT_ALIASES{"__bytes__", (PyCFunction)Atomic_bytes, METH_NOARGS,
                    "__bytes__($self, /)\n--\n\nThe value."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Integral_methods[] = {
    BYTE_OPS(ENTRY) BIT_ALIASES INTEGRAL_OPS(ENTRY){NULL, NULL, 0, NULL},
};

static PyGetSetDef Any_getset[] = {
    {"width", (getter)Atomic_get, NULL, "Width in bytes.", (void *)PROP_WIDTH},
    {"readonly", (getter)Atomic_get, NULL,
     "Whether modifying operations are supported.", (void *)PROP_READONLY},
    {"ops_supported", (getter)Atomic_get_ops_supported, NULL,
     "Sorted list of supported OpType values.", NULL},
    {"_address", (getter)Atomic_get, NULL, "Buffer address.",
     (void *)PROP_ADDRESS},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef Integral_getset[] = {
    {"signed", (getter)Atomic_get, NULL, "Whether arithmetic is signed.",
     (void *)PROP_SIGNED},
    {NULL, NULL, NULL, NULL, NULL},
};

#define ATOMIC_FLAGS (Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC)

/* No text signature: the view classes inherit this constructor's and
 * cannot be constructed. */
DKPY_TYPE(static, Any_spec, "dispatchkit._dk._AtomicAny", AtomicObject,
          ATOMIC_FLAGS, {Py_tp_new, Atomic_new},
          {Py_tp_dealloc, Atomic_dealloc}, {Py_tp_traverse, Atomic_traverse},
          {Py_tp_methods, Any_methods}, {Py_tp_getset, Any_getset},
          {Py_tp_str, Atomic_str},
          {Py_tp_doc, "The base of every atomic class."});

/* ---- concrete classes ------------------------------------------------
 *
 * CPython 3.11 specializes a method call only when the method was defined
 * by the object's exact type, so a Python subclass of our base types would
 * pay the generic call path on every operation. The seed's concrete
 * classes (AtomicInt, AtomicUintView, ...) are therefore created here, each
 * with its own method table, on bases that include the Python mixins
 * (ANY, INT, ...) so isinstance checks work as in the atomics package.
 *
 * A class's mode is parsed once, by _atomic_class, and kept as the choice
 * of its tp_new (owned_new_any, ...), which subclasses inherit: "any",
 * "bytes", "integral" (is_signed given), "int" and "uint" for classes
 * constructed with width=; "view" for view classes, which cannot be
 * constructed directly.
 */
typedef enum {
    MODE_ANY,
    MODE_BYTES,
    MODE_INTEGRAL,
    MODE_INT,
    MODE_UINT,
    MODE_VIEW,
} owned_mode;

static const char *const mode_names[] = {
    [MODE_ANY] = "any", [MODE_BYTES] = "bytes", [MODE_INTEGRAL] = "integral",
    [MODE_INT] = "int", [MODE_UINT] = "uint",   [MODE_VIEW] = "view",
};
static const char *const kind_names[] = {
    [KIND_ANY] = "any", [KIND_BYTES] = "bytes", [KIND_INTEGRAL] = "integral"};

static PyObject *
owned_new(PyTypeObject *type, PyObject *args, PyObject *kwargs,
          owned_mode mode)
{
    const char *name = dkpy_type_name(type);
    if (mode == MODE_VIEW) {
        PyErr_Format(PyExc_TypeError,
                     "%s objects are obtained from an atomicview() context, "
                     "not constructed directly",
                     name);
        return NULL;
    }
    static char *kw_any[] = {"width", "is_integral", "is_signed", NULL};
    PyObject *w =
        kwargs != NULL ? PyDict_GetItemString(kwargs, "width") : NULL;
    if (w != NULL && !PyLong_Check(w)) {
        PyErr_SetString(PyExc_TypeError,
                        "Keyword argument 'width' must have type 'int'.");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes keyword arguments only",
                     name);
        return NULL;
    }
    static char *kw_integral[] = {"width", "is_signed", NULL};
    static char *kw_width[] = {"width", NULL};
    Py_ssize_t width;
    int integral = mode != MODE_ANY && mode != MODE_BYTES;
    int is_signed = mode == MODE_INT;
    if (!(mode == MODE_ANY
              ? PyArg_ParseTupleAndKeywords(args, kwargs, "n|pp", kw_any,
                                            &width, &integral, &is_signed)
          : mode == MODE_INTEGRAL
              ? PyArg_ParseTupleAndKeywords(args, kwargs, "np", kw_integral,
                                            &width, &is_signed)
              : PyArg_ParseTupleAndKeywords(args, kwargs, "n", kw_width,
                                            &width))) {
        return NULL;
    }
    if (width < 0) {
        PyErr_SetString(PyExc_ValueError, "Negative width"); /* as atomics */
        return NULL;
    }
    /* A bytearray's storage is malloc'ed: aligned for every width. */
    PyObject *buf = PyByteArray_FromStringAndSize(NULL, width);
    if (buf == NULL) {
        return NULL;
    }
    memset(PyByteArray_AS_STRING(buf), 0, (size_t)width);
    PyObject *self = atomic_make(type, buf, integral, is_signed);
    Py_DECREF(buf);
    return self;
}

#define OWNED_NEW(MODE)                                                       \
    static PyObject *owned_new_##MODE(PyTypeObject *type, PyObject *args,     \
                                      PyObject *kwargs)                       \
    {                                                                         \
        return owned_new(type, args, kwargs, MODE);                           \
    }
OWNED_NEW(MODE_ANY)
OWNED_NEW(MODE_BYTES)
OWNED_NEW(MODE_INTEGRAL)
OWNED_NEW(MODE_INT)
OWNED_NEW(MODE_UINT)
OWNED_NEW(MODE_VIEW)
#undef OWNED_NEW

static newfunc const owned_new_of[] = {
    owned_new_MODE_ANY, owned_new_MODE_BYTES, owned_new_MODE_INTEGRAL,
    owned_new_MODE_INT, owned_new_MODE_UINT,  owned_new_MODE_VIEW,
};

static PyObject *
atomic_view_new(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyTypeObject *cls;
    PyObject *buffer;
    int integral, is_signed;
    if (!PyArg_ParseTuple(args, "O!Opp", &PyType_Type, &cls, &buffer,
                          &integral, &is_signed)) {
        return NULL;
    }
    if (!PyType_IsSubtype(cls, any_type)) {
        PyErr_SetString(PyExc_TypeError, "not an atomic class");
        return NULL;
    }
    return atomic_make(cls, buffer, integral, is_signed);
}

/* tp_name, which CPython's own messages print ("a bytes-like object is
 * required, not 'X'"), becomes the bare class name, as for the package's
 * Python classes: assigning __name__ repoints it. */
static int
set_bare_name(PyObject *type, const char *name)
{
    PyObject *s = PyUnicode_FromString(name);
    int rc = s == NULL ? -1 : PyObject_SetAttrString(type, "__name__", s);
    Py_XDECREF(s);
    return rc;
}

/* The index of `s` in names[0..n), or -1 with ValueError. */
static int
name_index(const char *s, const char *const *names, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown atomic class %s '%s'", what, s);
    return -1;
}

static PyObject *
atomic_class(PyObject *module, PyObject *args)
{
    const char *name, *kind_name, *mode_name, *qualmod;
    PyObject *bases;
    if (!PyArg_ParseTuple(args, "sssO!s", &name, &kind_name, &mode_name,
                          &PyTuple_Type, &bases, &qualmod)) {
        return NULL;
    }
    int kind = name_index(kind_name, kind_names, 3, "kind");
    int mode = kind < 0 ? -1 : name_index(mode_name, mode_names, 6, "mode");
    if (mode < 0) {
        return NULL;
    }
    /* The spec's name must outlive the type: keep one copy per class. */
    size_t len = strlen(qualmod) + strlen(name) + 2;
    char *full = PyMem_RawMalloc(len);
    if (full == NULL) {
        return PyErr_NoMemory();
    }
    snprintf(full, len, "%s.%s", qualmod, name);
    /* The constructor's text signature (inspect.signature(cls)), keyword
     * only as in the package; view classes have no constructor. */
    const char *params = mode == MODE_ANY ? "*, width, is_integral=False, "
                                            "is_signed=False"
                         : mode == MODE_INTEGRAL ? "*, width, is_signed"
                                                 : "*, width";
    char doc[160];
    if (mode != MODE_VIEW) {
        snprintf(doc, sizeof doc, "%s(%s)\n--\n\n", name, params);
    } else {
        snprintf(doc, sizeof doc, "Obtained from an atomicview() context.");
    }
    static PyMethodDef *const methods_of[] = {Any_methods, Bytes_methods,
                                              Integral_methods};
    /* Only integral classes go on past the getset row. */
    PyType_Slot slots[] = {
        {Py_tp_new, (void *)owned_new_of[mode]},
        {Py_tp_traverse, Atomic_traverse},
        {Py_tp_methods, methods_of[kind]},
        {Py_tp_doc, doc},
        {kind == KIND_INTEGRAL ? Py_tp_getset : 0, Integral_getset},
        {Py_nb_int, Atomic_int},
        {0, NULL},
    };
    PyType_Spec spec = {full, sizeof(AtomicObject), 0,
                        Py_TPFLAGS_DEFAULT | ATOMIC_FLAGS, slots};
    PyObject *t = dkpy_type_from_spec(module, &spec, bases);
    if (t == NULL) {
        PyMem_RawFree(full);
        return NULL;
    }
    if (set_bare_name(t, name) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* ---- setup ----------------------------------------------------------- */

static PyObject *
atomics_setup(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *a[ERR_COUNT + 1];
    if (!PyArg_ParseTuple(args, "OOOOO", &a[0], &a[1], &a[2], &a[3], &a[4])) {
        return NULL;
    }
    /* Setting up again (a reload of dispatchkit.atomics) replaces the
     * classes without leaking the previous ones. */
    for (int i = 0; i < ERR_COUNT; i++) {
        Py_XSETREF(error_type[i], Py_NewRef(a[i]));
    }
    Py_XSETREF(optype, Py_NewRef(a[ERR_COUNT]));
    Py_RETURN_NONE;
}

static PyObject *
buffer_address(PyObject *Py_UNUSED(module), PyObject *obj)
{
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *r =
        Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)b.buf, b.len);
    PyBuffer_Release(&b);
    return r;
}

static PyMethodDef atomics_functions[] = {
    {"_atomic_class", atomic_class, METH_VARARGS,
     "_atomic_class($module, name, kind, mode, bases, module, /)\n--\n\n"
     "A new atomic class."},
    {"_atomic_view", atomic_view_new, METH_VARARGS,
     "_atomic_view($module, cls, buffer, integral, signed, /)\n--\n\n"
     "A new view object of cls on buffer."},
    {"_buffer_address", buffer_address, METH_O,
     "_buffer_address($module, buffer, /)\n--\n\n(address, length) of a "
     "buffer."},
    {"_atomics_setup", atomics_setup, METH_VARARGS,
     "_atomics_setup($module, alignment_error, memory_order_error, "
     "width_error, operation_error, optype, /)\n--\n\nHand the atomics "
     "exception classes and OpType to the extension."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_atomics_exec(PyObject *m)
{
    any_type = dkpy_add_type(m, &Any_spec, NULL, "");
    cmpxchg_type =
        any_type ? (PyObject *)dkpy_add_type(m, &Result_spec, NULL, "") : NULL;
    /* Its bare name in messages, as for the package's class. */
    if (cmpxchg_type == NULL ||
        set_bare_name(cmpxchg_type, "CmpxchgResult") < 0 ||
        PyModule_AddFunctions(m, atomics_functions) < 0 ||
        PyModule_AddObject(m, "_ATOMIC16",
                           PyBool_FromLong(dk_atomic16_supported())) < 0) {
        return -1;
    }
    return PyModule_AddObject(
        m, "_ATOMIC16_READONLY",
        PyBool_FromLong(dk_atomic16_readonly_load_supported()));
}
