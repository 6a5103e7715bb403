/*
 * What the three files of the dispatch binding share: queue.c (Queue,
 * Workloop and the callback trampolines), group.c (Group, Semaphore,
 * Once) and dispatch.c (the module functions, the constants and the exec
 * function that adds the types). Not used outside them, except
 * dkpy_dispatch_target (futures.h).
 */
#ifndef DK_SRC_PYTHON_DISPATCH_H
#define DK_SRC_PYTHON_DISPATCH_H

#include "python/binding.h"

#include <stdbool.h>
#include <stdint.h>

#include "dk/queue.h"

/* The runtime is process-wide, and so is this state (binding.h). */
typedef struct {
    PyTypeObject *queue_type;
    PyTypeObject *group_type;
    PyTypeObject *semaphore_type;
    PyObject *globals[5]; /* cached wrappers of the global queues */
    PyObject *main_queue;
} dkpy_dispatch_state;

extern dkpy_dispatch_state dkpy_dispatch;

typedef struct {
    PyObject_HEAD
    dk_queue_t *q;
    PyObject *context;
    PyObject *finalizer;
    PyObject *specifics; /* dict, or NULL */
    PyObject *weakreflist;
    bool immortal;         /* global or main queue */
    bool created_inactive; /* workloops: for activate's error */
    unsigned autorelease;  /* workloops: accepted, no effect on Linux */
} QueueObject;

/* The per-queue specifics dict is registered in the core under this key,
 * so dispatchkit.get_specific can walk the target chain. */
extern const char dkpy_specifics_key;

extern PyType_Spec dkpy_queue_spec, dkpy_workloop_spec, dkpy_group_spec,
    dkpy_semaphore_spec, dkpy_once_spec;

/* The trampoline of a Python callable submitted to the core. ctx: a new
 * reference to a callable, called with no arguments. */
void dkpy_call_async(void *ctx);

/* A Queue, or NULL with TypeError ("<what> must be a Queue"). Borrowed. */
QueueObject *dkpy_as_queue(PyObject *obj, const char *what);

#endif /* DK_SRC_PYTHON_DISPATCH_H */
