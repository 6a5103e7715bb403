/*
 * The timer thread: one thread, started on first use, sleeping in
 * epoll_wait on a timerfd armed for the earliest deadline of a binary heap
 * and an eventfd for requests. Due entries are pushed to their queues. It
 * runs with 1 ns timer slack so short timers are not rounded up by 50 us.
 * While the pool is being watched for starvation it also ticks every
 * DK_WATCH_TICK_MS (see pool.c).
 *
 * Arming happens under the heap lock by whichever thread inserts a new
 * earliest entry, so the timer thread needs no wake-up for it.
 */
#include "internal.h"

#include <errno.h>
#include <sys/epoll.h>

#define DK_WATCH_TICK_MS 20

struct timer_entry {
    struct dk__item item; /* first: freed as an item once pushed */
    uint64_t deadline;
    uint64_t seq; /* FIFO among equal deadlines */
    dk_queue_t *queue;
};

static struct {
    pthread_mutex_t lock;
    pthread_once_t once;
    struct timer_entry **heap;
    size_t len, cap;
    uint64_t seq;
    uint64_t armed; /* deadline the timerfd is armed for */
    int epfd, tfd, efd;
    bool started;
} tm = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .once = PTHREAD_ONCE_INIT,
    .armed = UINT64_MAX,
    .epfd = -1,
    .tfd = -1,
    .efd = -1,
};

static bool
entry_before(const struct timer_entry *a, const struct timer_entry *b)
{
    return a->deadline < b->deadline ||
           (a->deadline == b->deadline && a->seq < b->seq);
}

static void
heap_up(size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!entry_before(tm.heap[i], tm.heap[p])) {
            break;
        }
        struct timer_entry *t = tm.heap[i];
        tm.heap[i] = tm.heap[p];
        tm.heap[p] = t;
        i = p;
    }
}

static void
heap_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < tm.len && entry_before(tm.heap[l], tm.heap[m])) {
            m = l;
        }
        if (r < tm.len && entry_before(tm.heap[r], tm.heap[m])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        struct timer_entry *t = tm.heap[i];
        tm.heap[i] = tm.heap[m];
        tm.heap[m] = t;
        i = m;
    }
}

static void
rearm_locked(void)
{
    uint64_t want = tm.len > 0 ? tm.heap[0]->deadline : UINT64_MAX;
    if (want != tm.armed) {
        tm.armed = want;
        dk__os_timerfd_arm(tm.tfd, want);
    }
}

static void *
timer_main(void *arg)
{
    (void)arg;
    dk__os_thread_precise_timers();
    struct epoll_event evs[4];
    for (;;) {
        int timeout = dk__pool_watching() ? DK_WATCH_TICK_MS : -1;
        int n = dk__os_epoll_wait(tm.epfd, evs, 4, timeout);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 1) {
                dk__os_eventfd_drain(tm.tfd);
            } else {
                dk__os_eventfd_drain(tm.efd);
            }
        }
        uint64_t now = dk__os_monotonic_ns();
        struct timer_entry *due = NULL, **tail = &due;
        pthread_mutex_lock(&tm.lock);
        while (tm.len > 0 && tm.heap[0]->deadline <= now) {
            struct timer_entry *t = tm.heap[0];
            tm.heap[0] = tm.heap[--tm.len];
            heap_down(0);
            t->item.next = NULL;
            *tail = t;
            tail = (struct timer_entry **)&t->item.next;
        }
        tm.armed = UINT64_MAX; /* the timerfd fired or may have */
        rearm_locked();
        pthread_mutex_unlock(&tm.lock);
        while (due != NULL) {
            struct timer_entry *next = (struct timer_entry *)due->item.next;
            dk_queue_t *q = due->queue;
            dk__queue_push(q, &due->item);
            dk_release(q);
            due = next;
        }
        if (dk__pool_watching()) {
            dk__pool_tick();
        }
    }
    return NULL;
}

static int start_error;

static void
timer_start(void)
{
    tm.epfd = dk__os_epoll_create();
    tm.tfd = dk__os_timerfd_create();
    tm.efd = dk__os_eventfd_create();
    if (tm.epfd < 0 || tm.tfd < 0 || tm.efd < 0 ||
        dk__os_epoll_add(tm.epfd, tm.tfd, EPOLLIN, 1) < 0 ||
        dk__os_epoll_add(tm.epfd, tm.efd, EPOLLIN, 2) < 0) {
        start_error = -EMFILE;
        return;
    }
    int rc = dk__os_thread_start(timer_main, NULL, "dk-timer");
    if (rc < 0) {
        start_error = rc;
        return;
    }
    dk_atomic_store_release(&tm.started, true);
}

static int
timer_ensure(void)
{
    pthread_once(&tm.once, timer_start);
    return dk_atomic_load_acquire(&tm.started) ? 0 : start_error;
}

int
dk__timer_after(dk_queue_t *q, uint64_t deadline, void *ctx,
                dk_function_t fn)
{
    int rc = timer_ensure();
    if (rc < 0) {
        return rc;
    }
    struct timer_entry *t = malloc(sizeof *t);
    if (t == NULL) {
        return -ENOMEM;
    }
    t->item.fn = fn;
    t->item.ctx = ctx;
    t->item.flags = 0;
    t->item.group = NULL;
    t->deadline = deadline;
    t->queue = q;
    dk_retain(q);
    pthread_mutex_lock(&tm.lock);
    if (tm.len == tm.cap) {
        size_t cap = tm.cap ? tm.cap * 2 : 64;
        struct timer_entry **h = realloc(tm.heap, cap * sizeof *h);
        if (h == NULL) {
            pthread_mutex_unlock(&tm.lock);
            dk_release(q);
            free(t);
            return -ENOMEM;
        }
        tm.heap = h;
        tm.cap = cap;
    }
    t->seq = tm.seq++;
    tm.heap[tm.len++] = t;
    heap_up(tm.len - 1);
    rearm_locked();
    pthread_mutex_unlock(&tm.lock);
    return 0;
}

void
dk__timer_watch_pool(void)
{
    if (dk__pool_start_watch() && timer_ensure() == 0) {
        dk__os_eventfd_signal(tm.efd);
    }
}

void
dk__timer_fork_child(void)
{
    /* The timer thread is gone. Pending timers belong to the parent. */
    pthread_mutex_init(&tm.lock, NULL);
    tm.len = 0;
    tm.armed = UINT64_MAX;
    dk__os_close(tm.epfd);
    dk__os_close(tm.tfd);
    dk__os_close(tm.efd);
    tm.epfd = tm.tfd = tm.efd = -1;
    tm.started = false;
    tm.once = (pthread_once_t)PTHREAD_ONCE_INIT;
}
