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
#include "dk/group.h"
#include "dk/queue.h"
#include "dk/time.h"
#include "os/linux/os.h"
#include "python/futures.h"
#include "python/gil.h"

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
    N(loop_kw, "loop") N(dk_waker, "_dk_waker") N(dk_loop, "_dk_loop")
#define DECLARE_NAME(var, text) static PyObject *s_##var;
NAMES(DECLARE_NAME)
static PyObject *st_running, *st_finished, *st_cancelled, *st_cancelled_n;
static PyTypeObject *future_type; /* dispatchkit._executor.Future */
/* Ours, set by dkpy_futures_exec (kept for the process: binding.h). */
static PyTypeObject *executor_type, *waker_type;

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
    Py_ssize_t pending; /* the items on that list */
    dk_group_t *group;  /* one enter per outstanding item */
    char shutdown;      /* a T_BOOL member */
    unsigned fork_gen;  /* fork_gen when the items above were current */
};

/* Bumped in every forked child: the parent's items never run there, so
 * an executor created before the fork forgets them (see executor_adopt). */
static unsigned fork_gen;

static void
futures_atfork_child(void)
{
    fork_gen++;
}

unsigned
dkpy_fork_gen(void)
{
    return fork_gen;
}

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
    dkpy_waits_t waits;   /* the awaitable waits' share (aio_wait.c) */
    PyObject *weakreflist;
};

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
        if ((it->kwargs == NULL && (it->kwargs = PyDict_New()) == NULL) ||
            PyDict_SetItem(it->kwargs, name, value) < 0) {
            item_free(it);
            return NULL;
        }
    }
    return it;
}

/* bool(obj.<name>()): 1, 0, or -1 with an error set. */
static int
call_truth(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    int truth = r == NULL ? -1 : PyObject_IsTrue(r);
    Py_XDECREF(r);
    return truth;
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
    return PyErr_Occurred() ? -1 : call_truth(fut, s_set_running);
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
    ex->pending++;
    dk_group_enter(ex->group);
}

static void
executor_unlink(ExecutorObject *ex, item_t *it)
{
    it->prev->next = it->next;
    it->next->prev = it->prev;
    it->prev = it->next = NULL;
    ex->pending--;
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
    int yes = call_truth(loop, s_is_closed);
    Py_DECREF(loop);
    PyErr_Clear();
    return yes != 0;
}

bool
dkpy_aio_pending(PyObject *fut)
{
    int done = call_truth(fut, s_done);
    if (done < 0) {
        PyErr_WriteUnraisable(fut);
    }
    return done == 0;
}

/* fut.<method>(value); false if it raised (reported). */
static bool
aio_call(PyObject *fut, PyObject *method, PyObject *value)
{
    PyObject *r = PyObject_CallMethodOneArg(fut, method, value);
    if (r == NULL) {
        PyErr_WriteUnraisable(fut);
        return false;
    }
    Py_DECREF(r);
    return true;
}

bool
dkpy_aio_set_result(PyObject *fut, PyObject *value)
{
    return aio_call(fut, s_set_result, value);
}

/* fut.<method>(value) on an asyncio future unless it is done (cancelled
 * meanwhile); an error goes to sys.unraisablehook. */
static void
aio_resolve(PyObject *fut, PyObject *method, PyObject *value)
{
    if (dkpy_aio_pending(fut)) {
        aio_call(fut, method, value);
    }
}

/* Spin for at most `ns` until *word is nonzero (acquire: pairs with the
 * store that set it, named by the caller), yielding the CPU every 64
 * turns on an oversubscribed machine, so that the other side can run.
 * True when it is nonzero. */
static bool
spin_for(const uint32_t *word, uint64_t ns)
{
    uint64_t end = dk_now() + ns;
    for (unsigned i = 1; dk__atomic_load_acquire(word) == 0; i++) {
        dk_cpu_relax();
        if ((i & 15) == 0 && dk_now() > end) {
            return false;
        }
        if ((i & 63) == 0) {
            dk__os_yield();
        }
    }
    return true;
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
    if (call_truth(it->future, s_done) != 0) {
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
         * waker. (spin_for's acquire orders nothing here.) */
        (void)spin_for(&it->waker->spinning, DKPY_SPIN_GIL_NS);
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
    self->active = self->pending = 0;
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
        PyObject *futs = PyList_New(self->pending);
        if (futs == NULL) {
            return NULL;
        }
        Py_ssize_t n = 0;
        for (item_t *it = self->outstanding.next; it != &self->outstanding;
             it = it->next) {
            PyList_SET_ITEM(futs, n++, Py_NewRef(it->future));
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

static PyMemberDef Executor_members[] = {
    {"pending", T_PYSSIZET, offsetof(ExecutorObject, pending), READONLY,
     "Submitted items not yet finished."},
    {"is_shutdown", T_BOOL, offsetof(ExecutorObject, shutdown), READONLY,
     "True after shutdown()."},
    {NULL, 0, 0, 0, NULL},
};

DKPY_TYPE(static, Executor_spec, "dispatchkit._dk._ExecutorCore",
          ExecutorObject, Py_TPFLAGS_HAVE_GC, {Py_tp_new, Executor_new},
          {Py_tp_dealloc, Executor_dealloc},
          {Py_tp_traverse, Executor_traverse},
          {Py_tp_methods, Executor_methods}, {Py_tp_members, Executor_members},
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
    dkpy_waits_init(&self->waits, fd);
    return (PyObject *)self;
}

dkpy_waits_t *
dkpy_waker_waits(PyObject *obj)
{
    return Py_IS_TYPE(obj, waker_type) ? &((WakerObject *)obj)->waits : NULL;
}

static int
Waker_traverse(WakerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (item_t *it = self->head; it != NULL; it = it->fifo_next) {
        Py_VISIT(it->future);
        Py_VISIT(it->value);
    }
    return dkpy_waits_traverse(&self->waits, visit, arg);
}

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
    dkpy_waits_clear(&self->waits);
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
    dkpy_waits_fini(&self->waits);
    if (self->fd >= 0) {
        dk__os_close(self->fd);
    }
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
    n += dkpy_waits_drain(&self->waits, false);
    n += dkpy_waits_reap_ring(&self->waits);
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
    long n = dkpy_waits_reap_ring(&self->waits);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(n);
}

static PyObject *
Waker_uses_ring(WakerObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(dkpy_waits_use_ring(&self->waits));
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
        bool got;
        dk__atomic_store_seq_cst(&self->spinning, 1); /* (H1): with (H2) */
        Py_BEGIN_ALLOW_THREADS
        got = spin_for(&self->handed, DKPY_SPIN_NS); /* (H3) */
        if (got) {
            /* The worker lets go of the GIL right after handing over:
             * wait for that instead of sleeping in the GIL's queue. */
            uint64_t end = dk_now() + DKPY_SPIN_GIL_NS;
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
        dkpy_aio_wait_exec(m) < 0) {
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
