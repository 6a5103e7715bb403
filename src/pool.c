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
 * worker sleeps, and must not pay a syscall when nobody sleeps:
 *
 *   worker (about to sleep)              producer
 *   e = epoch                             push(item)            (P1)
 *   nidle += 1                  (W1)      if nidle > 0:         (P2)
 *   if !empty: nidle -= 1, retry              epoch += 1, wake
 *   futex_wait(&epoch, e)
 *
 * W1 and P1/P2 are sequentially consistent, so either the worker's
 * emptiness check sees the item or the producer sees nidle > 0; in the
 * second case the epoch changes before the wake, so a worker that has not
 * yet slept returns from futex_wait at once. `wake_pending` keeps a burst
 * of pushes to one wake-up syscall until the woken worker runs.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>

#define DK_MAX_THREADS 255
#define DK_SPIN_ITERATIONS 400
#define DK_EXTRA_IDLE_NS (5ull * DK_NSEC_PER_SEC)

#define DK_ROOT_INIT(idx, q, name)                                          \
    {                                                                      \
        .obj = {DK_REFCNT_IMMORTAL, DK_KIND_QUEUE}, .type = DK_Q_ROOT,     \
        .qos = (q), .label = (char *)(name), .root_index = (idx),          \
        .lock = PTHREAD_MUTEX_INITIALIZER,                                 \
        .items = {.head = &dk__roots[idx].items.stub,                      \
                  .tail = &dk__roots[idx].items.stub},                     \
    }

/* In priority order: workers scan from index 0. */
struct dk_queue_s dk__roots[DK_NUM_ROOTS] = {
    DK_ROOT_INIT(0, DK_QOS_USER_INTERACTIVE,
                 "com.apple.root.user-interactive-qos"),
    DK_ROOT_INIT(1, DK_QOS_USER_INITIATED, "com.apple.root.user-initiated-qos"),
    DK_ROOT_INIT(2, DK_QOS_DEFAULT, "com.apple.root.default-qos"),
    DK_ROOT_INIT(3, DK_QOS_UTILITY, "com.apple.root.utility-qos"),
    DK_ROOT_INIT(4, DK_QOS_BACKGROUND, "com.apple.root.background-qos"),
};

struct worker_slot {
    uint64_t progress DK_CACHE_ALIGNED; /* items started, by this worker */
    bool used;
};

static struct {
    uint32_t nthreads;
    uint32_t nidle;
    uint32_t epoch;
    uint32_t wake_pending;
    uint32_t watching;
    uint32_t ncpu;
    uint64_t last_progress;
    uint32_t stalled_ticks;
    pthread_mutex_t slots_lock;
    struct worker_slot slots[DK_MAX_THREADS];
} pool = {.slots_lock = PTHREAD_MUTEX_INITIALIZER};

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
    dk_atomic_store_release(&dk__hooks, hooks);
}

bool
dk_is_worker_thread(void)
{
    return my_slot != NULL;
}

void
dk__pool_thread_idle(void)
{
    const struct dk_thread_hooks *h = dk_atomic_load_acquire(&dk__hooks);
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
    uint32_t n = dk_atomic_load_relaxed(&pool.nthreads);
    uint32_t limit = extra ? DK_MAX_THREADS : pool.ncpu;
    do {
        if (n >= limit) {
            return false;
        }
    } while (!dk_atomic_cas_acq_rel(&pool.nthreads, &n, n + 1));

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
        dk_atomic_sub_acq_rel(&pool.nthreads, 1);
        return false;
    }
    return true;
}

static void
pool_wake_one(void)
{
    if (dk_atomic_xchg_acq_rel(&pool.wake_pending, 1) == 0) {
        dk_atomic_add_release(&pool.epoch, 1);
        dk__os_futex_wake(&pool.epoch, 1, false);
    }
}

static void
pool_signal(void)
{
    if (dk_atomic_load_seq_cst(&pool.nidle) > 0) { /* (P2) */
        pool_wake_one();
        return;
    }
    if (dk_atomic_load_relaxed(&pool.nthreads) < pool.ncpu &&
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
    bool busy = !pool_empty() && dk_atomic_load_seq_cst(&pool.nidle) == 0;
    if (!busy) {
        dk_atomic_store_seq_cst(&pool.watching, 0);
        /* Re-check after clearing: a producer that saw watching == 1 did
         * not ask again. */
        busy = !pool_empty() && dk_atomic_load_seq_cst(&pool.nidle) == 0;
        if (!busy) {
            pool.stalled_ticks = 0;
            return false;
        }
        dk_atomic_store_seq_cst(&pool.watching, 1);
    }
    uint64_t progress = 0;
    for (int i = 0; i < DK_MAX_THREADS; i++) {
        progress += dk_atomic_load_relaxed(&pool.slots[i].progress);
    }
    if (progress == pool.last_progress) {
        /* Work is waiting, every worker is busy, and none has started an
         * item since the last tick: they are blocked. Add a thread. */
        pool_spawn(true);
    }
    pool.last_progress = progress;
    return true;
}

bool
dk__pool_watching(void)
{
    return dk_atomic_load_acquire(&pool.watching) != 0;
}

/* Returns true if the caller should start watching (it just set the
 * flag). */
bool
dk__pool_start_watch(void)
{
    if (dk_atomic_load_seq_cst(&pool.watching) != 0) {
        return false;
    }
    uint32_t zero = 0;
    return dk_atomic_cas_seq_cst(&pool.watching, &zero, 1);
}

static void
worker_exit(struct worker_slot *slot)
{
    const struct dk_thread_hooks *h = dk_atomic_load_acquire(&dk__hooks);
    if (h != NULL && h->exit != NULL) {
        h->exit();
    }
    pthread_mutex_lock(&pool.slots_lock);
    slot->used = false;
    pthread_mutex_unlock(&pool.slots_lock);
    my_slot = NULL;
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
            dk_atomic_store_relaxed(&slot->progress, slot->progress + 1);
            if (dk_atomic_load_relaxed(&pool.nidle) > 0 && !pool_empty()) {
                pool_wake_one(); /* more work: ramp up another worker */
            }
            dk__item_run(it, root);
            continue;
        }
        /* Out of work: first let go of any language lock we hold, so a
         * producer that needs it can run while we spin. */
        dk__pool_thread_idle();
        bool found = false;
        for (int i = 0; i < DK_SPIN_ITERATIONS; i++) {
            dk_cpu_relax();
            if ((i & 15) == 15 && !pool_empty()) {
                found = true;
                break;
            }
        }
        if (found) {
            continue;
        }
        uint32_t e = dk_atomic_load_acquire(&pool.epoch);
        dk_atomic_add_seq_cst(&pool.nidle, 1); /* (W1) */
        if (!pool_empty()) {
            dk_atomic_sub_acq_rel(&pool.nidle, 1);
            continue;
        }
        bool extra =
            dk_atomic_load_relaxed(&pool.nthreads) > pool.ncpu;
        uint64_t deadline = extra ? dk__os_monotonic_ns() + DK_EXTRA_IDLE_NS
                                  : DK_OS_FOREVER;
        int rc = dk__os_futex_wait(&pool.epoch, e, deadline, false);
        dk_atomic_sub_acq_rel(&pool.nidle, 1);
        dk_atomic_store_release(&pool.wake_pending, 0);
        if (rc == -ETIMEDOUT && extra && pool_empty()) {
            uint32_t n = dk_atomic_load_relaxed(&pool.nthreads);
            if (n > pool.ncpu &&
                dk_atomic_cas_acq_rel(&pool.nthreads, &n, n - 1)) {
                worker_exit(slot);
                return NULL;
            }
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
    pool.wake_pending = 0;
    pool.watching = 0;
    pool.stalled_ticks = 0;
    pthread_mutex_init(&pool.slots_lock, NULL);
    for (int i = 0; i < DK_MAX_THREADS; i++) {
        pool.slots[i].used = false;
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
}

void
dk__runtime_init(void)
{
    pool.ncpu = (uint32_t)dk__os_ncpu();
    for (int i = 0; i < DK_NUM_ROOTS; i++) {
        dk__mpsc_init(&dk__roots[i].items);
    }
    dk__main_queue_init();
    pthread_atfork(NULL, NULL, atfork_child);
}

void
dk__runtime_ensure(void)
{
    pthread_once(&init_once, dk__runtime_init);
}

unsigned
dk__pool_ncpu(void)
{
    dk__runtime_ensure();
    return pool.ncpu;
}
