/*
 * Binding of dispatchkit.atomics: three C base types carrying every
 * operation as a direct C method (no Python wrapper on the hot path):
 * _AtomicAny (properties only), _AtomicBytes (byte operations, values as
 * bytes) and _AtomicIntegral (byte operations plus arithmetic, values as
 * int). The seed's class hierarchy is built in Python on top of them.
 * The exception classes, OpType and MemoryOrder live in Python and are
 * handed to us by dispatchkit.atomics at import (_atomics_setup).
 */
#include "python/binding.h"

#include <string.h>
#include <structmember.h>

#include "atomic_raw.h"
#include "dk/atomic.h"

typedef struct {
    PyObject_HEAD
    void *addr;
    Py_buffer view;
    unsigned width;
    bool has_view;
    bool readonly;
    bool integral;
    bool is_signed;
    unsigned char kind; /* KIND_*: which operations the class exposes */
} AtomicObject;

enum { KIND_ANY, KIND_BYTES, KIND_INTEGRAL };

/* For the steps of every operation's call (argument conversion, the
 * read-modify-write body): inlined into each method, they cost no call
 * frame of their own, and the method's constants fold into them. */
#define HOT_INLINE static inline __attribute__((always_inline))

/* OpType values, as the atomics package numbers them. */
enum {
    OP_STORE = 1,
    OP_LOAD,
    OP_EXCHANGE,
    OP_CMPXCHG_WEAK,
    OP_CMPXCHG_STRONG,
    OP_BIT_TEST,
    OP_BIT_TEST_COMPL,
    OP_BIT_TEST_SET,
    OP_BIT_TEST_RESET,
    OP_OR,
    OP_XOR,
    OP_AND,
    OP_NOT,
    OP_FETCH_OR,
    OP_FETCH_XOR,
    OP_FETCH_AND,
    OP_FETCH_NOT,
    OP_ADD,
    OP_SUB,
    OP_INC,
    OP_DEC,
    OP_NEG,
    OP_FETCH_ADD,
    OP_FETCH_SUB,
    OP_FETCH_INC,
    OP_FETCH_DEC,
    OP_FETCH_NEG,
};

static struct {
    PyObject *alignment_error, *memory_order_error, *width_error,
        *operation_error, *optype, *cmpxchg_type;
} ax;

static PyTypeObject *any_type, *bytes_type, *integral_type;

static void
raise_cls(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    if (args == NULL) {
        return;
    }
    PyObject *e = PyObject_Call(cls, args, kwargs);
    Py_DECREF(args);
    Py_XDECREF(kwargs);
    if (e != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
        Py_DECREF(e);
    }
}

static PyObject *
optype_obj(int op)
{
    return PyObject_CallFunction(ax.optype, "i", op);
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

static int
readonly_error(AtomicObject *self, int op)
{
    PyObject *o = optype_obj(op);
    if (o != NULL) {
        raise_cls(ax.operation_error, Py_BuildValue("(NI)", o, self->width),
                  Py_BuildValue("{s:O}", "readonly", Py_True));
    }
    return -1;
}

static inline int
check_write(AtomicObject *self, int op)
{
    if (check_live(self) < 0) {
        return -1;
    }
    return self->readonly ? readonly_error(self, op) : 0;
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
    PyObject *o = optype_obj(op);
    if (o == NULL) {
        return -1;
    }
    PyObject *mcls = PyObject_GetAttrString(
        PyImport_AddModule("dispatchkit.atomics"), "MemoryOrder");
    PyObject *m = mcls ? PyObject_CallFunction(mcls, "i", mo) : NULL;
    Py_XDECREF(mcls);
    if (m == NULL) {
        Py_DECREF(o);
        return -1;
    }
    raise_cls(ax.memory_order_error, Py_BuildValue("(NN)", o, m),
              Py_BuildValue("{s:O}", "is_fail", is_fail ? Py_True : Py_False));
    return -1;
}

/* ---- values ---------------------------------------------------------- */

/* The atomics package converts with int.to_bytes (so inputs never wrap)
 * and checks byte strings with len(); these are its messages. */
static int
length_error(const char *argname)
{
    PyErr_Format(PyExc_ValueError, "'%s' object length does not match width.",
                 argname);
    return -1;
}

/* A value as the core's byte operations (dk_atomic_load and friends)
 * take it: `width` bytes in native order, in a 16-byte buffer. Integers
 * of up to 8 bytes pass through a uint64_t, whose low `width` bytes these
 * move; on a little-endian CPU they move all 8 (a constant-size copy the
 * compiler inlines): the core ignores the bytes past `width`, and
 * from_value shifts them out. */
static void
put_native(unsigned char out[16], unsigned width, uint64_t x)
{
#if PY_LITTLE_ENDIAN
    (void)width;
    memcpy(out, &x, 8);
#else
    memcpy(out, (unsigned char *)&x + 8 - width, width);
#endif
}

static uint64_t
get_native(const unsigned char in[16], unsigned width)
{
    uint64_t x = 0;
#if PY_LITTLE_ENDIAN
    (void)width;
    memcpy(&x, in, 8);
    return x;
#else
    memcpy((unsigned char *)&x + 8 - width, in, width);
    return x;
#endif
}

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
        return fits ? 0 : length_error(argname);
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "'%s' must be int, not %.100s", argname,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (self->width == 16) {
        /* The same conversion (and messages) as int.to_bytes. */
        return dkpy_long_to_le16(v, out, self->is_signed);
    }
    unsigned bits = self->width * 8;
    if (self->is_signed) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow != 0 || (bits < 64 && (x < -(1LL << (bits - 1)) ||
                                            x >= (1LL << (bits - 1))))) {
            PyErr_SetString(PyExc_OverflowError, "int too big to convert");
            return -1;
        }
        put_native(out, self->width, (uint64_t)x);
        return 0;
    }
    /* Raises "can't convert negative int to unsigned" and "int too big to
     * convert" itself, as int.to_bytes does. */
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (bits < 64 && x >> bits) {
        PyErr_SetString(PyExc_OverflowError, "int too big to convert");
        return -1;
    }
    put_native(out, self->width, x);
    return 0;
}

HOT_INLINE PyObject *
from_value(AtomicObject *self, const unsigned char v[16])
{
    if (!self->integral) {
        return PyBytes_FromStringAndSize((const char *)v, self->width);
    }
    if (self->width == 16) {
        return dkpy_long_from_le16(v, self->is_signed);
    }
    /* The value in the top bits, then back down (sign-extending if
     * signed), which also clears any bytes past the width. */
    unsigned shift = 64 - self->width * 8;
    uint64_t x = get_native(v, self->width) << shift;
    if (self->is_signed) {
        return PyLong_FromLongLong((long long)x >> shift);
    }
    return PyLong_FromUnsignedLongLong(x >> shift);
}

/* ---- construction ---------------------------------------------------- */

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
    /* The class's operations decide its kind (classes are made by
     * _atomic_class, with the base types' method tables). */
    self->kind =
        PyObject_HasAttrString((PyObject *)type, "fetch_neg") ? KIND_INTEGRAL
        : PyObject_HasAttrString((PyObject *)type, "load")    ? KIND_BYTES
                                                              : KIND_ANY;
    self->width = (unsigned)self->view.len;
    self->integral = integral != 0;
    self->is_signed = is_signed != 0;
    size_t w = (size_t)self->view.len;
    /* A read-only 16-byte object needs a load that does not write. */
    bool ok =
        dk_atomic_width_supported((unsigned)w) &&
        (w != 16 || !self->readonly || dk_atomic16_readonly_load_supported());
    if (!ok) {
        raise_cls(ax.width_error, Py_BuildValue("(n)", self->view.len),
                  Py_BuildValue("{s:O}", "readonly",
                                self->readonly ? Py_True : Py_False));
        Py_DECREF(self);
        return NULL;
    }
    if ((uintptr_t)self->addr % w != 0) {
        raise_cls(ax.alignment_error,
                  Py_BuildValue("(nK)", self->view.len,
                                (unsigned long long)(uintptr_t)self->addr),
                  Py_BuildValue("{s:O}", "using_recommended", Py_True));
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
Atomic_dealloc(AtomicObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->has_view) {
        self->has_view = false;
        PyBuffer_Release(&self->view);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
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

static PyObject *
Atomic_release(AtomicObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->has_view) {
        self->has_view = false;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

/* ---- operations ------------------------------------------------------ */

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
    unsigned char v[16] = {0}; /* from_value reads 8 bytes of it */
    /* Width and alignment were checked when self was made, the order
     * above: the core's unchecked load (atomic_raw.h) is safe here. */
    dk__atomic_load_raw(self->addr, self->width, v, (dk_memory_order)mo);
    return from_value(self, v);
}

static PyObject *
Atomic_load(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    int mo = DK_MO_SEQ_CST;
    if (nargs != 0 || kwnames != NULL) {
        static const char *const names[] = {"order"};
        PyObject *a[1];
        if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 1, a, "load") <
                0 ||
            order_of(a[0], &mo) < 0) {
            return NULL;
        }
    }
    return do_load(self, OP_LOAD, mo);
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

static PyObject *
Atomic_store(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    static const char *const names[] = {"desired", "order"};
    PyObject *a[2];
    int mo;
    if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 2, a, "store") <
            0 ||
        order_of(a[1], &mo) < 0 || check_live(self) < 0) {
        return NULL;
    }
    if (a[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "store() missing 'desired'");
        return NULL;
    }
    unsigned char v[1][16];
    if (write_args(self, OP_STORE, 1, a, names, v,
                   dk__memory_order_valid_store(mo), mo) < 0) {
        return NULL;
    }
    /* Width and alignment were checked when self was made, the order by
     * write_args. */
    dk__atomic_store_raw(self->addr, self->width, v[0], (dk_memory_order)mo);
    Py_RETURN_NONE;
}

/* A read-modify-write with an optional value argument. fetch: return the
 * previous value (else None). Inlined into each method below, where op,
 * aop, has_value and fetch are constants: the operation's switch and the
 * argument handling it does not need fold away. */
HOT_INLINE PyObject *
rmw(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
    PyObject *kwnames, int op, dk_atomic_op_t aop, bool has_value, bool fetch,
    const char *name)
{
    PyObject *a[2];
    int mo;
    if (has_value) {
        static const char *const names[] = {"value", "order"};
        static const char *const aliases[] = {"desired", NULL};
        if (dkpy_parse_fast(args, nargs, kwnames, names, aliases, 2, a, name) <
            0) {
            return NULL;
        }
        if (a[0] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing its value", name);
            return NULL;
        }
    } else if (nargs != 0 || kwnames != NULL) {
        static const char *const names[] = {"order"};
        if (dkpy_parse_fast(args, nargs, kwnames, names, NULL, 1, a + 1,
                            name) < 0) {
            return NULL;
        }
    } else {
        a[1] = NULL;
    }
    if (order_of(a[1], &mo) < 0) {
        return NULL;
    }
    const char *argname = op == OP_EXCHANGE ? "desired" : "value";
    unsigned char v[1][16], old[16] = {0};
    if (write_args(self, op, has_value, a, &argname, v, true, mo) < 0) {
        return NULL;
    }
    /* Width and alignment were checked when self was made; order_of
     * admits only dk_memory_orders, all valid for a read-modify-write. */
    dk__atomic_fetch_op_raw(self->addr, self->width, aop,
                            has_value ? v[0] : NULL, fetch ? old : NULL,
                            (dk_memory_order)mo);
    if (!fetch) {
        Py_RETURN_NONE;
    }
    return from_value(self, old);
}

#define RMW_METHOD(NAME, OP, AOP, HASVAL, FETCH)                              \
    static PyObject *Atomic_##NAME(AtomicObject *self, PyObject *const *args, \
                                   Py_ssize_t nargs, PyObject *kwnames)       \
    {                                                                         \
        return rmw(self, args, nargs, kwnames, OP, AOP, HASVAL, FETCH,        \
                   #NAME);                                                    \
    }

RMW_METHOD(exchange, OP_EXCHANGE, DK_AOP_EXCHANGE, true, true)
RMW_METHOD(bin_or, OP_OR, DK_AOP_OR, true, false)
RMW_METHOD(bin_xor, OP_XOR, DK_AOP_XOR, true, false)
RMW_METHOD(bin_and, OP_AND, DK_AOP_AND, true, false)
RMW_METHOD(bin_not, OP_NOT, DK_AOP_NOT, false, false)
RMW_METHOD(bin_fetch_or, OP_FETCH_OR, DK_AOP_OR, true, true)
RMW_METHOD(bin_fetch_xor, OP_FETCH_XOR, DK_AOP_XOR, true, true)
RMW_METHOD(bin_fetch_and, OP_FETCH_AND, DK_AOP_AND, true, true)
RMW_METHOD(bin_fetch_not, OP_FETCH_NOT, DK_AOP_NOT, false, true)
RMW_METHOD(add, OP_ADD, DK_AOP_ADD, true, false)
RMW_METHOD(sub, OP_SUB, DK_AOP_SUB, true, false)
RMW_METHOD(inc, OP_INC, DK_AOP_INC, false, false)
RMW_METHOD(dec, OP_DEC, DK_AOP_DEC, false, false)
RMW_METHOD(neg, OP_NEG, DK_AOP_NEG, false, false)
RMW_METHOD(fetch_add, OP_FETCH_ADD, DK_AOP_ADD, true, true)
RMW_METHOD(fetch_sub, OP_FETCH_SUB, DK_AOP_SUB, true, true)
RMW_METHOD(fetch_inc, OP_FETCH_INC, DK_AOP_INC, false, true)
RMW_METHOD(fetch_dec, OP_FETCH_DEC, DK_AOP_DEC, false, true)
RMW_METHOD(fetch_neg, OP_FETCH_NEG, DK_AOP_NEG, false, true)

/* Integral add/sub with a negative operand on unsigned objects: the seed
 * package raises OverflowError (inputs do not wrap); so do we, through
 * to_value. */

static PyObject *
bit_op(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
       PyObject *kwnames, int op, const char *name)
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
    if (op == OP_BIT_TEST ? check_live(self) < 0 : check_write(self, op) < 0) {
        return NULL;
    }
    /* A test is a load, so it takes a load order (the atomics package
     * checked it as a store order: defect A2 in our notes). */
    if (op == OP_BIT_TEST && !dk__memory_order_valid_load(mo)) {
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
    dk_atomic_bit_op_t bop = op == OP_BIT_TEST         ? DK_ABIT_TEST
                             : op == OP_BIT_TEST_SET   ? DK_ABIT_SET
                             : op == OP_BIT_TEST_RESET ? DK_ABIT_RESET
                                                       : DK_ABIT_COMPL;
    /* Width, alignment, order and index were all checked above. */
    int r = dk_atomic_bit(self->addr, self->width, bop, (unsigned)index,
                          (dk_memory_order)mo);
    if (r < 0) {
        return dkpy_raise_oserror(r);
    }
    return PyBool_FromLong(r);
}

#define BIT_METHOD(NAME, OP)                                                  \
    static PyObject *Atomic_##NAME(AtomicObject *self, PyObject *const *args, \
                                   Py_ssize_t nargs, PyObject *kwnames)       \
    {                                                                         \
        return bit_op(self, args, nargs, kwnames, OP, #NAME);                 \
    }

BIT_METHOD(bit_test, OP_BIT_TEST)
BIT_METHOD(bit_test_compl, OP_BIT_TEST_COMPL)
BIT_METHOD(bit_test_set, OP_BIT_TEST_SET)
BIT_METHOD(bit_test_reset, OP_BIT_TEST_RESET)

static PyObject *result_new(bool ok, PyObject *expected);

/* The value a successful cmpxchg reports: the caller's `expected` when it
 * is exactly the type we would build (as the atomics package returns it),
 * else a fresh one (so a bytearray or a bool comes back as bytes or int). */
static PyObject *
expected_back(AtomicObject *self, PyObject *given, const unsigned char x[16])
{
    if (self->integral ? PyLong_CheckExact(given)
                       : PyBytes_CheckExact(given)) {
        return Py_NewRef(given);
    }
    return from_value(self, x);
}

static PyObject *
cmpxchg(AtomicObject *self, PyObject *const *args, Py_ssize_t nargs,
        PyObject *kwnames, bool weak)
{
    static const char *const names[] = {"expected", "desired", "success",
                                        "failure"};
    static const char *const aliases[] = {NULL, NULL, "succ", "fail"};
    int op = weak ? OP_CMPXCHG_WEAK : OP_CMPXCHG_STRONG;
    PyObject *a[4];
    int succ = DK_MO_SEQ_CST, fail = DK_MO_SEQ_CST;
    if (dkpy_parse_fast(args, nargs, kwnames, names, aliases, 4, a,
                        weak ? "cmpxchg_weak" : "cmpxchg_strong") < 0 ||
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
     * which C11 does not; the sequentially consistent CAS below is at
     * least as strong as both. */
    if ((a[2] != NULL || a[3] != NULL) &&
        (!dk__memory_order_valid_load(fail) || fail > succ)) {
        order_error(op, fail, true);
        return NULL;
    }
    /* Width and alignment were checked when self was made, the orders
     * above; the core's unchecked cmpxchg is sequentially consistent,
     * which is at least as strong as any pair admitted. */
    bool ok =
        dk__atomic_cmpxchg_raw(self->addr, self->width, v[0], v[1], weak);
    /* On success, what was there is what the caller expected. */
    PyObject *seen =
        ok ? expected_back(self, a[0], v[0]) : from_value(self, v[0]);
    if (seen == NULL) {
        return NULL;
    }
    return result_new(ok, seen);
}

static PyObject *
Atomic_cmpxchg_weak(AtomicObject *self, PyObject *const *args,
                    Py_ssize_t nargs, PyObject *kwnames)
{
    return cmpxchg(self, args, nargs, kwnames, true);
}

static PyObject *
Atomic_cmpxchg_strong(AtomicObject *self, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames)
{
    return cmpxchg(self, args, nargs, kwnames, false);
}

/* ---- properties and conversions -------------------------------------- */

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
    if (list == NULL) {
        return NULL;
    }
    int last = self->kind == KIND_INTEGRAL ? OP_FETCH_NEG
               : self->kind == KIND_BYTES  ? OP_FETCH_NOT
                                           : 0;
    for (int op = 1; op <= last; op++) {
        if (self->readonly && op != OP_LOAD && op != OP_BIT_TEST) {
            continue;
        }
        PyObject *o = optype_obj(op);
        if (o == NULL || PyList_Append(list, o) < 0) {
            Py_XDECREF(o);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(o);
    }
    return list;
}

static PyObject *
Atomic_int(AtomicObject *self)
{
    return do_load(self, OP_LOAD, DK_MO_SEQ_CST);
}

static PyObject *
Atomic_bytes(AtomicObject *self, PyObject *Py_UNUSED(unused))
{
    return do_load(self, OP_LOAD, DK_MO_SEQ_CST);
}

static PyObject *
Atomic_str(AtomicObject *self)
{
    const char *name = dkpy_type_name(Py_TYPE(self));
    if (check_live(self) < 0) {
        return NULL; /* as the package: any use of a released object */
    }
    if (self->kind == KIND_ANY) {
        return PyUnicode_FromFormat("%s(width=%u, readonly=%s)", name,
                                    self->width,
                                    self->readonly ? "True" : "False");
    }
    PyObject *v = do_load(self, OP_LOAD, DK_MO_SEQ_CST);
    if (v == NULL) {
        return NULL;
    }
    PyObject *s;
    if (self->kind == KIND_INTEGRAL) {
        s = PyUnicode_FromFormat("%s(value=%R, width=%u, readonly=%s, "
                                 "signed=%s)",
                                 name, v, self->width,
                                 self->readonly ? "True" : "False",
                                 self->is_signed ? "True" : "False");
    } else {
        s = PyUnicode_FromFormat("%s(value=%R, width=%u, readonly=%s)", name,
                                 v, self->width,
                                 self->readonly ? "True" : "False");
    }
    Py_DECREF(v);
    return s;
}

#define FAST(NAME, DOC)                                                       \
    {                                                                         \
#NAME, DKPY_METH_FAST(Atomic_##NAME), DOC                             \
    }

/* Text signatures (inspect.signature, help()): the parameters as the
 * atomics package names them, the order defaulting to SEQ_CST. */
#define SIG(NAME, PARAMS, DOC) #NAME "($self, " PARAMS ")\n--\n\n" DOC
#define ORDER "order=dispatchkit.atomics.MemoryOrder.SEQ_CST"
#define ORDERS                                                                \
    "success=dispatchkit.atomics.MemoryOrder.SEQ_CST, "                       \
    "failure=dispatchkit.atomics.MemoryOrder.SEQ_CST"

/* The package's shorter names of the bit operations. */
#define BIT_ALIAS(NAME, OF)                                                   \
    {                                                                         \
#NAME, DKPY_METH_FAST(Atomic_##OF),                                   \
            SIG(NAME, "index, " ORDER, "Alias of " #OF ".")                   \
    }

static PyMethodDef Any_methods[] = {
    {"_release", (PyCFunction)Atomic_release, METH_NOARGS,
     "_release($self, /)\n--\n\nRelease the buffer (views)."},
    {NULL, NULL, 0, NULL},
};

#define BYTE_METHODS                                                          \
    FAST(load, SIG(load, ORDER, "The value.")),                               \
        FAST(store, SIG(store, "desired, " ORDER, "Store desired.")),         \
        FAST(exchange, SIG(exchange, "desired, " ORDER,                       \
                           "Store desired; returns the old value.")),         \
        FAST(cmpxchg_weak,                                                    \
             SIG(cmpxchg_weak, "expected, desired, " ORDERS,                  \
                 "Compare and exchange (may fail spuriously); returns a "     \
                 "CmpxchgResult.")),                                          \
        FAST(cmpxchg_strong,                                                  \
             SIG(cmpxchg_strong, "expected, desired, " ORDERS,                \
                 "Compare and exchange; returns a CmpxchgResult.")),          \
        FAST(bit_test, SIG(bit_test, "index, " ORDER, "The bit at index.")),  \
        FAST(bit_test_compl, SIG(bit_test_compl, "index, " ORDER,             \
                                 "Flip the bit; returns its old value.")),    \
        FAST(bit_test_set, SIG(bit_test_set, "index, " ORDER,                 \
                               "Set the bit; returns its old value.")),       \
        FAST(bit_test_reset, SIG(bit_test_reset, "index, " ORDER,             \
                                 "Clear the bit; returns its old value.")),   \
        BIT_ALIAS(bit_compl, bit_test_compl),                                 \
        BIT_ALIAS(bit_set, bit_test_set),                                     \
        BIT_ALIAS(bit_reset, bit_test_reset),                                 \
        FAST(bin_or, SIG(bin_or, "value, " ORDER, "Bitwise or.")),            \
        FAST(bin_xor, SIG(bin_xor, "value, " ORDER, "Bitwise xor.")),         \
        FAST(bin_and, SIG(bin_and, "value, " ORDER, "Bitwise and.")),         \
        FAST(bin_not, SIG(bin_not, ORDER, "Bitwise not.")),                   \
        FAST(bin_fetch_or, SIG(bin_fetch_or, "value, " ORDER,                 \
                               "Bitwise or; returns the old value.")),        \
        FAST(bin_fetch_xor, SIG(bin_fetch_xor, "value, " ORDER,               \
                                "Bitwise xor; returns the old value.")),      \
        FAST(bin_fetch_and, SIG(bin_fetch_and, "value, " ORDER,               \
                                "Bitwise and; returns the old value.")),      \
        FAST(bin_fetch_not, SIG(bin_fetch_not, ORDER,                         \
                                "Bitwise not; returns the old value."))

static PyMethodDef Bytes_methods[] = {
    BYTE_METHODS,
    {"__bytes__", (PyCFunction)Atomic_bytes, METH_NOARGS,
     "__bytes__($self, /)\n--\n\nThe value."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Integral_methods[] = {
    BYTE_METHODS,
    FAST(add, SIG(add, "value, " ORDER, "Add value.")),
    FAST(sub, SIG(sub, "value, " ORDER, "Subtract value.")),
    FAST(inc, SIG(inc, ORDER, "Add 1.")),
    FAST(dec, SIG(dec, ORDER, "Subtract 1.")),
    FAST(neg, SIG(neg, ORDER, "Negate.")),
    FAST(fetch_add,
         SIG(fetch_add, "value, " ORDER, "Add value; returns the old value.")),
    FAST(fetch_sub, SIG(fetch_sub, "value, " ORDER,
                        "Subtract value; returns the old value.")),
    FAST(fetch_inc, SIG(fetch_inc, ORDER, "Add 1; returns the old value.")),
    FAST(fetch_dec,
         SIG(fetch_dec, ORDER, "Subtract 1; returns the old value.")),
    FAST(fetch_neg, SIG(fetch_neg, ORDER, "Negate; returns the old value.")),
    {NULL, NULL, 0, NULL},
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
DKPY_TYPE(static, Bytes_spec, "dispatchkit._dk._AtomicBytes", AtomicObject,
          ATOMIC_FLAGS, {Py_tp_traverse, Atomic_traverse},
          {Py_tp_methods, Bytes_methods}, {Py_tp_doc, "The byte operations."});
DKPY_TYPE(static, Integral_spec, "dispatchkit._dk._AtomicIntegral",
          AtomicObject, ATOMIC_FLAGS, {Py_tp_traverse, Atomic_traverse},
          {Py_tp_methods, Integral_methods}, {Py_tp_getset, Integral_getset},
          {Py_nb_int, Atomic_int}, {Py_tp_doc, "The integral operations."});

/* ---- concrete classes ------------------------------------------------
 *
 * CPython 3.11 specializes a method call only when the method was defined
 * by the object's exact type, so a Python subclass of our base types would
 * pay the generic call path on every operation. The seed's concrete
 * classes (AtomicInt, AtomicUintView, ...) are therefore created here, each
 * with its own method table, on bases that include the Python mixins
 * (ANY, INT, ...) so isinstance checks work as in the atomics package.
 *
 * mode: "any", "bytes", "integral" (is_signed given), "int", "uint" for
 * classes constructed with width=; "view" for view classes, which cannot
 * be constructed directly.
 */

/* A class's mode, parsed once by _atomic_class and kept in the class as
 * the choice of its tp_new (owned_new_any, ...), which subclasses inherit. */
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

static PyObject *
owned_new(PyTypeObject *type, PyObject *args, PyObject *kwargs,
          owned_mode mode)
{
    if (mode == MODE_VIEW) {
        PyErr_Format(PyExc_TypeError,
                     "%s objects are obtained from an atomicview() context, "
                     "not constructed directly",
                     dkpy_type_name(type));
        return NULL;
    }
    static char *kw_any[] = {"width", "is_integral", "is_signed", NULL};
    static char *kw_integral[] = {"width", "is_signed", NULL};
    static char *kw_width[] = {"width", NULL};
    Py_ssize_t width;
    int integral = 0, is_signed = 0, ok;
    PyObject *w =
        kwargs != NULL ? PyDict_GetItemString(kwargs, "width") : NULL;
    if (w != NULL && !PyLong_Check(w)) {
        PyErr_SetString(PyExc_TypeError,
                        "Keyword argument 'width' must have type 'int'.");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes keyword arguments only",
                     dkpy_type_name(type));
        return NULL;
    }
    if (mode == MODE_ANY) {
        ok = PyArg_ParseTupleAndKeywords(args, kwargs, "n|pp", kw_any, &width,
                                         &integral, &is_signed);
    } else if (mode == MODE_INTEGRAL) {
        integral = 1;
        ok = PyArg_ParseTupleAndKeywords(args, kwargs, "np", kw_integral,
                                         &width, &is_signed);
    } else {
        integral = mode != MODE_BYTES;
        is_signed = mode == MODE_INT;
        ok = PyArg_ParseTupleAndKeywords(args, kwargs, "n", kw_width, &width);
    }
    if (!ok) {
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
    if (width > 0) {
        memset(PyByteArray_AS_STRING(buf), 0, (size_t)width);
    }
    PyObject *a = Py_BuildValue("(Oii)", buf, integral, is_signed);
    Py_DECREF(buf);
    if (a == NULL) {
        return NULL;
    }
    PyObject *self = Atomic_new(type, a, NULL);
    Py_DECREF(a);
    return self;
}

#define OWNED_NEW(NAME, MODE)                                                 \
    static PyObject *NAME(PyTypeObject *type, PyObject *args,                 \
                          PyObject *kwargs)                                   \
    {                                                                         \
        return owned_new(type, args, kwargs, MODE);                           \
    }
OWNED_NEW(owned_new_any, MODE_ANY)
OWNED_NEW(owned_new_bytes, MODE_BYTES)
OWNED_NEW(owned_new_integral, MODE_INTEGRAL)
OWNED_NEW(owned_new_int, MODE_INT)
OWNED_NEW(owned_new_uint, MODE_UINT)
OWNED_NEW(owned_new_view, MODE_VIEW)
#undef OWNED_NEW

static newfunc const owned_new_of[] = {
    [MODE_ANY] = owned_new_any,           [MODE_BYTES] = owned_new_bytes,
    [MODE_INTEGRAL] = owned_new_integral, [MODE_INT] = owned_new_int,
    [MODE_UINT] = owned_new_uint,         [MODE_VIEW] = owned_new_view,
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
    PyObject *a = Py_BuildValue("(Oii)", buffer, integral, is_signed);
    if (a == NULL) {
        return NULL;
    }
    PyObject *self = Atomic_new(cls, a, NULL);
    Py_DECREF(a);
    return self;
}

static PyType_Slot class_any_slots[] = {
    {Py_tp_new, owned_new_any}, /* replaced by the mode's */
    {Py_tp_traverse, Atomic_traverse},
    {Py_tp_methods, Any_methods},
    {0, NULL},
};
static PyType_Slot class_bytes_slots[] = {
    {Py_tp_new, owned_new_any}, /* replaced by the mode's */
    {Py_tp_traverse, Atomic_traverse},
    {Py_tp_methods, Bytes_methods},
    {0, NULL},
};
static PyType_Slot class_integral_slots[] = {
    {Py_tp_new, owned_new_any}, /* replaced by the mode's */
    {Py_tp_traverse, Atomic_traverse},
    {Py_tp_methods, Integral_methods},
    {Py_tp_getset, Integral_getset},
    {Py_nb_int, Atomic_int},
    {0, NULL},
};

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

static PyObject *
atomic_class(PyObject *module, PyObject *args)
{
    const char *name, *kind, *mode_name, *qualmod;
    PyObject *bases;
    if (!PyArg_ParseTuple(args, "sssO!s", &name, &kind, &mode_name,
                          &PyTuple_Type, &bases, &qualmod)) {
        return NULL;
    }
    size_t k = 0;
    while (k < sizeof mode_names / sizeof mode_names[0] &&
           strcmp(mode_name, mode_names[k]) != 0) {
        k++;
    }
    if (k == sizeof mode_names / sizeof mode_names[0]) {
        PyErr_Format(PyExc_ValueError, "unknown atomic class mode '%s'",
                     mode_name);
        return NULL;
    }
    owned_mode mode = (owned_mode)k;
    PyType_Slot *slots = strcmp(kind, "integral") == 0 ? class_integral_slots
                         : strcmp(kind, "bytes") == 0  ? class_bytes_slots
                                                       : class_any_slots;
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
                         : mode == MODE_VIEW     ? NULL
                                                 : "*, width";
    char doc[160];
    if (params != NULL) {
        snprintf(doc, sizeof doc, "%s(%s)\n--\n\n", name, params);
    } else {
        snprintf(doc, sizeof doc, "Obtained from an atomicview() context.");
    }
    PyType_Slot with_doc[8];
    size_t n = 0;
    for (; slots[n].slot != 0 && n < 6; n++) {
        with_doc[n] = slots[n];
        if (slots[n].slot == Py_tp_new) {
            with_doc[n].pfunc = (void *)owned_new_of[mode];
        }
    }
    with_doc[n++] = (PyType_Slot){Py_tp_doc, doc};
    with_doc[n] = (PyType_Slot){0, NULL};
    PyType_Spec spec = {full, sizeof(AtomicObject), 0,
                        Py_TPFLAGS_DEFAULT | ATOMIC_FLAGS, with_doc};
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
    PyTypeObject *type = (PyTypeObject *)ax.cmpxchg_type;
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
    if (tp == (PyTypeObject *)ax.cmpxchg_type &&
        result_nfree < RESULT_FREE_MAX) {
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

/* ---- setup ----------------------------------------------------------- */

static PyObject *
atomics_setup(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *al, *mo, *wi, *op, *ot;
    if (!PyArg_ParseTuple(args, "OOOOO", &al, &mo, &wi, &op, &ot)) {
        return NULL;
    }
    /* Setting up again (a reload of dispatchkit.atomics) replaces the
     * classes without leaking the previous ones. */
    Py_XSETREF(ax.alignment_error, Py_NewRef(al));
    Py_XSETREF(ax.memory_order_error, Py_NewRef(mo));
    Py_XSETREF(ax.width_error, Py_NewRef(wi));
    Py_XSETREF(ax.operation_error, Py_NewRef(op));
    Py_XSETREF(ax.optype, Py_NewRef(ot));
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
    if (any_type == NULL) {
        return -1;
    }
    bytes_type = dkpy_add_type(m, &Bytes_spec, (PyObject *)any_type, "");
    if (bytes_type == NULL) {
        return -1;
    }
    integral_type =
        dkpy_add_type(m, &Integral_spec, (PyObject *)bytes_type, "");
    ax.cmpxchg_type = (PyObject *)dkpy_add_type(m, &Result_spec, NULL, "");
    /* Its bare name in messages, as for the package's class. */
    if (integral_type == NULL || ax.cmpxchg_type == NULL ||
        set_bare_name(ax.cmpxchg_type, "CmpxchgResult") < 0) {
        return -1;
    }
    if (PyModule_AddFunctions(m, atomics_functions) < 0) {
        return -1;
    }
    if (PyModule_AddObject(m, "_ATOMIC16",
                           PyBool_FromLong(dk_atomic16_supported())) < 0) {
        return -1;
    }
    return PyModule_AddObject(
        m, "_ATOMIC16_READONLY",
        PyBool_FromLong(dk_atomic16_readonly_load_supported()));
}
