/*
 * Channels and one-shot asynchronous reads and writes.
 *
 * A channel's operations wait in a FIFO list; one "process" item at a
 * time runs them, on the root queue (the `running` flag, not a serial
 * queue, keeps it to one: see process_push). An operation on an
 * fd that is not a regular file reads or writes only after a one-shot
 * read/write source reports readiness, so a slow pipe parks no thread: the
 * process item returns and the source's handler submits it again. The
 * `running` flag (under the lock) says a process item is queued, running
 * or waiting for readiness; it holds a reference to the channel.
 *
 * Handler calls go through a serial delivery queue per operation that
 * targets the caller's queue, so the calls of one operation run in order
 * and never concurrently, even on a concurrent queue; when that queue is
 * idle, the reading thread runs the call itself (see "Handlers on the
 * reading thread").
 */
#include "internal.h"

#include "dk/io.h"

#include <errno.h>
#include <string.h>

enum op_kind { OP_READ, OP_WRITE, OP_BARRIER };

struct io_op {
    struct io_op *next;
    enum op_kind kind;
    bool once;   /* read: finish after the first successful read */
    bool placed; /* read: place_read has looked at the copy's alignment */
    off_t offset;
    size_t length; /* read: requested; write: total */
    size_t pos;    /* bytes read (delivered or buffered) or written */
    unsigned char *wbuf;
    unsigned char *rbuf;
    size_t rlen, rcap;
    uint64_t last_delivery;
    dk_queue_t *dq;
    void *ctx;
    dk_io_handler_t handler;
    dk_function_t barrier_fn;
    dk_io_t *io; /* the channel (not retained: it outlives its ops) */
    struct delivery *final; /* run by process() once the op is off the list */
};

struct dk_io_s {
    struct dk__object obj;
    int type;
    int fd;
    bool regular;
    off_t base;
    dk_queue_t *cleanup_q;
    void *cleanup_ctx;
    void (*cleanup)(void *ctx, int error);
    pthread_mutex_t lock;
    struct io_op *head, *tail;
    bool closed, stop, cleaned, running, ready;
    int first_error;
    size_t high, low;
    uint64_t interval;
    dk_source_t *wait_src;
    /* The one process item of the channel. A channel has at most one
     * process item queued or parked at a time (see process_push), so the
     * item lives here and pushing it cannot fail: a dropped -ENOMEM would
     * leave the channel's operations, and its cleanup, waiting forever. */
    struct dk__item process_item;
    /* A handler running on the reading thread (see "Handlers on the
     * reading thread"): its state, the count of such calls, and the
     * watchdog timer that hands the reading on when one takes long. */
    uint32_t inl; /* the call's number << 2 | its INL_ state */
    uint32_t inl_seq;
    uint32_t watch_seen;  /* inl_seq at the watchdog's previous tick */
    uint32_t watch_stuck; /* ticks since that call was first seen */
    bool watch_armed;
    bool watch_used; /* the timer was set once (lock) */
    uint32_t relieved; /* relieved calls not yet returned (lock) */
    bool cleanup_owed; /* the last of them starts the cleanup (lock) */
    struct dk__timer watch;
    void *(*alloc)(void *actx, size_t size);
    void (*free_fn)(void *actx, void *buf);
    void *actx;
};

#define DEFAULT_CHUNK ((size_t)1 << 20)

/* ---- delivery ------------------------------------------------------- */

struct delivery {
    struct dk__item item; /* embedded: pushing it cannot fail */
    dk_io_handler_t handler;
    void *ctx;
    bool done;
    int error;
    dk_queue_t *dq; /* released after the final call */
    size_t len;
    const void *data; /* `inline_data`, or an allocator's buffer */
    unsigned char inline_data[];
};

static void
deliver_run(void *p)
{
    struct delivery *d = p;
    d->handler(d->ctx, d->done, d->data, d->len, d->error);
    if (d->done) {
        dk_release(d->dq);
    }
    free(d);
}

/*
 * Handlers on the reading thread. Handing each chunk to a worker costs a
 * thread wake-up per chunk, and the chunk's buffer comes back only after
 * that worker ran: so, as the event thread does for sources (event.c),
 * the reader runs a chunk's handler itself when the operation's delivery
 * queue is idle (dk_queue_sync_enter: a sync caller's drain lock, so order
 * and exclusivity are the queue's own rules). Only a chunk after which the
 * operation's state is whole is delivered so: an allocator's buffer, the
 * last one once process() has taken the operation off the list (so that a
 * relief goes on with the next one); the rest are pushed.
 *
 * A handler may block, even until the channel has read further (a writer
 * that fills a pipe). So a watchdog timer, armed while such calls happen,
 * looks at the channel every RELIEF_NS; a call it finds running at
 * RELIEF_TICKS ticks in a row (so a thread merely preempted on a busy
 * machine is seldom taken for a stuck one) is relieved: the process item
 * is pushed again and the reading goes on on another thread, while the
 * stuck thread, once its handler returns, touches neither the operation
 * nor the channel again.
 *
 *   CPU0 (reader, in a handler)           CPU1 (watchdog tick)
 *   n = ++inl_seq; inl = n|RUNNING (R1)
 *   handler(...) (long)                   CAS inl n|RUNNING -> n|RELIEVED
 *                                         (W1); relieved += 1
 *                                         process_push: the running
 *                                         reference passes on
 *   CAS inl n|RUNNING -> n|IDLE fails (R2)
 *   leave the delivery queue; relieved -= 1 (lock); return
 *
 * (R2) and (W1) are one CAS pair on one word, so exactly one of the two
 * owns the reading afterwards. The word carries the call's number: once
 * the final call of one operation is relieved, the relieving item may run
 * a call of the next operation (another delivery queue) here before the
 * stuck call returns, and that call's RUNNING must not let the stuck
 * one's (R2) succeed. The stuck call keeps a reference to the channel
 * until it returns; so that the cleanup handler still finds none of the
 * channel's own (see cleanup_call), a process item that finds the
 * channel done while relieved calls remain leaves the cleanup to the last
 * of them (cleanup_owed). (R2) comes before the reader leaves the
 * delivery queue, so the relieving item (which can only run a handler
 * itself after entering that queue) never sets RUNNING before (R2). The
 * acquire of (W1) pairs with (R1)'s release: the new item sees the
 * operation as the reader left it. Arming: the reader sets inl (R1) then
 * reads watch_armed (R3); the tick clears watch_armed (W2) then reads
 * inl and inl_seq (W3), all seq_cst, so either the reader sees the timer
 * disarmed and arms it, or the tick sees the call and keeps ticking.
 */
#define RELIEF_NS 5000000ull
#define RELIEF_TICKS 4
enum { INL_IDLE, INL_RUNNING, INL_RELIEVED, INL_STATE = 3 };

static void process_push(dk_io_t *io);

static void
watch_fire(struct dk__timer *t, uint64_t fires)
{
    (void)fires;
    dk_io_t *io = (dk_io_t *)((char *)t - offsetof(struct dk_io_s, watch));
    pthread_mutex_lock(&io->lock);
    if (!io->watch_armed) {
        pthread_mutex_unlock(&io->lock); /* disarmed meanwhile (watch_stop) */
        return;
    }
    dk__atomic_store_seq_cst(&io->watch_armed, false); /* (W2) */
    uint32_t seq = dk__atomic_load_seq_cst(&io->inl_seq); /* (W3) */
    uint32_t st = dk__atomic_load_seq_cst(&io->inl);
    bool running = (st & INL_STATE) == INL_RUNNING;
    bool active = running || seq != io->watch_seen;
    bool same = running && seq == io->watch_seen;
    io->watch_stuck = same ? io->watch_stuck + 1 : 0;
    if (same && io->watch_stuck + 1 >= RELIEF_TICKS &&
        dk__atomic_cas_acq_rel(&io->inl, &st,
                               (st & ~INL_STATE) | INL_RELIEVED)) { /* (W1) */
        io->relieved++;
        process_push(io);
    }
    io->watch_seen = seq;
    if (active) {
        dk__atomic_store_seq_cst(&io->watch_armed, true);
    } else {
        dk__timer_disarm(t); /* idle for a tick: no wake-ups */
    }
    pthread_mutex_unlock(&io->lock);
}

/* True if the watchdog ticks (false: the timer could not be set). */
static bool
watch_arm(dk_io_t *io)
{
    if (dk__atomic_load_seq_cst(&io->watch_armed)) { /* (R3) */
        return true;
    }
    pthread_mutex_lock(&io->lock);
    if (!io->watch_armed &&
        dk__timer_set(&io->watch, dk__os_monotonic_ns() + RELIEF_NS,
                      RELIEF_NS, RELIEF_NS / 4) == 0) {
        dk__atomic_store_seq_cst(&io->watch_armed, true);
        io->watch_used = true;
    }
    bool armed = io->watch_armed;
    pthread_mutex_unlock(&io->lock);
    return armed;
}

/* The process role goes idle: no handler runs on it, so no tick is
 * needed, and the timer's reference to the channel goes before the
 * cleanup handler can look at the count. Lock held. */
static void
watch_stop_locked(dk_io_t *io)
{
    if (io->watch_armed) {
        dk__atomic_store_seq_cst(&io->watch_armed, false);
        dk__timer_disarm(&io->watch);
    }
}

static void cleanup_start(dk_io_t *io);

/* A relieved call has returned: drop its reference, or pass it to the
 * cleanup a process item left to the last such call. */
static void
relieved_return(dk_io_t *io)
{
    pthread_mutex_lock(&io->lock);
    bool last = --io->relieved == 0 && io->cleanup_owed;
    if (last) {
        io->cleanup_owed = false;
    }
    pthread_mutex_unlock(&io->lock);
    if (last) {
        cleanup_start(io);
    } else {
        dk_io_release(io);
    }
}

/* Run d here, inside dq's drain lock (frame). True if the reading was
 * relieved meanwhile: the caller then returns at once. */
static bool
run_here(dk_io_t *io, struct delivery *d, dk_queue_t *dq,
         dk_sync_frame_t *frame)
{
    dk_io_retain(io); /* ours: a relief passes the running one on */
    uint32_t call = (dk__atomic_add_seq_cst(&io->inl_seq, 1) + 1) << 2;
    dk__atomic_store_seq_cst(&io->inl, call | INL_RUNNING); /* (R1) */
    if (!watch_arm(io)) {
        /* No watchdog, so a stuck handler would stop the reading: leave
         * d to the queue, which runs it once we leave. */
        dk__atomic_store_seq_cst(&io->inl, call | INL_IDLE);
        dk__queue_push(dq, &d->item);
        dk_queue_sync_exit(dq, frame);
        dk_io_release(io);
        return false;
    }
    deliver_run(d);
    uint32_t st = call | INL_RUNNING;
    bool relieved =
        !dk__atomic_cas_acq_rel(&io->inl, &st, call | INL_IDLE); /* (R2) */
    dk_queue_sync_exit(dq, frame);
    if (relieved) {
        relieved_return(io);
    } else {
        dk_io_release(io);
    }
    return relieved;
}

/* Address d (its call's fields set) to op's handler. */
static struct delivery *
address(struct io_op *op, struct delivery *d)
{
    d->handler = op->handler;
    d->ctx = op->ctx;
    d->dq = op->dq;
    d->item = (struct dk__item){.fn = deliver_run, .ctx = d,
                                .flags = DK_ITEM_EMBEDDED};
    op->last_delivery = dk__os_monotonic_ns();
    return d;
}

/* Hand d to its handler: on this thread when `here` and the delivery
 * queue is idle, else through the queue. Returns run_here's answer (false
 * when pushed). */
static bool
submit(dk_io_t *io, struct delivery *d, bool here)
{
    /* The final call releases dq, possibly before the push has returned:
     * hold our own reference across it. */
    dk_queue_t *dq = d->dq;
    dk_retain(dq);
    dk_sync_frame_t frame;
    bool relieved = false;
    if (here && dk_queue_sync_enter(dq, 0, &frame) == 0) {
        relieved = run_here(io, d, dq, &frame);
    } else {
        dk__queue_push(dq, &d->item);
    }
    dk_release(dq);
    return relieved;
}

/* Deliver an allocator's buffer as is (no copy); it passes to the
 * handler. `here`: the operation's state is whole after this chunk, so it
 * may run on this thread (see submit); the final one then waits in
 * op->final until the op is off the list. */
static bool
deliver_owned(struct io_op *op, bool done, void *buf, size_t len, int error,
              bool here)
{
    struct delivery *d = malloc(sizeof *d);
    if (d == NULL) {
        return false; /* cannot happen often enough to matter; data lost */
    }
    *d = (struct delivery){.done = done, .error = error, .len = len,
                           .data = buf};
    if (here && done) {
        op->final = address(op, d);
        return false;
    }
    return submit(op->io, address(op, d), here);
}

static void
deliver(struct io_op *op, bool done, const void *data, size_t len, int error)
{
    dk_io_t *io = op->io;
    if (io->alloc != NULL && op->kind == OP_READ) {
        void *buf = io->alloc(io->actx, len);
        if (buf != NULL && len > 0) {
            memcpy(buf, data, len);
        }
        /* Out of memory: the call says so with no buffer (a handler that
         * expects allocator buffers must not be given any other). */
        deliver_owned(op, done, buf, buf != NULL ? len : 0,
                      buf != NULL || error != 0 ? error : ENOMEM, false);
        return;
    }
    struct delivery *d = malloc(sizeof *d + len);
    if (d == NULL) {
        /* Out of memory: report the failure without the data. */
        if (done) {
            op->handler(op->ctx, true, NULL, 0, ENOMEM);
            dk_release(op->dq);
        }
        return;
    }
    *d = (struct delivery){.done = done, .error = error, .len = len,
                           .data = d->inline_data};
    if (len > 0) {
        memcpy(d->inline_data, data, len);
    }
    submit(op->io, address(op, d), false);
}

/* ---- channel lifetime ----------------------------------------------- */

/* The channel's part of the object model (object.c): channels are
 * reference counted like every other object, and the pending work holds
 * references (the running process item, a parked readiness source). A
 * finalizer runs on the cleanup handler's queue. */
static dk_queue_t *
io_finalize(struct dk__object *o)
{
    return ((dk_io_t *)o)->cleanup_q;
}

static void
io_dispose(struct dk__object *o)
{
    dk_io_t *io = (dk_io_t *)o;
    dk_release(io->cleanup_q);
    pthread_mutex_destroy(&io->lock);
    free(io);
}

static int
io_describe(const struct dk__object *o, const char *refcnt, char *buf,
            size_t len)
{
    const dk_io_t *io = (const dk_io_t *)o;
    return snprintf(buf, len, "io[%p] = { refcnt = %s, fd = %d, type = %s%s }",
                    (const void *)io, refcnt, io->fd,
                    io->type == DK_IO_RANDOM ? "random" : "stream",
                    dk_io_is_closed(io) ? ", closed" : "");
}

const struct dk__vtable dk__io_vtable = {
    .kind = DK_KIND_IO,
    .name = "io",
    .finalize = io_finalize,
    .dispose = io_dispose,
    .describe = io_describe,
};

void
dk_io_retain(dk_io_t *io)
{
    dk_retain(io);
}

void
dk_io_release(dk_io_t *io)
{
    dk_release(io);
}

int
dk_io_create(int type, int fd, dk_queue_t *q, void *cleanup_ctx,
             void (*cleanup)(void *ctx, int error), dk_io_t **out)
{
    *out = NULL;
    bool regular;
    if (type != DK_IO_STREAM && type != DK_IO_RANDOM) {
        return -EINVAL;
    }
    if (dk__os_fd_check(fd, &regular) < 0) {
        return -EBADF;
    }
    off_t base = 0;
    if (type == DK_IO_RANDOM) {
        int64_t pos = dk__os_fd_tell(fd);
        if (pos < 0) {
            return -ESPIPE;
        }
        base = (off_t)pos;
    }
    dk_io_t *io = calloc(1, sizeof *io);
    if (io == NULL) {
        return -ENOMEM;
    }
    dk__object_init(&io->obj, DK_KIND_IO);
    dk__timer_init(&io->watch, &io->obj, watch_fire);
    io->type = type;
    io->fd = fd;
    io->regular = regular;
    io->base = base;
    io->cleanup_q = q != NULL ? q : dk__default_root();
    dk_retain(io->cleanup_q);
    io->cleanup_ctx = cleanup_ctx;
    io->cleanup = cleanup;
    io->high = SIZE_MAX;
    io->low = 0;
    pthread_mutex_init(&io->lock, NULL);
    *out = io;
    return 0;
}

static void process(void *p);

/* Queue the channel's process item on the root queue. Called only where
 * no process item is queued: when `running` goes from false to true (lock
 * held), by whoever takes `wait_src` from a parked process (dk_io_close or
 * the readiness handler, one of them, under the lock), and by the
 * watchdog that relieves a stuck handler (watch_fire), while the previous
 * run has returned or is on its way out, touching nothing of the channel
 * but its immutable fields and its own reference. item_invoke reads
 * nothing of an embedded item after its function has been called, so a
 * push while the previous run is returning is safe. */
static void
process_push(dk_io_t *io)
{
    io->process_item.fn = process;
    io->process_item.ctx = io;
    io->process_item.flags = DK_ITEM_EMBEDDED;
    io->process_item.group = NULL;
    dk__queue_push(dk__default_root(), &io->process_item);
}

/* Make sure a process item will look at the list. Lock held. */
static void
kick_locked(dk_io_t *io)
{
    if (io->running || io->head == NULL) {
        return;
    }
    io->running = true;
    dk_io_retain(io); /* the running reference */
    process_push(io);
}

static void op_discard(struct io_op *op);

/* Queue op on io. Takes op: when io is closed, op is discarded (-EPIPE). */
static int
enqueue(dk_io_t *io, struct io_op *op)
{
    op->io = io;
    pthread_mutex_lock(&io->lock);
    if (io->closed) {
        pthread_mutex_unlock(&io->lock);
        op_discard(op);
        return -EPIPE;
    }
    op->next = NULL;
    if (io->tail != NULL) {
        io->tail->next = op;
    } else {
        io->head = op;
    }
    io->tail = op;
    kick_locked(io);
    pthread_mutex_unlock(&io->lock);
    return 0;
}

static struct io_op *
op_new(enum op_kind kind, dk_queue_t *q, void *ctx, dk_io_handler_t h)
{
    struct io_op *op = calloc(1, sizeof *op);
    if (op == NULL) {
        return NULL;
    }
    op->kind = kind;
    op->ctx = ctx;
    op->handler = h;
    if (kind != OP_BARRIER) {
        if (dk_queue_create("dk.io.delivery", 0, 0, 0,
                            q != NULL ? q : dk__default_root(), &op->dq) < 0) {
            free(op);
            return NULL;
        }
    }
    return op;
}

static void
op_free(struct io_op *op)
{
    free(op->wbuf);
    free(op->rbuf);
    free(op);
}

/* An op that was never queued, with its delivery queue. */
static void
op_discard(struct io_op *op)
{
    if (op->dq != NULL) {
        dk_release(op->dq);
    }
    op_free(op);
}

int
dk_io_read(dk_io_t *io, off_t offset, size_t length, dk_queue_t *q, void *ctx,
           dk_io_handler_t handler)
{
    struct io_op *op = op_new(OP_READ, q, ctx, handler);
    if (op == NULL) {
        return -ENOMEM;
    }
    op->offset = offset;
    op->length = length;
    return enqueue(io, op);
}

int
dk_io_write(dk_io_t *io, off_t offset, const void *data, size_t len,
            dk_queue_t *q, void *ctx, dk_io_handler_t handler)
{
    struct io_op *op = op_new(OP_WRITE, q, ctx, handler);
    if (op == NULL) {
        return -ENOMEM;
    }
    op->wbuf = malloc(len > 0 ? len : 1);
    if (op->wbuf == NULL) {
        op_discard(op);
        return -ENOMEM;
    }
    if (len > 0) {
        memcpy(op->wbuf, data, len);
    }
    op->offset = offset;
    op->length = len;
    return enqueue(io, op);
}

int
dk_io_barrier_f(dk_io_t *io, void *ctx, dk_function_t fn)
{
    struct io_op *op = op_new(OP_BARRIER, NULL, ctx, NULL);
    if (op == NULL) {
        return -ENOMEM;
    }
    op->barrier_fn = fn;
    return enqueue(io, op);
}

void
dk_io_close(dk_io_t *io, unsigned flags)
{
    dk_source_t *wait = NULL;
    pthread_mutex_lock(&io->lock);
    dk__atomic_store_release(&io->closed, true);
    if (flags & DK_IO_STOP) {
        /* (C1): pairs with the steps' acquire loads (S1) and, through the
         * lock, with wait_ready's check (S2). */
        dk__atomic_store_release(&io->stop, true);
        wait = io->wait_src; /* interrupt a wait for readiness */
        io->wait_src = NULL;
    }
    if (!io->running) {
        /* Nothing is running: run the cleanup through a process item. */
        io->running = true;
        dk_io_retain(io);
        process_push(io);
    } else if (wait != NULL) {
        process_push(io); /* running ref kept */
    }
    pthread_mutex_unlock(&io->lock);
    if (wait != NULL) {
        dk_source_cancel(wait);
        dk_release(wait);
    }
}

bool
dk_io_is_closed(const dk_io_t *io)
{
    return dk__atomic_load_acquire(&io->closed);
}

int
dk_io_get_fd(const dk_io_t *io)
{
    return io->fd;
}

void
dk_io_set_high_water(dk_io_t *io, size_t size)
{
    pthread_mutex_lock(&io->lock);
    io->high = size > 0 ? size : 1;
    if (io->low > io->high) {
        io->low = io->high;
    }
    pthread_mutex_unlock(&io->lock);
}

void
dk_io_set_low_water(dk_io_t *io, size_t size)
{
    pthread_mutex_lock(&io->lock);
    io->low = size;
    if (io->high < io->low) {
        io->high = io->low;
    }
    pthread_mutex_unlock(&io->lock);
}

void
dk_io_set_allocator(dk_io_t *io, void *(*alloc)(void *actx, size_t size),
                    void (*free_fn)(void *actx, void *buf), void *actx)
{
    pthread_mutex_lock(&io->lock);
    io->alloc = alloc;
    io->free_fn = free_fn;
    io->actx = actx;
    pthread_mutex_unlock(&io->lock);
}

void
dk_io_set_interval(dk_io_t *io, uint64_t interval_ns, unsigned flags)
{
    (void)flags;
    pthread_mutex_lock(&io->lock);
    io->interval = interval_ns;
    pthread_mutex_unlock(&io->lock);
}

/* ---- waiting for readiness ------------------------------------------ */

/*
 * Stopping a step that waits for readiness. A step of a pipe or socket
 * (step_read, step_write) reads or writes only once the fd is ready: it
 * parks the process role in a one-shot source (wait_ready) and returns,
 * and the source's handler pushes the process item again. DK_IO_STOP must
 * end the step's operation with ECANCELED wherever it lands: before the
 * step's stop check (S1), between (S1) and wait_ready's check (S2), or
 * after the wait is armed. In the second case the step must not go on to
 * read(2) or write(2): the fd may never be ready (an empty pipe, a full
 * one), the call would block for ever, and no later operation, barrier
 * or cleanup would run.
 *
 *   CPU0 (step_read / step_write)          CPU1 (dk_io_close, DK_IO_STOP)
 *   load stop: false (S1)
 *                                          lock; stop = true (C1);
 *                                          wait_src is NULL; unlock
 *   wait_ready: lock; stop is true (S2);
 *   unlock; WAIT_STOPPED
 *   back to (S1): ECANCELED
 *
 * or, the other order of (S2) and (C1):
 *
 *   wait_ready: lock; stop is false (S2);
 *   resume s; wait_src = s; unlock
 *   WAIT_PARKED; return
 *                                          lock; stop = true (C1);
 *                                          take wait_src; push process;
 *                                          unlock; cancel s
 *                                          (the new process item)
 *                                          (S1) sees stop: ECANCELED
 *
 * (S2) and (C1) both run under io->lock, so one of the two orders holds:
 * either wait_ready sees the stop and the step goes back to (S1), or
 * dk_io_close sees wait_src and takes the process role over. The step
 * has left by then, or leaves touching neither the operation nor the
 * channel: it resumes s before it sets wait_src, both under the lock, so
 * nothing of the wait is left to do once another thread can take it (a
 * resume that fails is undone before anyone sees s). The readiness
 * handler takes wait_src under the same lock, so exactly one of it and
 * dk_io_close pushes the process item. (S1) is an acquire load that
 * pairs with (C1)'s release store: it is only the quick way out; (S2) is
 * the check the race needs. When no wait can be armed at all (WAIT_NONE:
 * no memory, or an fd epoll refuses) the step does the blocking call; a
 * stop that comes after it cannot interrupt that call.
 */
enum wait { WAIT_PARKED, WAIT_STOPPED, WAIT_NONE };

static void
ready_handler(void *p)
{
    dk_io_t *io = p;
    pthread_mutex_lock(&io->lock);
    dk_source_t *s = io->wait_src;
    io->wait_src = NULL;
    if (s != NULL) {
        /* Only for the step we resume: when dk_io_close took the wait,
         * its process item runs the step and owns io->ready. */
        io->ready = true;
    }
    pthread_mutex_unlock(&io->lock);
    if (s != NULL) {
        dk_source_cancel(s);
        dk_release(s);
        process_push(io); /* running ref kept */
    }
}

/* Park the process role until io->fd is ready (see "Stopping a step that
 * waits for readiness"). WAIT_PARKED: the readiness handler or
 * dk_io_close pushes the process item again, and the caller returns at
 * once. WAIT_STOPPED: the channel is stopped (S2), nothing was armed.
 * WAIT_NONE: no wait could be armed; the caller proceeds as if ready (a
 * blocking call beats a hang). */
static enum wait
wait_ready(dk_io_t *io, bool for_write)
{
    dk_source_t *s;
    if (dk_source_create(for_write ? DK_SOURCE_WRITE : DK_SOURCE_READ,
                         (uintptr_t)io->fd, 0, dk__default_root(), &s) < 0) {
        return WAIT_NONE;
    }
    dk_source_set_context(s, io);
    dk_source_set_event_handler_f(s, ready_handler);
    pthread_mutex_lock(&io->lock);
    if (io->stop) { /* (S2) */
        pthread_mutex_unlock(&io->lock);
        dk_source_cancel(s);
        dk_release(s);
        return WAIT_STOPPED;
    }
    /* Resumed under the lock, before wait_src is set: a failure is then
     * ours alone to undo, and the source, should it fire at once, finds
     * wait_src set (its handler waits for the lock). Once we unlock, the
     * process role may be taken over and the channel gone: touch neither
     * again. */
    int rc = dk_source_resume(s);
    if (rc < 0) {
        pthread_mutex_unlock(&io->lock);
        dk_source_cancel(s);
        dk_release(s);
        return WAIT_NONE;
    }
    io->ready = false;
    io->wait_src = s; /* our reference passes to it */
    pthread_mutex_unlock(&io->lock);
    return WAIT_PARKED;
}

/* ---- the operations ------------------------------------------------- */

/* STEP_RELIEVED: the reading went on on another thread (run_here); the
 * caller touches neither the operation nor the channel again. */
enum step { STEP_DONE, STEP_WAIT, STEP_RELIEVED };

/* Where op's next byte is in a random-access channel's file. */
static int64_t
op_at(const dk_io_t *io, const struct io_op *op)
{
    return (int64_t)io->base + (int64_t)op->offset + (int64_t)op->pos;
}

/* Read up to want bytes of op into buf: bytes read, 0 at end of file, or
 * -errno. */
static long
read_at(const dk_io_t *io, const struct io_op *op, void *buf, size_t want)
{
    return dk__os_fd_read(io->fd, buf, want, io->type == DK_IO_RANDOM,
                          op_at(io, op));
}

/*
 * Where the kernel's copy lands. A read from a regular file copies from
 * page-cache pages, which start on a page boundary, into the buffer; how
 * fast that copy runs depends on d = (buffer address - file position) mod
 * 4096. Measured on the project's machine (AMD EPYC, 1 MiB reads from the
 * page cache, CPU time): d of 1 to 31 runs at a third to a seventh of the
 * speed (4K aliasing, presumably: each load waits on a store just made to
 * the same low 12 address bits), a multiple of 64 about a fifth slower and
 * 48 (where the data of a Python bytes object in a fresh mmap'd block
 * lands) some 8% slower than any other d from 64 to 2047. The caller picks
 * neither term: the allocator places the buffer, the file its position.
 *
 * So, with an allocator (its buffers go to the handler as they are, so the
 * kernel's copy is the only one), the first chunk of a long read of big
 * chunks may be short: under a page, just enough that d is PLACE_TARGET
 * for every later chunk read into a buffer at the same page offset (a
 * reused chunk, or fresh ones from the same allocator). Once per
 * operation, and only where the short chunk is allowed (the low-water mark
 * at most its size) and cheap beside the read (chunks of PLACE_MIN_CHUNK
 * or more, PLACE_MIN_CHUNKS of them or more still to read, both in the
 * operation and in the file).
 */
#define PLACE_PAGE ((size_t)4096)
#define PLACE_TARGET ((size_t)240)
#define PLACE_MIN_CHUNK ((size_t)64 << 10)
#define PLACE_MIN_CHUNKS 8

/* True if a copy at page distance d runs at full speed (see above). */
static bool
place_good(size_t d)
{
    return d >= 64 && d < 2048 && d % 64 != 0;
}

/* How much of want to read into buf now: want, or the short first piece
 * that places the operation's later chunks (see above). */
static size_t
place_read(dk_io_t *io, struct io_op *op, const void *buf, size_t want)
{
    if (op->placed || !io->regular || want < PLACE_MIN_CHUNK ||
        (op->length - op->pos) / PLACE_MIN_CHUNKS < want) {
        return want;
    }
    op->placed = true;
    /* The file position, and how much of the file lies past it. A random
     * channel's preads leave the fd's position alone: the file's size is
     * that position plus what lies past it (unknown from the end on). */
    int64_t pos, left;
    if (io->type == DK_IO_RANDOM) {
        int64_t at = dk__os_fd_tell(io->fd);
        long past = dk__os_fd_readable(io->fd);
        pos = op_at(io, op);
        left = at >= 0 && past > 0 ? at + past - pos : -1;
    } else {
        pos = dk__os_fd_tell(io->fd);
        left = dk__os_fd_readable(io->fd);
    }
    if (pos < 0 || left < 0 || (size_t)left / PLACE_MIN_CHUNKS < want) {
        return want; /* no position, or too little of the file left */
    }
    size_t d = (size_t)(((uintptr_t)buf - (uint64_t)pos) % PLACE_PAGE);
    size_t first = (d + PLACE_PAGE - PLACE_TARGET) % PLACE_PAGE;
    if (place_good(d) || first < io->low) {
        return want;
    }
    return first; /* > 0: d != PLACE_TARGET, a good distance */
}

static void
flush_read(dk_io_t *io, struct io_op *op, bool done, int error)
{
    size_t off = 0;
    /* Chunks of at most the high-water mark; the last one carries done. */
    while (op->rlen - off > io->high) {
        deliver(op, false, op->rbuf + off, io->high, 0);
        off += io->high;
    }
    size_t rest = op->rlen - off;
    if (done) {
        deliver(op, true, op->rbuf + off, rest, error);
        op->rlen = 0;
        return;
    }
    if (rest > 0 && rest >= io->low) {
        deliver(op, false, op->rbuf + off, rest, 0);
        off += rest;
    }
    memmove(op->rbuf, op->rbuf + off, op->rlen - off);
    op->rlen -= off;
}

static enum step
step_read(dk_io_t *io, struct io_op *op)
{
    for (;;) {
        /* (S1): pairs with dk_io_close's release store (C1). */
        if (dk__atomic_load_acquire(&io->stop)) {
            flush_read(io, op, true, ECANCELED);
            return STEP_DONE;
        }
        if (op->pos >= op->length) {
            flush_read(io, op, true, 0);
            return STEP_DONE;
        }
        if (!io->regular && !io->ready) {
            if (io->interval != 0 && op->rlen > 0 &&
                dk__os_monotonic_ns() - op->last_delivery >= io->interval) {
                deliver(op, false, op->rbuf, op->rlen, 0);
                op->rlen = 0;
            }
            enum wait w = wait_ready(io, false);
            if (w == WAIT_PARKED) {
                return STEP_WAIT;
            }
            if (w == WAIT_STOPPED) {
                continue; /* (S1) ends the operation */
            }
        }
        size_t want = op->length - op->pos;
        size_t chunk = io->high != SIZE_MAX ? io->high : DEFAULT_CHUNK;
        if (want > chunk) {
            want = chunk;
        }
        if (io->alloc != NULL && op->rlen == 0 && !op->once) {
            /* Zero copy: read into the buffer the handler will own. */
            void *buf = io->alloc(io->actx, want);
            if (buf != NULL) {
                long n = read_at(io, op, buf, place_read(io, op, buf, want));
                io->ready = false;
                if (n > 0 && (size_t)n >= io->low) {
                    op->pos += (size_t)n;
                    bool done = op->pos >= op->length;
                    if (deliver_owned(op, done, buf, (size_t)n, 0, true)) {
                        return STEP_RELIEVED;
                    }
                    if (done) {
                        return STEP_DONE;
                    }
                    continue;
                }
                if (n > 0) {
                    /* Below the low-water mark: buffer it. */
                    if (op->rcap < (size_t)n) {
                        unsigned char *b = realloc(op->rbuf, (size_t)n);
                        if (b == NULL) {
                            io->free_fn(io->actx, buf);
                            flush_read(io, op, true, ENOMEM);
                            return STEP_DONE;
                        }
                        op->rbuf = b;
                        op->rcap = (size_t)n;
                    }
                    memcpy(op->rbuf, buf, (size_t)n);
                    op->rlen = (size_t)n;
                    op->pos += (size_t)n;
                    io->free_fn(io->actx, buf);
                    continue;
                }
                int err = n < 0 ? (int)-n : 0;
                io->free_fn(io->actx, buf);
                flush_read(io, op, true, err); /* error or end of file */
                return STEP_DONE;
            }
        }
        if (op->rcap - op->rlen < want) {
            size_t cap = op->rlen + want;
            unsigned char *b = realloc(op->rbuf, cap);
            if (b == NULL) {
                flush_read(io, op, true, ENOMEM);
                return STEP_DONE;
            }
            op->rbuf = b;
            op->rcap = cap;
        }
        long n = read_at(io, op, op->rbuf + op->rlen, want);
        io->ready = false;
        if (n < 0) {
            flush_read(io, op, true, (int)-n);
            return STEP_DONE;
        }
        if (n == 0) {
            flush_read(io, op, true, 0); /* end of file */
            return STEP_DONE;
        }
        op->rlen += (size_t)n;
        op->pos += (size_t)n;
        if (op->once || op->pos >= op->length) {
            flush_read(io, op, true, 0);
            return STEP_DONE;
        }
        flush_read(io, op, false, 0);
    }
}

static enum step
step_write(dk_io_t *io, struct io_op *op)
{
    for (;;) {
        /* (S1): pairs with dk_io_close's release store (C1). */
        if (dk__atomic_load_acquire(&io->stop)) {
            deliver(op, true, op->wbuf + op->pos, op->length - op->pos,
                    ECANCELED);
            return STEP_DONE;
        }
        if (op->pos >= op->length) {
            deliver(op, true, NULL, 0, 0);
            return STEP_DONE;
        }
        if (!io->regular && !io->ready) {
            enum wait w = wait_ready(io, true);
            if (w == WAIT_PARKED) {
                return STEP_WAIT;
            }
            if (w == WAIT_STOPPED) {
                continue; /* (S1) ends the operation */
            }
        }
        size_t want = op->length - op->pos;
        long n = dk__os_fd_write(io->fd, op->wbuf + op->pos, want,
                                 io->type == DK_IO_RANDOM, op_at(io, op));
        io->ready = false;
        if (n < 0) {
            deliver(op, true, op->wbuf + op->pos, op->length - op->pos,
                    (int)-n);
            return STEP_DONE;
        }
        op->pos += (size_t)n;
    }
}

/* The cleanup handler is called with the channel's running reference
 * already dropped: when it runs, the channel holds no reference of its
 * own, so a release from the handler (or right after it) is the last one
 * if the owner's was. */
struct cleanup_call {
    dk_io_t *io; /* owns the running reference until the call */
    void (*fn)(void *, int);
    void *ctx;
    int error;
};

static void
cleanup_run(void *p)
{
    struct cleanup_call *c = p;
    dk_io_release(c->io);
    c->fn(c->ctx, c->error);
    free(c);
}

/* Queue the cleanup call (io->cleanup set, the channel done and no
 * relieved call left); the caller's reference passes to it. A watchdog
 * tick may still be on its way out, with the reference event.c holds for
 * its callback: wait for it to be gone first. */
static void
cleanup_start(dk_io_t *io)
{
    if (io->watch_used) {
        dk__timer_disarm_wait(&io->watch);
    }
    struct cleanup_call call = {io, io->cleanup, io->cleanup_ctx,
                                io->first_error};
    struct cleanup_call *c = malloc(sizeof *c);
    if (c != NULL) {
        *c = call;
        if (dk_queue_async_f(io->cleanup_q, c, cleanup_run) == 0) {
            return;
        }
        free(c);
    }
    /* Out of memory: run the cleanup handler here rather than lose it
     * (the channel's owner waits for it). */
    dk_io_release(io);
    call.fn(call.ctx, call.error);
}

static void
process(void *p)
{
    dk_io_t *io = p;
    for (;;) {
        pthread_mutex_lock(&io->lock);
        struct io_op *op = io->head;
        if (op == NULL) {
            bool cleanup = io->closed && !io->cleaned && io->cleanup != NULL;
            if (io->closed) {
                io->cleaned = true;
            }
            if (cleanup && io->relieved > 0) {
                io->cleanup_owed = true; /* the last relieved call's */
                cleanup = false;
            }
            io->running = false;
            watch_stop_locked(io);
            pthread_mutex_unlock(&io->lock);
            if (!cleanup) {
                dk_io_release(io); /* the running reference */
                return;
            }
            cleanup_start(io); /* the running reference passes on */
            return;
        }
        pthread_mutex_unlock(&io->lock);
        enum step st = STEP_DONE;
        switch (op->kind) {
        case OP_BARRIER:
            /* Even after DK_IO_STOP, as libdispatch's barriers: the
             * caller's context is freed by its function, never leaked. */
            op->barrier_fn(op->ctx);
            break;
        case OP_READ:
            st = step_read(io, op);
            break;
        case OP_WRITE:
            st = step_write(io, op);
            break;
        }
        if (st != STEP_DONE) {
            return; /* the readiness handler or the relief goes on */
        }
        pthread_mutex_lock(&io->lock);
        io->head = op->next;
        if (io->head == NULL) {
            io->tail = NULL;
        }
        pthread_mutex_unlock(&io->lock);
        struct delivery *final = op->final;
        op_free(op);
        if (final != NULL && submit(io, final, true)) {
            return; /* relieved: the next item goes on */
        }
    }
}

/* ---- one-shot reads and writes -------------------------------------- */

struct simple {
    void *ctx;
    dk_read_handler_t fn; /* or a dk_write_handler_t: the same type */
};

static void
simple_done(void *p, bool done, const void *data, size_t len, int err)
{
    struct simple *s = p;
    if (done) {
        s->fn(s->ctx, data, len, err);
        free(s);
    }
}

/* dk_read_f (buf NULL: read up to len) and dk_write_f: a stream channel
 * closed at once, with one operation whose final call is fn's. */
static int
simple_io(int fd, const void *buf, size_t len, dk_queue_t *q, void *ctx,
          dk_read_handler_t fn)
{
    dk_io_t *io;
    int rc = dk_io_create(DK_IO_STREAM, fd, NULL, NULL, NULL, &io);
    if (rc < 0) {
        return rc;
    }
    struct simple *s = malloc(sizeof *s);
    if (s == NULL) {
        dk_io_release(io);
        return -ENOMEM;
    }
    *s = (struct simple){ctx, fn};
    if (buf != NULL) {
        rc = dk_io_write(io, 0, buf, len, q, s, simple_done);
    } else {
        struct io_op *op = op_new(OP_READ, q, s, simple_done);
        rc = -ENOMEM;
        if (op != NULL) {
            io->low = SIZE_MAX; /* one delivery with everything read */
            op->length = len;
            op->once = !io->regular; /* files: until length or end of file */
            rc = enqueue(io, op);
        }
    }
    if (rc < 0) {
        free(s);
    }
    dk_io_close(io, 0);
    dk_io_release(io);
    return rc;
}

int
dk_read_f(int fd, size_t length, dk_queue_t *q, void *ctx,
          dk_read_handler_t handler)
{
    return simple_io(fd, NULL, length, q, ctx, handler);
}

int
dk_write_f(int fd, const void *buf, size_t len, dk_queue_t *q, void *ctx,
           dk_write_handler_t handler)
{
    /* A write of nothing still needs a buffer to tell it from a read. */
    return simple_io(fd, buf != NULL ? buf : "", len, q, ctx, handler);
}
