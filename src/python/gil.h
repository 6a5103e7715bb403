/*
 * Running Python callbacks from the runtime's threads.
 *
 * A worker thread gets one Python thread state for its whole life (so
 * threading.local values persist between callbacks) and keeps the GIL
 * across consecutive callbacks for up to DKPY_GIL_SLICE_NS, so tiny
 * callbacks do not pay a GIL hand-off each; the pool's idle hook drops it
 * before the worker waits for work. Any other thread (a Python thread
 * running a sync item inline, the main thread draining the main queue, a
 * foreign C thread) takes the GIL per callback with PyGILState_Ensure.
 * An event thread (dk_is_event_thread) keeps a thread state for its life
 * like a worker but releases the GIL after every callback.
 *
 * Once the interpreter starts finalizing, no thread enters Python again:
 * dkpy_enter returns false and the callback is dropped (its references
 * are leaked on purpose; the process is exiting).
 *
 * The Group and Semaphore waits release the GIL here too, so that a woken
 * Semaphore waiter can take it as the signaller lets go (gil.c, "GIL
 * hand-off").
 */
#ifndef DK_SRC_PYTHON_GIL_H
#define DK_SRC_PYTHON_GIL_H

#include "python/binding.h"

#include <stdbool.h>

typedef struct {
    int kind; /* 0: worker batch, 1: PyGILState, 2: event thread */
    PyGILState_STATE gstate;
} dkpy_gil_t;

/* The Group and Semaphore waits, of acquire_timed's shape after the
 * caller's non-blocking try (`taken`) with the GIL held: True, False for
 * a poll that failed, else fn's sliced wait (dkpy_wait_bool), counted as a
 * GIL release a woken waiter may watch for ("GIL hand-off", gil.c). With
 * `seen` (a Semaphore's dkpy_handoff_mark), a wait that got its unit
 * watches for the signaller's next release before it asks for the GIL. */
PyObject *dkpy_wait_handoff(bool taken, dkpy_wait_fn fn, void *arg,
                            uint64_t deadline, const uint32_t *seen);
/* Semaphore.signal, GIL held, before it wakes a waiter: record the GIL
 * release count in *seen for the waiter to watch. */
void dkpy_handoff_mark(uint32_t *seen);

/* Take the GIL for one callback; false if Python is finalizing. */
bool dkpy_enter(dkpy_gil_t *g);
/* Give it back (a worker may keep it for the next callback). */
void dkpy_leave(dkpy_gil_t *g);
/* On a worker holding the GIL across callbacks, drop it now (before a
 * blocking call made outside any callback). */
void dkpy_release_batch(void);
/* True while some pool worker keeps the GIL between callbacks: a thread
 * that spins for a worker's result waits for this to be false before it
 * takes the GIL, so it does not sleep in the GIL's queue. A hint only. */
bool dkpy_workers_hold_gil(void);
/* Install the pool hooks; call once from module exec. */
void dkpy_gil_init(void);
/* Mark the interpreter as finalizing (atexit). */
void dkpy_gil_shutdown(void);
bool dkpy_finalizing(void);

#endif /* DK_SRC_PYTHON_GIL_H */
