/*
 * Futures over dispatch queues (futures.c): Queue.submit for the dispatch
 * binding, and the exec function that adds _ExecutorCore and _LoopWaker.
 */
#ifndef DK_SRC_PYTHON_FUTURES_H
#define DK_SRC_PYTHON_FUTURES_H

#include "python/binding.h"

#include <pthread.h>

struct dk_queue_s;

/* Queue.submit(fn, /, *args, **kwargs) in fastcall form; a workloop also
 * takes qos= (consumed, not passed to fn). A concurrent.futures.Future. */
PyObject *dkpy_queue_submit(struct dk_queue_s *q, bool workloop,
                            PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames);

int dkpy_futures_exec(PyObject *m);
/* `async with lock:` for the C lock types: __aenter__ and __aexit__
 * return dispatchkit.asyncio's coroutines (_lock_enter / _lock_exit) for
 * `self`, which await on the futex watcher (no thread parked). */
PyObject *dkpy_lock_aenter(PyObject *self, PyObject *unused);
PyObject *dkpy_lock_aexit(PyObject *self, PyObject *exc_info);
/* The objects an awaitable wait accepts (see futures.c): defined beside
 * their types in sync.c and dispatch.c. 0, or -1 for another object. */
int dkpy_sync_target(PyObject *obj, int *kind, void **addr, bool *shared,
                     bool **owner_died);
int dkpy_dispatch_target(PyObject *obj, int *kind, void **ptr);
struct dk_zb_reader_s *dkpy_zb_reader_hold(PyObject *obj);
void dkpy_zb_reader_unhold(PyObject *obj);
bool dkpy_zb_is_reader(PyObject *obj);
struct dk_zb_writer_s *dkpy_zb_writer_hold(PyObject *obj);
void dkpy_zb_writer_unhold(PyObject *obj);
bool dkpy_zb_is_writer(PyObject *obj);

/* ---- between futures.c and aio_wait.c ------------------------------ */

struct WaitObject;
struct dk__os_uring;

/* A loop waker's share for the awaitable waits (aio_wait.c), inside the
 * _LoopWaker of futures.c: the waits the watcher thread fired (pushed
 * without the GIL under fired_lock; the eventfd `fd` is signalled when
 * the list was empty), and the loop's io_uring for futex waits, opened on
 * the first wait (NULL: the watcher serves this loop), with its waits in
 * flight listed (the GIL) so that the collector sees them and a cleared
 * waker can drop them. */
typedef struct dkpy_waits {
    int fd;
    pthread_mutex_t fired_lock;
    struct WaitObject *fired, *fired_tail;
    struct dk__os_uring *ring;
    int ring_state;    /* 0: not tried yet, 1: open, -1: none */
    unsigned ring_gen; /* dkpy_fork_gen at the opening */
    bool ring_polled;  /* the loop watches the ring's fd */
    struct WaitObject *ring_waits;
} dkpy_waits_t;

void dkpy_waits_init(dkpy_waits_t *k, int fd);
/* Drop every wait (dkpy_waits_clear) and free what init made. */
void dkpy_waits_fini(dkpy_waits_t *k);
/* Resolve the futures of the waits the watcher fired (only drop them
 * when `drop`); how many. */
long dkpy_waits_drain(dkpy_waits_t *k, bool drop);
/* Resolve the futures of the completed ring waits; how many. */
long dkpy_waits_reap_ring(dkpy_waits_t *k);
/* Drop the fired waits and those in flight; close the ring. */
void dkpy_waits_clear(dkpy_waits_t *k);
int dkpy_waits_traverse(dkpy_waits_t *k, visitproc visit, void *arg);
/* True when this loop's waits go on its ring (opening it if not tried). */
bool dkpy_waits_use_ring(dkpy_waits_t *k);

/* futures.c: the waits of a _LoopWaker, or NULL for another object; the
 * count of fork()s this process descends from (a ring opened under
 * another count is the parent's). For an asyncio future: whether it is
 * still pending (not done: not cancelled meanwhile); fut.set_result(value)
 * on a pending one, false if that raised (its loop closed). Errors go to
 * sys.unraisablehook. */
dkpy_waits_t *dkpy_waker_waits(PyObject *obj);
unsigned dkpy_fork_gen(void);
bool dkpy_aio_pending(PyObject *fut);
bool dkpy_aio_set_result(PyObject *fut, PyObject *value);
/* Adds _AioWait and _uses_futex_waitv (called by dkpy_futures_exec). */
int dkpy_aio_wait_exec(PyObject *m);

#endif /* DK_SRC_PYTHON_FUTURES_H */
