/*
 * The event thread: one thread, started on first use, waiting in
 * epoll_wait on one epoll set holding everything the runtime watches: a
 * timerfd armed for the next timer, an eventfd for requests, an eventfd
 * written by signal handlers, and the fds and pidfds of sources; and its
 * relief thread (below). They run with 1 ns timer slack so short timers
 * are not rounded up by the default 50 us. While the pool is watched for
 * starvation the event thread also ticks every DK_WATCH_TICK_MS.
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
 *
 * Running handlers where the event arrived. Handing a fired timer or a
 * ready fd to a pool worker costs a second thread wake-up after the event
 * thread's own. So, as libdispatch's kevent workloop threads do, the
 * thread that received the event runs the handler itself when it can:
 * while it handles a batch of events, the first item the batch submits
 * (a source's handler item, a dispatch_after item) whose queue is idle
 * is kept for this thread: it enters that queue's drain lock at once, as
 * a sync caller would (dk_queue_sync_enter: the serial queue's SCHEDULED
 * bit, a concurrent queue's running count, nothing for a root queue), and
 * runs the item when the batch is done. Every other item is pushed at
 * once, as before. A queue that is busy, suspended, inactive, the main
 * queue or one whose target is not a root queue gets a push, so serial
 * exclusivity, suspension, order and the cancel handler's place after the
 * last event handler are the queue's and the source's own rules.
 *
 * Only one event thread at a time runs user code: the one holding
 * `inline_token`. Any other event thread pushes every item it is handed,
 * so it always returns to epoll_wait after bounded work:
 *
 *   CPU0 (event thread)                   CPU1 (relief thread, watching)
 *   epoll_wait -> fd ready                epoll_wait (waiting)
 *   CAS inline_token 0 -> 1      (A)
 *   run the handler (long)                timerfd fires -> wakes
 *                                         CAS inline_token fails  (B)
 *                                         push the timer's item; epoll_wait
 *   inline_token = 0 (release)   (C)
 *   epoll_wait
 *
 * (A) and (B) are one CAS on one word, so at most one event thread runs
 * user code at a time and the other keeps watching; (C) pairs with the
 * next (A)'s acquire, so a handler run by one thread after another sees
 * the first one done. A source item gives the token back as soon as its
 * handlers have returned (dk__event_user_code_done), before it re-arms
 * its fd. Timers fire under fire_lock, so two threads never submit timer
 * items out of deadline order. Internal fds are edge-triggered, sources'
 * fds and pidfds one-shot, so an event wakes one thread once.
 *
 * Relief. Two threads both waiting in epoll_wait would take events in
 * turn (the kernel wakes the waiter that has waited longest), so every
 * event would wake the colder thread: measured, that loses most of the
 * gain. So the second thread, the relief thread, sleeps on its own
 * timerfd, which is armed for DK_RELIEF_NS after a handler run begins;
 * when it fires and the run it was armed for is still going, the relief
 * thread watches the epoll set beside the event thread until that run
 * ends. A handler thus holds up other sources and timers for at most
 * DK_RELIEF_NS (plus a wake-up). Short handlers cost little: the event
 * thread arms the timer only when it is not armed already; the relief
 * thread, when it fires and finds no long run, re-arms it itself as long
 * as handlers ran since its last check (so, one wake-up per DK_RELIEF_NS
 * while handlers keep running, and no arming syscall on the event
 * thread's path), and stands down after DK_RELIEF_NS without a run.
 * Arming races with the relief thread standing down:
 *
 *   CPU0 (run begins)                     CPU1 (relief: no run going)
 *   inline_since = now           (A1)     relief_armed = 0          (R1)
 *   relief_armed == 0 ?          (A2)     inline_since != 0 ?       (R2)
 *     xchg it to 1: 0? arm                  xchg relief_armed to 1: 0? arm
 *
 * A1, A2, R1 and R2 are sequentially consistent, so either the run sees
 * the relief timer disarmed or the relief thread sees the run, and the
 * xchg lets exactly one of them arm it: a run never goes unwatched.
 *
 * Registrations are named by a 64-bit key (see source.c), never by a
 * pointer, so an event that one thread harvested just before another
 * thread unregistered the fd finds its key stale instead of freed memory.
 */
#include "internal.h"

#include <errno.h>
#include <sys/epoll.h>

#define DK_WATCH_TICK_MS 20
#define NOT_IN_HEAP SIZE_MAX
#define DK_EVENT_THREADS 2 /* the event thread and its relief */
/* A handler run on the event thread longer than this has the relief
 * thread watch the epoll set too. */
#define DK_RELIEF_NS 5000000ull
/* The scheduler slice the event thread asks for: it runs briefly and
 * wants to run soon after a wake-up on a busy machine. */
#define DK_EVENT_SLICE_NS 100000ull
/* A timer's event thread wakes before the deadline by about its own
 * wake-up latency (measured: `early`) plus DK_TIMER_MARGIN_NS, at most
 * DK_TIMER_EARLY_NS, and spins the rest; only for a timer without leeway
 * beyond that. The spin is kept short on purpose: a thread that spins
 * when the scheduler tick comes on a busy CPU may be preempted for a
 * whole slice of another process, which costs more than it saves. */
#define DK_TIMER_EARLY_NS 50000ull
#define DK_TIMER_MARGIN_NS 5000ull

static struct {
    pthread_mutex_t lock;
    pthread_once_t once;
    struct dk__timer **heap;
    size_t len, cap;
    uint64_t seq;
    uint64_t armed;      /* wake time the timerfd is armed for */
    uint64_t spin_until; /* the deadline armed early for, or 0 */
    uint64_t early;      /* how early to arm for it (see above) */
    bool spin_ok;        /* more than one CPU: spinning cannot hold off
                            the thread that would run meanwhile */
    int epfd, tfd, efd, sfd;
    bool started;
    int start_error;
    uint32_t nthreads;         /* event threads running */
    uint32_t inline_token;     /* 1 while an event thread runs a handler */
    int rfd;                   /* the relief thread's timerfd */
    uint64_t inline_since;     /* when the current handler run began, or 0 */
    uint32_t relief_armed;     /* rfd is armed (or about to be) */
    uint32_t runs;             /* handler runs begun (a hint) */
    pthread_mutex_t fire_lock; /* one fire_due at a time: in order */
    pthread_mutex_t tick_lock;
    uint64_t last_tick; /* when the pool was last ticked (tick_lock) */
} ev = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .tick_lock = PTHREAD_MUTEX_INITIALIZER,
    .fire_lock = PTHREAD_MUTEX_INITIALIZER,
    .once = PTHREAD_ONCE_INIT,
    .armed = UINT64_MAX,
    .early = 4 * DK_TIMER_MARGIN_NS,
    .epfd = -1,
    .tfd = -1,
    .efd = -1,
    .sfd = -1,
    .rfd = -1,
};

/* Per event thread: in a batch of events (submitted items may be chosen
 * to run here), and the item chosen, with its queue (of which we hold a
 * reference) and the frame of its drain lock. */
static __thread bool collecting;
static __thread struct {
    dk_queue_t *q;
    struct dk__item *it;
    dk_sync_frame_t frame;
    bool set;
} chosen;
static __thread bool on_event_thread;
static __thread bool holds_token; /* this thread holds inline_token */

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

/* Arm the timerfd for the earliest wake time. When that is the first
 * timer's own deadline (no leeway to speak of), arm it `early` sooner and
 * note the deadline in `spin_until`: the thread then wakes while there is
 * still time and spins the rest (see spin_to_deadline). */
static void
rearm_locked(void)
{
    uint64_t want = wake_time(0, UINT64_MAX);
    uint64_t arm = want;
    ev.spin_until = 0;
    if (want != UINT64_MAX && ev.spin_ok &&
        ev.heap[0]->leeway <= DK_TIMER_EARLY_NS &&
        ev.heap[0]->deadline + ev.heap[0]->leeway == want &&
        want > DK_TIMER_EARLY_NS) {
        ev.spin_until = ev.heap[0]->deadline;
        arm = want - ev.early;
    }
    if (arm != ev.armed) {
        ev.armed = arm;
        dk__os_timerfd_arm(ev.tfd, arm);
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

/* Take t out of the heap (if it is in) and drop the owner reference the
 * heap held; a killed timer also refuses every later dk__timer_set. */
static void
timer_take_out(struct dk__timer *t, bool kill)
{
    pthread_mutex_lock(&ev.lock);
    if (kill) {
        t->dead = true;
    }
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
dk__timer_kill(struct dk__timer *t)
{
    timer_take_out(t, true);
}

void
dk__timer_disarm(struct dk__timer *t)
{
    timer_take_out(t, false);
}

/* Callbacks run, and their owner references are dropped, under fire_lock
 * (fire_due): once t is out of the heap, taking that lock waits for a
 * callback of t already popped to be over. */
void
dk__timer_disarm_wait(struct dk__timer *t)
{
    timer_take_out(t, false);
    pthread_mutex_lock(&ev.fire_lock);
    pthread_mutex_unlock(&ev.fire_lock);
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
    /* Two event threads may both get here: one at a time, callbacks
     * included, so timers' items are submitted in deadline order. */
    pthread_mutex_lock(&ev.fire_lock);
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
    pthread_mutex_unlock(&ev.fire_lock);
    if (n == 64) {
        dk__os_eventfd_signal(ev.efd); /* more are due: come back at once */
    }
}

/* ---- submitting from a batch ----------------------------------------- */

bool
dk_is_event_thread(void)
{
    return on_event_thread;
}

/* Take the right to run user code on this event thread: (A) or (B) in
 * the block at the top. */
static bool
inline_token_take(void)
{
    if (dk__atomic_load_relaxed(&ev.nthreads) < DK_EVENT_THREADS) {
        return false; /* nobody would watch while we run a handler */
    }
    uint32_t zero = 0;
    /* Acquire pairs with the release in dk__event_user_code_done (C). */
    holds_token = dk__atomic_cas_acq_rel(&ev.inline_token, &zero, 1);
    return holds_token;
}

static void relief_arm(uint64_t since);

/* A handler run begins (this thread holds the token): publish when, and
 * make sure the relief timer is armed: (A1)/(A2) against (R1)/(R2). */
static void
inline_run_begin(void)
{
    uint64_t now = dk__os_monotonic_ns();
    dk__atomic_add_relaxed(&ev.runs, 1);
    dk__atomic_store_seq_cst(&ev.inline_since, now);      /* (A1) */
    if (dk__atomic_load_seq_cst(&ev.relief_armed) == 0 && /* (A2) */
        dk__atomic_xchg_seq_cst(&ev.relief_armed, 1) == 0) {
        relief_arm(now);
    }
}

void
dk__event_user_code_done(void)
{
    if (holds_token) {
        holds_token = false;
        dk__atomic_store_seq_cst(&ev.inline_since, 0);
        dk__atomic_store_release(&ev.inline_token, 0); /* (C) */
    }
}

/* The decision is taken here, when the item is submitted, not at the end
 * of the batch: entering q now, in submission order, is what keeps items
 * in order. A later item of q (from this batch, or fired after this one
 * by the other thread: fire_due runs under fire_lock) finds q's drain
 * lock taken and is pushed behind it; an item that cannot run here is
 * pushed at once, as before, so nothing submitted after it can overtake
 * it by running here. */
void
dk__event_submit(dk_queue_t *q, struct dk__item *it, bool queue_ref)
{
    if (collecting && !chosen.set && inline_token_take()) {
        if (dk_queue_sync_enter(q, false, &chosen.frame) == 0) {
            /* The item may drop the last reference to its owner (and so
             * to q) before we leave q's drain lock: hold q. */
            if (!queue_ref) {
                dk_retain(q);
            }
            chosen.q = q;
            chosen.it = it;
            chosen.set = true;
            return;
        }
        dk__event_user_code_done(); /* give the token back */
    }
    dk__queue_push(q, it);
    if (queue_ref) {
        dk_release(q);
    }
}

/* End of a batch: run the item chosen for this thread, if any. */
static void
run_chosen(void)
{
    collecting = false;
    if (!chosen.set) {
        return;
    }
    chosen.set = false;
    inline_run_begin();
    dk_queue_t *q = chosen.q;
    dk__item_run(chosen.it, q);
    dk__event_user_code_done(); /* if the item did not say so earlier */
    dk_queue_sync_exit(q, &chosen.frame);
    dk_release(q);
}

/* Woken early for a deadline (rearm_locked): learn how late the wake-up
 * came, then spin until the deadline, at most DK_TIMER_EARLY_NS, reading
 * the vDSO clock (other events wait at most that long). A timer cancelled
 * or moved in the meantime costs at most that spin. */
static void
spin_to_deadline(void)
{
    uint64_t now = dk__os_monotonic_ns();
    pthread_mutex_lock(&ev.lock);
    uint64_t until = ev.spin_until;
    if (until != 0 && ev.armed <= now) {
        /* Moving average of the wake-up latency, plus the margin. */
        uint64_t want = now - ev.armed + DK_TIMER_MARGIN_NS;
        uint64_t early = (3 * ev.early + want) / 4;
        ev.early = early < DK_TIMER_MARGIN_NS  ? DK_TIMER_MARGIN_NS
                   : early > DK_TIMER_EARLY_NS ? DK_TIMER_EARLY_NS
                                               : early;
    }
    pthread_mutex_unlock(&ev.lock);
    if (until <= now || until - now > DK_TIMER_EARLY_NS) {
        return;
    }
    for (unsigned i = 1;; i++) {
        dk_cpu_relax();
        if (i % 8 == 0 && dk__os_monotonic_ns() >= until) {
            return;
        }
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
    /* The entry's queue reference goes with the item. */
    dk__event_submit(e->queue, &e->item, true);
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

/* ---- the threads ---------------------------------------------------- */

/* Tick the pool at most once per DK_WATCH_TICK_MS, whichever event thread
 * gets there first; dk__pool_tick is not reentrant, so under tick_lock (a
 * thread that finds it taken leaves the tick to the holder). */
static void
maybe_tick(void)
{
    if (pthread_mutex_trylock(&ev.tick_lock) != 0) {
        return;
    }
    uint64_t now = dk__os_monotonic_ns();
    if (now - ev.last_tick >= (DK_WATCH_TICK_MS - 1) * 1000000ull) {
        ev.last_tick = now;
        dk__pool_tick();
    }
    pthread_mutex_unlock(&ev.tick_lock);
}

/* One batch of events: dispatch them, fire due timers, run the item
 * chosen for this thread, tick the pool if it is watched. */
static void
handle_batch(struct epoll_event *evs, int n)
{
    bool timers = false;
    collecting = true;
    for (int i = 0; i < n; i++) {
        uint64_t key = evs[i].data.u64;
        if (key == DK_EVENT_KEY_TIMER) {
            dk__os_eventfd_drain(ev.tfd);
            timers = true;
        } else if (key == DK_EVENT_KEY_WAKE) {
            dk__os_eventfd_drain(ev.efd);
            timers = true;
        } else if (key == DK_EVENT_KEY_SIGNAL) {
            dk__os_eventfd_drain(ev.sfd);
            dk__source_signals_pending();
        } else {
            dk__source_on_event(key, evs[i].events);
        }
    }
    if (timers) {
        spin_to_deadline();
    }
    if (timers || n == 0) {
        fire_due();
    }
    run_chosen();
    if (dk__pool_watching()) {
        maybe_tick();
    }
}

static void
event_thread_init(bool short_slice)
{
    on_event_thread = true;
    dk__os_thread_precise_timers();
    if (short_slice) {
        dk__os_thread_short_slice(DK_EVENT_SLICE_NS);
    }
}

/* The event thread: the one thread in epoll_wait, unless it runs a long
 * handler (then the relief thread watches too). */
static void *
event_main(void *arg)
{
    (void)arg;
    event_thread_init(true);
    struct epoll_event evs[32];
    for (;;) {
        int timeout = dk__pool_watching() ? DK_WATCH_TICK_MS : -1;
        int n = dk__os_epoll_wait(ev.epfd, evs, 32, timeout);
        handle_batch(evs, n);
        if (!on_event_thread) {
            /* A handler forked and the child returned from it: the child's
             * runtime starts afresh, and this thread has no role in it. */
            return NULL;
        }
    }
    return NULL;
}

/* Arm the relief timer for DK_RELIEF_NS after `since` (the start of the
 * handler run being watched). */
static void
relief_arm(uint64_t since)
{
    dk__os_timerfd_arm(ev.rfd, since + DK_RELIEF_NS);
}

/* The relief thread: asleep on its timerfd, which is armed while handlers
 * run on the event thread (see "Relief" at the top). When a run has
 * lasted DK_RELIEF_NS it watches the epoll set itself until that run
 * ends, as a second event thread. */
static void *
relief_main(void *arg)
{
    (void)arg;
    /* The default slice: its wake-ups are checks, with no hurry to
     * preempt the threads a handler is talking to. */
    event_thread_init(false);
    struct epoll_event evs[32];
    uint32_t seen_runs = 0;
    for (;;) {
        while (dk__os_poll_readable(ev.rfd, DK_TIME_FOREVER) != 0) {
        }
        dk__os_eventfd_drain(ev.rfd);
        for (;;) {
            uint64_t since = dk__atomic_load_seq_cst(&ev.inline_since);
            uint32_t runs = dk__atomic_load_relaxed(&ev.runs);
            if (since == 0 && runs != seen_runs) {
                /* Handlers ran since the last check: stay armed, so that
                 * the event thread need not arm us on its next run. */
                seen_runs = runs;
                relief_arm(dk__os_monotonic_ns());
                break;
            }
            if (since == 0) {
                dk__atomic_store_seq_cst(&ev.relief_armed, 0);     /* (R1) */
                since = dk__atomic_load_seq_cst(&ev.inline_since); /* (R2) */
                if (since == 0 ||
                    dk__atomic_xchg_seq_cst(&ev.relief_armed, 1) != 0) {
                    break; /* idle; or the event thread armed it */
                }
            }
            if (dk__os_monotonic_ns() - since < DK_RELIEF_NS) {
                relief_arm(since); /* a newer run: check on it later */
                break;
            }
            /* A long run: watch beside it until it ends. */
            while (dk__atomic_load_seq_cst(&ev.inline_since) == since) {
                int n = dk__os_epoll_wait(ev.epfd, evs, 32,
                                          (int)(DK_RELIEF_NS / 1000000));
                handle_batch(evs, n);
                if (!on_event_thread) {
                    return NULL; /* forked in a handler: as in event_main */
                }
            }
        }
    }
    return NULL;
}

static void
event_start(void)
{
    ev.spin_ok = dk__pool_ncpu() > 1;
    ev.epfd = dk__os_epoll_create();
    ev.tfd = dk__os_timerfd_create();
    ev.efd = dk__os_eventfd_create();
    ev.sfd = dk__os_eventfd_create();
    /* Edge-triggered: each expiry or write wakes one event thread once;
     * whoever wakes drains the fd. */
    if (ev.epfd < 0 || ev.tfd < 0 || ev.efd < 0 || ev.sfd < 0 ||
        dk__os_epoll_add(ev.epfd, ev.tfd, EPOLLIN | EPOLLET,
                         DK_EVENT_KEY_TIMER) < 0 ||
        dk__os_epoll_add(ev.epfd, ev.efd, EPOLLIN | EPOLLET,
                         DK_EVENT_KEY_WAKE) < 0 ||
        dk__os_epoll_add(ev.epfd, ev.sfd, EPOLLIN | EPOLLET,
                         DK_EVENT_KEY_SIGNAL) < 0) {
        ev.start_error = -EMFILE;
        return;
    }
    int rc = dk__os_thread_start(event_main, NULL, "dk-event");
    if (rc < 0) {
        ev.start_error = rc;
        return;
    }
    dk__atomic_add_relaxed(&ev.nthreads, 1);
    /* The relief thread only lets handlers run on the event thread:
     * without it everything is pushed, as before. */
    ev.rfd = dk__os_timerfd_create();
    if (ev.rfd >= 0 &&
        dk__os_thread_start(relief_main, NULL, "dk-event-relief") == 0) {
        dk__atomic_add_relaxed(&ev.nthreads, 1);
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
dk__event_add(int fd, uint32_t events, uint64_t key)
{
    int rc = dk__event_ensure();
    return rc < 0 ? rc : dk__os_epoll_add(ev.epfd, fd, events, key);
}

int
dk__event_mod(int fd, uint32_t events, uint64_t key)
{
    return dk__os_epoll_mod(ev.epfd, fd, events, key);
}

void
dk__event_del(int fd)
{
    (void)dk__os_epoll_del(ev.epfd, fd);
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
    /* The event threads are gone; timers and registrations belong to the
     * parent. Start afresh on next use. A handler that forked ran on an
     * event thread, which in the child is a plain thread. */
    pthread_mutex_init(&ev.lock, NULL);
    pthread_mutex_init(&ev.tick_lock, NULL);
    pthread_mutex_init(&ev.fire_lock, NULL);
    for (size_t i = 0; i < ev.len; i++) {
        ev.heap[i]->heap_index = NOT_IN_HEAP;
    }
    ev.len = 0;
    ev.armed = UINT64_MAX;
    ev.spin_until = 0;
    ev.early = 4 * DK_TIMER_MARGIN_NS;
    dk__os_close(ev.epfd);
    dk__os_close(ev.tfd);
    dk__os_close(ev.efd);
    dk__os_close(ev.sfd);
    ev.epfd = ev.tfd = ev.efd = ev.sfd = -1;
    ev.started = false;
    ev.start_error = 0;
    ev.nthreads = 0;
    ev.inline_token = 0;
    dk__os_close(ev.rfd);
    ev.rfd = -1;
    ev.inline_since = 0;
    ev.relief_armed = 0;
    ev.runs = 0;
    ev.last_tick = 0;
    ev.once = (pthread_once_t)PTHREAD_ONCE_INIT;
    on_event_thread = false;
    collecting = false;
    chosen.set = false;
}
