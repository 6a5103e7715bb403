/*
 * Awaitable waits (dispatchkit.asyncio.wait, locked, read_frame,
 * write_frame, `async with lock`): _AioWait, one coroutine's wait on one
 * primitive, and the two ways it sleeps without a thread of its own: the
 * futex watcher thread (watch.h) or the loop's own io_uring. Each loop's
 * _LoopWaker (futures.c) holds the waits' share of its state, a
 * dkpy_waits_t (futures.h): the waits the watcher fired, the ring and the
 * waits in flight on it.
 */
#include "python/binding.h"

#include <errno.h>

#include "dk/futex.h"
#include "dk/group.h"
#include "dk/mutex.h"
#include "dk/sem.h"
#include "dk/shm_event.h"
#include "dk/time.h"
#include "os/linux/os.h"
#include "os/linux/uring.h"
#include "python/futures.h"
#include "watch.h"

/* The names this file looks up, interned once: N(var, "text") declares
 * s_var. */
#define NAMES(N)                                                              \
    N(get_loop, "get_loop") N(add_reader, "add_reader")                       \
    N(drain_ring, "drain_ring") N(lock_enter, "_lock_enter")                  \
    N(lock_exit, "_lock_exit")
#define DECLARE_NAME(var, text) static PyObject *s_##var;
NAMES(DECLARE_NAME)

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
    struct WaitObject *fired_next; /* in waits->fired */
    int fired_rc;
    PyObject *waker;     /* the loop's _LoopWaker */
    dkpy_waits_t *waits; /* its share for the waits (futures.h) */
    PyObject *target;
    PyObject *fut; /* the future of the registered watch */
    void *addr;
    bool shared;
    bool *owner_died;
    int kind;
    bool registered;
    bool announced; /* K_SEM/K_GROUP counted in waiters; K_DSEM begun */
    bool watched;   /* registered at least once (wakes to pass on) */
    bool took;      /* K_SEM: a wake-up took the unit (fired_result) */
    bool on_ring;   /* the registration is a futex wait on waits->ring */
    struct WaitObject *ring_prev, *ring_next; /* in waits->ring_waits */
    uint64_t size; /* K_ZBWRITE: the frame size to find room for */
    uint64_t orphan_since;
} WaitObject;

/* On the watcher thread, without the GIL: hand the wait to its loop.
 * Same protocol as futures.c's waker_post, the list under fired_lock:
 * signal when the list was empty; the loop drains the eventfd (C) before
 * it takes the list. */
static void
wait_fired(dk__watch_t *w, int rc)
{
    WaitObject *self = (WaitObject *)((char *)w - offsetof(WaitObject, watch));
    dkpy_waits_t *k = self->waits;
    self->fired_rc = rc;
    self->fired_next = NULL;
    pthread_mutex_lock(&k->fired_lock);
    bool was_empty = k->fired == NULL;
    *(was_empty ? &k->fired : &k->fired_tail->fired_next) = self;
    k->fired_tail = self; /* appended: waits resume in firing order */
    pthread_mutex_unlock(&k->fired_lock);
    if (was_empty) {
        dk__os_eventfd_signal(k->fd); /* (D) */
    }
}

static WaitObject *
take_fired(dkpy_waits_t *k)
{
    pthread_mutex_lock(&k->fired_lock);
    WaitObject *list = k->fired;
    k->fired = NULL;
    pthread_mutex_unlock(&k->fired_lock);
    return list;
}

/* What a fired wait's future resolves to: False when its deadline
 * passed, else True (look again), or 2, which ends the wait without
 * another step: an event seen set here (nothing is taken: an event's
 * wait only looks), or a semaphore's unit taken here, as the wake-up is
 * handled, which spares the coroutine a step() and a future (`pending`:
 * the future is not done; a done one was cancelled and gets nothing).
 * Taking it sets `took`: abandon() gives the unit back if the coroutine
 * is cancelled before it sees the 2. Borrowed. */
static PyObject *
fired_result(WaitObject *w, int rc, bool pending)
{
    static PyObject *two;
    if (two == NULL) {
        two = PyLong_FromLong(2); /* small int: cannot fail */
    }
    if (rc != 0) {
        return Py_False;
    }
    if (w->kind == K_EVENT && dk_shm_event_is_set(w->addr)) {
        return two;
    }
    if (w->kind == K_SEM && pending) {
        uint32_t *word, busy;
        if (w->announced) {
            w->announced = false;
            dk__shm_semaphore_unannounce(w->addr);
        }
        if (dk__shm_semaphore_wait_step(w->addr, &word, &busy) == 0) {
            w->took = true;
            return two;
        }
        w->announced = true; /* counted again; the next step undoes it */
    }
    return Py_True;
}

/* Give back the unit a wake-up took (fired_result) for a coroutine that
 * will not see it: a post of 1, which wakes a waiter (fastipc's too). */
static void
give_back(WaitObject *w)
{
    w->took = false;
    if (dk_shm_semaphore_post(w->addr, 1,
                              (w->shared ? DK_SHARED : 0) |
                                  DK_SHM_FASTIPC_COMPAT) < 0) {
        /* -EOVERFLOW: posts meanwhile filled the count to its limit,
         * where one unit more or less no waiter can tell. */
    }
}

/* A registration ended (GIL held): resolve its future, if it still has
 * one, with fired_result(w, rc) (unless `drop`), and drop the
 * registration's reference. A unit taken for a future that refuses its
 * result (its loop closed) is given back. */
static void
wait_finish(WaitObject *w, bool drop, int rc)
{
    w->registered = false;
    PyObject *fut = w->fut;
    w->fut = NULL;
    if (fut != NULL && !drop) {
        bool pending = dkpy_aio_pending(fut);
        PyObject *value = fired_result(w, rc, pending);
        if (pending && !dkpy_aio_set_result(fut, value) && w->took) {
            give_back(w);
        }
    }
    Py_XDECREF(fut);
    Py_DECREF((PyObject *)w);
}

/* The loop's side (GIL held): resolve each fired wait's future, or only
 * drop them when `drop` (a cleared waker). */
long
dkpy_waits_drain(dkpy_waits_t *k, bool drop)
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
 * Why the ring runs its completions as ordinary task work: the kernel
 * queues that work to the loop's thread and interrupts its epoll_wait
 * (EINTR, which the loop retries, then finds the fd readable), a detour
 * a pipe's direct wake does not take. IORING_SETUP_DEFER_TASKRUN would
 * queue the work in the waker's context instead and signal a registered
 * eventfd there, which the loop could watch; but on Linux 6.18 that
 * eventfd was signalled 10 to 20 ms after the futex wake (a pipe read
 * on the same ring likewise), so a loop sleeping on it would wake that
 * late. The fd of a DEFER_TASKRUN ring turns readable while deferred
 * work waits, but nothing wakes its pollers: a loop watching it slept
 * on. Measure again before trying either on a newer kernel.
 *
 * An fd side channel beside the ring was measured too (issue 14,
 * Linux 6.18, 2 shared CPUs; a prototype, not kept): an awaiting loop
 * put its ring wait under a futex mask bit of its own, then armed a
 * slot {armed, pid, fd of its pipe}; our set()/post() that saw it armed
 * took the arming (CAS 1 -> 0: one byte per arming, so the pipe never
 * fills), wrote one byte to the pipe (opened once through
 * /proc/<pid>/fd/<n>, no file left behind) and woke the futex with a
 * mask sparing that bit, so that no io_uring task work reached the loop;
 * fastipc's plain wake still completed the ring wait. The loop's C reader
 * resolved the futures (taking the semaphore's unit in C) and read the
 * pipe and cancelled the ring wait only on its next call, after the
 * coroutine had resumed. p50 over the pipe peer's, bench_aio_wake with
 * 50 interleaved turns, 6 runs (median, range): asyncio NamedEvent 1.12
 * (1.06-1.31) against 1.13 for the ring alone, NamedSemaphore 1.09
 * against 1.22; uvloop NamedEvent 1.00 (0.86-1.13, 3 runs of 6 won)
 * against 1.09, NamedSemaphore 1.06 against 1.27. In the quietest runs
 * (asyncio pipe 11.6-12.4 us, uvloop 8.3-8.6) the channel took 13.6-14.0
 * and 9.7-9.8 us, the ring alone 14.5-20.4 and 10.6-11.9: half the gap
 * closed, none won. Reading the pipe before resolving, as the pipe peer
 * does, cost more (1.33 asyncio, 1.27 uvloop). Not kept: it never beat
 * the pipe, and it costs every armed set a write and a syscall more and
 * a registry per name. Most of what it gained on the semaphore came from
 * taking the unit at the wake-up rather than in another step(), which
 * every wait now does (fired_result).
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
ring_link(dkpy_waits_t *k, WaitObject *w)
{
    w->ring_prev = NULL;
    w->ring_next = k->ring_waits;
    if (k->ring_waits != NULL) {
        k->ring_waits->ring_prev = w;
    }
    k->ring_waits = w;
}

static void
ring_unlink(dkpy_waits_t *k, WaitObject *w)
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
waker_ring(dkpy_waits_t *k)
{
    if (k->ring_state == 0) {
        /* No eventfd: the loop polls the ring's own fd (ring_poll). */
        k->ring_state = dk__watch_ring_open(-1, &k->ring) == 0 ? 1 : -1;
        k->ring_gen = dkpy_fork_gen();
    }
    if (k->ring_state != 1 || k->ring_gen != dkpy_fork_gen()) {
        return NULL; /* the parent's ring is not ours to submit to */
    }
    return k->ring;
}

/* Before the first wait goes on the ring: have the loop of `fut` watch
 * the ring's fd, with waker.drain_ring as its reader. 0, or -1 with an
 * error. */
static int
ring_poll(dkpy_waits_t *k, PyObject *waker, PyObject *fut)
{
    if (k->ring_polled) {
        return 0;
    }
    PyObject *loop = PyObject_CallMethodNoArgs(fut, s_get_loop);
    PyObject *drain = loop == NULL
                          ? NULL
                          : PyObject_GetAttr(waker, s_drain_ring);
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
long
dkpy_waits_reap_ring(dkpy_waits_t *k)
{
    if (k->ring == NULL || k->ring_gen != dkpy_fork_gen()) {
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

/* Drop the fired waits, close the ring (the kernel cancels what is
 * pending and completes nothing into our memory afterwards) and drop the
 * waits in flight. */
void
dkpy_waits_clear(dkpy_waits_t *k)
{
    (void)dkpy_waits_drain(k, true);
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

int
dkpy_waits_traverse(dkpy_waits_t *k, visitproc visit, void *arg)
{
    pthread_mutex_lock(&k->fired_lock);
    int rc = 0;
    for (WaitObject *w = k->fired; w != NULL && rc == 0; w = w->fired_next) {
        rc = visit((PyObject *)w, arg);
    }
    pthread_mutex_unlock(&k->fired_lock);
    for (WaitObject *w = k->ring_waits; w != NULL && rc == 0;
         w = w->ring_next) {
        rc = visit((PyObject *)w, arg);
    }
    return rc;
}

bool
dkpy_waits_use_ring(dkpy_waits_t *k)
{
    return waker_ring(k) != NULL;
}

void
dkpy_waits_init(dkpy_waits_t *k, int fd)
{
    k->fd = fd;
    pthread_mutex_init(&k->fired_lock, NULL);
}

void
dkpy_waits_fini(dkpy_waits_t *k)
{
    dkpy_waits_clear(k);
    pthread_mutex_destroy(&k->fired_lock);
}

/* Undo the announcement a previous step left, before stepping again or
 * on giving up (K_DSEM's is undone by abandon only). */
static void
unannounce(WaitObject *self)
{
    if (!self->announced || self->kind == K_DSEM) {
        return;
    }
    self->announced = false;
    if (self->kind == K_SEM) {
        dk__shm_semaphore_unannounce(self->addr);
    } else if (self->kind == K_GROUP) {
        dk__group_unannounce(self->addr);
    } else if (self->kind == K_ZBREAD) {
        dk__zb_reader_unannounce(self->addr);
    } else if (self->kind == K_ZBWRITE) {
        dk__zb_writer_unannounce(self->addr);
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
    dkpy_waits_t *waits = dkpy_waker_waits(waker);
    if (waits == NULL) {
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
    self->waker = Py_NewRef(waker);
    self->waits = waits;
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
    self->took = false; /* a 2 seen, or none: nothing to give back */
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
    dk__os_uring_t *ring = waker_ring(self->waits);
    if (ring != NULL && ring_poll(self->waits, self->waker, fut) < 0) {
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
        ring_link(self->waits, self);
        /* A word that changed meanwhile completed the wait at once:
         * resolve it now rather than on the loop's next turn. */
        (void)dkpy_waits_reap_ring(self->waits);
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
    if (self->took) {
        give_back(self); /* resolved with 2, never seen: cancelled */
    }
    if (self->registered && self->on_ring) {
        /* Off the futex now (X); the completion, reaped later, drops
         * the request's reference. In a fork child the parent's ring is
         * not ours: nothing to cancel there. */
        Py_CLEAR(self->fut);
        dk__os_uring_t *ring = waker_ring(self->waits);
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


static PyMethodDef aio_wait_functions[] = {
    {"_uses_futex_waitv", futures_uses_waitv, METH_NOARGS,
     "_uses_futex_waitv()\n--\n\n"
     "True when awaitable waits sleep in futex_waitv (Linux 5.16+)."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_aio_wait_exec(PyObject *m)
{
#define INTERN_NAME(var, text)                                                \
    if ((s_##var = PyUnicode_InternFromString(text)) == NULL) {               \
        return -1;                                                            \
    }
    NAMES(INTERN_NAME)
    if (dkpy_add_type(m, &Wait_spec, NULL, "") == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(m, aio_wait_functions);
}
