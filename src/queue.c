/*
 * Serial, concurrent and main queues, and running work items.
 *
 * A serial queue holds its items in an MPSC list. When it has work and is
 * neither suspended, inactive nor already scheduled, it sets SCHEDULED in
 * its state word and pushes its one embedded drain item onto its target;
 * whoever runs that drain item owns the queue and runs its items in order.
 * The owner gives the queue up by clearing SCHEDULED and then looking at
 * the list once more:
 *
 *   producer                              owner (drain ends)
 *   push(item): xchg tail       (A)       state &= ~SCHEDULED      (C)
 *   state: SCHEDULED set?       (B)       list empty?              (D)
 *     no -> CAS it set, schedule            no -> try to schedule again
 *
 * A, B, C and D are sequentially consistent, so at least one side sees
 * the other: an item is never left behind in an unscheduled queue, and the
 * CAS on the state lets only one of them schedule the drain.
 *
 * A concurrent queue keeps its items in a list under its mutex, with the
 * number of items running and whether a barrier runs. Items go to the
 * target in order: plain items while no barrier runs, a barrier only when
 * nothing runs. Each carries DK_ITEM_CQ so the worker reports completion.
 *
 * The main queue is a serial queue whose drain is signalled on an eventfd
 * instead of being pushed to a target; only the main thread drains it.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

__thread struct dk__frame *dk__current_frame;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static dk_queue_t *registry;

static struct dk_queue_s main_queue = {
    .obj = {DK_REFCNT_IMMORTAL, DK_KIND_QUEUE, NULL, NULL},
    .type = DK_Q_MAIN,
    .qos = DK_QOS_USER_INTERACTIVE,
    .label = (char *)"com.apple.main-thread",
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .items = {.head = &main_queue.items.stub, .tail = &main_queue.items.stub},
};
static int main_fd = -1;
static int main_tid;

/* ---- items ----------------------------------------------------------
 *
 * Work items are allocated by producers and freed by workers, usually on
 * other threads, which is malloc's slowest case. Each thread keeps a free
 * list; items move between threads in batches of ITEM_BATCH through a
 * global list of batches under a mutex, so the lock is taken once per
 * ITEM_BATCH items and an item is reused while still warm.
 */

#define ITEM_BATCH 128

/* A batch is its first item: `next` links its ITEM_BATCH items, `ctx`
 * links the batches. */
static pthread_mutex_t batch_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dk__item *full_batches;
static unsigned long nfull_batches;

struct item_cache {
    struct dk__item *free;
    unsigned n;
};
static __thread struct item_cache item_cache;
static pthread_key_t cache_key;
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;

static void
give_batch(struct dk__item *batch)
{
    pthread_mutex_lock(&batch_lock);
    if (nfull_batches >= 1024) {
        pthread_mutex_unlock(&batch_lock);
        /* Enough spare items: give these back to malloc. */
        while (batch != NULL) {
            struct dk__item *next = batch->next;
            free(batch);
            batch = next;
        }
        return;
    }
    batch->ctx = full_batches;
    full_batches = batch;
    nfull_batches++;
    pthread_mutex_unlock(&batch_lock);
}

static void
cache_flush(void *unused)
{
    (void)unused;
    struct dk__item *it = item_cache.free;
    item_cache.free = NULL;
    item_cache.n = 0;
    while (it != NULL) {
        struct dk__item *next = it->next;
        free(it);
        it = next;
    }
}

static void
cache_key_create(void)
{
    pthread_key_create(&cache_key, cache_flush);
}

struct dk__item *
dk__item_alloc(void)
{
    struct item_cache *c = &item_cache;
    struct dk__item *it = c->free;
    if (dk_unlikely(it == NULL)) {
        pthread_mutex_lock(&batch_lock);
        struct dk__item *b = full_batches;
        if (b != NULL) {
            full_batches = b->ctx;
            nfull_batches--;
        }
        pthread_mutex_unlock(&batch_lock);
        if (b == NULL) {
            it = malloc(sizeof *it);
            if (it != NULL) {
                it->group = NULL;
                it->flags = 0;
            }
            return it;
        }
        c->free = b;
        c->n = ITEM_BATCH;
        it = b;
    }
    c->free = it->next;
    c->n--;
    it->group = NULL;
    it->flags = 0;
    return it;
}

struct dk__item *
dk__item_new(void *ctx, dk_function_t fn, uint32_t flags)
{
    struct dk__item *it = dk__item_alloc();
    if (it != NULL) {
        it->fn = fn;
        it->ctx = ctx;
        it->flags = flags;
    }
    return it;
}

void
dk__item_free(struct dk__item *it)
{
    struct item_cache *c = &item_cache;
    if (dk_unlikely(c->n == 0 && c->free == NULL)) {
        /* First use on this thread: free what is cached at thread exit. */
        pthread_once(&cache_key_once, cache_key_create);
        pthread_setspecific(cache_key, c);
    }
    it->next = c->free;
    c->free = it;
    if (++c->n == 2 * ITEM_BATCH) {
        /* Hand the older half to the threads that allocate. */
        struct dk__item *cut = c->free;
        for (unsigned i = 1; i < ITEM_BATCH; i++) {
            cut = cut->next;
        }
        struct dk__item *batch = cut->next;
        cut->next = NULL;
        c->n = ITEM_BATCH;
        give_batch(batch);
    }
}

static void serial_drain(dk_queue_t *q);
static void cq_complete(dk_queue_t *q, bool barrier, bool release);

static void
frame_push(struct dk__frame *f, dk_queue_t *q, bool barrier)
{
    f->queue = q;
    f->barrier = barrier;
    f->caller = NULL;
    f->prev = dk__current_frame;
    dk__current_frame = f;
}

static void
frame_pop(struct dk__frame *f)
{
    dk__current_frame = f->prev;
}

/* Call an item's function and finish it: leave its group, wake a sync
 * waiter, free it. The item must not be touched after a waiter is woken. */
static void
item_invoke(struct dk__item *it)
{
    uint32_t flags = it->flags;
    dk_group_t *g = it->group;
    if ((flags & DK_ITEM_SYNC) && it->caller != NULL &&
        dk__current_frame != NULL) {
        /* Run it as on the current frame's queue, linked to the frames of
         * the thread waiting for it (which stay alive until `done`). */
        struct dk__frame f = *dk__current_frame;
        f.prev = dk__current_frame;
        f.caller = it->caller;
        dk__current_frame = &f;
        it->fn(it->ctx);
        dk__current_frame = f.prev;
    } else {
        it->fn(it->ctx);
    }
    if (flags & DK_ITEM_SYNC) {
        dk__atomic_store_release(&it->done, 1); /* pairs with sync_wait */
        dk__os_futex_wake(&it->done, 1, false);
    } else if (!(flags & DK_ITEM_EMBEDDED)) {
        dk__item_free(it);
    }
    if (flags & DK_ITEM_GROUP) {
        dk__group_leave_item(g);
    }
}

void
dk__item_run(struct dk__item *it, dk_queue_t *from)
{
    uint32_t flags = it->flags;
    if (flags & DK_ITEM_CQ) {
        dk_queue_t *cq = it->cq;
        bool barrier = (flags & DK_ITEM_BARRIER) != 0;
        it->flags = flags & ~DK_ITEM_CQ;
        struct dk__frame f;
        frame_push(&f, cq, barrier);
        if (flags & DK_ITEM_DRAIN) {
            serial_drain(it->queue);
        } else {
            item_invoke(it);
        }
        frame_pop(&f);
        cq_complete(cq, barrier, true);
        return;
    }
    if (flags & DK_ITEM_DRAIN) {
        serial_drain(it->queue);
        return;
    }
    if (dk__current_frame != NULL && dk__current_frame->queue == from) {
        item_invoke(it); /* inside from's drain: its frame is pushed */
        return;
    }
    struct dk__frame f;
    frame_push(&f, from, false);
    item_invoke(it);
    frame_pop(&f);
}

/* ---- serial queues -------------------------------------------------- */

static void
schedule_drain(dk_queue_t *q)
{
    if (q->type == DK_Q_MAIN) {
        dk__os_eventfd_signal(main_fd);
        return;
    }
    q->drain_item.flags = DK_ITEM_DRAIN | DK_ITEM_EMBEDDED;
    q->drain_item.queue = q;
    dk__queue_push(q->target, &q->drain_item);
}

static bool
state_runnable(uint64_t s)
{
    return (s & (DK_QS_SCHEDULED | DK_QS_INACTIVE)) == 0 &&
           (s >> DK_QS_SUSPEND_SHIFT) == 0;
}

/* Schedule q's drain if it is runnable and not scheduled yet. */
static void
serial_wakeup(dk_queue_t *q)
{
    uint64_t s = dk__atomic_load_seq_cst(&q->state); /* (B) */
    do {
        if (!state_runnable(s)) {
            return;
        }
    } while (!dk__atomic_cas_seq_cst(&q->state, &s, s | DK_QS_SCHEDULED));
    dk_retain(q); /* the drain's reference, dropped when it ends */
    schedule_drain(q);
}

static bool
queue_empty(dk_queue_t *q)
{
    if (q->type == DK_Q_WORKLOOP) {
        return dk__atomic_load_seq_cst(&q->wl_count) == 0;
    }
    return dk__mpsc_empty(&q->items);
}

static int
qos_band(int qos)
{
    switch (qos) {
    case DK_QOS_USER_INTERACTIVE:
        return 0;
    case DK_QOS_USER_INITIATED:
        return 1;
    case DK_QOS_UTILITY:
        return 3;
    case DK_QOS_BACKGROUND:
        return 4;
    default:
        return 2;
    }
}

static void
workloop_push(dk_queue_t *q, struct dk__item *it)
{
    int band = (it->flags & DK_ITEM_QOS)
                   ? (int)((it->flags >> DK_ITEM_BAND_SHIFT) & 7u)
                   : qos_band(DK_QOS_DEFAULT);
    it->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->wl_tail[band] != NULL) {
        q->wl_tail[band]->next = it;
    } else {
        q->wl_head[band] = it;
    }
    q->wl_tail[band] = it;
    dk__atomic_add_seq_cst(&q->wl_count, 1); /* as (A) */
    pthread_mutex_unlock(&q->lock);
}

static struct dk__item *
queue_pop(dk_queue_t *q)
{
    if (q->type != DK_Q_WORKLOOP) {
        return dk__mpsc_pop(&q->items);
    }
    struct dk__item *it = NULL;
    pthread_mutex_lock(&q->lock);
    for (int b = 0; b < DK_WL_BANDS; b++) {
        if (q->wl_head[b] != NULL) {
            it = q->wl_head[b];
            q->wl_head[b] = it->next;
            if (q->wl_head[b] == NULL) {
                q->wl_tail[b] = NULL;
            }
            dk__atomic_sub_relaxed(&q->wl_count, 1);
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return it;
}

/* Give up ownership (C), then look again (D). */
static void
serial_release(dk_queue_t *q)
{
    dk__atomic_and_seq_cst(&q->state, ~DK_QS_SCHEDULED); /* (C) */
    if (!queue_empty(q)) {                               /* (D) */
        serial_wakeup(q);
    }
}

#define DK_DRAIN_BUDGET 1024

static long
serial_drain_count(dk_queue_t *q, long budget)
{
    struct dk__frame f;
    frame_push(&f, q, false);
    long ran = 0;
    for (;;) {
        uint64_t s = dk__atomic_load_acquire(&q->state);
        if ((s & DK_QS_INACTIVE) || (s >> DK_QS_SUSPEND_SHIFT) != 0) {
            break;
        }
        if (ran == budget) {
            if (queue_empty(q)) {
                break;
            }
            /* Yield to other queues of the target: go to the back of it,
             * still scheduled and still holding the drain's reference. */
            frame_pop(&f);
            schedule_drain(q);
            return ran;
        }
        struct dk__item *it = queue_pop(q);
        if (it == NULL) {
            break;
        }
        dk__item_run(it, q);
        ran++;
    }
    frame_pop(&f);
    serial_release(q);
    dk_release(q);
    return ran;
}

static void
serial_drain(dk_queue_t *q)
{
    serial_drain_count(q, DK_DRAIN_BUDGET);
}

/* ---- concurrent queues ---------------------------------------------- */

static void
cq_dispatch_locked(dk_queue_t *q)
{
    uint64_t s = dk__atomic_load_acquire(&q->state);
    if ((s & DK_QS_INACTIVE) || (s >> DK_QS_SUSPEND_SHIFT) != 0) {
        return;
    }
    struct dk__item *it;
    while ((it = q->cq_head) != NULL) {
        bool barrier = (it->flags & DK_ITEM_BARRIER) != 0;
        if (q->cq_barrier_running || (barrier && q->cq_running > 0)) {
            break;
        }
        q->cq_head = it->next;
        if (q->cq_head == NULL) {
            q->cq_tail = NULL;
        }
        if (barrier) {
            q->cq_barrier_running = true;
        } else {
            q->cq_running++;
        }
        dk_retain(q); /* dropped by cq_complete */
        it->flags |= DK_ITEM_CQ;
        it->cq = q;
        dk__queue_push(q->target, it);
        if (barrier) {
            break;
        }
    }
}

static void
cq_complete(dk_queue_t *q, bool barrier, bool release)
{
    pthread_mutex_lock(&q->lock);
    if (barrier) {
        q->cq_barrier_running = false;
    } else {
        q->cq_running--;
    }
    cq_dispatch_locked(q);
    pthread_mutex_unlock(&q->lock);
    if (release) {
        dk_release(q);
    }
}

static void
cq_push(dk_queue_t *q, struct dk__item *it)
{
    it->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->cq_tail != NULL) {
        q->cq_tail->next = it;
    } else {
        q->cq_head = it;
    }
    q->cq_tail = it;
    cq_dispatch_locked(q);
    pthread_mutex_unlock(&q->lock);
}

/* ---- submission ----------------------------------------------------- */

void
dk__queue_push(dk_queue_t *q, struct dk__item *it)
{
    switch (q->type) {
    case DK_Q_ROOT:
        dk__pool_push(q, it);
        break;
    case DK_Q_CONCURRENT:
        cq_push(q, it);
        break;
    case DK_Q_SERIAL:
    case DK_Q_MAIN:
        dk__mpsc_push(&q->items, it); /* (A) */
        serial_wakeup(q);
        break;
    case DK_Q_WORKLOOP:
        workloop_push(q, it);
        serial_wakeup(q);
        break;
    }
}

static bool valid_qos(int qos);
static int async_item(dk_queue_t *q, void *ctx, dk_function_t fn,
                      uint32_t flags);

int
dk_queue_async_qos_f(dk_queue_t *q, int qos, void *ctx, dk_function_t fn)
{
    if (!valid_qos(qos)) {
        return -EINVAL;
    }
    return async_item(q, ctx, fn,
                      DK_ITEM_QOS | (uint32_t)qos_band(qos)
                                        << DK_ITEM_BAND_SHIFT);
}

bool
dk_queue_is_workloop(const dk_queue_t *q)
{
    return q->type == DK_Q_WORKLOOP;
}

static int
async_item(dk_queue_t *q, void *ctx, dk_function_t fn, uint32_t flags)
{
    struct dk__item *it = dk__item_new(ctx, fn, flags);
    if (it == NULL) {
        return -ENOMEM;
    }
    dk__queue_push(q, it);
    return 0;
}

int
dk_queue_async_f(dk_queue_t *q, void *ctx, dk_function_t fn)
{
    return async_item(q, ctx, fn, 0);
}

int
dk_queue_barrier_async_f(dk_queue_t *q, void *ctx, dk_function_t fn)
{
    return async_item(q, ctx, fn, DK_ITEM_BARRIER);
}

/* ---- sync ----------------------------------------------------------- */

/* DK_SYNC_BARRIER or not; other bits are a client bug. */
static bool
sync_barrier(unsigned flags)
{
    if (flags & ~DK_SYNC_BARRIER) {
        DK_CLIENT_CRASH("unknown flags for a queue sync call");
    }
    return (flags & DK_SYNC_BARRIER) != 0;
}

bool
dk_queue_sync_would_deadlock(dk_queue_t *q, unsigned flags)
{
    bool barrier = sync_barrier(flags);
    for (struct dk__frame *f = dk__current_frame; f != NULL; f = f->prev) {
        for (dk_queue_t *x = q; x != NULL; x = x->target) {
            if (x->type == DK_Q_ROOT) {
                break;
            }
            if (f->queue != x) {
                continue;
            }
            if (x->type != DK_Q_CONCURRENT) {
                return true;
            }
            if (f->barrier || (barrier && x == q)) {
                return true;
            }
        }
    }
    return false;
}

int
dk_queue_sync_enter(dk_queue_t *q, unsigned flags, dk_sync_frame_t *frame)
{
    if (flags & ~DK_SYNC_BARRIER) {
        return -EINVAL;
    }
    bool barrier = (flags & DK_SYNC_BARRIER) != 0;
    struct dk__frame *f = (struct dk__frame *)frame;
    _Static_assert(sizeof(struct dk__frame) <= sizeof(dk_sync_frame_t),
                   "dk_sync_frame_t too small");
    switch (q->type) {
    case DK_Q_ROOT:
        frame_push(f, q, false);
        return 0;
    case DK_Q_MAIN:
        return -EAGAIN;
    case DK_Q_SERIAL:
    case DK_Q_WORKLOOP: {
        if (q->target->type != DK_Q_ROOT) {
            return -EAGAIN;
        }
        uint64_t s = dk__atomic_load_relaxed(&q->state);
        if (!state_runnable(s) ||
            !dk__atomic_cas_seq_cst(&q->state, &s, s | DK_QS_SCHEDULED)) {
            return -EAGAIN;
        }
        frame_push(f, q, true);
        return 0;
    }
    case DK_Q_CONCURRENT: {
        if (q->target->type != DK_Q_ROOT) {
            return -EAGAIN;
        }
        int rc = -EAGAIN;
        pthread_mutex_lock(&q->lock);
        uint64_t s = dk__atomic_load_relaxed(&q->state);
        if (!(s & DK_QS_INACTIVE) && (s >> DK_QS_SUSPEND_SHIFT) == 0 &&
            q->cq_head == NULL && !q->cq_barrier_running &&
            (!barrier || q->cq_running == 0)) {
            if (barrier) {
                q->cq_barrier_running = true;
            } else {
                q->cq_running++;
            }
            rc = 0;
        }
        pthread_mutex_unlock(&q->lock);
        if (rc == 0) {
            frame_push(f, q, barrier);
        }
        return rc;
    }
    }
    return -EAGAIN;
}

void
dk_queue_sync_exit(dk_queue_t *q, dk_sync_frame_t *frame)
{
    struct dk__frame *f = (struct dk__frame *)frame;
    frame_pop(f);
    switch (q->type) {
    case DK_Q_ROOT:
    case DK_Q_MAIN:
        break;
    case DK_Q_SERIAL:
    case DK_Q_WORKLOOP:
        serial_release(q);
        break;
    case DK_Q_CONCURRENT:
        cq_complete(q, f->barrier, false);
        break;
    }
}

int
dk__wait_word(uint32_t *word, uint32_t expected, uint64_t deadline)
{
    for (;;) {
        if (dk__atomic_load_acquire(word) != expected) {
            return 0;
        }
        int rc = dk__os_futex_wait(word, expected, deadline, false);
        if (rc == -ETIMEDOUT) {
            return dk__atomic_load_acquire(word) != expected ? 0 : rc;
        }
    }
}

static int
sync_common(dk_queue_t *q, void *ctx, dk_function_t fn, bool barrier)
{
    unsigned flags = barrier ? DK_SYNC_BARRIER : 0;
    if (dk_queue_sync_would_deadlock(q, flags)) {
        return -EDEADLK;
    }
    dk_sync_frame_t frame;
    if (dk_queue_sync_enter(q, flags, &frame) == 0) {
        fn(ctx);
        dk_queue_sync_exit(q, &frame);
        return 0;
    }
    struct dk__item it = {
        .fn = fn,
        .ctx = ctx,
        .flags =
            DK_ITEM_SYNC | DK_ITEM_EMBEDDED | (barrier ? DK_ITEM_BARRIER : 0),
        .caller = dk__current_frame,
    };
    dk__queue_push(q, &it);
    if (q->type == DK_Q_MAIN && dk_is_main_thread()) {
        /* We are the thread that drains the main queue: drain until our
         * item has run. */
        while (dk__atomic_load_acquire(&it.done) == 0) {
            /* -EINTR (a signal handler ran) only sends us round again. */
            long drained = dk_main_drain(DK_TIME_FOREVER);
            (void)drained;
        }
        return 0;
    }
    dk__wait_word(&it.done, 0, DK_TIME_FOREVER); /* pairs with item_invoke */
    return 0;
}

int
dk_queue_sync_f(dk_queue_t *q, void *ctx, dk_function_t fn)
{
    return sync_common(q, ctx, fn, false);
}

int
dk_queue_barrier_sync_f(dk_queue_t *q, void *ctx, dk_function_t fn)
{
    return sync_common(q, ctx, fn, q->type == DK_Q_CONCURRENT);
}

/* ---- creation and destruction --------------------------------------- */

static void
registry_add(dk_queue_t *q)
{
    pthread_mutex_lock(&registry_lock);
    q->reg_prev = NULL;
    q->reg_next = registry;
    if (registry != NULL) {
        registry->reg_prev = q;
    }
    registry = q;
    pthread_mutex_unlock(&registry_lock);
}

static void
registry_remove(dk_queue_t *q)
{
    pthread_mutex_lock(&registry_lock);
    if (q->reg_prev != NULL) {
        q->reg_prev->reg_next = q->reg_next;
    } else {
        registry = q->reg_next;
    }
    if (q->reg_next != NULL) {
        q->reg_next->reg_prev = q->reg_prev;
    }
    pthread_mutex_unlock(&registry_lock);
}

static dk_queue_t *
root_for_qos(int qos)
{
    switch (qos) {
    case DK_QOS_USER_INTERACTIVE:
        return &dk__roots[0];
    case DK_QOS_USER_INITIATED:
        return &dk__roots[1];
    case DK_QOS_UTILITY:
        return &dk__roots[3];
    case DK_QOS_BACKGROUND:
        return &dk__roots[4];
    default:
        return &dk__roots[2];
    }
}

dk_queue_t *
dk_queue_global(long priority)
{
    switch (priority) {
    case DK_PRIORITY_HIGH:
    case DK_QOS_USER_INITIATED:
        return &dk__roots[1];
    case DK_PRIORITY_DEFAULT: /* == DK_QOS_UNSPECIFIED */
    case DK_QOS_DEFAULT:
        return &dk__roots[2];
    case DK_PRIORITY_LOW:
    case DK_QOS_UTILITY:
        return &dk__roots[3];
    case DK_PRIORITY_BACKGROUND:
    case DK_QOS_BACKGROUND:
        return &dk__roots[4];
    case DK_QOS_USER_INTERACTIVE:
        return &dk__roots[0];
    default:
        return NULL;
    }
}

dk_queue_t *
dk_queue_main(void)
{
    dk__runtime_ensure();
    return &main_queue;
}

static bool
valid_qos(int qos)
{
    return qos == DK_QOS_UNSPECIFIED || qos == DK_QOS_BACKGROUND ||
           qos == DK_QOS_UTILITY || qos == DK_QOS_DEFAULT ||
           qos == DK_QOS_USER_INITIATED || qos == DK_QOS_USER_INTERACTIVE;
}

int
dk_queue_create(const char *label, unsigned attrs, int qos, int relpri,
                dk_queue_t *target, dk_queue_t **out)
{
    *out = NULL;
    if ((attrs & ~(DK_QUEUE_CONCURRENT | DK_QUEUE_INACTIVE |
                   DK_QUEUE_WORKLOOP)) != 0 ||
        (attrs & (DK_QUEUE_CONCURRENT | DK_QUEUE_WORKLOOP)) ==
            (DK_QUEUE_CONCURRENT | DK_QUEUE_WORKLOOP)) {
        return -EINVAL;
    }
    dk__runtime_ensure();
    dk_queue_t *q = calloc(1, sizeof *q);
    if (q == NULL) {
        return -ENOMEM;
    }
    q->label = strdup(label != NULL ? label : "");
    if (q->label == NULL) {
        free(q);
        return -ENOMEM;
    }
    dk__object_init(&q->obj, DK_KIND_QUEUE);
    q->type = (attrs & DK_QUEUE_CONCURRENT) ? DK_Q_CONCURRENT
              : (attrs & DK_QUEUE_WORKLOOP) ? DK_Q_WORKLOOP
                                            : DK_Q_SERIAL;
    /* As in GCD, a relative priority outside [-15, 0] or an unknown class
     * drops the QoS request. */
    q->qos = (valid_qos(qos) && relpri <= 0 && relpri >= -15) ? qos : 0;
    q->relpri = q->qos != 0 ? relpri : 0;
    if (attrs & DK_QUEUE_INACTIVE) {
        q->state = DK_QS_INACTIVE | DK_QS_WAS_INACTIVE;
    }
    pthread_mutex_init(&q->lock, NULL);
    dk__mpsc_init(&q->items);
    if (target != NULL) {
        dk_retain(target);
        q->target = target;
    } else {
        q->target = root_for_qos(q->qos);
    }
    registry_add(q);
    *out = q;
    return 0;
}

/* ---- the queue's part of the object model (object.c) ---------------- */

static dk_queue_t *
queue_finalize(struct dk__object *o)
{
    dk_queue_t *q = (dk_queue_t *)o;
    uint64_t s = dk__atomic_load_acquire(&q->state);
    if (s & DK_QS_INACTIVE) {
        DK_CLIENT_CRASH("Release of an inactive queue");
    }
    if ((s >> DK_QS_SUSPEND_SHIFT) != 0) {
        DK_CLIENT_CRASH("Release of a suspended queue");
    }
    /* The finalizer runs on the target if it is a global queue, else on
     * the default global queue (the target is released below). */
    return q->target->type == DK_Q_ROOT ? q->target : dk__default_root();
}

static void
queue_dispose(struct dk__object *o)
{
    dk_queue_t *q = (dk_queue_t *)o;
    registry_remove(q);
    struct dk__specific *sp = q->specifics;
    while (sp != NULL) {
        struct dk__specific *next = sp->next;
        dk__finalizer_run(dk__default_root(), sp->value, sp->destructor);
        free(sp);
        sp = next;
    }
    for (size_t i = 0; i < q->nretired; i++) {
        dk_release(q->retired_targets[i]);
    }
    free(q->retired_targets);
    if (q->target->type != DK_Q_ROOT) {
        dk_release(q->target);
    }
    pthread_mutex_destroy(&q->lock);
    free(q->label);
    free(q);
}

static const char *
queue_kind(const dk_queue_t *q)
{
    switch (q->type) {
    case DK_Q_SERIAL:
        return "serial";
    case DK_Q_CONCURRENT:
        return "concurrent";
    case DK_Q_ROOT:
        return "global";
    case DK_Q_MAIN:
        return "main";
    case DK_Q_WORKLOOP:
        return "workloop";
    }
    return "?";
}

static int
queue_describe(const struct dk__object *o, const char *refcnt, char *buf,
               size_t len)
{
    const dk_queue_t *q = (const dk_queue_t *)o;
    return snprintf(buf, len,
                    "queue[%p] = { refcnt = %s, label = \"%s\", "
                    "kind = %s, qos = 0x%x, suspended = %u%s }",
                    (const void *)q, refcnt, q->label, queue_kind(q), q->qos,
                    dk_queue_suspend_count(q),
                    dk_queue_is_inactive(q) ? ", inactive" : "");
}

const struct dk__vtable dk__queue_vtable = {
    .kind = DK_KIND_QUEUE,
    .name = "queue",
    .finalize = queue_finalize,
    .dispose = queue_dispose,
    .describe = queue_describe,
};

/* ---- properties and control ----------------------------------------- */

const char *
dk_queue_label(const dk_queue_t *q)
{
    return q->label;
}

bool
dk_queue_is_concurrent(const dk_queue_t *q)
{
    return q->type == DK_Q_CONCURRENT || q->type == DK_Q_ROOT;
}

bool
dk_queue_is_global(const dk_queue_t *q)
{
    return q->type == DK_Q_ROOT;
}

bool
dk_queue_is_inactive(const dk_queue_t *q)
{
    return (dk__atomic_load_acquire(&q->state) & DK_QS_INACTIVE) != 0;
}

unsigned
dk_queue_suspend_count(const dk_queue_t *q)
{
    return (unsigned)(dk__atomic_load_acquire(&q->state) >>
                      DK_QS_SUSPEND_SHIFT);
}

static void
queue_kick(dk_queue_t *q)
{
    if (q->type == DK_Q_CONCURRENT) {
        pthread_mutex_lock(&q->lock);
        cq_dispatch_locked(q);
        pthread_mutex_unlock(&q->lock);
    } else {
        serial_wakeup(q);
    }
}

void
dk_queue_suspend(dk_queue_t *q)
{
    if (q->type == DK_Q_ROOT || q->type == DK_Q_MAIN) {
        return;
    }
    dk__atomic_add_acq_rel(&q->state, DK_QS_SUSPEND_ONE);
}

int
dk_queue_resume(dk_queue_t *q)
{
    if (q->type == DK_Q_ROOT || q->type == DK_Q_MAIN) {
        return 0;
    }
    uint64_t s = dk__atomic_load_relaxed(&q->state);
    do {
        if ((s >> DK_QS_SUSPEND_SHIFT) == 0) {
            return -EOVERFLOW;
        }
    } while (!dk__atomic_cas_acq_rel(&q->state, &s, s - DK_QS_SUSPEND_ONE));
    if (((s - DK_QS_SUSPEND_ONE) >> DK_QS_SUSPEND_SHIFT) == 0) {
        queue_kick(q);
    }
    return 0;
}

int
dk_queue_activate(dk_queue_t *q)
{
    if (q->type == DK_Q_ROOT || q->type == DK_Q_MAIN) {
        return -EALREADY;
    }
    uint64_t old = dk__atomic_and_acq_rel(&q->state, ~DK_QS_INACTIVE);
    if (!(old & DK_QS_INACTIVE)) {
        return -EALREADY;
    }
    queue_kick(q);
    return 0;
}

int
dk_queue_set_target(dk_queue_t *q, dk_queue_t *target)
{
    if (q->type == DK_Q_ROOT || q->type == DK_Q_MAIN) {
        return -EPERM;
    }
    if (target == NULL) {
        target = root_for_qos(q->qos);
    }
    for (dk_queue_t *x = target; x != NULL; x = x->target) {
        if (x == q) {
            return -ELOOP;
        }
    }
    pthread_mutex_lock(&q->lock);
    uint64_t s = dk__atomic_load_acquire(&q->state);
    int rc = 0;
    if (!(s & DK_QS_INACTIVE)) {
        if (s & DK_QS_WAS_INACTIVE) {
            rc = -EPERM;
        } else if ((s & DK_QS_SCHEDULED) || !queue_empty(q) ||
                   q->cq_head != NULL || q->cq_running > 0 ||
                   q->cq_barrier_running) {
            rc = -EBUSY;
        }
    }
    if (rc == 0) {
        dk_queue_t *old = q->target;
        if (target->type != DK_Q_ROOT) {
            dk_retain(target);
        }
        if (old->type != DK_Q_ROOT) {
            /* Another thread may still be reading the old target (a
             * concurrent sync check): keep it alive with q. */
            dk_queue_t **r =
                realloc(q->retired_targets, (q->nretired + 1) * sizeof *r);
            if (r == NULL) {
                if (target->type != DK_Q_ROOT) {
                    dk_release(target);
                }
                pthread_mutex_unlock(&q->lock);
                return -ENOMEM;
            }
            r[q->nretired++] = old;
            q->retired_targets = r;
        }
        dk__atomic_store_release(&q->target, target);
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

dk_queue_t *
dk_queue_target(const dk_queue_t *q)
{
    return q->type == DK_Q_ROOT ? NULL : dk__atomic_load_acquire(&q->target);
}

void
dk_queue_set_context(dk_queue_t *q, void *ctx)
{
    if (q->type == DK_Q_ROOT) {
        return;
    }
    dk__atomic_store_release(&q->obj.context, ctx);
}

void *
dk_queue_get_context(const dk_queue_t *q)
{
    return dk__atomic_load_acquire(&q->obj.context);
}

void
dk_queue_set_finalizer_f(dk_queue_t *q, dk_function_t fn)
{
    if (q->type == DK_Q_ROOT) {
        return;
    }
    dk__atomic_store_release(&q->obj.finalizer, fn);
}

int
dk_queue_set_specific(dk_queue_t *q, const void *key, void *value,
                      dk_function_t destructor)
{
    pthread_mutex_lock(&q->lock);
    struct dk__specific **pp = &q->specifics;
    while (*pp != NULL && (*pp)->key != key) {
        pp = &(*pp)->next;
    }
    struct dk__specific *sp = *pp;
    void *old_value = NULL;
    dk_function_t old_destructor = NULL;
    if (sp != NULL) {
        old_value = sp->value;
        old_destructor = sp->destructor;
        if (value == NULL) {
            *pp = sp->next;
            free(sp);
        } else {
            sp->value = value;
            sp->destructor = destructor;
        }
    } else if (value != NULL) {
        sp = malloc(sizeof *sp);
        if (sp == NULL) {
            pthread_mutex_unlock(&q->lock);
            return -ENOMEM;
        }
        sp->key = key;
        sp->value = value;
        sp->destructor = destructor;
        sp->next = q->specifics;
        q->specifics = sp;
    }
    pthread_mutex_unlock(&q->lock);
    dk__finalizer_run(dk__default_root(), old_value, old_destructor);
    return 0;
}

void *
dk_queue_get_specific(dk_queue_t *q, const void *key)
{
    void *v = NULL;
    pthread_mutex_lock(&q->lock);
    for (struct dk__specific *sp = q->specifics; sp != NULL; sp = sp->next) {
        if (sp->key == key) {
            v = sp->value;
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return v;
}

void *
dk_get_specific(const void *key)
{
    struct dk__frame *f = dk__current_frame;
    if (f == NULL) {
        return NULL;
    }
    for (dk_queue_t *x = f->queue; x != NULL && x->type != DK_Q_ROOT;
         x = x->target) {
        void *v = dk_queue_get_specific(x, key);
        if (v != NULL) {
            return v;
        }
    }
    return NULL;
}

dk_queue_t *
dk_queue_current(void)
{
    return dk__current_frame != NULL ? dk__current_frame->queue : NULL;
}

/* Does the frame stack from `top` (with the stacks of the threads its sync
 * items run for) run an item of q, or of a queue targeting q? */
static bool
frames_on(const struct dk__frame *top, const dk_queue_t *q, bool barrier)
{
    bool serial = q->type != DK_Q_CONCURRENT && q->type != DK_Q_ROOT;
    for (const struct dk__frame *f = top; f != NULL; f = f->prev) {
        for (const dk_queue_t *x = f->queue; x != NULL; x = x->target) {
            /* As a barrier: always on a serial queue; on a concurrent
             * one only in an item that runs alone on q itself. */
            if (x == q &&
                (!barrier || serial || (f->queue == q && f->barrier))) {
                return true;
            }
        }
        if (f->caller != NULL && frames_on(f->caller, q, barrier)) {
            return true;
        }
    }
    return false;
}

bool
dk_queue_is_current(const dk_queue_t *q, unsigned flags)
{
    bool barrier = sync_barrier(flags);
    if (q->type == DK_Q_MAIN && dk_is_main_thread()) {
        return true;
    }
    return frames_on(dk__current_frame, q, barrier);
}

int
dk_queue_qos(const dk_queue_t *q, int *relpri)
{
    if (relpri != NULL) {
        *relpri = q->relpri;
    }
    return q->qos;
}

int
dk_queue_after_f(dk_queue_t *q, dk_time_t when, void *ctx, dk_function_t fn)
{
    if (when == DK_TIME_FOREVER) {
        return 0;
    }
    uint64_t deadline = dk_time_deadline(when);
    if (deadline <= dk__os_monotonic_ns()) {
        return dk_queue_async_f(q, ctx, fn);
    }
    return dk__timer_after(q, deadline, ctx, fn);
}

/* ---- the main queue ------------------------------------------------- */

void
dk__main_queue_init(void)
{
    main_fd = dk__os_eventfd_create();
    if (main_fd < 0) {
        DK_INTERNAL_CRASH("cannot create the main queue's eventfd");
    }
    main_tid = dk__os_pid();
}

bool
dk_is_main_thread(void)
{
    dk__runtime_ensure();
    return dk__os_tid() == dk__atomic_load_relaxed(&main_tid);
}

int
dk_main_fd(void)
{
    dk__runtime_ensure();
    return main_fd;
}

long
dk_main_drain(uint64_t deadline)
{
    if (!dk_is_main_thread()) {
        return -EPERM;
    }
    if (dk_queue_sync_would_deadlock(&main_queue, 0)) {
        return -EDEADLK; /* called from a main-queue item */
    }
    for (;;) {
        uint64_t s = dk__atomic_load_acquire(&main_queue.state);
        if (s & DK_QS_SCHEDULED) {
            break;
        }
        if (deadline == 0) {
            return 0;
        }
        int rc = dk__os_poll_readable(main_fd, deadline);
        if (rc == -ETIMEDOUT || rc == -EINTR) {
            return rc;
        }
        if (rc == 0) {
            dk__os_eventfd_drain(main_fd);
        }
    }
    dk__os_eventfd_drain(main_fd);
    /* SCHEDULED is set and the eventfd consumed: this thread owns the main
     * queue until serial_drain_count releases it (which re-signals the fd
     * if more work arrived). */
    return serial_drain_count(&main_queue, DK_DRAIN_BUDGET);
}

/* ---- fork ----------------------------------------------------------- */

void
dk__queue_fork_child(void)
{
    /* Only this thread survives. Drop work queued in the parent; keep
     * suspension and activation state. */
    pthread_mutex_init(&registry_lock, NULL);
    pthread_mutex_init(&batch_lock, NULL);
    for (dk_queue_t *q = registry; q != NULL; q = q->reg_next) {
        pthread_mutex_init(&q->lock, NULL);
        dk__mpsc_init(&q->items);
        q->cq_head = q->cq_tail = NULL;
        for (int b = 0; b < DK_WL_BANDS; b++) {
            q->wl_head[b] = q->wl_tail[b] = NULL;
        }
        q->wl_count = 0;
        q->cq_running = 0;
        q->cq_barrier_running = false;
        q->state &= ~DK_QS_SCHEDULED;
    }
    dk__mpsc_init(&main_queue.items);
    main_queue.state = 0;
    pthread_mutex_init(&main_queue.lock, NULL);
    dk__os_close(main_fd);
    main_fd = dk__os_eventfd_create();
    main_tid = dk__os_pid();
    dk__current_frame = NULL;
}
