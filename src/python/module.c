/*
 * The extension module dispatchkit._dk: multi-phase initialisation that
 * hands the module to each subsystem's exec function. The dispatch runtime
 * is process-wide, so the module refuses to load in a subinterpreter.
 */
#include "python/binding.h"
#include "python/futures.h"

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
    /* In this order: each stops the chain with its exception set. */
    return dkpy_binding_init() < 0 || dkpy_dispatch_exec(m) < 0 ||
                   dkpy_source_exec(m) < 0 || dkpy_io_exec(m) < 0 ||
                   dkpy_data_exec(m) < 0 || dkpy_atomics_exec(m) < 0 ||
                   dkpy_sync_exec(m) < 0 || dkpy_futures_exec(m) < 0 ||
                   dkpy_zerobuffer_exec(m) < 0 || dkpy_os_exec(m) < 0
               ? -1
               : 0;
}

/* _write_unraisable(exc, obj): hand exc to sys.unraisablehook as an error
 * raised in obj that nobody can catch ("Exception ignored in: obj", then
 * the traceback), as CPython reports errors in __del__ or in callbacks.
 * The Python layer reports its background threads' errors this way (a
 * duplex server's handler) when no error handler is set; Python code has
 * no public way to build the hook's argument itself. */
static PyObject *
write_unraisable(PyObject *Py_UNUSED(module), PyObject *const *args,
                 Py_ssize_t nargs)
{
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
