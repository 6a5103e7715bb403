/*
 * The event thread: one thread, started on first use, waiting in
 * epoll_wait for everything the runtime watches: a timerfd armed for the
 * next timer, an eventfd for requests, an eventfd written by signal
 * handlers, and the fds and pidfds of sources. It runs with 1 ns timer
 * slack so short timers are not rounded up by the default 50 us. While the
 * pool is watched for starvation it also ticks every DK_WATCH_TICK_MS.
 *
 * Timers live in a binary heap ordered by deadline. A timer may fire up to
 * its leeway late; the timerfd is armed for the earliest deadline+leeway,
 * and every timer whose deadline has passed fires on that wake-up, so
 * nearby timers with leeway coalesce into one wake-up.
 *
 * A timer in the heap holds a reference to its owner object; the event
 * thread takes another around the fire callback, which runs without the
 * heap lock, so a concurrent cancel can never free the owner under it.
 * Repeating timers are re-inserted under the lock before their callback
 * runs, so a concurrent dk__timer_set always wins.
 */
#include "internal.h"

#include <errno.h>
#include <sys/epoll.h>

#define DK_WATCH_TICK_MS 20
#define NOT_IN_HEAP SIZE_MAX

static struct {
    pthread_mutex_t lock;
    pthread_once_t once;
    struct dk__timer **heap;
    size_t len, cap;
    uint64_t seq;
    uint64_t armed; /* wake time the timerfd is armed for */
    int epfd, tfd, efd, sfd;
    bool started;
    int start_error;
} ev = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .once = PTHREAD_ONCE_INIT,
    .armed = UINT64_MAX,
    .epfd = -1,
    .tfd = -1,
    .efd = -1,
    .sfd = -1,
};

/* Work deferred to the end of the event thread's current batch: freeing
 * what an fd registration points at, since the batch may still hold an
 * event for it. */
struct deferred {
    struct deferred *next;
    void (*fn)(void *);
    void *arg;
};
static struct deferred *deferred_head;

/* Tags for the thread's own descriptors. */
static struct dk__event_handler tag_timer, tag_wake, tag_signal;

/* ---- the heap ------------------------------------------------------- */

static bool
before(const struct dk__timer *a, const struct dk__timer *b)
{
    return a->deadline < b->deadline ||
           (a->deadline == b->deadline && a->seq < b->seq);
}

static void
heap_swap(size_t i, size_t j)
{
    struct dk__timer *t = ev.heap[i];
    ev.heap[i] = ev.heap[j];
    ev.heap[j] = t;
    ev.heap[i]->heap_index = i;
    ev.heap[j]->heap_index = j;
}

static void
heap_up(size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(ev.heap[i], ev.heap[p])) {
            break;
        }
        heap_swap(i, p);
        i = p;
    }
}

static void
heap_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < ev.len && before(ev.heap[l], ev.heap[m])) {
            m = l;
        }
        if (r < ev.len && before(ev.heap[r], ev.heap[m])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        heap_swap(i, m);
        i = m;
    }
}

static int
heap_insert(struct dk__timer *t)
{
    if (ev.len == ev.cap) {
        size_t cap = ev.cap ? ev.cap * 2 : 64;
        struct dk__timer **h = realloc(ev.heap, cap * sizeof *h);
        if (h == NULL) {
            return -ENOMEM;
        }
        ev.heap = h;
        ev.cap = cap;
    }
    t->seq = ev.seq++;
    t->heap_index = ev.len;
    ev.heap[ev.len++] = t;
    heap_up(t->heap_index);
    return 0;
}

static void
heap_remove(struct dk__timer *t)
{
    size_t i = t->heap_index;
    t->heap_index = NOT_IN_HEAP;
    ev.len--;
    if (i == ev.len) {
        return;
    }
    ev.heap[i] = ev.heap[ev.len];
    ev.heap[i]->heap_index = i;
    heap_down(i);
    heap_up(i);
}

/* The earliest deadline+leeway, visiting only subtrees whose deadline is
 * below the best so far (a child's deadline is never below its parent's). */
static uint64_t
wake_time(size_t i, uint64_t best)
{
    if (i >= ev.len || ev.heap[i]->deadline >= best) {
        return best;
    }
    const struct dk__timer *t = ev.heap[i];
    uint64_t latest = t->deadline + t->leeway;
    if (latest < t->deadline) {
        latest = UINT64_MAX;
    }
    if (latest < best) {
        best = latest;
    }
    best = wake_time(2 * i + 1, best);
    return wake_time(2 * i + 2, best);
}

static void
rearm_locked(void)
{
    uint64_t want = wake_time(0, UINT64_MAX);
    if (want != ev.armed) {
        ev.armed = want;
        dk__os_timerfd_arm(ev.tfd, want);
    }
}

void
dk__timer_init(struct dk__timer *t, struct dk__object *owner,
               void (*fire)(struct dk__timer *t, uint64_t fires))
{
    t->heap_index = NOT_IN_HEAP;
    t->owner = owner;
    t->fire = fire;
    t->dead = false;
    t->deadline = 0;
    t->leeway = 0;
    t->interval = 0;
}

int
dk__timer_set(struct dk__timer *t, uint64_t deadline, uint64_t interval,
              uint64_t leeway)
{
    int rc = dk__event_ensure();
    if (rc < 0) {
        return rc;
    }
    pthread_mutex_lock(&ev.lock);
    if (t->dead) {
        pthread_mutex_unlock(&ev.lock);
        return 0;
    }
    bool was_in = t->heap_index != NOT_IN_HEAP;
    if (was_in) {
        heap_remove(t);
    }
    t->deadline = deadline;
    t->interval = interval;
    t->leeway = leeway;
    rc = heap_insert(t);
    if (rc == 0 && !was_in && t->owner != NULL) {
        dk_retain(t->owner); /* the heap's reference */
    }
    if (rc < 0 && was_in && t->owner != NULL) {
        pthread_mutex_unlock(&ev.lock);
        dk_release(t->owner);
        return rc;
    }
    rearm_locked();
    pthread_mutex_unlock(&ev.lock);
    return rc;
}

void
dk__timer_kill(struct dk__timer *t)
{
    pthread_mutex_lock(&ev.lock);
    t->dead = true;
    bool was_in = t->heap_index != NOT_IN_HEAP;
    if (was_in) {
        heap_remove(t);
        rearm_locked();
    }
    pthread_mutex_unlock(&ev.lock);
    if (was_in && t->owner != NULL) {
        dk_release(t->owner);
    }
}

void
dk__timer_disarm(struct dk__timer *t)
{
    pthread_mutex_lock(&ev.lock);
    bool was_in = t->heap_index != NOT_IN_HEAP;
    if (was_in) {
        heap_remove(t);
        rearm_locked();
    }
    pthread_mutex_unlock(&ev.lock);
    if (was_in && t->owner != NULL) {
        dk_release(t->owner);
    }
}

/* Pop every due timer; repeating ones go back into the heap at their next
 * deadline (skipping missed intervals, which become extra fires). */
static void
fire_due(void)
{
    struct due {
        struct dk__timer *t;
        uint64_t fires;
    };
    struct due local[64];
    size_t n = 0;
    uint64_t now = dk__os_monotonic_ns();
    pthread_mutex_lock(&ev.lock);
    while (ev.len > 0 && ev.heap[0]->deadline <= now && n < 64) {
        struct dk__timer *t = ev.heap[0];
        uint64_t fires = 1;
        heap_remove(t);
        if (t->interval != 0 && t->interval != DK_TIME_FOREVER) {
            uint64_t late = now - t->deadline;
            fires += late / t->interval;
            t->deadline += fires * t->interval;
            heap_insert(t); /* keeps the heap's reference */
            if (t->owner != NULL) {
                dk_retain(t->owner); /* ours, for the callback */
            }
        }
        /* One-shot: the heap's reference passes to the callback. */
        local[n].t = t;
        local[n].fires = fires;
        n++;
    }
    ev.armed = UINT64_MAX; /* the timerfd fired or may have */
    rearm_locked();
    pthread_mutex_unlock(&ev.lock);
    for (size_t i = 0; i < n; i++) {
        struct dk__object *owner = local[i].t->owner;
        local[i].t->fire(local[i].t, local[i].fires);
        if (owner != NULL) {
            dk_release(owner);
        }
    }
    if (n == 64) {
        dk__os_eventfd_signal(ev.efd); /* more are due: come back at once */
    }
}

/* ---- dispatch_after ------------------------------------------------- */

struct after_entry {
    struct dk__item item; /* first: freed as an item once run */
    struct dk__timer timer;
    dk_queue_t *queue;
};

static void
after_fire(struct dk__timer *t, uint64_t fires)
{
    (void)fires;
    struct after_entry *e =
        (struct after_entry *)((char *)t -
                               offsetof(struct after_entry, timer));
    dk_queue_t *q = e->queue;
    dk__queue_push(q, &e->item);
    dk_release(q);
}

int
dk__timer_after(dk_queue_t *q, uint64_t deadline, void *ctx, dk_function_t fn)
{
    struct after_entry *e = malloc(sizeof *e);
    if (e == NULL) {
        return -ENOMEM;
    }
    e->item.fn = fn;
    e->item.ctx = ctx;
    e->item.flags = 0;
    e->item.group = NULL;
    e->queue = q;
    dk__timer_init(&e->timer, NULL, after_fire);
    dk_retain(q);
    int rc = dk__timer_set(&e->timer, deadline, 0, 0);
    if (rc < 0) {
        dk_release(q);
        free(e);
    }
    return rc;
}

/* ---- the thread ----------------------------------------------------- */

static void *
event_main(void *arg)
{
    (void)arg;
    dk__os_thread_precise_timers();
    struct epoll_event evs[32];
    for (;;) {
        int timeout = dk__pool_watching() ? DK_WATCH_TICK_MS : -1;
        int n = dk__os_epoll_wait(ev.epfd, evs, 32, timeout);
        bool timers = false;
        for (int i = 0; i < n; i++) {
            struct dk__event_handler *h = evs[i].data.ptr;
            if (h == &tag_timer) {
                dk__os_eventfd_drain(ev.tfd);
                timers = true;
            } else if (h == &tag_wake) {
                dk__os_eventfd_drain(ev.efd);
                timers = true;
            } else if (h == &tag_signal) {
                dk__os_eventfd_drain(ev.sfd);
                dk__source_signals_pending();
            } else {
                h->on_event(h, evs[i].events);
            }
        }
        if (timers || n == 0) {
            fire_due();
        }
        pthread_mutex_lock(&ev.lock);
        struct deferred *d = deferred_head;
        deferred_head = NULL;
        pthread_mutex_unlock(&ev.lock);
        while (d != NULL) {
            struct deferred *next = d->next;
            d->fn(d->arg);
            free(d);
            d = next;
        }
        if (dk__pool_watching()) {
            dk__pool_tick();
        }
    }
    return NULL;
}

static void
event_start(void)
{
    ev.epfd = dk__os_epoll_create();
    ev.tfd = dk__os_timerfd_create();
    ev.efd = dk__os_eventfd_create();
    ev.sfd = dk__os_eventfd_create();
    if (ev.epfd < 0 || ev.tfd < 0 || ev.efd < 0 || ev.sfd < 0 ||
        dk__os_epoll_add(ev.epfd, ev.tfd, EPOLLIN,
                         (uint64_t)(uintptr_t)&tag_timer) < 0 ||
        dk__os_epoll_add(ev.epfd, ev.efd, EPOLLIN,
                         (uint64_t)(uintptr_t)&tag_wake) < 0 ||
        dk__os_epoll_add(ev.epfd, ev.sfd, EPOLLIN,
                         (uint64_t)(uintptr_t)&tag_signal) < 0) {
        ev.start_error = -EMFILE;
        return;
    }
    int rc = dk__os_thread_start(event_main, NULL, "dk-event");
    if (rc < 0) {
        ev.start_error = rc;
        return;
    }
    dk__atomic_store_release(&ev.started, true);
}

int
dk__event_ensure(void)
{
    pthread_once(&ev.once, event_start);
    return dk__atomic_load_acquire(&ev.started) ? 0 : ev.start_error;
}

int
dk__event_add(int fd, uint32_t events, struct dk__event_handler *h)
{
    int rc = dk__event_ensure();
    return rc < 0
               ? rc
               : dk__os_epoll_add(ev.epfd, fd, events, (uint64_t)(uintptr_t)h);
}

int
dk__event_mod(int fd, uint32_t events, struct dk__event_handler *h)
{
    return dk__os_epoll_mod(ev.epfd, fd, events, (uint64_t)(uintptr_t)h);
}

void
dk__event_del(int fd)
{
    (void)dk__os_epoll_del(ev.epfd, fd);
}

void
dk__event_defer(void (*fn)(void *), void *arg)
{
    struct deferred *d = malloc(sizeof *d);
    if (d == NULL || dk__event_ensure() < 0) {
        /* Cannot defer: leaking is safer than freeing under the thread. */
        free(d);
        return;
    }
    d->fn = fn;
    d->arg = arg;
    pthread_mutex_lock(&ev.lock);
    d->next = deferred_head;
    deferred_head = d;
    pthread_mutex_unlock(&ev.lock);
    dk__os_eventfd_signal(ev.efd);
}

int
dk__event_signal_fd(void)
{
    return ev.sfd;
}

void
dk__timer_watch_pool(void)
{
    if (dk__pool_start_watch() && dk__event_ensure() == 0) {
        dk__os_eventfd_signal(ev.efd);
    }
}

void
dk__timer_fork_child(void)
{
    /* The event thread is gone; timers and registrations belong to the
     * parent. Start afresh on next use. */
    pthread_mutex_init(&ev.lock, NULL);
    for (size_t i = 0; i < ev.len; i++) {
        ev.heap[i]->heap_index = NOT_IN_HEAP;
    }
    ev.len = 0;
    ev.armed = UINT64_MAX;
    deferred_head = NULL;
    dk__os_close(ev.epfd);
    dk__os_close(ev.tfd);
    dk__os_close(ev.efd);
    dk__os_close(ev.sfd);
    ev.epfd = ev.tfd = ev.efd = ev.sfd = -1;
    ev.started = false;
    ev.start_error = 0;
    ev.once = (pthread_once_t)PTHREAD_ONCE_INIT;
}
