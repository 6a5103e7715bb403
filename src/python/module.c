/*
 * The extension module dispatchkit._dk: multi-phase initialisation that
 * hands the module to each subsystem's exec function. The dispatch runtime
 * is process-wide, so the module refuses to load in a subinterpreter.
 */
#include "python/binding.h"
#include "python/futures.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "dk/time.h"

PyObject *
dkpy_raise_errno(int neg_errno)
{
    int err = -neg_errno;
    switch (err) {
    case ENOMEM:
        return PyErr_NoMemory();
    case EINVAL:
        PyErr_SetString(PyExc_ValueError, "invalid argument");
        return NULL;
    case ETIMEDOUT:
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return NULL;
    default:
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

PyObject *
dkpy_getattr(PyObject *obj, PyObject **slot, const char *name)
{
    if (*slot == NULL) {
        *slot = PyUnicode_InternFromString(name);
        if (*slot == NULL) {
            return NULL;
        }
    }
    return PyObject_GetAttr(obj, *slot);
}

PyObject *
dkpy_type_from_spec(PyObject *m, PyType_Spec *spec, PyObject *bases)
{
    /* 3.9 takes the bases as a tuple only. */
    PyObject *tuple = NULL;
    if (bases != NULL && !PyTuple_Check(bases)) {
        tuple = PyTuple_Pack(1, bases);
        if (tuple == NULL) {
            return NULL;
        }
        bases = tuple;
    }
    PyObject *t = PyType_FromModuleAndSpec(m, spec, bases);
    Py_XDECREF(tuple);
#if PY_VERSION_HEX < 0x030A0000
    const char *doc = NULL;
    for (PyType_Slot *s = spec->slots; t != NULL && s->slot != 0; s++) {
        if (s->slot == Py_tp_doc) {
            doc = s->pfunc;
        }
    }
    if (doc != NULL) {
        /* Heap types free tp_doc with PyObject_Free (3.9's type_dealloc);
         * __doc__ keeps the text without the signature. */
        size_t len = strlen(doc) + 1;
        char *copy = PyObject_Malloc(len);
        if (copy == NULL) {
            Py_DECREF(t);
            return PyErr_NoMemory();
        }
        memcpy(copy, doc, len);
        PyTypeObject *type = (PyTypeObject *)t;
        PyObject_Free((void *)type->tp_doc);
        type->tp_doc = copy;
    }
#endif
    return t;
}

/* The thread that runs Python's signal handlers: the main thread, or in
 * a child the thread that forked (CPython makes it the main thread). */
static unsigned long handler_thread;

static void
forked_child(void)
{
    handler_thread = PyThread_get_thread_ident();
}

static int
find_handler_thread(void)
{
    static bool hooked;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading == NULL
                         ? NULL
                         : PyObject_CallMethod(threading, "main_thread", NULL);
    PyObject *ident =
        main == NULL ? NULL : PyObject_GetAttrString(main, "ident");
    Py_XDECREF(threading);
    Py_XDECREF(main);
    if (ident == NULL) {
        return -1;
    }
    handler_thread = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (!hooked) {
        hooked = pthread_atfork(NULL, NULL, forked_child) == 0;
    }
    return 0;
}

/* Other threads never run handlers, so they sleep to the deadline: a
 * slice there would only wake them (and, during finalization, have
 * CPython end them with pthread_exit when they take the GIL back). */
uint64_t
dkpy_slice_end(uint64_t deadline)
{
    if (PyThread_get_thread_ident() != handler_thread) {
        return deadline;
    }
    uint64_t now = dk_now();
    return deadline > now && deadline - now > DKPY_SIGNAL_SLICE_NS
               ? now + DKPY_SIGNAL_SLICE_NS
               : deadline;
}

bool
dkpy_wait_goes_on(uint64_t deadline)
{
    return deadline == UINT64_MAX || dk_now() < deadline;
}

static int
module_exec(PyObject *m)
{
    PyInterpreterState *interp = PyInterpreterState_Get();
    if (interp != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "dispatchkit._dk cannot be loaded in a "
                        "subinterpreter: its runtime is process-wide");
        return -1;
    }
    if (find_handler_thread() < 0) {
        return -1;
    }
    if (dkpy_dispatch_exec(m) < 0 || dkpy_source_exec(m) < 0 ||
        dkpy_io_exec(m) < 0 || dkpy_data_exec(m) < 0 ||
        dkpy_atomics_exec(m) < 0 || dkpy_sync_exec(m) < 0) {
        return -1;
    }
    if (dkpy_futures_exec(m) < 0) {
        return -1;
    }
    if (dkpy_zerobuffer_exec(m) < 0) {
        return -1;
    }
    return 0;
}

/* _write_unraisable(exc, obj): hand exc to sys.unraisablehook as an error
 * raised in obj that nobody can catch ("Exception ignored in: obj", then
 * the traceback), as CPython reports errors in __del__ or in callbacks.
 * The Python layer reports its background threads' errors this way (a
 * duplex server's handler) when no error handler is set; Python code has
 * no public way to build the hook's argument itself. */
static PyObject *
write_unraisable(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "_write_unraisable() takes exactly 2 arguments");
        return NULL;
    }
    PyObject *exc = args[0];
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError,
                        "_write_unraisable() needs an exception instance");
        return NULL;
    }
    PyObject *type = (PyObject *)Py_TYPE(exc);
    Py_INCREF(type);
    Py_INCREF(exc);
    /* PyErr_Restore steals all three; the traceback is a new reference. */
    PyErr_Restore(type, exc, PyException_GetTraceback(exc));
    PyErr_WriteUnraisable(args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef module_functions[] = {
    {"_write_unraisable", (PyCFunction)(void (*)(void))write_unraisable,
     METH_FASTCALL,
     "_write_unraisable($module, exc, obj, /)\n--\n\n"
     "Report exc to sys.unraisablehook as raised in obj."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dispatchkit._dk",
    .m_doc = "dispatchkit's C extension: one module for every subsystem.",
    .m_size = 0,
    .m_methods = module_functions,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__dk(void)
{
    return PyModuleDef_Init(&module_def);
}
