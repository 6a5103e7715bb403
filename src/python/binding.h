/*
 * Shared declarations of the CPython binding. Each subsystem's binding
 * file defines one exec function that adds its types, functions and
 * constants to the single extension module dispatchkit._dk; module.c calls
 * them in order. Error mapping is in one place: dkpy_raise_errno().
 */
#ifndef DK_SRC_PYTHON_BINDING_H
#define DK_SRC_PYTHON_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "python/compat.h"

#include <stdbool.h>
#include <stdint.h>

/* Raise the Python exception for a negative errno from the core:
 * -ENOMEM -> MemoryError, -EINVAL -> ValueError, -ETIMEDOUT ->
 * TimeoutError, anything else -> OSError. Returns NULL. */
PyObject *dkpy_raise_errno(int neg_errno);

/* getattr(obj, name), the name interned once into *slot. Per-call paths
 * use this rather than PyObject_GetAttrString, whose fresh str per call
 * the type attribute cache keeps alive until the entry is evicted: a
 * thousand calls leave a thousand strings behind. */
PyObject *dkpy_getattr(PyObject *obj, PyObject **slot, const char *name);

/* PyType_FromModuleAndSpec, keeping the text signature of the Py_tp_doc
 * slot ("Name(args)\n--\n\n...") where __text_signature__ reads it:
 * CPython 3.9 drops it from tp_doc, so inspect.signature(cls) fails. */
PyObject *dkpy_type_from_spec(PyObject *m, PyType_Spec *spec, PyObject *bases);

/* Blocking calls sleep with the GIL released for at most
 * DKPY_SIGNAL_SLICE_NS at a time and run the signal handlers between
 * slices. A signal interrupts the futex syscall only if it lands while the
 * waiter is inside it on the thread the kernel picks: one that arrives
 * while the waiter spins, in the instant before it sleeps, or on another
 * thread, would otherwise leave Ctrl-C waiting for the deadline. */
#define DKPY_SIGNAL_SLICE_NS 100000000ull

/* The end of the next slice of a wait for `deadline` (UINT64_MAX:
 * forever; 0: poll): `deadline` itself on threads other than the one that
 * runs signal handlers. */
uint64_t dkpy_slice_end(uint64_t deadline);
/* After a slice returned -ETIMEDOUT: true if the wait goes on (the
 * caller runs the signal handlers and sleeps another slice). */
bool dkpy_wait_goes_on(uint64_t deadline);

struct dk_queue_s;
/* Convert a `queue=` argument: a Queue or None (-> NULL). Returns 0, or -1
 * with TypeError set. */
int dkpy_queue_arg(PyObject *obj, const char *what, struct dk_queue_s **out);

/* Subsystem exec functions; each returns 0 or -1 with an exception set. */
int dkpy_dispatch_exec(PyObject *m);
int dkpy_source_exec(PyObject *m);
int dkpy_io_exec(PyObject *m);
int dkpy_data_exec(PyObject *m);
int dkpy_atomics_exec(PyObject *m);
int dkpy_sync_exec(PyObject *m);
int dkpy_zerobuffer_exec(PyObject *m);

#endif /* DK_SRC_PYTHON_BINDING_H */
