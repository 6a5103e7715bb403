/*
 * Futures over dispatch queues: the work item behind dispatchkit.Executor,
 * Queue.submit and dispatchkit.asyncio.run.
 *
 * A submitted call is one C work item: it holds the callable, its
 * arguments and the future, and runs on a pool worker that already holds
 * the GIL across consecutive callbacks (gil.h), so a stream of tiny tasks
 * runs and completes many items per GIL hold with no Python frame of ours
 * in between.
 *
 * concurrent.futures futures. Our Future (python/dispatchkit/_executor.py)
 * subclasses concurrent.futures.Future and creates its condition variable,
 * waiter list and callback list lazily, on first touch. Every stdlib path
 * that waits on a future, cancels it or adds a callback touches
 * `_condition` first. So the worker takes the fast path, writing `_state`
 * and `_result` straight into the instance dict, only while `_condition`
 * is absent, and calls the stdlib's own set_running_or_notify_cancel /
 * set_result / set_exception (which lock and notify) otherwise. The check
 * and the writes happen under one GIL hold with no Python code between
 * them:
 *
 *   worker (GIL)                          waiter / canceller (GIL)
 *   '_condition' in dict? no      (A)     _condition created (setdefault) (B)
 *   _result = r; _state = FINISHED        with _condition: read _state
 *
 * Either (B) comes first and the worker sees the condition (slow path,
 * which notifies), or (A) and its writes come first and the waiter reads
 * FINISHED under its lock and never sleeps. The GIL orders them.
 *
 * Executors with max_workers: a counter-gated feed. At most max_workers
 * items of the executor are on the queue at once; the rest wait in a FIFO
 * and each finishing item submits the next. The counters, the FIFO and the
 * list of outstanding items are only touched with the GIL held.
 *
 * asyncio: an item submitted by dispatchkit.asyncio.run completes into its
 * loop's LoopWaker: a list of finished items plus one eventfd that the loop
 * watches with add_reader. The worker appends under the GIL and signals the
 * fd only when the list was empty; the loop's reader drains the fd first,
 * then takes the whole list, so a burst of completions costs one wake-up:
 *
 *   worker (GIL)                          loop (GIL)
 *   was_empty = list empty; append        drain the eventfd          (C)
 *   if was_empty: signal the eventfd (D)  take the list; resolve all
 *
 * An append after the take sees an empty list and signals again; an append
 * between (C) and the take is taken with the list. No completion is left
 * without a pending wake-up.
 */
#include "python/binding.h"

#include <errno.h>
#include <pthread.h>

#include <structmember.h>

#include "atomic.h"
#include "dk/futex.h"
#include "dk/group.h"
#include "dk/mutex.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/shm_event.h"
#include "dk/time.h"
#include "os/linux/os.h"
#include "os/linux/uring.h"
#include "python/futures.h"
#include "python/gil.h"
#include "watch.h"

/* The longest the loop's thread spins for a run() result (long enough
 * for a parked worker's wake-up); after DKPY_SPIN_FAILS empty spins in a
 * row it spins on one await in DKPY_SPIN_RETRY only. */
#define DKPY_SPIN_NS 100000ull
#define DKPY_SPIN_FAILS 3
#define DKPY_SPIN_RETRY 16
/* The longest a thread waits for the GIL's holder to let go (see
 * Waker_spin and run_item) before taking it the usual way. */
#define DKPY_SPIN_GIL_NS 20000ull

/* ---- names and the Future type ------------------------------------- */

/* The names this file looks up, interned once: N(var, "text") declares
 * s_var. */
#define NAMES(N)                                                              \
    N(condition, "_condition") N(state, "_state") N(result, "_result")        \
    N(exception, "_exception") N(set_running, "set_running_or_notify_cancel") \
    N(set_result, "set_result") N(set_exception, "set_exception")             \
    N(cancel, "cancel") N(done, "done") N(get_loop, "get_loop")               \
    N(is_closed, "is_closed") N(qos, "qos") N(create_future, "create_future") \
    N(loop_kw, "loop") N(dk_waker, "_dk_waker") N(dk_loop, "_dk_loop")        \
    N(lock_enter, "_lock_enter") N(lock_exit, "_lock_exit")                   \
    N(add_reader, "add_reader") N(drain_ring, "drain_ring")
#define DECLARE_NAME(var, text) static PyObject *s_##var;
NAMES(DECLARE_NAME)
static PyObject *st_running, *st_finished, *st_cancelled, *st_cancelled_n;
static PyTypeObject *future_type; /* dispatchkit._executor.Future */
/* Ours, set by dkpy_futures_exec (kept for the process: binding.h). */
static PyTypeObject *executor_type, *waker_type, *wait_type;

static int
intern_names(void)
{
#define INTERN_NAME(var, text)                                                \
    if ((s_##var = PyUnicode_InternFromString(text)) == NULL) {               \
        return -1;                                                            \
    }
    NAMES(INTERN_NAME)
    return 0;
}

/* _dk._futures_init(Future, RUNNING, FINISHED, CANCELLED,
 * CANCELLED_AND_NOTIFIED): called once by dispatchkit._executor. */
static PyObject *
futures_init(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *type, *r, *f, *c, *cn;
    if (!PyArg_ParseTuple(args, "O!UUUU:_futures_init", &PyType_Type, &type,
                          &r, &f, &c, &cn)) {
        return NULL;
    }
    Py_XSETREF(future_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(st_running, Py_NewRef(r));
    Py_XSETREF(st_finished, Py_NewRef(f));
    Py_XSETREF(st_cancelled, Py_NewRef(c));
    Py_XSETREF(st_cancelled_n, Py_NewRef(cn));
    Py_RETURN_NONE;
}

static PyObject *
new_future(void)
{
    if (future_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "dispatchkit._executor is not initialised");
        return NULL;
    }
    /* Our Future needs no __init__: its state fields have class-level
     * defaults and the rest is created on first touch. */
    return future_type->tp_alloc(future_type, 0);
}

/* ---- the work item --------------------------------------------------- */

typedef struct ExecutorObject ExecutorObject;
typedef struct WakerObject WakerObject;

typedef struct item {
    PyObject *future; /* ours, or an asyncio future when waker != NULL */
    PyObject *fn, *args, *kwargs;
    ExecutorObject *ex;       /* strong, or NULL */
    WakerObject *waker;       /* strong until completed, or NULL */
    PyObject *value;          /* asyncio: the result or the exception */
    int failed;               /* asyncio: value is an exception */
    int skipped;              /* asyncio: cancelled before it ran */
    struct item *prev, *next; /* ex->outstanding */
    struct item *fifo_next;   /* ex's FIFO behind the gate, or waker's */
} item_t;

struct ExecutorObject {
    PyObject_HEAD
    dk_queue_t *q;
    PyObject *queue_obj;    /* keeps q alive; NULL for the global queue */
    Py_ssize_t max_workers; /* 0: no limit */
    Py_ssize_t active;      /* items on the queue (gated executors) */
    item_t *pend_head, *pend_tail;
    item_t outstanding; /* sentinel of a circular list */
    dk_group_t *group;  /* one enter per outstanding item */
    int shutdown;
    unsigned fork_gen; /* fork_gen when the items above were current */
};

/* Bumped in every forked child: the parent's items never run there, so
 * an executor created before the fork forgets them (see executor_adopt). */
static unsigned fork_gen;

static void
futures_atfork_child(void)
{
    fork_gen++;
}

struct WaitObject;

struct WakerObject {
    PyObject_HEAD
    int fd;
    item_t *head, *tail; /* finished, not yet resolved (the GIL) */
    /* The awaiting loop spins for a result (Waker_spin): 1 while it spins
     * with the GIL released; `handed` is set by the worker that appended
     * to the empty list instead of signalling the eventfd. */
    uint32_t spinning, handed;
    uint32_t spin_fails;  /* consecutive spins that ended empty */
    unsigned spin_skips;  /* awaits not spun since the last try (GIL) */
    uint32_t outstanding; /* submitted, not yet posted (the GIL) */
    /* Fired waits, pushed by the watcher thread without the GIL. */
    pthread_mutex_t fired_lock;
    struct WaitObject *fired;
    /* The loop's io_uring for futex waits (watch.h's ring watches), opened
     * on the first wait; NULL: the watcher thread serves this loop. Its
     * waits in flight are listed (the GIL) so that the collector sees
     * them and a cleared waker can drop them. */
    dk__os_uring_t *ring;
    int ring_state;    /* 0: not tried yet, 1: open, -1: none */
    unsigned ring_gen; /* fork_gen at the opening (not ours in a child) */
    bool ring_polled;  /* the loop watches the ring's fd (ring_poll) */
    struct WaitObject *ring_waits;
    PyObject *weakreflist;
};

static long drain_fired(WakerObject *w, bool drop);
static long ring_reap(WakerObject *k);
static void ring_clear(WakerObject *k);

static void run_item(void *ctx);

/* The executor whose item this thread is running, if any. */
static __thread ExecutorObject *running_ex;

static void
item_free(item_t *it)
{
    Py_XDECREF(it->future);
    Py_XDECREF(it->fn);
    Py_XDECREF(it->args);
    Py_XDECREF(it->kwargs);
    Py_XDECREF(it->value);
    PyMem_Free(it);
}

/* A new item calling fn(*args) (args: a tuple, stolen). */
static item_t *
item_alloc(PyObject *fn, PyObject *args)
{
    item_t *it = PyMem_Calloc(1, sizeof *it);
    if (it == NULL) {
        Py_DECREF(args);
        PyErr_NoMemory();
        return NULL;
    }
    it->fn = Py_NewRef(fn);
    it->args = args;
    return it;
}

/* Build an item from fastcall arguments args[0] = fn, args[1:] its
 * positional arguments, kwnames its keyword names (skipping `skip`, the
 * qos= of a workloop). */
static item_t *
item_new(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
         PyObject *skip, PyObject **skipped_value)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "submit() missing 1 required positional argument: "
                        "'fn'");
        return NULL;
    }
    if (dkpy_check_callable(args[0], "fn") < 0) {
        return NULL;
    }
    PyObject *fargs = PyTuple_New(nargs - 1);
    if (fargs == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(fargs, i - 1, Py_NewRef(args[i]));
    }
    item_t *it = item_alloc(args[0], fargs);
    if (it == NULL) {
        return NULL;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        if (skip != NULL && PyUnicode_Compare(name, skip) == 0) {
            *skipped_value = value;
            continue;
        }
        if (it->kwargs == NULL && (it->kwargs = PyDict_New()) == NULL) {
            item_free(it);
            return NULL;
        }
        if (PyDict_SetItem(it->kwargs, name, value) < 0) {
            item_free(it);
            return NULL;
        }
    }
    return it;
}

/* The instance dict of a concurrent.futures future while the fast path
 * may write it, before anyone created `_condition` (A): a new reference,
 * or NULL (with an error set if that failed) for the slow path. */
static PyObject *
future_fast_dict(PyObject *fut)
{
    PyObject *d = PyObject_GenericGetDict(fut, NULL);
    if (d == NULL) {
        return NULL;
    }
    PyObject *cond = PyDict_GetItemWithError(d, s_condition); /* (A) */
    if (cond == NULL && !PyErr_Occurred()) {
        return d;
    }
    Py_DECREF(d);
    return NULL;
}

/* Put a concurrent.futures future into RUNNING: 1 to run, 0 if it was
 * cancelled, -1 on error. */
static int
future_begin(PyObject *fut)
{
    PyObject *d = future_fast_dict(fut);
    if (d != NULL) {
        PyObject *state = PyDict_GetItemWithError(d, s_state);
        int rc = 1;
        if (state == st_cancelled || state == st_cancelled_n) {
            rc = 0;
        } else if (PyErr_Occurred() ||
                   PyDict_SetItem(d, s_state, st_running) < 0) {
            rc = -1;
        }
        Py_DECREF(d);
        return rc;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *r = PyObject_CallMethodNoArgs(fut, s_set_running);
    if (r == NULL) {
        return -1;
    }
    int go = PyObject_IsTrue(r);
    Py_DECREF(r);
    return go;
}

/* Complete a RUNNING concurrent.futures future with `value` (a result, or
 * the exception when failed). */
static void
future_complete(PyObject *fut, PyObject *value, int failed)
{
    PyObject *d = future_fast_dict(fut);
    if (d != NULL) {
        if (PyDict_SetItem(d, failed ? s_exception : s_result, value) < 0 ||
            PyDict_SetItem(d, s_state, st_finished) < 0) {
            PyErr_WriteUnraisable(fut);
        }
        Py_DECREF(d);
        return;
    }
    PyObject *r = NULL;
    if (!PyErr_Occurred()) {
        r = PyObject_CallMethodOneArg(
            fut, failed ? s_set_exception : s_set_result, value);
    }
    if (r == NULL) {
        PyErr_WriteUnraisable(fut);
    } else {
        Py_DECREF(r);
    }
}

/* Take the raised exception, its traceback attached. New reference. */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) {
        value = Py_NewRef(Py_None);
    }
    return value;
}

static PyObject *
call_item(item_t *it, int *failed)
{
    PyObject *r = PyObject_Call(it->fn, it->args, it->kwargs);
    if (r == NULL) {
        *failed = 1;
        return take_exception();
    }
    *failed = 0;
    return r;
}

/* ---- executors: the gate and the outstanding list ------------------- */

static int
dispatch_item(dk_queue_t *q, int qos, item_t *it)
{
    return qos != 0 ? dk_queue_async_qos_f(q, qos, it, run_item)
                    : dk_queue_async_f(q, it, run_item);
}

static void
executor_link(ExecutorObject *ex, item_t *it)
{
    it->ex = (ExecutorObject *)Py_NewRef((PyObject *)ex);
    it->next = &ex->outstanding;
    it->prev = ex->outstanding.prev;
    ex->outstanding.prev->next = it;
    ex->outstanding.prev = it;
    dk_group_enter(ex->group);
}

static void
executor_unlink(ExecutorObject *ex, item_t *it)
{
    it->prev->next = it->next;
    it->next->prev = it->prev;
    it->prev = it->next = NULL;
    int left = dk_group_leave(ex->group); /* balances the submit's enter */
    (void)left;
}

/* Take `it` off ex's outstanding list and free it. */
static void
executor_drop(ExecutorObject *ex, item_t *it)
{
    executor_unlink(ex, it);
    Py_CLEAR(it->ex); /* not the last reference: the caller holds one */
    item_free(it);
}

/* Append `it` to the FIFO from *head to *tail. */
static void
fifo_push(item_t **head, item_t **tail, item_t *it)
{
    it->fifo_next = NULL;
    if (*tail != NULL) {
        (*tail)->fifo_next = it;
    } else {
        *head = it;
    }
    *tail = it;
}

/* Submit `it` through ex's gate. Returns 0 or -errno (nothing queued). */
static int
executor_feed(ExecutorObject *ex, item_t *it)
{
    if (ex->max_workers > 0 && ex->active >= ex->max_workers) {
        fifo_push(&ex->pend_head, &ex->pend_tail, it);
        return 0;
    }
    int rc = dispatch_item(ex->q, 0, it);
    if (rc == 0) {
        ex->active++;
    }
    return rc;
}

/* An item of ex finished: hand its slot to the next one behind the gate. */
static void
executor_next(ExecutorObject *ex)
{
    ex->active--;
    while (ex->pend_head != NULL && ex->active < ex->max_workers) {
        item_t *n = ex->pend_head;
        ex->pend_head = n->fifo_next;
        if (ex->pend_head == NULL) {
            ex->pend_tail = NULL;
        }
        if (dispatch_item(ex->q, 0, n) == 0) {
            ex->active++;
            continue;
        }
        /* Out of memory: fail that item rather than lose it. */
        PyErr_NoMemory();
        PyObject *exc = take_exception();
        if (future_begin(n->future) > 0) {
            future_complete(n->future, exc, 1);
        }
        PyErr_Clear();
        Py_DECREF(exc);
        executor_drop(ex, n);
    }
}

/* Link `it` (its future set) to ex and submit it through the gate: 0, or
 * -1 with the error raised and the item freed. */
static int
executor_add(ExecutorObject *ex, item_t *it)
{
    executor_link(ex, it);
    int rc = executor_feed(ex, it);
    if (rc < 0) {
        executor_drop(ex, it);
        dkpy_raise_errno(rc);
        return -1;
    }
    return 0;
}

/* ---- asyncio completions --------------------------------------------- */

/* Is the loop of this asyncio future closed (or unknown: an error)? */
static bool
loop_closed(PyObject *fut)
{
    PyObject *loop = PyObject_CallMethodNoArgs(fut, s_get_loop);
    if (loop == NULL) {
        PyErr_Clear();
        return false;
    }
    PyObject *closed = PyObject_CallMethodNoArgs(loop, s_is_closed);
    Py_DECREF(loop);
    int yes = closed == NULL ? -1 : PyObject_IsTrue(closed);
    Py_XDECREF(closed);
    PyErr_Clear();
    return yes != 0;
}

/* fut.done() of an asyncio future: 1, 0, or -1 with an error set. */
static int
aio_done(PyObject *fut)
{
    PyObject *c = PyObject_CallMethodNoArgs(fut, s_done);
    int done = c == NULL ? -1 : PyObject_IsTrue(c);
    Py_XDECREF(c);
    return done;
}

/* fut.<method>(value) on an asyncio future unless it is done (cancelled
 * meanwhile); an error goes to sys.unraisablehook. */
static void
aio_resolve(PyObject *fut, PyObject *method, PyObject *value)
{
    if (aio_done(fut) == 0) {
        PyObject *r = PyObject_CallMethodOneArg(fut, method, value);
        Py_XDECREF(r);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(fut);
    }
}

/* Returns true when the result was handed to a spinning loop. */
static bool
waker_post(item_t *it)
{
    WakerObject *w = it->waker;
    it->waker = NULL;
    dk__atomic_store_relaxed(&w->outstanding, w->outstanding - 1);
    /* Nobody else holds the waker: its loop is gone. A loop closed
     * before this completion never drains it: drop it now rather than
     * keep its future (and so the loop) alive. Asked only of the item
     * that finds the list empty (a gather of 10,000 asks once per drain,
     * not 10,000 times): items queued behind one that found the loop open
     * are freed with the waker, which nothing holds once the closed loop
     * has dropped its reader and its items are done. */
    if (Py_REFCNT((PyObject *)w) == 1 ||
        (w->head == NULL && loop_closed(it->future))) {
        item_free(it);
        Py_DECREF((PyObject *)w);
        return false;
    }
    bool was_empty = w->head == NULL;
    fifo_push(&w->head, &w->tail, it);
    bool handed = false;
    if (was_empty) {
        /* (H2): pairs with (H1) and (H4) */
        if (dk__atomic_load_seq_cst(&w->spinning) != 0) {
            /* The loop spins for it (Waker_spin): no wake-up needed. */
            dk__atomic_store_release(&w->handed, 1); /* pairs with (H3) */
            handed = true;
        } else {
            dk__os_eventfd_signal(w->fd); /* (D) */
        }
    }
    Py_DECREF((PyObject *)w);
    return handed;
}

static bool
run_aio(item_t *it)
{
    if (aio_done(it->future) != 0) {
        /* Cancelled before it started: never run it. */
        PyErr_Clear();
        it->skipped = 1;
    } else {
        it->value = call_item(it, &it->failed);
    }
    return waker_post(it);
}

static void
run_item(void *ctx)
{
    item_t *it = ctx;
    dkpy_gil_t g;
    if (it->waker != NULL && dk_is_worker_thread() &&
        dk__atomic_load_relaxed(&it->waker->spin_fails) < DKPY_SPIN_FAILS &&
        dk__atomic_load_relaxed(&it->waker->outstanding) == 1) {
        /* Its loop usually spins for the result: give it the moment it
         * needs to let go of the GIL, rather than sleep in the GIL's
         * queue until it does. Bounded; a hint only. The item holds the
         * waker. */
        uint64_t end = dk_now() + DKPY_SPIN_GIL_NS;
        for (unsigned i = 1;
             dk__atomic_load_relaxed(&it->waker->spinning) == 0; i++) {
            dk_cpu_relax();
            if ((i & 15) == 0 && dk_now() > end) {
                break;
            }
            if ((i & 63) == 0) {
                dk__os_yield(); /* oversubscribed: let the other side run */
            }
        }
    }
    if (!dkpy_enter(&g)) {
        return; /* finalizing: dropped, its references leak on purpose */
    }
    if (it->waker != NULL) {
        bool handed = run_aio(it);
        dkpy_leave(&g);
        if (handed) {
            dkpy_release_batch(); /* the spinning loop takes the GIL next */
            /* On a busy machine the loop's thread often waits for a CPU
             * on this one (both cores taken by other work): let it have
             * this one now, instead of holding it in the pool's idle spin
             * until that spin's next yield (about 10-20 us later). With
             * nothing else runnable here this returns at once. */
            dk__os_yield();
        }
        return;
    }
    int go = future_begin(it->future);
    if (go < 0) {
        PyErr_WriteUnraisable(it->future);
    } else if (go > 0) {
        int failed;
        ExecutorObject *outer = running_ex;
        running_ex = it->ex;
        PyObject *value = call_item(it, &failed);
        running_ex = outer;
        future_complete(it->future, value, failed);
        Py_DECREF(value);
    }
    ExecutorObject *ex = it->ex;
    it->ex = NULL;
    if (ex != NULL) {
        executor_unlink(ex, it);
        if (ex->max_workers > 0) {
            executor_next(ex);
        }
    }
    item_free(it);
    Py_XDECREF((PyObject *)ex);
    dkpy_leave(&g);
}

/* ---- Queue.submit ----------------------------------------------------- */

PyObject *
dkpy_queue_submit(dk_queue_t *q, bool workloop, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *qos_obj = NULL;
    item_t *it =
        item_new(args, nargs, kwnames, workloop ? s_qos : NULL, &qos_obj);
    if (it == NULL) {
        return NULL;
    }
    long qos = qos_obj == NULL ? 0 : PyLong_AsLong(qos_obj);
    if ((qos == -1 && PyErr_Occurred()) || dkpy_qos_arg(qos) < 0 ||
        (it->future = new_future()) == NULL) {
        item_free(it);
        return NULL;
    }
    PyObject *fut = Py_NewRef(it->future);
    int rc = dispatch_item(q, (int)qos, it);
    if (rc < 0) {
        item_free(it);
        Py_DECREF(fut);
        return dkpy_raise_errno(rc);
    }
    return fut;
}

/* ---- _ExecutorCore ------------------------------------------------------ */

/* A new group and no items, for a new executor or one adopted in a fork
 * child (where the parent's group is leaked with its items). 0, or -1
 * with MemoryError. */
static int
executor_start(ExecutorObject *self)
{
    dk_group_t *g;
    if (dk_group_create(&g) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->group = g;
    self->outstanding.next = self->outstanding.prev = &self->outstanding;
    self->pend_head = self->pend_tail = NULL;
    self->active = 0;
    self->fork_gen = fork_gen;
    return 0;
}

/* In a forked child, the parent's outstanding items are gone with the
 * parent's workers: drop them (their memory is leaked on purpose, as the
 * runtime drops the parent's queued work) so that shutdown(wait=True)
 * does not wait for them forever. */
static int
executor_adopt(ExecutorObject *self)
{
    return self->fork_gen == fork_gen ? 0 : executor_start(self);
}

static PyObject *
Executor_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"queue", "max_workers", NULL};
    PyObject *queue = Py_None;
    Py_ssize_t max_workers = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|On:_ExecutorCore", kwlist,
                                     &queue, &max_workers)) {
        return NULL;
    }
    if (max_workers < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "max_workers must be greater than 0");
        return NULL;
    }
    dk_queue_t *q;
    if (dkpy_queue_arg(queue, "queue", &q) < 0) {
        return NULL;
    }
    ExecutorObject *self = (ExecutorObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (executor_start(self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (q == NULL) {
        q = dk_queue_global(0);
    } else {
        self->queue_obj = Py_NewRef(queue);
    }
    self->q = q;
    self->max_workers = max_workers;
    return (PyObject *)self;
}

static int
Executor_traverse(ExecutorObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->queue_obj);
    return 0;
}

static void
Executor_dealloc(ExecutorObject *self)
{
    PyObject_GC_UnTrack(self);
    /* Every outstanding item holds a reference: none is left here. */
    if (self->group != NULL) {
        dk_release(self->group);
    }
    Py_CLEAR(self->queue_obj);
    dkpy_free((PyObject *)self);
}

/* Before a submission: 0, or -1 with RuntimeError after shutdown (or
 * executor_adopt's MemoryError). */
static int
executor_open(ExecutorObject *self)
{
    if (self->shutdown) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot schedule new futures after shutdown");
        return -1;
    }
    return executor_adopt(self);
}

static PyObject *
Executor_submit(ExecutorObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    if (executor_open(self) < 0) {
        return NULL;
    }
    item_t *it = item_new(args, nargs, kwnames, NULL, NULL);
    if (it == NULL) {
        return NULL;
    }
    it->future = new_future();
    if (it->future == NULL) {
        item_free(it);
        return NULL;
    }
    PyObject *fut = Py_NewRef(it->future);
    if (executor_add(self, it) < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    return fut;
}

/* map_submit(fn, iterables): submit fn(*args) for args in
 * zip(*iterables), as the stdlib's map does; the futures in reverse order
 * (the caller pops from the end). */
static PyObject *
Executor_map_submit(ExecutorObject *self, PyObject *args)
{
    PyObject *fn, *iterables, *call_args;
    if (!PyArg_ParseTuple(args, "OO!:map_submit", &fn, &PyTuple_Type,
                          &iterables) ||
        executor_open(self) < 0 || dkpy_check_callable(fn, "fn") < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    PyObject *zip = out == NULL ? NULL
                                : PyObject_Call((PyObject *)&PyZip_Type,
                                                iterables, NULL);
    while (zip != NULL && (call_args = PyIter_Next(zip)) != NULL) {
        item_t *it = item_alloc(fn, call_args);
        if (it != NULL && (it->future = new_future()) != NULL &&
            PyList_Append(out, it->future) == 0) {
            if (executor_add(self, it) < 0) {
                break;
            }
            continue;
        }
        if (it != NULL) {
            item_free(it);
        }
        break;
    }
    Py_XDECREF(zip);
    if (zip != NULL && !PyErr_Occurred() && PyList_Reverse(out) == 0) {
        return out;
    }
    /* As the stdlib: an error while submitting cancels what was
     * submitted. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(out); i++) {
        Py_XDECREF(
            PyObject_CallMethodNoArgs(PyList_GET_ITEM(out, i), s_cancel));
        PyErr_Clear();
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    Py_XDECREF(out);
    return NULL;
}

static int
group_wait_fn(void *g, uint64_t deadline)
{
    return dk_group_wait_interruptible(g, deadline);
}

static PyObject *
Executor_shutdown(ExecutorObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pp:shutdown", kwlist,
                                     &wait, &cancel)) {
        return NULL;
    }
    self->shutdown = 1;
    if (executor_adopt(self) < 0) {
        return NULL;
    }
    if (cancel) {
        /* Collect first: cancel() runs Python code (done callbacks) that
         * may finish other items and change the list. */
        PyObject *futs = PyList_New(0);
        if (futs == NULL) {
            return NULL;
        }
        for (item_t *it = self->outstanding.next; it != &self->outstanding;
             it = it->next) {
            if (PyList_Append(futs, it->future) < 0) {
                Py_DECREF(futs);
                return NULL;
            }
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(futs); i++) {
            PyObject *r =
                PyObject_CallMethodNoArgs(PyList_GET_ITEM(futs, i), s_cancel);
            if (r == NULL) {
                Py_DECREF(futs);
                return NULL;
            }
            Py_DECREF(r);
        }
        Py_DECREF(futs);
    }
    if (wait) {
        if (running_ex == self) {
            /* Called from one of the executor's own items: waiting for
             * itself would never end. */
            PyErr_SetString(PyExc_RuntimeError,
                            "shutdown(wait=True) from a task of the same "
                            "executor would wait for itself");
            return NULL;
        }
        dkpy_release_batch();
        /* Until the group is empty, or a signal handler raised. */
        int rc = dkpy_wait_sliced(group_wait_fn, self->group, DK_TIME_FOREVER);
        if (rc != 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Executor_get_pending(ExecutorObject *self, void *Py_UNUSED(closure))
{
    Py_ssize_t n = 0;
    for (item_t *it = self->outstanding.next; it != &self->outstanding;
         it = it->next) {
        n++;
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
Executor_get_is_shutdown(ExecutorObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->shutdown);
}

static PyMethodDef Executor_methods[] = {
    {"submit", DKPY_METH_FAST(Executor_submit),
     "submit($self, fn, /, *args, **kwargs)\n--\n\n"
     "Schedule fn(*args, **kwargs); return a concurrent.futures.Future."},
    {"map_submit", (PyCFunction)Executor_map_submit, METH_VARARGS,
     "map_submit($self, fn, iterables, /)\n--\n\n"
     "Submit fn(*args) for args in zip(*iterables); the futures, last "
     "first."},
    {"shutdown", DKPY_METH_KW(Executor_shutdown),
     "shutdown($self, /, wait=True, cancel_futures=False)\n--\n\n"
     "Refuse new work; optionally cancel what has not started and wait."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Executor_getset[] = {
    {"pending", (getter)Executor_get_pending, NULL,
     "Submitted items not yet finished.", NULL},
    {"is_shutdown", (getter)Executor_get_is_shutdown, NULL,
     "True after shutdown().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

DKPY_TYPE(static, Executor_spec, "dispatchkit._dk._ExecutorCore",
          ExecutorObject, Py_TPFLAGS_HAVE_GC, {Py_tp_new, Executor_new},
          {Py_tp_dealloc, Executor_dealloc},
          {Py_tp_traverse, Executor_traverse},
          {Py_tp_methods, Executor_methods}, {Py_tp_getset, Executor_getset},
          {Py_tp_doc, "The C half of dispatchkit.Executor: submission, the "
                      "max_workers gate and shutdown."});

/* ---- LoopWaker ---------------------------------------------------------- */

static PyObject *
Waker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (!dkpy_no_args("_LoopWaker", args, kwargs)) {
        return NULL;
    }
    int fd = dk__os_eventfd_create();
    if (fd < 0) {
        return dkpy_raise_errno(fd);
    }
    WakerObject *self = (WakerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        dk__os_close(fd);
        return NULL;
    }
    self->fd = fd;
    pthread_mutex_init(&self->fired_lock, NULL);
    return (PyObject *)self;
}

static int Waker_traverse(WakerObject *self, visitproc visit, void *arg);

static int
Waker_clear(WakerObject *self)
{
    item_t *it = self->head;
    self->head = self->tail = NULL;
    while (it != NULL) {
        item_t *next = it->fifo_next;
        item_free(it);
        it = next;
    }
    (void)drain_fired(self, true);
    ring_clear(self);
    return 0;
}

static void
Waker_dealloc(WakerObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Waker_clear(self);
    if (self->fd >= 0) {
        dk__os_close(self->fd);
    }
    pthread_mutex_destroy(&self->fired_lock);
    dkpy_free((PyObject *)self);
}

static PyObject *
Waker_fileno(WakerObject *self, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(self->fd);
}

/* Resolve the asyncio future of every finished item (the GIL). */
static long
resolve_finished(WakerObject *self)
{
    item_t *it = self->head;
    self->head = self->tail = NULL;
    long n = 0;
    while (it != NULL) {
        item_t *next = it->fifo_next;
        if (!it->skipped) {
            aio_resolve(it->future,
                        it->failed ? s_set_exception : s_set_result,
                        it->value);
        }
        item_free(it);
        it = next;
        n++;
    }
    return n;
}

/* The loop's reader: resolve every finished item's asyncio future. */
static PyObject *
Waker_drain(WakerObject *self, PyObject *Py_UNUSED(unused))
{
    dk__os_eventfd_drain(self->fd); /* (C) */
    long n = resolve_finished(self);
    n += drain_fired(self, false);
    n += ring_reap(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(n);
}

/* The reader of the ring's fd: reap what completed, from shared memory
 * (no read(), no syscall unless the kernel kept overflowed completions). */
static PyObject *
Waker_drain_ring(WakerObject *self, PyObject *Py_UNUSED(unused))
{
    long n = ring_reap(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(n);
}

static dk__os_uring_t *waker_ring(WakerObject *k);

static PyObject *
Waker_uses_ring(WakerObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(waker_ring(self) != NULL);
}

/* spin(future): called by the loop's thread as it starts to await
 * `future` (from run()). A call of a tiny function costs far less than the
 * two thread wake-ups of the usual path (the parked worker, then the loop
 * asleep in epoll_wait), so the loop first waits for a finished item with
 * the GIL released, spinning for at most DKPY_SPIN_NS, and the worker that
 * finishes one while it spins skips the eventfd:
 *
 *   loop (GIL, then none)                worker (GIL)
 *   spinning = 1                 (H1)    append to the empty list
 *   release the GIL; spin until          if spinning:            (H2)
 *     handed, or the budget ends (H3)      handed = 1; no eventfd
 *   take the GIL; spinning = 0   (H4)    else: signal the eventfd (D)
 *   resolve the whole list
 *
 * H1, H2 and H4 are sequentially consistent and H2 runs under the GIL.
 * A worker that saw spinning == 1 appended before the loop took the GIL
 * back at H4, so the loop's resolve (under the GIL) takes its item; one
 * that saw 0 signals as before. A list left non-empty by a skipped signal
 * is emptied by that resolve, so the next append signals again. After
 * DKPY_SPIN_FAILS spins in a row end empty (calls longer than the spin),
 * the loop spins only on every DKPY_SPIN_RETRY-th await until one
 * succeeds, so a loop awaiting long calls spins a few microseconds per
 * call on average. True when `future` is done on return. */
static PyObject *
Waker_spin(WakerObject *self, PyObject *fut)
{
    if (self->head == NULL) {
        if (self->spin_fails >= DKPY_SPIN_FAILS &&
            ++self->spin_skips < DKPY_SPIN_RETRY) {
            return PyObject_CallMethodNoArgs(fut, s_done);
        }
        self->spin_skips = 0;
        bool got = false;
        dk__atomic_store_seq_cst(&self->spinning, 1); /* (H1): with (H2) */
        Py_BEGIN_ALLOW_THREADS
        uint64_t end = dk_now() + DKPY_SPIN_NS;
        for (unsigned i = 1;; i++) {
            dk_cpu_relax();
            if (dk__atomic_load_acquire(&self->handed) != 0) { /* (H3) */
                got = true;
                break;
            }
            if ((i & 15) == 0 && dk_now() > end) {
                break;
            }
            if ((i & 63) == 0) {
                dk__os_yield(); /* oversubscribed: let the other side run */
            }
        }
        if (got) {
            /* The worker lets go of the GIL right after handing over:
             * wait for that instead of sleeping in the GIL's queue. */
            end = dk_now() + DKPY_SPIN_GIL_NS;
            for (unsigned i = 1; dkpy_workers_hold_gil(); i++) {
                dk_cpu_relax();
                if ((i & 15) == 0 && dk_now() > end) {
                    break;
                }
            }
        }
        Py_END_ALLOW_THREADS
        dk__atomic_store_seq_cst(&self->spinning, 0); /* (H4): with (H2) */
        dk__atomic_store_relaxed(&self->handed, 0);
        dk__atomic_store_relaxed(&self->spin_fails,
                                 got ? 0 : self->spin_fails + 1);
    }
    (void)resolve_finished(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyObject_CallMethodNoArgs(fut, s_done);
}

/* ---- async with on the locks ------------------------------------------ */

/* dispatchkit.asyncio.<name>(self), the name interned (binding.h's
 * dkpy_getattr says why). */
static PyObject *
call_aio_helper(PyObject *name, PyObject *self)
{
    PyObject *mod = PyImport_ImportModule("dispatchkit.asyncio");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethodOneArg(mod, name, self);
    Py_DECREF(mod);
    return r;
}

PyObject *
dkpy_lock_aenter(PyObject *self, PyObject *Py_UNUSED(unused))
{
    return call_aio_helper(s_lock_enter, self);
}

PyObject *
dkpy_lock_aexit(PyObject *self, PyObject *exc_info)
{
    if (PyTuple_GET_SIZE(exc_info) > 3) {
        PyErr_SetString(PyExc_TypeError,
                        "__aexit__ takes at most 3 arguments");
        return NULL;
    }
    return call_aio_helper(s_lock_exit, self);
}

/* ---- dispatchkit.asyncio.run in C ------------------------------------
 *
 * run() is called once per item, 10,000 times for a gather of 10,000, so
 * its whole path is here: the running loop, that loop's waker (cached
 * weakly for the last loop used, as asyncio.py's _waker_for does), a
 * future, the item. Python hands over the pieces it owns once, with
 * _aio_init: asyncio's _get_running_loop, dispatchkit.asyncio._waker_for
 * (the slow path, which creates and registers a waker) and _RunFuture. */

static PyObject *aio_get_loop, *aio_waker_for, *aio_run_future;
static PyObject *aio_last_loop, *aio_last_waker; /* weakrefs, or NULL */

/* A new reference to a weakref's object, or NULL when it is gone. */
static PyObject *
weak_get(PyObject *ref)
{
    if (ref == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *o = NULL;
    if (PyWeakref_GetRef(ref, &o) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return o;
#else
    PyObject *o = PyWeakref_GetObject(ref); /* borrowed */
    return o == NULL || o == Py_None ? NULL : Py_NewRef(o);
#endif
}

static PyObject *
aio_init(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *get_loop, *waker_for, *run_future;
    if (!PyArg_ParseTuple(args, "OOO:_aio_init", &get_loop, &waker_for,
                          &run_future)) {
        return NULL;
    }
    Py_XSETREF(aio_get_loop, Py_NewRef(get_loop));
    Py_XSETREF(aio_waker_for, Py_NewRef(waker_for));
    Py_XSETREF(aio_run_future, Py_NewRef(run_future));
    Py_RETURN_NONE;
}

/* The waker of `loop` (new reference). */
static WakerObject *
aio_waker(PyObject *loop)
{
    PyObject *last = weak_get(aio_last_loop);
    Py_XDECREF(last); /* only compared, never used */
    if (last == loop) {
        PyObject *w = weak_get(aio_last_waker);
        if (w != NULL) {
            return (WakerObject *)w;
        }
    }
    PyObject *w = PyObject_CallOneArg(aio_waker_for, loop);
    if (w == NULL) {
        return NULL;
    }
    PyObject *lref = PyWeakref_NewRef(loop, NULL);
    PyObject *wref = lref == NULL ? NULL : PyWeakref_NewRef(w, NULL);
    if (wref == NULL) {
        Py_XDECREF(lref);
        Py_DECREF(w);
        return NULL;
    }
    Py_XSETREF(aio_last_loop, lref);
    Py_XSETREF(aio_last_waker, wref);
    return (WakerObject *)w;
}

/* A new asyncio future of `loop` for an item of waker w: a _RunFuture
 * when nothing else of w is in flight (its await may spin: Waker_spin),
 * else a plain one (the completions batch through the eventfd). */
static PyObject *
aio_future(PyObject *loop, WakerObject *w)
{
    if (w->outstanding != 0) {
        return PyObject_CallMethodNoArgs(loop, s_create_future);
    }
    PyObject *kw = Py_BuildValue("{OO}", s_loop_kw, loop);
    PyObject *fut = kw == NULL ? NULL
                               : PyObject_VectorcallDict(aio_run_future,
                                                         NULL, 0, kw);
    Py_XDECREF(kw);
    if (fut != NULL &&
        (PyObject_SetAttr(fut, s_dk_waker, (PyObject *)w) < 0 ||
         PyObject_SetAttr(fut, s_dk_loop, loop) < 0)) {
        Py_CLEAR(fut);
    }
    return fut;
}

/* _aio_run(queue, fn, /, *args, **kwargs): dispatchkit.asyncio.run. */
static PyObject *
aio_run(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
        PyObject *kwnames)
{
    if (aio_get_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "dispatchkit.asyncio is not initialised");
        return NULL;
    }
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "run() takes a queue and a callable: "
                                         "run(queue, fn, /, *args, **kwargs)");
        return NULL;
    }
    PyObject *loop = PyObject_CallNoArgs(aio_get_loop), *fut = NULL;
    item_t *it = NULL;
    WakerObject *w = NULL;
    dk_queue_t *q;
    if (loop == Py_None) {
        PyErr_SetString(PyExc_RuntimeError,
                        "dispatchkit.asyncio.run() needs a running event "
                        "loop: call it from a coroutine or a callback of the "
                        "loop");
    } else if (loop != NULL && args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "queue must be a Queue, not None");
    } else if (loop != NULL && dkpy_queue_arg(args[0], "queue", &q) == 0 &&
               (it = item_new(args + 1, nargs - 1, kwnames, NULL, NULL)) !=
                   NULL &&
               (w = aio_waker(loop)) != NULL) {
        fut = aio_future(loop, w);
    }
    Py_XDECREF(loop);
    if (fut == NULL) {
        if (it != NULL) {
            item_free(it);
        }
        Py_XDECREF((PyObject *)w);
        return NULL;
    }
    it->future = Py_NewRef(fut);
    it->waker = w; /* the reference aio_waker gave */
    dk__atomic_store_relaxed(&w->outstanding, w->outstanding + 1);
    int rc = dispatch_item(q, 0, it);
    if (rc < 0) {
        dk__atomic_store_relaxed(&w->outstanding, w->outstanding - 1);
        Py_CLEAR(it->waker);
        item_free(it);
        Py_DECREF(fut);
        return dkpy_raise_errno(rc);
    }
    return fut;
}

static PyMethodDef Waker_methods[] = {
    {"fileno", (PyCFunction)Waker_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nThe eventfd the loop watches."},
    {"spin", (PyCFunction)Waker_spin, METH_O,
     "spin($self, future, /)\n--\n\n"
     "Before awaiting future: wait briefly (bounded) for finished items,\n"
     "with the GIL released; resolve them. True when future is done."},
    {"uses_ring", (PyCFunction)Waker_uses_ring, METH_NOARGS,
     "uses_ring($self, /)\n--\n\n"
     "True when this loop's waits are io_uring futex waits (opening the\n"
     "ring if not done yet); False: the watcher thread serves them."},
    {"drain", (PyCFunction)Waker_drain, METH_NOARGS,
     "drain($self, /)\n--\n\n"
     "Resolve the futures of every finished item; the number drained."},
    {"drain_ring", (PyCFunction)Waker_drain_ring, METH_NOARGS,
     "drain_ring($self, /)\n--\n\n"
     "The ring fd's reader: resolve the completed ring waits; how many."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Waker_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(WakerObject, weakreflist),
     READONLY, NULL},
    {"outstanding", T_UINT, offsetof(WakerObject, outstanding), READONLY,
     "Items submitted and not yet finished (run() spins only for the one "
     "item in flight)."},
    {NULL, 0, 0, 0, NULL},
};

DKPY_TYPE(static, Waker_spec, "dispatchkit._dk._LoopWaker", WakerObject,
          Py_TPFLAGS_HAVE_GC, {Py_tp_new, Waker_new},
          {Py_tp_dealloc, Waker_dealloc}, {Py_tp_traverse, Waker_traverse},
          {Py_tp_clear, Waker_clear}, {Py_tp_methods, Waker_methods},
          {Py_tp_members, Waker_members},
          {Py_tp_doc,
           "One event loop's completion list and wake-up eventfd."});

/* ---- awaitable waits: _AioWait ----------------------------------------
 *
 * One wait of one coroutine on one primitive. step() runs the primitive's
 * protocol without blocking (watch.h); when it must wait it registers a
 * watch whose firing resolves the given asyncio future, through the loop's
 * waker, with True (look again) or False (this slice's deadline). The
 * coroutine (dispatchkit/asyncio.py) loops on step() until done, and calls
 * abandon() when it gives up (timeout, cancellation), which unregisters
 * the watch and undoes what the protocol announced, so the primitive is
 * left as if this waiter had never come.
 *
 * The registered watch holds a reference to the object, so the object
 * (and through it the primitive's memory) outlives the watcher's use.
 * Registration and abandon run with the GIL; the firing callback takes
 * the GIL before it touches the object, so the two are serialised. */

enum { K_MUTEX, K_SEM, K_EVENT, K_DSEM, K_GROUP, K_ZBREAD, K_ZBWRITE };

typedef struct WaitObject {
    PyObject_HEAD
    dk__watch_t watch;
    struct WaitObject *fired_next; /* in waker->fired */
    int fired_rc;
    WakerObject *waker;
    PyObject *target;
    PyObject *fut; /* the future of the registered watch */
    void *addr;
    bool shared;
    bool *owner_died;
    int kind;
    bool registered;
    bool announced; /* K_SEM/K_GROUP counted in waiters; K_DSEM begun */
    bool watched;   /* registered at least once (wakes to pass on) */
    bool on_ring;   /* the registration is a futex wait on waker->ring */
    struct WaitObject *ring_prev, *ring_next; /* in waker->ring_waits */
    uint64_t size; /* K_ZBWRITE: the frame size to find room for */
    uint64_t orphan_since;
} WaitObject;

/* On the watcher thread, without the GIL: hand the wait to its loop.
 * Same protocol as waker_post, with the fired list under fired_lock:
 * signal when the list was empty; the loop drains the eventfd (C) before
 * it takes the list. */
static void
wait_fired(dk__watch_t *w, int rc)
{
    WaitObject *self = (WaitObject *)((char *)w - offsetof(WaitObject, watch));
    WakerObject *k = self->waker;
    self->fired_rc = rc;
    pthread_mutex_lock(&k->fired_lock);
    bool was_empty = k->fired == NULL;
    self->fired_next = k->fired;
    k->fired = self;
    pthread_mutex_unlock(&k->fired_lock);
    if (was_empty) {
        dk__os_eventfd_signal(k->fd); /* (D) */
    }
}

static WaitObject *
take_fired(WakerObject *k)
{
    pthread_mutex_lock(&k->fired_lock);
    WaitObject *list = k->fired;
    k->fired = NULL;
    pthread_mutex_unlock(&k->fired_lock);
    /* Pushed last first: reverse, so waits resume in firing order. */
    WaitObject *rev = NULL;
    while (list != NULL) {
        WaitObject *next = list->fired_next;
        list->fired_next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

/* What a fired wait's future resolves to: False when its deadline
 * passed, else True (look again), or 2 for an event seen set here, which
 * ends the wait without another step (nothing is taken: an event's wait
 * only looks). Borrowed. */
static PyObject *
fired_result(WaitObject *w, int rc)
{
    static PyObject *two;
    if (rc != 0) {
        return Py_False;
    }
    if (w->kind == K_EVENT && dk_shm_event_is_set(w->addr)) {
        if (two == NULL) {
            two = PyLong_FromLong(2); /* small int: cannot fail */
        }
        return two;
    }
    return Py_True;
}

/* A registration ended (GIL held): resolve its future, if it still has
 * one, with fired_result(w, rc) (unless `drop`), and drop the
 * registration's reference. */
static void
wait_finish(WaitObject *w, bool drop, int rc)
{
    w->registered = false;
    PyObject *fut = w->fut;
    w->fut = NULL;
    if (fut != NULL && !drop) {
        aio_resolve(fut, s_set_result, fired_result(w, rc));
    }
    Py_XDECREF(fut);
    Py_DECREF((PyObject *)w);
}

/* The loop's side (GIL held): resolve each fired wait's future, or only
 * drop them when `drop` (a cleared waker). */
static long
drain_fired(WakerObject *k, bool drop)
{
    long n = 0;
    WaitObject *w = take_fired(k);
    while (w != NULL) {
        WaitObject *next = w->fired_next;
        w->fired_next = NULL;
        wait_finish(w, drop, w->fired_rc);
        w = next;
        n++;
    }
    return n;
}

/* ---- ring watches: futex waits completed by the kernel ----------------
 *
 * Where io_uring's futex wait is available (Linux 6.7+), a loop's waits
 * do not go through the watcher thread: step() submits an
 * IORING_OP_FUTEX_WAIT (with a linked timeout for its deadline) to the
 * loop's own ring, and the loop watches the ring's fd itself (ring_poll:
 * add_reader(ring fd, drain_ring), once, before the first wait). The
 * other side's futex wake then completes the wait in the kernel and
 * wakes the loop directly: one hop, as for a pipe the loop watches, and
 * the loop's reader reaps the completion from the shared ring with no
 * syscall (a pipe's reader pays a read(); an eventfd between the ring
 * and the loop cost one more read() per wake).
 *
 * The ring is used only with the GIL held, from the loop's thread (a
 * finalizer elsewhere may submit a cancel: also under the GIL). A wait
 * in flight holds a reference to its WaitObject, whose address is the
 * request's user_data, and is listed in waker->ring_waits until its one
 * completion is reaped. No wake-up is lost between the loop's reap and
 * its sleep: the ring's fd is readable exactly while cq.head != cq.tail
 * (the kernel's poll looks at the ring; the loop's epoll is
 * level-triggered), and the kernel wakes its pollers after it publishes
 * each completion:
 *
 *   kernel (on the loop's thread)        loop (drain_ring, GIL)
 *   write cqe; cq.tail++ (release)  (T)  read cq.tail (acquire)       (R)
 *   wake the ring fd's pollers      (E)  reap; cq.head = tail (release)
 *                                        back to epoll_wait: polls the fd
 *
 * A completion the reap does not see was published at (T) after (R): the
 * ring's head then differs from its tail, so the next epoll_wait finds
 * the fd readable (and (E) wakes it if it already sleeps). Nothing is
 * written or read besides the ring: no eventfd to drain.
 *
 * Giving up (abandon): the wait is cancelled with IORING_OP_ASYNC_CANCEL,
 * which takes it off the futex before io_uring_enter returns:
 *
 *   loop (abandon)                       other process (post)
 *   cancel: off the futex            (X) count += 1; waiters? wake 1 (W)
 *   unannounce; wake 1 on the word   (P)
 *
 * If (W) came before (X), the wake-up went to our request (which then
 * completes with 0, its future already dropped) and (P) passes it on; if
 * (X) came first, (W) wakes another waiter and (P) is spurious at worst:
 * the watcher's rule. The completion still arrives and drops the
 * request's reference; until then the wait counts as registered. */

static void
ring_link(WakerObject *k, WaitObject *w)
{
    w->ring_prev = NULL;
    w->ring_next = k->ring_waits;
    if (k->ring_waits != NULL) {
        k->ring_waits->ring_prev = w;
    }
    k->ring_waits = w;
}

static void
ring_unlink(WakerObject *k, WaitObject *w)
{
    if (w->ring_prev != NULL) {
        w->ring_prev->ring_next = w->ring_next;
    } else {
        k->ring_waits = w->ring_next;
    }
    if (w->ring_next != NULL) {
        w->ring_next->ring_prev = w->ring_prev;
    }
    w->ring_prev = w->ring_next = NULL;
}

/* The loop's ring, opened on first use; NULL when the watcher serves the
 * loop (no io_uring here, or a fork child of the ring's process). */
static dk__os_uring_t *
waker_ring(WakerObject *k)
{
    if (k->ring_state == 0) {
        /* No eventfd: the loop polls the ring's own fd (ring_poll). */
        k->ring_state = dk__watch_ring_open(-1, &k->ring) == 0 ? 1 : -1;
        k->ring_gen = fork_gen;
    }
    if (k->ring_state != 1 || k->ring_gen != fork_gen) {
        return NULL; /* the parent's ring is not ours to submit to */
    }
    return k->ring;
}

/* Before the first wait goes on the ring: have the loop of `fut` watch
 * the ring's fd, with drain_ring as its reader. 0, or -1 with an error. */
static int
ring_poll(WakerObject *k, PyObject *fut)
{
    if (k->ring_polled) {
        return 0;
    }
    PyObject *loop = PyObject_CallMethodNoArgs(fut, s_get_loop);
    PyObject *drain = loop == NULL
                          ? NULL
                          : PyObject_GetAttr((PyObject *)k, s_drain_ring);
    PyObject *fd = drain == NULL ? NULL
                                 : PyLong_FromLong(dk__os_uring_fd(k->ring));
    PyObject *r = fd == NULL ? NULL
                             : PyObject_CallMethodObjArgs(loop, s_add_reader,
                                                          fd, drain, NULL);
    Py_XDECREF(loop);
    Py_XDECREF(drain);
    Py_XDECREF(fd);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    k->ring_polled = true;
    return 0;
}

/* Resolve the future of every completed ring wait (GIL, loop's thread):
 * True (look again) when woken or the word had changed, False when its
 * deadline passed. A wait given up has no future left. */
static long
ring_reap(WakerObject *k)
{
    if (k->ring == NULL || k->ring_gen != fork_gen) {
        return 0;
    }
    long total = 0;
    struct dk__os_uring_cqe done[32];
    int n;
    /* A batch is copied out of the ring before any Python code runs (a
     * finalizer may cancel another wait meanwhile). */
    while (k->ring != NULL && (n = dk__os_uring_reap(k->ring, done, 32)) > 0) {
        for (int i = 0; i < n; i++) {
            WaitObject *w = (WaitObject *)(uintptr_t)done[i].user_data;
            ring_unlink(k, w);
            w->on_ring = false;
            wait_finish(w, false, done[i].res == -ECANCELED ? -ETIMEDOUT : 0);
        }
        total += n;
    }
    return total;
}

/* Close the ring (the kernel cancels what is pending and completes
 * nothing into our memory afterwards) and drop the waits in flight. */
static void
ring_clear(WakerObject *k)
{
    if (k->ring_state == 1) {
        dk__os_uring_close(k->ring);
        k->ring = NULL;
        k->ring_state = -1;
    }
    while (k->ring_waits != NULL) {
        WaitObject *w = k->ring_waits;
        ring_unlink(k, w);
        w->on_ring = false;
        wait_finish(w, true, 0);
    }
}

static int
Waker_traverse(WakerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (item_t *it = self->head; it != NULL; it = it->fifo_next) {
        Py_VISIT(it->future);
        Py_VISIT(it->value);
    }
    pthread_mutex_lock(&self->fired_lock);
    int rc = 0;
    for (WaitObject *w = self->fired; w != NULL && rc == 0;
         w = w->fired_next) {
        rc = visit((PyObject *)w, arg);
    }
    pthread_mutex_unlock(&self->fired_lock);
    for (WaitObject *w = self->ring_waits; w != NULL && rc == 0;
         w = w->ring_next) {
        rc = visit((PyObject *)w, arg);
    }
    return rc;
}

/* Undo the announcement a previous step left, before stepping again or
 * on giving up (K_DSEM's is undone by abandon only). */
static void
unannounce(WaitObject *self)
{
    if (!self->announced) {
        return;
    }
    if (self->kind == K_SEM) {
        dk__shm_semaphore_unannounce(self->addr);
        self->announced = false;
    } else if (self->kind == K_GROUP) {
        dk__group_unannounce(self->addr);
        self->announced = false;
    } else if (self->kind == K_ZBREAD) {
        dk__zb_reader_unannounce(self->addr);
        self->announced = false;
    } else if (self->kind == K_ZBWRITE) {
        dk__zb_writer_unannounce(self->addr);
        self->announced = false;
    }
}

/* Let go of the zerobuffer Reader or Writer a wait of `kind` holds. */
static void
zb_unhold(int kind, PyObject *target)
{
    if (kind == K_ZBREAD) {
        dkpy_zb_reader_unhold(target);
    } else if (kind == K_ZBWRITE) {
        dkpy_zb_writer_unhold(target);
    }
}

static int
Wait_traverse(WaitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->waker);
    Py_VISIT(self->target);
    Py_VISIT(self->fut);
    return 0;
}

static PyObject *
Wait_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *waker, *target;
    unsigned long long size = 0;
    if (!PyArg_ParseTuple(args, "OO|K:_AioWait", &waker, &target, &size) ||
        (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "_AioWait(waker, target)");
        }
        return NULL;
    }
    if (!Py_IS_TYPE(waker, waker_type)) {
        PyErr_SetString(PyExc_TypeError, "waker must be a _LoopWaker");
        return NULL;
    }
    int kind;
    void *addr;
    bool shared = false, *owner_died = NULL;
    if (dkpy_zb_is_writer(target) || dkpy_zb_is_reader(target)) {
        bool writer = dkpy_zb_is_writer(target);
        kind = writer ? K_ZBWRITE : K_ZBREAD;
        addr = writer ? (void *)dkpy_zb_writer_hold(target)
                      : (void *)dkpy_zb_reader_hold(target);
        if (addr == NULL) {
            PyErr_Format(PyExc_ValueError, "the %s is closed",
                         writer ? "Writer" : "Reader");
            return NULL;
        }
        shared = true;
    } else if (dkpy_sync_target(target, &kind, &addr, &shared, &owner_died) <
                   0 &&
               dkpy_dispatch_target(target, &kind, &addr) < 0) {
        PyErr_Format(PyExc_TypeError,
                     "cannot wait on %.100s: expected a dispatchkit Group "
                     "or Semaphore, or a dispatchkit.sync Mutex, "
                     "Semaphore, Event or Named*",
                     Py_TYPE(target)->tp_name);
        return NULL;
    }
    WaitObject *self = (WaitObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        zb_unhold(kind, target);
        return NULL;
    }
    self->size = size;
    self->waker = (WakerObject *)Py_NewRef(waker);
    self->target = Py_NewRef(target);
    self->addr = addr;
    self->shared = shared;
    self->owner_died = owner_died;
    self->kind = kind;
    return (PyObject *)self;
}

static void
Wait_dealloc(WaitObject *self)
{
    PyObject_GC_UnTrack(self);
    /* Never registered here: the registration holds a reference. A
     * zerobuffer wait undoes its announcement and lets its target go. */
    if ((self->kind == K_ZBREAD || self->kind == K_ZBWRITE) &&
        self->target != NULL) {
        unannounce(self);
        zb_unhold(self->kind, self->target);
    }
    Py_CLEAR(self->fut);
    Py_CLEAR(self->target);
    Py_CLEAR(self->waker);
    dkpy_free((PyObject *)self);
}

/* step(future, deadline_ns, check_owner): 0 done, 1 done (a Mutex taken
 * over from a dead owner), or -EAGAIN: a watch now resolves `future` (or,
 * when future is None, nothing is registered and nothing left
 * announced). deadline_ns: absolute CLOCK_MONOTONIC, negative for none. */
static PyObject *
Wait_step(WaitObject *self, PyObject *args)
{
    PyObject *fut;
    long long deadline_ns;
    int check_owner;
    if (!PyArg_ParseTuple(args, "OLp:step", &fut, &deadline_ns,
                          &check_owner)) {
        return NULL;
    }
    if (self->registered) {
        PyErr_SetString(PyExc_RuntimeError, "step() while still watching");
        return NULL;
    }
    uint32_t *word = NULL;
    uint32_t busy = 0;
    int rc;
    unannounce(self);
    switch (self->kind) {
    case K_MUTEX:
        rc = dk__shm_mutex_lock_step(self->addr, check_owner,
                                     &self->orphan_since, &word, &busy);
        if (rc >= 0 && self->owner_died != NULL) {
            *self->owner_died = rc == 1;
        }
        break;
    case K_SEM:
        rc = dk__shm_semaphore_wait_step(self->addr, &word, &busy);
        break;
    case K_EVENT:
        rc = dk__shm_event_wait_step(self->addr, &word, &busy);
        break;
    case K_DSEM: /* once counted as a waiter, only a token ends it */
        rc = self->announced
                 ? dk__semaphore_take_token(self->addr, &word, &busy)
                 : dk__semaphore_wait_begin(self->addr, &word, &busy);
        break;
    case K_GROUP:
        rc = dk__group_wait_step(self->addr, &word, &busy);
        break;
    case K_ZBWRITE: /* 0 means there may be room: write now */
        rc = dk__zb_writer_space_step(self->addr, self->size, check_owner,
                                      &word, &busy);
        break;
    default: /* K_ZBREAD: 0 means a frame is ready to take */
        rc = dk__zb_reader_wait_step(self->addr, check_owner, &word, &busy);
        break;
    }
    /* Every kind but these two announces itself while it waits. */
    self->announced =
        rc == -EAGAIN && self->kind != K_MUTEX && self->kind != K_EVENT;
    if (rc != -EAGAIN) {
        return PyLong_FromLong(rc);
    }
    if (fut == Py_None) {
        if (self->kind == K_DSEM) {
            dk__semaphore_wait_abandon(self->addr);
            self->announced = false;
        } else {
            unannounce(self);
        }
        return PyLong_FromLong(rc);
    }
    self->watch.word = word;
    self->watch.busy = busy;
    self->watch.shared = self->shared;
    self->watch.deadline =
        deadline_ns < 0 ? DK_TIME_FOREVER : (uint64_t)deadline_ns;
    self->watch.fn = wait_fired;
    Py_XSETREF(self->fut, Py_NewRef(fut));
    Py_INCREF(self); /* the registration's reference */
    self->registered = true;
    self->watched = true;
    dk__os_uring_t *ring = waker_ring(self->waker);
    if (ring != NULL && ring_poll(self->waker, fut) < 0) {
        self->registered = false;
        Py_CLEAR(self->fut);
        Py_DECREF(self);
        return NULL;
    }
    if (ring != NULL &&
        dk__os_uring_futex_wait(ring, word, busy, self->shared,
                                self->watch.deadline,
                                (uint64_t)(uintptr_t)self) == 0) {
        self->on_ring = true;
        ring_link(self->waker, self);
        /* A word that changed meanwhile completed the wait at once:
         * resolve it now rather than on the loop's next turn. */
        (void)ring_reap(self->waker);
        if (PyErr_Occurred()) {
            return NULL;
        }
        return PyLong_FromLong(rc);
    }
    /* No ring, or it refused the request (out of memory): the watcher. */
    int arc = dk__watch_add(&self->watch);
    if (arc < 0) {
        self->registered = false;
        Py_CLEAR(self->fut);
        Py_DECREF(self);
        return dkpy_raise_errno(arc);
    }
    return PyLong_FromLong(rc);
}

/* abandon(): stop waiting; the primitive is left as if we never came. */
static PyObject *
Wait_abandon(WaitObject *self, PyObject *Py_UNUSED(unused))
{
    if (self->registered && self->on_ring) {
        /* Off the futex now (X); the completion, reaped later, drops
         * the request's reference. In a fork child the parent's ring is
         * not ours: nothing to cancel there. */
        Py_CLEAR(self->fut);
        dk__os_uring_t *ring = waker_ring(self->waker);
        if (ring != NULL) {
            (void)dk__os_uring_cancel(ring, (uint64_t)(uintptr_t)self);
        }
    } else if (self->registered && dk__watch_cancel(&self->watch)) {
        self->registered = false;
        Py_CLEAR(self->fut);
        Py_DECREF(self); /* the registration's; the caller holds one */
    }
    if (self->kind == K_DSEM) {
        if (self->announced) {
            self->announced = false;
            Py_BEGIN_ALLOW_THREADS
            dk__semaphore_wait_abandon(self->addr);
            Py_END_ALLOW_THREADS
        }
    } else {
        unannounce(self);
    }
    if (self->watched && (self->kind == K_MUTEX || self->kind == K_SEM)) {
        /* Our watcher may have taken the wake-up meant for one waiter:
         * pass it on (a spurious wake-up at worst). */
        uint32_t *word = self->kind == K_MUTEX
                             ? &((dk_shm_mutex_t *)self->addr)->state
                             : &((dk_shm_semaphore_t *)self->addr)->count;
        dk_futex_wake(word, 1, self->shared ? DK_SHARED : 0);
    }
    self->watched = false;
    Py_RETURN_NONE;
}

static PyMethodDef Wait_methods[] = {
    {"step", (PyCFunction)Wait_step, METH_VARARGS,
     "step($self, future, deadline_ns, check_owner, /)\n--\n\n"
     "One non-blocking step: 0/1 done, or -EAGAIN with future watched."},
    {"abandon", (PyCFunction)Wait_abandon, METH_NOARGS,
     "abandon($self, /)\n--\n\n"
     "Give up: unwatch and undo this waiter's announcement."},
    {NULL, NULL, 0, NULL},
};

DKPY_TYPE(static, Wait_spec, "dispatchkit._dk._AioWait", WaitObject,
          Py_TPFLAGS_HAVE_GC, {Py_tp_new, Wait_new},
          {Py_tp_dealloc, Wait_dealloc}, {Py_tp_traverse, Wait_traverse},
          {Py_tp_methods, Wait_methods},
          {Py_tp_doc, "One coroutine's wait on one primitive, through the "
                      "futex watcher (dispatchkit.asyncio)."});

static PyObject *
futures_uses_waitv(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(dk__watch_uses_waitv());
}

/* ---- module --------------------------------------------------------- */

/* Added as _dk._aio_run under the name it has in dispatchkit.asyncio. */
static PyMethodDef aio_run_def = {
    "run", DKPY_METH_FAST(aio_run),
    "run(queue, fn, /, *args, **kwargs)\n--\n\n"
    "Run fn(*args, **kwargs) on queue; an asyncio.Future of its result\n"
    "(exceptions keep their traceback).\n\n"
    "Raises RuntimeError when no event loop is running in this thread,\n"
    "TypeError for a non-callable fn or a queue that is not a Queue."};

static PyMethodDef futures_functions[] = {
    {"_futures_init", futures_init, METH_VARARGS,
     "_futures_init(future_type, RUNNING, FINISHED, CANCELLED, "
     "CANCELLED_AND_NOTIFIED, /)\n--\n\n"
     "Register dispatchkit._executor.Future and the stdlib's states."},
    {"_aio_init", aio_init, METH_VARARGS,
     "_aio_init(get_running_loop, waker_for, run_future_type, /)\n--\n\n"
     "Called once by dispatchkit.asyncio: what _aio_run needs."},
    {"_uses_futex_waitv", futures_uses_waitv, METH_NOARGS,
     "_uses_futex_waitv()\n--\n\n"
     "True when awaitable waits sleep in futex_waitv (Linux 5.16+)."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_futures_exec(PyObject *m)
{
    if (intern_names() < 0) {
        return -1;
    }
    pthread_atfork(NULL, NULL, futures_atfork_child);
    if ((executor_type = dkpy_add_type(m, &Executor_spec, NULL, "")) == NULL ||
        (waker_type = dkpy_add_type(m, &Waker_spec, NULL, "")) == NULL ||
        (wait_type = dkpy_add_type(m, &Wait_spec, NULL, "")) == NULL) {
        return -1;
    }
    PyObject *modname = PyUnicode_FromString("dispatchkit.asyncio");
    PyObject *run = modname == NULL
                        ? NULL
                        : PyCFunction_NewEx(&aio_run_def, NULL, modname);
    Py_XDECREF(modname);
    if (run == NULL || PyModule_AddObject(m, "_aio_run", run) < 0) {
        Py_XDECREF(run);
        return -1;
    }
    return PyModule_AddFunctions(m, futures_functions);
}
