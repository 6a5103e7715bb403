/*
 * The CPython versions the binding supports (3.9 to 3.13) through public
 * API only. Where a newer release added the function we want, this header
 * supplies it for the older ones under the same name (Py_NewRef,
 * PyModule_AddObjectRef), or gives one dkpy_ name to what each version
 * spells differently (16-byte integers, the short type name, "takes no
 * arguments" checks); dkpy_type_from_spec (module.c) smooths 3.9's
 * heap types. Private _Py functions change or vanish between releases
 * without notice, so none is called anywhere in src/python/.
 */
#ifndef DK_SRC_PYTHON_COMPAT_H
#define DK_SRC_PYTHON_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030A0000
/* 3.10 added these two; as there, they take any object pointer. */
static inline PyObject *
dkpy_new_ref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static inline PyObject *
dkpy_xnew_ref(PyObject *o)
{
    Py_XINCREF(o);
    return o;
}

#define Py_NewRef(o) dkpy_new_ref((PyObject *)(o))
#define Py_XNewRef(o) dkpy_xnew_ref((PyObject *)(o))

/* As in 3.10: adds a reference of its own, so the caller keeps (and
 * releases) the one it holds, on success and on failure alike. */
static inline int
PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value)
{
    if (value == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError,
                            "PyModule_AddObjectRef() got a NULL value");
        }
        return -1;
    }
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* An integer argument as a C long long (dkpy_index_as_long_long) or long
 * (dkpy_index_as_long), converting through __index__ only. Before 3.10,
 * PyLong_AsLong and friends also took __int__, so a float or an atomic
 * object passed where an int belongs was truncated with a
 * DeprecationWarning instead of refused. */
#if PY_VERSION_HEX < 0x030A0000
#define DKPY_INDEX_AS(NAME, T, CONVERT)                                       \
    static inline T NAME(PyObject *v)                                         \
    {                                                                         \
        if (PyLong_Check(v)) {                                                \
            return CONVERT(v);                                                \
        }                                                                     \
        PyObject *i = PyNumber_Index(v);                                      \
        if (i == NULL) {                                                      \
            return -1;                                                        \
        }                                                                     \
        T x = CONVERT(i);                                                     \
        Py_DECREF(i);                                                         \
        return x;                                                             \
    }
#else
#define DKPY_INDEX_AS(NAME, T, CONVERT)                                       \
    static inline T NAME(PyObject *v)                                         \
    {                                                                         \
        return CONVERT(v);                                                    \
    }
#endif
DKPY_INDEX_AS(dkpy_index_as_long_long, long long, PyLong_AsLongLong)
DKPY_INDEX_AS(dkpy_index_as_long, long, PyLong_AsLong)

/* The type's name without its module ("AtomicInt" for
 * "dispatchkit.atomics.base.AtomicInt"), as error messages and reprs show
 * it. The result lives as long as the type. */
static inline const char *
dkpy_type_name(PyTypeObject *type)
{
    const char *dot = strrchr(type->tp_name, '.');
    return dot != NULL ? dot + 1 : type->tp_name;
}

/* -1, 0 or 1 as the int `v` is negative, zero or positive; `v` must be an
 * int (never fails then). */
static inline int
dkpy_long_sign(PyObject *v)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow != 0) {
        return overflow;
    }
    return (x > 0) - (x < 0);
}

/* `name()` takes no arguments: raise TypeError and return false if `args`
 * or `kwargs` hold any (either may be NULL). */
static inline bool
dkpy_no_args(const char *name, PyObject *args, PyObject *kwargs)
{
    if (args != NULL && PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no positional arguments",
                     name);
        return false;
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", name);
        return false;
    }
    return true;
}

#if PY_VERSION_HEX < 0x030D0000
/* obj.method(*args, signed=is_signed), the int conversions' keyword-only
 * argument; steals `args` (NULL: fails with the error set). The names are
 * interned once: a fresh str per call would stay alive in the type
 * attribute cache. */
static inline PyObject *
dkpy_call_signed(PyObject *obj, PyObject **name_slot, const char *name,
                 PyObject *args, bool is_signed)
{
    static PyObject *kw_signed, *kw_unsigned;
    PyObject *res = NULL;
    if (*name_slot == NULL) {
        *name_slot = PyUnicode_InternFromString(name);
    }
    if (kw_signed == NULL) {
        kw_signed = Py_BuildValue("{sO}", "signed", Py_True);
        kw_unsigned = Py_BuildValue("{sO}", "signed", Py_False);
    }
    PyObject *kw = is_signed ? kw_signed : kw_unsigned;
    PyObject *fn =
        *name_slot != NULL ? PyObject_GetAttr(obj, *name_slot) : NULL;
    if (fn != NULL && kw != NULL && args != NULL) {
        res = PyObject_Call(fn, args, kw);
    }
    Py_XDECREF(fn);
    Py_XDECREF(args);
    return res;
}
#endif

/* The int `v` as 16 little-endian bytes, two's complement when `is_signed`.
 * Returns 0, or -1 with OverflowError set as int.to_bytes(16, "little",
 * signed=is_signed) sets it ("int too big to convert", "can't convert
 * negative int to unsigned"). */
static inline int
dkpy_long_to_le16(PyObject *v, unsigned char out[16], bool is_signed)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow == 0 && x == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((overflow < 0 || (overflow == 0 && x < 0)) && !is_signed) {
        PyErr_SetString(PyExc_OverflowError,
                        "can't convert negative int to unsigned");
        return -1;
    }
    /* Most values fit in 64 bits: sign-extend those without an object. */
    if (overflow == 0) {
        unsigned long long lo = (unsigned long long)x;
        unsigned long long hi = x < 0 ? ~0ull : 0;
        for (int i = 0; i < 8; i++) {
            out[i] = (unsigned char)(lo >> (8 * i));
            out[8 + i] = (unsigned char)(hi >> (8 * i));
        }
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    int flags = Py_ASNATIVEBYTES_LITTLE_ENDIAN;
    if (!is_signed) {
        flags |= Py_ASNATIVEBYTES_UNSIGNED_BUFFER;
    }
    /* The result is the size the value needs: more than 16 means only the
     * low 16 bytes were written. */
    Py_ssize_t need = PyLong_AsNativeBytes(v, out, 16, flags);
    if (need < 0) {
        return -1;
    }
    if (need > 16) {
        PyErr_SetString(PyExc_OverflowError, "int too big to convert");
        return -1;
    }
    return 0;
#else
    static PyObject *to_bytes;
    PyObject *b =
        dkpy_call_signed(v, &to_bytes, "to_bytes",
                         Py_BuildValue("(is)", 16, "little"), is_signed);
    if (b == NULL) {
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(b), 16);
    Py_DECREF(b);
    return 0;
#endif
}

/* The int whose 16 little-endian bytes are `v`. */
static inline PyObject *
dkpy_long_from_le16(const unsigned char v[16], bool is_signed)
{
    unsigned long long lo = 0, hi = 0;
    for (int i = 0; i < 8; i++) {
        lo |= (unsigned long long)v[i] << (8 * i);
        hi |= (unsigned long long)v[8 + i] << (8 * i);
    }
    /* The high half only repeats the low half's sign: a 64-bit value. */
    if (is_signed && hi == ((lo >> 63) != 0 ? ~0ull : 0)) {
        return PyLong_FromLongLong((long long)lo);
    }
    if (!is_signed && hi == 0) {
        return PyLong_FromUnsignedLongLong(lo);
    }
#if PY_VERSION_HEX >= 0x030D0000
    return is_signed
               ? PyLong_FromNativeBytes(v, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN)
               : PyLong_FromUnsignedNativeBytes(
                     v, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    static PyObject *from_bytes;
    return dkpy_call_signed(
        (PyObject *)&PyLong_Type, &from_bytes, "from_bytes",
        Py_BuildValue("(y#s)", (const char *)v, (Py_ssize_t)16, "little"),
        is_signed);
#endif
}

#endif /* DK_SRC_PYTHON_COMPAT_H */
