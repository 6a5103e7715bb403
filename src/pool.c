/*
 * The worker pool and the global (root) queues. Root queues are
 * concurrent queues with no barriers; one pool of threads serves all of
 * them, highest QoS first. The pool starts with one thread per CPU, grown
 * lazily, and grows beyond that when the timer thread sees work waiting
 * while every worker is busy and no item has started for a tick (workers
 * blocked in callbacks: the producer/consumer pattern). Threads above the
 * CPU count retire after a few idle seconds.
 *
 * Parking protocol. A producer must never leave an item behind while every
 * worker sleeps, and must not pay a syscall when nobody sleeps. Each idle
 * worker sleeps on its own futex word, listed on an idle stack; a waker
 * takes one worker off the stack and wakes exactly that one, so a burst of
 * pushes costs one wake-up per sleeping worker, never one per push:
 *
 *   worker (about to sleep)              producer
 *   word = 0; onto idle stack            push(item)             (P1)
 *   nidle += 1                  (W1)     if nidle > 0:          (P2)
 *   if !empty: off the stack, retry        pop a worker off the stack,
 *   while word == 0: futex_wait(word)      word = 1, wake it
 *
 * W1 and P1/P2 are sequentially consistent, so either the worker's
 * emptiness check sees the item or the producer sees nidle > 0. A worker
 * is taken off the stack by exactly one thread (itself or a waker), under
 * the idle lock, so nidle never drifts.
 *
 * Before parking, a worker that ran out of work spins for a short,
 * bounded time (DK_SPIN_NS), counted in nspinning, so a producer that
 * submits one item at a time (an event loop awaiting each) finds it awake
 * and pays no wake-up at all:
 *
 *   worker                               producer
 *   nspinning += 1               (S1)    push(item)             (P1)
 *   spin: if !empty, take it             if nspinning > 0: done (P2')
 *   nspinning -= 1               (S2)    else as (P2)
 *   then park as above (W1, recheck)
 *
 * S2, W1, P1 and P2' are sequentially consistent. A producer that saw
 * nspinning > 0 read it before S2, so its push comes before S2 and the
 * spinner's later emptiness check (after W1, in worker_park) sees the
 * item. An idle pool burns at most DK_SPIN_NS per worker, then sleeps.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>

#define DK_MAX_THREADS 255
#define DK_SPIN_ITERATIONS 400
/* The longest a worker out of work spins before parking. */
#define DK_SPIN_NS 50000ull
#define DK_EXTRA_IDLE_NS (5ull * DK_NSEC_PER_SEC)

#define DK_ROOT_INIT(idx, q, name)                                            \
    {                                                                         \
        .obj = {DK_REFCNT_IMMORTAL, DK_KIND_QUEUE}, .type = DK_Q_ROOT,        \
        .qos = (q), .label = (char *)(name), .root_index = (idx),             \
        .lock = PTHREAD_MUTEX_INITIALIZER,                                    \
        .items = {.head = &dk__roots[idx].items.stub,                         \
                  .tail = &dk__roots[idx].items.stub},                        \
    }

/* In priority order: workers scan from index 0. */
struct dk_queue_s dk__roots[DK_NUM_ROOTS] = {
    DK_ROOT_INIT(0, DK_QOS_USER_INTERACTIVE,
                 "com.apple.root.user-interactive-qos"),
    DK_ROOT_INIT(1, DK_QOS_USER_INITIATED,
                 "com.apple.root.user-initiated-qos"),
    DK_ROOT_INIT(2, DK_QOS_DEFAULT, "com.apple.root.default-qos"),
    DK_ROOT_INIT(3, DK_QOS_UTILITY, "com.apple.root.utility-qos"),
    DK_ROOT_INIT(4, DK_QOS_BACKGROUND, "com.apple.root.background-qos"),
};

struct worker_slot {
    uint64_t progress DK_CACHE_ALIGNED; /* items started, by this worker */
    uint32_t word;                      /* futex: 1 = woken */
    bool used;
    bool idle; /* on the idle stack (under idle_lock) */
};

static struct {
    uint32_t nthreads;
    uint32_t nidle;
    uint32_t nspinning; /* workers spinning before they park */
    uint32_t nlockwait; /* workers waiting for a language lock */
    uint32_t watching;
    pthread_mutex_t idle_lock;
    struct worker_slot *idle_stack[DK_MAX_THREADS];
    uint32_t nstack;
    uint32_t ncpu;
    uint64_t last_progress;
    uint32_t stalled_ticks;
    pthread_mutex_t slots_lock;
    struct worker_slot slots[DK_MAX_THREADS];
} pool = {
    .slots_lock = PTHREAD_MUTEX_INITIALIZER,
    .idle_lock = PTHREAD_MUTEX_INITIALIZER,
};

static __thread struct worker_slot *my_slot;
const struct dk_thread_hooks *dk__hooks;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

dk_queue_t *
dk__default_root(void)
{
    return &dk__roots[2];
}

void
dk_set_thread_hooks(const struct dk_thread_hooks *hooks)
{
    dk__atomic_store_release(&dk__hooks, hooks);
}

void
dk_worker_lock_wait_begin(void)
{
    if (my_slot != NULL) {
        dk__atomic_add_seq_cst(&pool.nlockwait, 1);
    }
}

void
dk_worker_lock_wait_end(void)
{
    if (my_slot != NULL) {
        dk__atomic_sub_acq_rel(&pool.nlockwait, 1);
    }
}

unsigned
dk_worker_lock_waiters(void)
{
    return dk__atomic_load_seq_cst(&pool.nlockwait);
}

bool
dk_is_worker_thread(void)
{
    return my_slot != NULL;
}

void
dk__pool_thread_idle(void)
{
    const struct dk_thread_hooks *h = dk__atomic_load_acquire(&dk__hooks);
    if (my_slot != NULL && h != NULL && h->idle != NULL) {
        h->idle();
    }
}

static bool
pool_empty(void)
{
    for (int i = 0; i < DK_NUM_ROOTS; i++) {
        if (!dk__mpsc_empty(&dk__roots[i].items)) {
            return false;
        }
    }
    return true;
}

static struct dk__item *
pool_pop(dk_queue_t **from)
{
    for (int i = 0; i < DK_NUM_ROOTS; i++) {
        dk_queue_t *r = &dk__roots[i];
        if (dk__mpsc_empty(&r->items)) {
            continue;
        }
        pthread_mutex_lock(&r->lock);
        struct dk__item *it = dk__mpsc_pop(&r->items);
        pthread_mutex_unlock(&r->lock);
        if (it != NULL) {
            *from = r;
            return it;
        }
    }
    return NULL;
}

static void *worker_main(void *arg);

static bool
pool_spawn(bool extra)
{
    uint32_t n = dk__atomic_load_relaxed(&pool.nthreads);
    uint32_t limit = extra ? DK_MAX_THREADS : pool.ncpu;
    do {
        if (n >= limit) {
            return false;
        }
    } while (!dk__atomic_cas_acq_rel(&pool.nthreads, &n, n + 1));

    pthread_mutex_lock(&pool.slots_lock);
    struct worker_slot *slot = NULL;
    for (int i = 0; i < DK_MAX_THREADS; i++) {
        if (!pool.slots[i].used) {
            slot = &pool.slots[i];
            slot->used = true;
            break;
        }
    }
    pthread_mutex_unlock(&pool.slots_lock);
    if (slot == NULL ||
        dk__os_thread_start(worker_main, slot, "dk-worker") < 0) {
        if (slot != NULL) {
            pthread_mutex_lock(&pool.slots_lock);
            slot->used = false;
            pthread_mutex_unlock(&pool.slots_lock);
        }
        dk__atomic_sub_acq_rel(&pool.nthreads, 1);
        return false;
    }
    return true;
}

/* Take `w` off the idle stack if it is still there (under idle_lock). */
static bool
idle_remove_locked(struct worker_slot *w)
{
    if (!w->idle) {
        return false;
    }
    for (uint32_t i = 0; i < pool.nstack; i++) {
        if (pool.idle_stack[i] == w) {
            pool.idle_stack[i] = pool.idle_stack[--pool.nstack];
            break;
        }
    }
    w->idle = false;
    dk__atomic_sub_acq_rel(&pool.nidle, 1);
    return true;
}

static void
pool_wake_one(void)
{
    pthread_mutex_lock(&pool.idle_lock);
    struct worker_slot *w = NULL;
    if (pool.nstack > 0) {
        w = pool.idle_stack[pool.nstack - 1];
        idle_remove_locked(w);
    }
    pthread_mutex_unlock(&pool.idle_lock);
    if (w != NULL) {
        dk__atomic_store_release(&w->word, 1); /* pairs with worker_park */
        dk__os_futex_wake(&w->word, 1, false);
    }
}

static void
pool_signal(void)
{
    if (dk__atomic_load_seq_cst(&pool.nspinning) > 0) { /* (P2') */
        return; /* a spinning worker takes it (pairs with S2) */
    }
    if (dk__atomic_load_seq_cst(&pool.nidle) > 0) { /* (P2) */
        pool_wake_one();
        return;
    }
    if (dk__atomic_load_relaxed(&pool.nthreads) < pool.ncpu &&
        pool_spawn(false)) {
        return;
    }
    dk__timer_watch_pool();
}

void
dk__pool_push(dk_queue_t *root, struct dk__item *it)
{
    pthread_once(&init_once, dk__runtime_init);
    dk__mpsc_push(&root->items, it); /* (P1) */
    pool_signal();
}

/* Called by the timer thread every tick while watching. Returns false
 * when the pool no longer needs watching. */
bool
dk__pool_tick(void)
{
    bool busy = !pool_empty() && dk__atomic_load_seq_cst(&pool.nidle) == 0;
    if (!busy) {
        dk__atomic_store_seq_cst(&pool.watching, 0);
        /* Re-check after clearing: a producer that saw watching == 1 did
         * not ask again. */
        busy = !pool_empty() && dk__atomic_load_seq_cst(&pool.nidle) == 0;
        if (!busy) {
            pool.stalled_ticks = 0;
            return false;
        }
        dk__atomic_store_seq_cst(&pool.watching, 1);
    }
    uint64_t progress = 0;
    for (int i = 0; i < DK_MAX_THREADS; i++) {
        progress += dk__atomic_load_relaxed(&pool.slots[i].progress);
    }
    if (progress == pool.last_progress &&
        dk__atomic_load_acquire(&pool.nlockwait) == 0) {
        /* Work is waiting, every worker is busy, none has started an item
         * since the last tick, and none is merely queued for a language
         * lock: they are blocked. Add a thread. */
        pool_spawn(true);
    }
    pool.last_progress = progress;
    return true;
}

bool
dk__pool_watching(void)
{
    return dk__atomic_load_acquire(&pool.watching) != 0;
}

/* Returns true if the caller should start watching (it just set the
 * flag). */
bool
dk__pool_start_watch(void)
{
    if (dk__atomic_load_seq_cst(&pool.watching) != 0) {
        return false;
    }
    uint32_t zero = 0;
    return dk__atomic_cas_seq_cst(&pool.watching, &zero, 1);
}

static void
worker_exit(struct worker_slot *slot)
{
    const struct dk_thread_hooks *h = dk__atomic_load_acquire(&dk__hooks);
    if (h != NULL && h->exit != NULL) {
        h->exit();
    }
    pthread_mutex_lock(&pool.slots_lock);
    slot->used = false;
    pthread_mutex_unlock(&pool.slots_lock);
    my_slot = NULL;
}

/* Sleep until woken for work. Returns false if this (extra) thread
 * should retire instead. */
static bool
worker_park(struct worker_slot *w)
{
    dk__atomic_store_relaxed(&w->word, 0);
    pthread_mutex_lock(&pool.idle_lock);
    w->idle = true;
    pool.idle_stack[pool.nstack++] = w;
    dk__atomic_add_seq_cst(&pool.nidle, 1); /* (W1) */
    pthread_mutex_unlock(&pool.idle_lock);
    if (!pool_empty()) {
        pthread_mutex_lock(&pool.idle_lock);
        idle_remove_locked(w); /* or a waker already did */
        pthread_mutex_unlock(&pool.idle_lock);
        return true;
    }
    bool extra = dk__atomic_load_relaxed(&pool.nthreads) > pool.ncpu;
    uint64_t deadline =
        extra ? dk__os_monotonic_ns() + DK_EXTRA_IDLE_NS : DK_TIME_FOREVER;
    while (dk__atomic_load_acquire(&w->word) == 0) {
        int rc = dk__os_futex_wait(&w->word, 0, deadline, false);
        if (rc != -ETIMEDOUT) {
            continue;
        }
        pthread_mutex_lock(&pool.idle_lock);
        bool removed = idle_remove_locked(w);
        bool retire = false;
        if (removed && pool_empty()) {
            uint32_t n = dk__atomic_load_relaxed(&pool.nthreads);
            retire = n > pool.ncpu &&
                     dk__atomic_cas_acq_rel(&pool.nthreads, &n, n - 1);
        }
        pthread_mutex_unlock(&pool.idle_lock);
        return !retire;
    }
    return true;
}

static void *
worker_main(void *arg)
{
    struct worker_slot *slot = arg;
    my_slot = slot;
    for (;;) {
        dk_queue_t *root;
        struct dk__item *it = pool_pop(&root);
        if (it != NULL) {
            dk__atomic_store_relaxed(&slot->progress, slot->progress + 1);
            if (dk__atomic_load_relaxed(&pool.nidle) > 0 && !pool_empty()) {
                pool_wake_one(); /* more work: ramp up another worker */
            }
            dk__item_run(it, root);
            continue;
        }
        /* Out of work: first let go of any language lock we hold, so a
         * producer that needs it can run while we spin. */
        dk__pool_thread_idle();
        bool found = false;
        dk__atomic_add_seq_cst(&pool.nspinning, 1); /* (S1) */
        uint64_t spin_end = dk__os_monotonic_ns() + DK_SPIN_NS;
        for (int i = 1;; i++) {
            dk_cpu_relax();
            if ((i & 15) != 0) {
                continue;
            }
            if (!pool_empty()) {
                found = true;
                break;
            }
            if (i < DK_SPIN_ITERATIONS) {
                continue;
            }
            if (dk__os_monotonic_ns() > spin_end) {
                break;
            }
            if ((i & 255) == 0) {
                dk__os_yield(); /* oversubscribed: let the producer run */
            }
        }
        dk__atomic_sub_seq_cst(&pool.nspinning, 1); /* (S2) */
        if (found) {
            continue;
        }
        if (!worker_park(slot)) {
            worker_exit(slot);
            return NULL;
        }
    }
}

static void
atfork_child(void)
{
    /* The child has only the forking thread. Start from an empty pool;
     * work queued before the fork belongs to the parent and is dropped
     * here (it runs in the parent). */
    pool.nthreads = 0;
    pool.nidle = 0;
    pool.nspinning = 0;
    pool.nlockwait = 0;
    pool.nstack = 0;
    pool.watching = 0;
    pthread_mutex_init(&pool.idle_lock, NULL);
    pool.stalled_ticks = 0;
    pthread_mutex_init(&pool.slots_lock, NULL);
    for (int i = 0; i < DK_MAX_THREADS; i++) {
        pool.slots[i].used = false;
        pool.slots[i].idle = false;
        pool.slots[i].progress = 0;
    }
    pool.last_progress = 0;
    for (int i = 0; i < DK_NUM_ROOTS; i++) {
        dk__mpsc_init(&dk__roots[i].items);
        pthread_mutex_init(&dk__roots[i].lock, NULL);
    }
    if (my_slot != NULL) {
        /* Forked from a worker: this thread is not a pool worker in the
         * child. */
        my_slot = NULL;
    }
    dk__os_fork_child();
    dk__queue_fork_child();
    dk__timer_fork_child();
    dk__source_fork_child();
    dk__group_fork_child();
}

void
dk__runtime_init(void)
{
    pool.ncpu = (uint32_t)dk__os_ncpu();
    for (int i = 0; i < DK_NUM_ROOTS; i++) {
        dk__mpsc_init(&dk__roots[i].items);
    }
    dk__main_queue_init();
    pthread_atfork(dk__group_fork_prepare, dk__group_fork_parent,
                   atfork_child);
}

void
dk__runtime_ensure(void)
{
    pthread_once(&init_once, dk__runtime_init);
}

bool
dk_pool_quiescent(void)
{
    return dk__atomic_load_acquire(&pool.nidle) ==
           dk__atomic_load_acquire(&pool.nthreads);
}

unsigned
dk__pool_ncpu(void)
{
    dk__runtime_ensure();
    return pool.ncpu;
}
