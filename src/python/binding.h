/*
 * Shared declarations of the CPython binding. Each subsystem's binding
 * file defines one exec function that adds its types, functions and
 * constants to the single extension module dispatchkit._dk; module.c calls
 * them in order. The toolkit every file uses (binding.c) is declared here:
 * the errno mapping, the timeout rules, the sliced wait and the callback
 * reporter.
 *
 * Module state: the dispatch runtime is process-wide and the module refuses
 * to load in a subinterpreter (module.c), so each file keeps its types in
 * one static struct set by its exec function (m_size is 0). Per-module
 * state would buy nothing but a lookup on every call.
 */
#ifndef DK_SRC_PYTHON_BINDING_H
#define DK_SRC_PYTHON_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "python/compat.h"

#include <stdbool.h>
#include <stdint.h>

#include <limits.h>

/* Raise the Python exception for a negative errno from the core, through
 * one table: -ENOMEM -> MemoryError, -EINVAL -> ValueError, -ETIMEDOUT ->
 * TimeoutError, anything else -> OSError. Returns NULL. */
PyObject *dkpy_raise_errno(int neg_errno);
/* One row of an errno -> exception table, ended by a row with err 0:
 * type NULL raises MemoryError, message NULL the type's bare exception. */
typedef struct {
    int err; /* positive */
    PyObject **type;
    const char *message;
} dkpy_errno_map;
/* Raise map's exception for neg_errno: true, or false (nothing set) when
 * the table has no row for it. */
bool dkpy_raise_mapped(const dkpy_errno_map *map, int neg_errno);
/* map's exception for neg_errno, else dkpy_raise_errno's. Returns NULL. */
PyObject *dkpy_raise_errno_in(const dkpy_errno_map *map, int neg_errno);

/* Call func(*args) (args: a stolen tuple reference; NULL: no arguments,
 * or, with an exception set, arguments that could not be built) and hand
 * any exception to sys.unraisablehook as raised in func, as CPython does
 * for errors nobody can catch. The GIL is held. */
void dkpy_call_reporting(PyObject *func, PyObject *args);

/* From a thread of the runtime (a trampoline): take the GIL, call
 * func(*Py_BuildValue(fmt, ...)) (fmt NULL: no arguments) reporting any
 * exception as dkpy_call_reporting does, drop the caller's reference to
 * func if `consume`, and give the GIL back. During finalization nothing
 * runs and the references are left (gil.h). */
void dkpy_callback(PyObject *func, bool consume, const char *fmt, ...);

/* The result of handing `func` to the core as a work item's context
 * (rc: what the submitting call returned; the caller took a reference to
 * func for the item): None, or the core's refusal raised, that reference
 * dropped. */
PyObject *dkpy_submitted(int rc, PyObject *func);

/* 0, or -1 with TypeError ("<what> must be callable, not T"). */
int dkpy_check_callable(PyObject *func, const char *what);

/* An argument with two spellings, a and b (NULL: not given; None is the
 * default of both, as the text signatures say): the one given, or None
 * for neither. NULL with TypeError ("give <names>, not both") for
 * both. */
PyObject *dkpy_either(PyObject *a, PyObject *b, const char *names);

/* Parse a METH_FASTCALL | METH_KEYWORDS call into out[0..n): positional
 * arguments in order, keywords by names[i] (or aliases[i], where aliases
 * is not NULL and has one), NULL where absent. 0, or -1 with TypeError
 * for too many arguments or an unknown or repeated keyword. Inline for
 * the common call without keywords (the atomics' hot path); the rest is
 * dkpy_parse_keywords. */
int dkpy_parse_keywords(PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames, const char *const *names,
                        const char *const *aliases, int n, PyObject **out,
                        const char *fname);

static inline int
dkpy_parse_fast(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                const char *const *names, const char *const *aliases, int n,
                PyObject **out, const char *fname)
{
    if (kwnames != NULL || nargs > n) {
        return dkpy_parse_keywords(args, nargs, kwnames, names, aliases, n,
                                   out, fname);
    }
    for (int i = 0; i < n; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    return 0;
}

/* The tp_dealloc of a heap type whose objects hold no references to
 * release: free the object and drop its reference to the type. The
 * deallocs that release more end with it too. */
void dkpy_free(PyObject *self);

/* Make the type of `spec` (bases: a type, a tuple or NULL) and add it to
 * the module as `prefix` followed by the spec name's last component.
 * Returns the type (a reference the caller keeps: types live as long as
 * the process-wide module, binding.h), or NULL with an exception set. */
PyTypeObject *dkpy_add_type(PyObject *m, PyType_Spec *spec, PyObject *bases,
                            const char *prefix);

/* A heap type's spec and its slot table (NAME##_slots) in one
 * definition: STORAGE (static, or nothing for a spec other files use),
 * the spec's NAME, the type's qualified name, its object struct, its flags
 * besides Py_TPFLAGS_DEFAULT, then its slots. */
#define DKPY_TYPE(STORAGE, NAME, QUALNAME, STRUCT, FLAGS, ...)                \
    static PyType_Slot NAME##_slots[] = {__VA_ARGS__, {0, NULL}};             \
    STORAGE PyType_Spec NAME = {QUALNAME, sizeof(STRUCT), 0,                  \
                                Py_TPFLAGS_DEFAULT | (FLAGS), NAME##_slots}

/* The __aenter__ and __aexit__ entries of a lock's method table: async
 * with through dispatchkit.asyncio (futures.h's dkpy_lock_aenter and
 * dkpy_lock_aexit). RETURNS: what __aenter__ returns; EXIT: what
 * __aexit__ calls. */
/* clang-format off */
#define DKPY_ASYNC_WITH_METHODS(RETURNS, EXIT)                                \
    {"__aenter__", (PyCFunction)dkpy_lock_aenter, METH_NOARGS,                \
     "__aenter__($self, /)\n--\n\nasync with: acquire through "               \
     "dispatchkit.asyncio (the futex watcher; no thread parked); returns "    \
     RETURNS "."},                                                            \
    {"__aexit__", (PyCFunction)dkpy_lock_aexit, METH_VARARGS,                 \
     "__aexit__($self, /, *exc_info)\n--\n\n" EXIT "."}
/* clang-format on */

/* A PyMethodDef's function and flags for the keyword calling conventions
 * (the cast through void (*)(void) is how ml_meth stores them). */
#define DKPY_METH_KW(fn)                                                      \
    (PyCFunction)(void (*)(void))(fn), METH_VARARGS | METH_KEYWORDS
#define DKPY_METH_FAST(fn)                                                    \
    (PyCFunction)(void (*)(void))(fn), METH_FASTCALL | METH_KEYWORDS

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

/* A blocking call of the core: fn(arg, deadline) returns 0 (or another
 * result the caller reads), -ETIMEDOUT or -EINTR. It runs without the
 * GIL. */
typedef int (*dkpy_wait_fn)(void *arg, uint64_t deadline);
/* dkpy_wait_sliced's result when a signal handler raised. */
#define DKPY_RAISED INT_MIN
/* The wait of CPython's acquire_timed (Modules/_threadmodule.c), after the
 * caller's own non-blocking try with the GIL held (each primitive's try
 * takes other arguments): fn with the GIL released, in slices of
 * DKPY_SIGNAL_SLICE_NS (on the thread that runs signal handlers; other
 * threads sleep to the deadline in one go), against the absolute `deadline`
 * (DK_TIME_FOREVER: forever), running the signal handlers between slices and
 * on EINTR. Returns what fn returned when that was neither -ETIMEDOUT nor
 * -EINTR, -ETIMEDOUT once the deadline has passed, or DKPY_RAISED with the
 * handler's exception set. */
int dkpy_wait_sliced(dkpy_wait_fn fn, void *arg, uint64_t deadline);

/* dkpy_wait_sliced for the waits that answer a bool: True when fn
 * returned 0, False on a timeout (or another failure fn reports, such as
 * a futex word that had changed), NULL with the signal handler's
 * exception set. */
PyObject *dkpy_wait_bool(dkpy_wait_fn fn, void *arg, uint64_t deadline);

/* The timeout rules, one per seed; each gives an absolute CLOCK_MONOTONIC
 * deadline, DK_TIME_FOREVER for none and 0 for a single poll.
 * cygcd (seconds): None, negative or inf wait forever; 0 polls; NaN is a
 * ValueError; a deadline past the clock's range waits forever. */
int dkpy_deadline_cygcd(PyObject *timeout, uint64_t *deadline);
/* cygcd's wait(timeout=None), accepting timeout_seconds= too (cygcd's
 * real name), by dkpy_deadline_cygcd. 0, or -1 with an exception set. */
int dkpy_parse_wait_timeout(PyObject *args, PyObject *kwargs,
                            uint64_t *deadline);
/* cygcd's delays: seconds (finite, >= 0) to nanoseconds; 0, or -1 with
 * ValueError. */
int dkpy_seconds_to_ns(PyObject *obj, const char *what, int64_t *ns);
/* zerobuffer-ipc (seconds): None waits forever; 0 and negatives poll; NaN
 * is a ValueError; more than 1e9 s (inf too) waits forever. */
int dkpy_deadline_zerobuffer(PyObject *timeout, uint64_t *deadline);
/* fastipc (nanoseconds, already an int64 through the "L" format, which
 * raises OverflowError past it): negative waits forever; 0 polls. */
uint64_t dkpy_deadline_fastipc(long long timeout_ns);

struct dk_queue_s;
/* Convert a `queue=` argument: a Queue or None (-> NULL). Returns 0, or -1
 * with TypeError set. */
int dkpy_queue_arg(PyObject *obj, const char *what, struct dk_queue_s **out);
/* A qos= argument: 0 or a QOS_CLASS_* value. 0, or -1 with ValueError
 * (queue.c). */
int dkpy_qos_arg(long qos);

/* Find the thread that runs signal handlers (once, at module exec).
 * Returns 0, or -1 with an exception set. */
int dkpy_binding_init(void);

/* Subsystem exec functions; each returns 0 or -1 with an exception set. */
int dkpy_dispatch_exec(PyObject *m);
int dkpy_source_exec(PyObject *m);
int dkpy_io_exec(PyObject *m);
int dkpy_data_exec(PyObject *m);
int dkpy_atomics_exec(PyObject *m);
int dkpy_sync_exec(PyObject *m);
int dkpy_zerobuffer_exec(PyObject *m);
/* The OS helpers of os.h the Python layer shares (python/os.c). */
int dkpy_os_exec(PyObject *m);

/* None when `ok`, else NULL with type(message) raised: the end of a
 * method whose only failure is one misuse of the object. */
PyObject *dkpy_none_or_raise(bool ok, PyObject *type, const char *message);

/* Raise type(*args, **kwargs), for the exceptions whose constructor takes
 * arguments besides a message (the atomics package's, made in Python).
 * args and kwargs (kwargs NULL: none) are stolen; either NULL with an
 * exception set could not be built, and that exception stays. Returns
 * NULL. */
PyObject *dkpy_raise_call(PyObject *type, PyObject *args, PyObject *kwargs);

/* dkpy_raise_errno_in, for tables whose messages name what failed: a
 * row with a type and a message raises PyErr_Format(type, message,
 * detail), so a message may hold one %s for `detail` (and must write a
 * percent sign as %%). Returns NULL. */
PyObject *dkpy_raise_errno_detail(const dkpy_errno_map *map, int neg_errno,
                                  const char *detail);

/* A callback's exception carried to the thread that waits for it (run_sync,
 * Once, apply) instead of reported: the carrier's fields are read and
 * written with the GIL held. Zero it before use. */
typedef struct {
    PyObject *type, *value, *tb; /* the first exception; NULL: none */
    bool abandoned; /* the waiter gave up: what comes later is reported */
} dkpy_carried;
/* GIL held, func's exception set: keep it in *c if it is the first one,
 * report it as raised in func once the waiter has abandoned c, else drop
 * it (a later call's, where the first already stops the work). */
void dkpy_carry(dkpy_carried *c, PyObject *func);
/* GIL held: func(), its exception carried to *c; false after one. */
bool dkpy_call_carrying(PyObject *func, dkpy_carried *c);
/* dkpy_callback for a carried exception: from a thread of the runtime,
 * take the GIL, dkpy_call_carrying, drop the caller's reference to func
 * if `consume`, give the GIL back. False during finalization: nothing ran
 * and the references are left (gil.h). */
bool dkpy_callback_carrying(PyObject *func, bool consume, dkpy_carried *c);
/* The waiter, GIL held, once the call is over: NULL with the carried
 * exception raised, or None. */
PyObject *dkpy_carried_result(dkpy_carried *c);
/* The waiter stops waiting before the call is over (a signal handler
 * raised; GIL held): drop what was carried; a later exception is
 * reported. */
void dkpy_carried_abandon(dkpy_carried *c);

/* An int argument as a size_t: 0, or -1 with TypeError (not an int) or
 * OverflowError ("<what> must be >= 0 and fit in size_t"). */
int dkpy_size_arg(PyObject *obj, const char *what, size_t *out);

#endif /* DK_SRC_PYTHON_BINDING_H */
