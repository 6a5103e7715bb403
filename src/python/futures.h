/*
 * Futures over dispatch queues (futures.c): Queue.submit for the dispatch
 * binding, and the exec function that adds _ExecutorCore and _LoopWaker.
 */
#ifndef DK_SRC_PYTHON_FUTURES_H
#define DK_SRC_PYTHON_FUTURES_H

#include "python/binding.h"

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

#endif /* DK_SRC_PYTHON_FUTURES_H */
