/* Tests of the dispatch runtime through its dk_ API: ordering, mutual
 * exclusion, barriers, hierarchies, suspension, groups, semaphores, once,
 * apply, after, pool growth, sync deadlock detection, main queue, fork. */
#include "objects.h"
#include "runner.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "atomic.h"
#include "dk/apply.h"
#include "dk/group.h"
#include "dk/once.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/time.h"

static uint64_t
in_ns(uint64_t ns)
{
    return dk_now() + ns;
}

#define SECONDS(s) ((uint64_t)(s)*DK_NSEC_PER_SEC)

/* ---- serial FIFO and exclusion ---- */

struct fifo {
    long next;
    long errors;
    int inside;
};

static void
fifo_item(void *p)
{
    struct fifo *f = p;
    /* Exclusion: nobody else may be inside. */
    if (__atomic_exchange_n(&f->inside, 1, __ATOMIC_ACQ_REL) != 0) {
        f->errors++;
    }
    f->next++;
    __atomic_store_n(&f->inside, 0, __ATOMIC_RELEASE);
}

struct tagged {
    struct fifo *f;
    long tag;
};

static void
tagged_item(void *p)
{
    struct tagged *t = p;
    if (t->f->next != t->tag) {
        t->f->errors++;
    }
    fifo_item(t->f);
    free(t);
}

static void
noop(void *p)
{
    (void)p;
}

DK_TEST(serial_queue_is_fifo_and_exclusive)
{
    dk_queue_t *q = t_queue("fifo", 0, 0, 0, NULL);
    CHECK(q != NULL);
    struct fifo f = {0};
    for (long i = 0; i < 100000; i++) {
        struct tagged *t = malloc(sizeof *t);
        t->f = &f;
        t->tag = i;
        CHECK_EQ(dk_queue_async_f(q, t, tagged_item), 0);
    }
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(f.next, 100000);
    CHECK_EQ(f.errors, 0);
    dk_release(q);
}

struct producer_arg {
    dk_queue_t *q;
    struct fifo *f;
};

static void *
producer(void *p)
{
    struct producer_arg *a = p;
    for (int i = 0; i < 20000; i++) {
        CHECK_EQ(dk_queue_async_f(a->q, a->f, fifo_item), 0);
    }
    return NULL;
}

DK_TEST(serial_queue_many_producers_lose_nothing)
{
    dk_queue_t *q = t_queue("mp", 0, 0, 0, NULL);
    struct fifo f = {0};
    struct producer_arg a = {q, &f};
    t_run_threads(4, producer, &a);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(f.next, 80000);
    CHECK_EQ(f.errors, 0);
    dk_release(q);
}

/* ---- hierarchy: two serial queues targeting one serial queue ---- */

DK_TEST(queues_targeting_a_serial_queue_are_mutually_exclusive)
{
    dk_queue_t *parent = t_queue("parent", 0, 0, 0, NULL);
    dk_queue_t *a = t_queue("a", 0, 0, 0, parent);
    dk_queue_t *b = t_queue("b", DK_QUEUE_CONCURRENT, 0, 0, parent);
    CHECK_EQ(dk_queue_target(a) == parent, 1);
    struct fifo f = {0};
    for (int i = 0; i < 20000; i++) {
        CHECK_EQ(dk_queue_async_f(a, &f, fifo_item), 0);
        CHECK_EQ(dk_queue_async_f(b, &f, fifo_item), 0);
    }
    CHECK_EQ(dk_queue_sync_f(a, NULL, noop), 0);
    CHECK_EQ(dk_queue_barrier_sync_f(b, NULL, noop), 0);
    CHECK_EQ(dk_queue_sync_f(parent, NULL, noop), 0);
    CHECK_EQ(f.next, 40000);
    CHECK_EQ(f.errors, 0);
    dk_release(a);
    dk_release(b);
    dk_release(parent);
}

/* ---- concurrent queue and barriers ---- */

struct rw {
    int readers;
    int max_readers;
    int writer;
    long errors;
    long writes;
    long reads;
};

static void
reader(void *p)
{
    struct rw *rw = p;
    int r = __atomic_add_fetch(&rw->readers, 1, __ATOMIC_ACQ_REL);
    if (__atomic_load_n(&rw->writer, __ATOMIC_ACQUIRE)) {
        __atomic_add_fetch(&rw->errors, 1, __ATOMIC_RELAXED);
    }
    int m = __atomic_load_n(&rw->max_readers, __ATOMIC_RELAXED);
    while (r > m &&
           !__atomic_compare_exchange_n(&rw->max_readers, &m, r, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    usleep(200);
    __atomic_add_fetch(&rw->reads, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&rw->readers, 1, __ATOMIC_ACQ_REL);
}

static void
writer(void *p)
{
    struct rw *rw = p;
    __atomic_store_n(&rw->writer, 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&rw->readers, __ATOMIC_ACQUIRE) != 0) {
        __atomic_add_fetch(&rw->errors, 1, __ATOMIC_RELAXED);
    }
    usleep(200);
    rw->writes++;
    __atomic_store_n(&rw->writer, 0, __ATOMIC_RELEASE);
}

DK_TEST(barrier_is_exclusive_on_concurrent_queue)
{
    dk_queue_t *q = t_queue("rw", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    struct rw rw = {0};
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 8; i++) {
            CHECK_EQ(dk_queue_async_f(q, &rw, reader), 0);
        }
        CHECK_EQ(dk_queue_barrier_async_f(q, &rw, writer), 0);
    }
    CHECK_EQ(dk_queue_barrier_sync_f(q, NULL, noop), 0);
    CHECK_EQ(rw.errors, 0);
    CHECK_EQ(rw.writes, 50);
    CHECK_EQ(rw.reads, 400);
    CHECK(rw.max_readers >= 2); /* readers really ran concurrently */
    dk_release(q);
}

/* ---- suspend / resume / activate ---- */

static void
count_item(void *p)
{
    __atomic_add_fetch((long *)p, 1, __ATOMIC_ACQ_REL);
}

DK_TEST(suspended_queue_runs_nothing_until_resumed)
{
    dk_queue_t *q = t_queue("susp", 0, 0, 0, NULL);
    long n = 0;
    dk_queue_suspend(q);
    dk_queue_suspend(q);
    CHECK_EQ(dk_queue_suspend_count(q), 2);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ(dk_queue_async_f(q, &n, count_item), 0);
    }
    usleep(20000);
    CHECK_EQ(__atomic_load_n(&n, __ATOMIC_ACQUIRE), 0);
    CHECK_EQ(dk_queue_resume(q), 0);
    usleep(20000);
    CHECK_EQ(__atomic_load_n(&n, __ATOMIC_ACQUIRE), 0);
    CHECK_EQ(dk_queue_resume(q), 0);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(n, 10);
    CHECK_EQ(dk_queue_resume(q), -EOVERFLOW);
    dk_release(q);
}

DK_TEST(inactive_queue_runs_after_activate)
{
    dk_queue_t *q = t_queue("lazy", DK_QUEUE_INACTIVE, 0, 0, NULL);
    CHECK(dk_queue_is_inactive(q));
    long n = 0;
    CHECK_EQ(dk_queue_async_f(q, &n, count_item), 0);
    CHECK_EQ(dk_queue_set_target(q, dk_queue_global(DK_QOS_UTILITY)), 0);
    usleep(10000);
    CHECK_EQ(__atomic_load_n(&n, __ATOMIC_ACQUIRE), 0);
    CHECK_EQ(dk_queue_activate(q), 0);
    CHECK(!dk_queue_is_inactive(q));
    CHECK_EQ(dk_queue_activate(q), -EALREADY);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(n, 1);
    CHECK_EQ(dk_queue_set_target(q, NULL), -EPERM);
    dk_release(q);
}

DK_TEST(set_target_rejects_cycles)
{
    dk_queue_t *a = t_queue("a", DK_QUEUE_INACTIVE, 0, 0, NULL);
    dk_queue_t *b = t_queue("b", 0, 0, 0, a);
    CHECK_EQ(dk_queue_set_target(a, b), -ELOOP);
    CHECK_EQ(dk_queue_set_target(a, a), -ELOOP);
    CHECK_EQ(dk_queue_activate(a), 0);
    dk_release(b);
    dk_release(a);
}

/* ---- sync ---- */

struct sync_ctx {
    dk_queue_t *q;
    int rc;
    bool barrier;
};

static void
sync_inside(void *p)
{
    struct sync_ctx *c = p;
    c->rc = c->barrier ? dk_queue_barrier_sync_f(c->q, NULL, noop)
                       : dk_queue_sync_f(c->q, NULL, noop);
}

DK_TEST(sync_on_own_serial_queue_is_detected)
{
    dk_queue_t *q = t_queue("self", 0, 0, 0, NULL);
    struct sync_ctx c = {q, 1, false};
    CHECK_EQ(dk_queue_sync_f(q, &c, sync_inside), 0);
    CHECK_EQ(c.rc, -EDEADLK);
    c.rc = 1;
    CHECK_EQ(dk_queue_async_f(q, &c, sync_inside), 0);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(c.rc, -EDEADLK);
    /* A queue that targets q also deadlocks when called from q. */
    dk_queue_t *child = t_queue("child", 0, 0, 0, q);
    struct sync_ctx c2 = {child, 1, false};
    CHECK_EQ(dk_queue_sync_f(q, &c2, sync_inside), 0);
    CHECK_EQ(c2.rc, -EDEADLK);
    dk_release(child);
    dk_release(q);
}

DK_TEST(sync_inside_concurrent_queue_allowed_barrier_detected)
{
    dk_queue_t *q = t_queue("c", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    struct sync_ctx c = {q, 1, false};
    CHECK_EQ(dk_queue_sync_f(q, &c, sync_inside), 0);
    CHECK_EQ(c.rc, 0);
    struct sync_ctx c2 = {q, 1, true};
    CHECK_EQ(dk_queue_sync_f(q, &c2, sync_inside), 0);
    CHECK_EQ(c2.rc, -EDEADLK);
    dk_release(q);
}

struct thread_id_ctx {
    pthread_t self;
    bool same;
};

static void
record_thread(void *p)
{
    struct thread_id_ctx *c = p;
    c->same = pthread_equal(c->self, pthread_self());
}

DK_TEST(sync_on_idle_queue_runs_on_calling_thread)
{
    dk_queue_t *q = t_queue("idle", 0, 0, 0, NULL);
    struct thread_id_ctx c = {pthread_self(), false};
    CHECK_EQ(dk_queue_sync_f(q, &c, record_thread), 0);
    CHECK(c.same);
    dk_release(q);
}

/* ---- groups ---- */

static void
finalize(void *p)
{
    dk_semaphore_signal(p);
}

DK_TEST(group_wait_and_notify)
{
    dk_group_t *g = t_group();
    dk_queue_t *q = dk_queue_global(0);
    long n = 0;
    for (int i = 0; i < 10000; i++) {
        CHECK_EQ(dk_group_async_f(g, q, &n, count_item), 0);
    }
    CHECK_EQ(dk_group_wait(g, in_ns(SECONDS(20))), 0);
    CHECK_EQ(n, 10000);
    dk_semaphore_t *s = t_semaphore(0);
    CHECK_EQ(dk_group_notify_f(g, q, s, finalize), 0);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(SECONDS(10))), 0);
    dk_group_enter(g);
    CHECK_EQ(dk_group_wait(g, 0), -ETIMEDOUT);
    CHECK_EQ(dk_group_wait(g, in_ns(1000000)), -ETIMEDOUT);
    CHECK_EQ(dk_group_notify_f(g, q, s, finalize), 0);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(5000000)), -ETIMEDOUT);
    CHECK_EQ(dk_group_leave(g), 0);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(SECONDS(10))), 0);
    CHECK_EQ(dk_group_leave(g), -EOVERFLOW);
    CHECK_EQ(dk_group_count(g), 0);
    dk_release(g);
    dk_release(s);
}

/* ---- semaphores ---- */

DK_TEST(semaphore_counts_and_times_out)
{
    dk_semaphore_t *bad = (dk_semaphore_t *)&bad;
    CHECK_EQ(dk_semaphore_create(-1, &bad), -EINVAL);
    CHECK(bad == NULL);
    dk_semaphore_t *s = t_semaphore(2);
    CHECK_EQ(dk_semaphore_wait(s, 0), 0);
    CHECK_EQ(dk_semaphore_wait(s, 0), 0);
    CHECK_EQ(dk_semaphore_wait(s, 0), -ETIMEDOUT);
    CHECK_EQ(dk_semaphore_value(s), 0);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(2000000)), -ETIMEDOUT);
    CHECK_EQ(dk_semaphore_value(s), 0); /* the timed-out unit was returned */
    CHECK_EQ(dk_semaphore_signal(s), false);
    CHECK_EQ(dk_semaphore_wait(s, 0), 0);
    dk_release(s);
}

static void *
sem_waiter(void *p)
{
    CHECK_EQ(dk_semaphore_wait(p, UINT64_MAX), 0);
    return NULL;
}

DK_TEST(semaphore_signal_wakes_exactly_one_waiter)
{
    dk_semaphore_t *s = t_semaphore(0);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        pthread_create(&t[i], NULL, sem_waiter, s);
    }
    while (dk_semaphore_value(s) != -3) {
        usleep(1000);
    }
    CHECK(dk_semaphore_signal(s));
    CHECK(dk_semaphore_signal(s));
    CHECK(dk_semaphore_signal(s));
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_EQ(dk_semaphore_value(s), 0);
    dk_release(s);
}

/* Many threads hammer one semaphore with waits of every kind of deadline
 * (poll, shorter and longer than the spin budget, forever) while others
 * signal: every signal is consumed by exactly one successful wait, every
 * timed-out wait gives its unit back, and nothing is left over. */
enum { HAMMER_PRODUCERS = 3, HAMMER_CONSUMERS = 5, HAMMER_SIGNALS = 30000 };

struct hammer {
    dk_semaphore_t *s;
    long consumed;
    long timeouts;
    int stop;
};

static void *
hammer_producer(void *p)
{
    struct hammer *h = p;
    for (int i = 0; i < HAMMER_SIGNALS / HAMMER_PRODUCERS; i++) {
        dk_semaphore_signal(h->s);
        if (i % 7 == 0) {
            usleep((unsigned)(i % 5) * 10); /* around the spin budget */
        }
    }
    return NULL;
}

static void *
hammer_consumer(void *p)
{
    struct hammer *h = p;
    static const uint64_t waits[] = {0, 2000, 15000, 40000, 3000000};
    for (unsigned i = 0; !__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE); i++) {
        uint64_t w = waits[i % 5];
        int rc = dk_semaphore_wait(h->s, w == 0 ? 0 : in_ns(w));
        if (rc == 0) {
            __atomic_add_fetch(&h->consumed, 1, __ATOMIC_ACQ_REL);
        } else {
            CHECK_EQ(rc, -ETIMEDOUT);
            __atomic_add_fetch(&h->timeouts, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

DK_TEST(semaphore_hammered_with_timeouts_conserves_units)
{
    struct hammer h = {t_semaphore(0), 0, 0, 0};
    pthread_t prod[HAMMER_PRODUCERS], cons[HAMMER_CONSUMERS];
    for (int i = 0; i < HAMMER_CONSUMERS; i++) {
        pthread_create(&cons[i], NULL, hammer_consumer, &h);
    }
    for (int i = 0; i < HAMMER_PRODUCERS; i++) {
        pthread_create(&prod[i], NULL, hammer_producer, &h);
    }
    for (int i = 0; i < HAMMER_PRODUCERS; i++) {
        pthread_join(prod[i], NULL);
    }
    uint64_t give_up = in_ns(SECONDS(40));
    while (__atomic_load_n(&h.consumed, __ATOMIC_ACQUIRE) < HAMMER_SIGNALS &&
           dk_now() < give_up) {
        usleep(1000);
    }
    __atomic_store_n(&h.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < HAMMER_CONSUMERS; i++) {
        pthread_join(cons[i], NULL);
    }
    CHECK_EQ(h.consumed, HAMMER_SIGNALS);
    CHECK(h.timeouts > 0); /* the give-back path ran */
    CHECK_EQ(dk_semaphore_value(h.s), 0);
    CHECK_EQ(dk_semaphore_wait(h.s, 0), -ETIMEDOUT);
    dk_semaphore_signal(h.s);
    CHECK_EQ(dk_semaphore_wait(h.s, 0), 0);
    dk_release(h.s);
}

/* A waiter that has given up spinning and parked is always woken: the
 * signal comes after the waiter committed, at delays on both sides of
 * the spin budget, and each wait must return (a lost wake-up would leave
 * the waiter asleep forever and fail the round). */
struct parked {
    dk_semaphore_t *s;
    int done;
};

static void *
parked_waiter(void *p)
{
    struct parked *w = p;
    CHECK_EQ(dk_semaphore_wait(w->s, UINT64_MAX), 0);
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

DK_TEST(semaphore_parked_waiter_is_always_woken)
{
    for (int round = 0; round < 300; round++) {
        struct parked w = {t_semaphore(0), 0};
        pthread_t t;
        pthread_create(&t, NULL, parked_waiter, &w);
        if (round % 3 != 0) {
            /* Committed (counted) before we signal: signal says so. */
            while (dk_semaphore_value(w.s) != -1) {
                dk_cpu_relax();
            }
        }
        usleep((unsigned)(round % 10) * 8); /* 0 to 72 us */
        bool woke = dk_semaphore_signal(w.s);
        CHECK(round % 3 == 0 || woke);
        uint64_t give_up = in_ns(SECONDS(10));
        while (!__atomic_load_n(&w.done, __ATOMIC_ACQUIRE) &&
               dk_now() < give_up) {
            usleep(50);
        }
        CHECK(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE));
        pthread_join(t, NULL);
        CHECK_EQ(dk_semaphore_value(w.s), 0);
        dk_release(w.s);
    }
}

/* The waiter may free the semaphore as soon as its wait returns, while
 * the signaller is still inside dk_semaphore_signal: after posting its
 * token the signaller must not touch the semaphore's memory (ASan and
 * TSan see it if it does). */
static void *
waiter_then_release(void *p)
{
    CHECK_EQ(dk_semaphore_wait(p, UINT64_MAX), 0);
    dk_release(p);
    return NULL;
}

DK_TEST(semaphore_freed_by_its_waiter_during_signal)
{
    for (int round = 0; round < 1000; round++) {
        dk_semaphore_t *s = t_semaphore(0);
        pthread_t t;
        pthread_create(&t, NULL, waiter_then_release, s);
        if (round % 2 == 0) {
            /* Committed: the signal goes through the token path. */
            while (dk_semaphore_value(s) != -1) {
                dk_cpu_relax();
            }
        }
        dk_semaphore_signal(s); /* s may be freed before this returns */
        pthread_join(t, NULL);
    }
}

/* Several waiters parked at once and woken one signal at a time: each
 * signal wakes one, none is left asleep (the waits have no deadline, so
 * a lost wake-up leaves a round unfinished), in many rounds. */
struct many_parked {
    dk_semaphore_t *s;
    long woken;
};

static void *
many_parked_waiter(void *p)
{
    struct many_parked *m = p;
    for (int i = 0; i < 200; i++) {
        CHECK_EQ(dk_semaphore_wait(m->s, UINT64_MAX), 0);
        __atomic_add_fetch(&m->woken, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

DK_TEST(semaphore_many_parked_waiters_all_woken)
{
    struct many_parked m = {t_semaphore(0), 0};
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        pthread_create(&t[i], NULL, many_parked_waiter, &m);
    }
    for (int i = 0; i < 4 * 200; i++) {
        if (i % 4 == 0) {
            usleep((unsigned)(i % 80)); /* let some of them park */
        }
        dk_semaphore_signal(m.s);
    }
    uint64_t give_up = in_ns(SECONDS(10));
    while (__atomic_load_n(&m.woken, __ATOMIC_ACQUIRE) < 4 * 200 &&
           dk_now() < give_up) {
        usleep(100);
    }
    CHECK_EQ(__atomic_load_n(&m.woken, __ATOMIC_ACQUIRE), 4 * 200);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_EQ(dk_semaphore_value(m.s), 0);
    dk_release(m.s);
}

/* Two threads ping-pong through two semaphores (the spin's fast path):
 * every round trip completes and the counts end at zero. */
struct pingpong {
    dk_semaphore_t *ping, *pong;
};

static void *
pong_thread(void *p)
{
    struct pingpong *pp = p;
    for (int i = 0; i < 20000; i++) {
        CHECK_EQ(dk_semaphore_wait(pp->ping, in_ns(SECONDS(20))), 0);
        dk_semaphore_signal(pp->pong);
    }
    return NULL;
}

DK_TEST(semaphore_pingpong_completes)
{
    struct pingpong pp = {t_semaphore(0), t_semaphore(0)};
    pthread_t t;
    pthread_create(&t, NULL, pong_thread, &pp);
    for (int i = 0; i < 20000; i++) {
        dk_semaphore_signal(pp.ping);
        CHECK_EQ(dk_semaphore_wait(pp.pong, in_ns(SECONDS(20))), 0);
    }
    pthread_join(t, NULL);
    CHECK_EQ(dk_semaphore_value(pp.ping), 0);
    CHECK_EQ(dk_semaphore_value(pp.pong), 0);
    dk_release(pp.ping);
    dk_release(pp.pong);
}

/* The spin is bounded: a waiter left alone for 300 ms parks after a few
 * tens of microseconds and uses a small fraction of that time on CPU (an
 * unbounded spin would use all of it). */
static void *
idle_waiter(void *p)
{
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    CHECK_EQ(dk_semaphore_wait(p, in_ns(300 * DK_NSEC_PER_MSEC)), -ETIMEDOUT);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    long long cpu_ns =
        (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    CHECK(cpu_ns < 30 * 1000000LL);
    return NULL;
}

DK_TEST(semaphore_idle_waiter_parks)
{
    dk_semaphore_t *s = t_semaphore(0);
    pthread_t t;
    pthread_create(&t, NULL, idle_waiter, s);
    pthread_join(t, NULL);
    CHECK_EQ(dk_semaphore_value(s), 0);
    dk_release(s);
}

/* ---- once ---- */

static dk_once_t once_pred;
static int once_calls;
static int once_seen_unfinished;

static void
slow_init(void *p)
{
    (void)p;
    __atomic_add_fetch(&once_calls, 1, __ATOMIC_ACQ_REL);
    usleep(20000);
    __atomic_store_n((int *)p, 42, __ATOMIC_RELEASE);
}

static int once_value;

static void *
once_caller(void *p)
{
    (void)p;
    dk_once_f(&once_pred, &once_value, slow_init);
    if (__atomic_load_n(&once_value, __ATOMIC_ACQUIRE) != 42) {
        __atomic_add_fetch(&once_seen_unfinished, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

DK_TEST(once_runs_once_and_everyone_waits)
{
    t_run_threads(8, once_caller, NULL);
    CHECK_EQ(once_calls, 1);
    CHECK_EQ(once_seen_unfinished, 0);
    CHECK(dk_once_done(&once_pred));
}

/* ---- apply ---- */

static void
apply_mark(void *p, size_t i)
{
    __atomic_add_fetch(&((uint8_t *)p)[i], 1, __ATOMIC_RELAXED);
}

DK_TEST(apply_runs_every_index_exactly_once)
{
    size_t sizes[] = {1, 2, 7, 1000, 123457};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        uint8_t *marks = calloc(n, 1);
        CHECK_EQ(dk_apply_f(n, NULL, marks, apply_mark), 0);
        for (size_t i = 0; i < n; i++) {
            CHECK_EQ(marks[i], 1);
        }
        dk_queue_t *q = t_queue("s", 0, 0, 0, NULL);
        CHECK_EQ(dk_apply_f(n, q, marks, apply_mark), 0);
        for (size_t i = 0; i < n; i++) {
            CHECK_EQ(marks[i], 2);
        }
        dk_release(q);
        free(marks);
    }
    CHECK_EQ(dk_apply_f(0, NULL, NULL, apply_mark), 0);
}

static bool
apply_stop_at_once(void *p, size_t begin, size_t end)
{
    (void)begin;
    (void)end;
    __atomic_add_fetch((size_t *)p, 1, __ATOMIC_RELAXED);
    return false;
}

DK_TEST(apply_while_stops_handing_out_ranges)
{
    /* 2^40 iterations in ranges of at most 4096: without the stop, about
     * 2^28 ranges would be handed out. With it, only ranges already
     * claimed when the first one said stop run: at most one per thread. */
    size_t calls = 0;
    CHECK_EQ(dk_apply_range_while_f((size_t)1 << 40, NULL, &calls,
                                    apply_stop_at_once),
             0);
    CHECK(calls >= 1);
    CHECK(calls <= 64);
    dk_queue_t *q = t_queue("s", 0, 0, 0, NULL);
    calls = 0;
    CHECK_EQ(dk_apply_range_while_f(1000, q, &calls, apply_stop_at_once), 0);
    CHECK_EQ(calls, 1);
    dk_release(q);
}

/* A caller that holds a lock its iterations need: its own ranges run on
 * its thread with the lock held, the helpers' take it, and it lets go
 * only to wait for them. */
struct caller_apply {
    pthread_mutex_t lock;
    pthread_t caller;
    uint8_t marks[20000];
    size_t own, foreign; /* ranges run by the caller, by helpers */
    int unlocks, relocks;
};

static bool
caller_apply_own(void *p, size_t begin, size_t end)
{
    struct caller_apply *c = p;
    if (!pthread_equal(pthread_self(), c->caller)) {
        abort(); /* the caller's function ran on another thread */
    }
    c->own++;
    for (size_t i = begin; i < end; i++) {
        c->marks[i]++;
    }
    return true;
}

static bool
caller_apply_helper(void *p, size_t begin, size_t end)
{
    struct caller_apply *c = p;
    pthread_mutex_lock(&c->lock);
    c->foreign++;
    for (size_t i = begin; i < end; i++) {
        c->marks[i]++;
    }
    pthread_mutex_unlock(&c->lock);
    return true;
}

static void
caller_apply_unlock(void *p)
{
    struct caller_apply *c = p;
    c->unlocks++;
    pthread_mutex_unlock(&c->lock);
}

static void
caller_apply_relock(void *p)
{
    struct caller_apply *c = p;
    pthread_mutex_lock(&c->lock);
    c->relocks++;
}

DK_TEST(apply_caller_keeps_its_lock_until_it_waits)
{
    static struct caller_apply c;
    pthread_mutex_init(&c.lock, NULL);
    c.caller = pthread_self();
    const dk_apply_caller_t caller = {caller_apply_own, caller_apply_unlock,
                                      caller_apply_relock};
    pthread_mutex_lock(&c.lock);
    CHECK_EQ(dk_apply_range_caller_f(sizeof c.marks, NULL, &c,
                                     caller_apply_helper, &caller),
             0);
    for (size_t i = 0; i < sizeof c.marks; i++) {
        CHECK_EQ(c.marks[i], 1);
    }
    CHECK(c.own >= 1);
    CHECK_EQ(c.unlocks, 1);
    CHECK_EQ(c.relocks, 1);
    pthread_mutex_unlock(&c.lock);
    dk_queue_t *q = t_queue("s", 0, 0, 0, NULL);
    CHECK_EQ(dk_apply_range_caller_f(10, q, &c, caller_apply_helper, &caller),
             -EINVAL);
    dk_release(q);
    CHECK_EQ(c.unlocks, 1);
}

/* ---- after ---- */

struct after_ctx {
    uint64_t due;
    uint64_t ran_at;
    dk_semaphore_t *s;
};

static void
after_item(void *p)
{
    struct after_ctx *c = p;
    c->ran_at = dk_now();
    dk_semaphore_signal(c->s);
}

DK_TEST(after_runs_no_earlier_than_due_and_in_order)
{
    dk_queue_t *q = t_queue("after", 0, 0, 0, NULL);
    dk_semaphore_t *s = t_semaphore(0);
    struct after_ctx c[3];
    uint64_t delays[3] = {30000000, 10000000, 20000000};
    /* Deadlines from one base: the first call starts the event threads,
     * which may take longer than the 10 ms between deadlines (TSan). The
     * order is promised only among items submitted before the first of
     * them is due: a round whose calls took longer than that (this
     * thread preempted, or the event threads slow to start) proves
     * nothing about it, and another round is run. */
    bool ordered_round = false;
    for (int round = 0; round < 20 && !ordered_round; round++) {
        uint64_t base = dk_now();
        for (int i = 0; i < 3; i++) {
            c[i].s = s;
            c[i].due = base + delays[i];
            int64_t left = (int64_t)(c[i].due - dk_now());
            CHECK_EQ(dk_queue_after_f(q, dk_time(DK_TIME_NOW, left), &c[i],
                                      after_item),
                     0);
        }
        ordered_round = dk_now() < base + delays[1];
        for (int i = 0; i < 3; i++) {
            CHECK_EQ(dk_semaphore_wait(s, in_ns(SECONDS(10))), 0);
        }
        for (int i = 0; i < 3; i++) {
            CHECK(c[i].ran_at >= c[i].due);
        }
    }
    CHECK(ordered_round);
    CHECK(c[1].ran_at <= c[2].ran_at);
    CHECK(c[2].ran_at <= c[0].ran_at);
    /* FOREVER never runs; a wall-clock time in the past runs now. */
    CHECK_EQ(dk_queue_after_f(q, DK_TIME_FOREVER, &c[0], after_item), 0);
    struct after_ctx w = {dk_now(), 0, s};
    CHECK_EQ(dk_queue_after_f(q, dk_walltime(0, -1000000), &w, after_item), 0);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(SECONDS(10))), 0);
    CHECK(w.ran_at != 0);
    dk_release(q);
    dk_release(s);
}

DK_TEST(time_encoding_matches_gcd)
{
    CHECK_EQ(dk_time(DK_TIME_FOREVER, 5) == DK_TIME_FOREVER, 1);
    dk_time_t t = dk_time(DK_TIME_NOW, 1000);
    CHECK(t > 0 && t != DK_TIME_FOREVER);
    CHECK((int64_t)dk_walltime(0, 0) < 0);
    CHECK(dk_walltime(0, 0) != DK_TIME_FOREVER);
    /* Wall times decrease as they get later. */
    CHECK(dk_walltime(1000000000ull, 1) < dk_walltime(1000000000ull, 0));
    CHECK(dk_time_deadline(DK_TIME_FOREVER) == UINT64_MAX);
    CHECK(dk_time(dk_time(DK_TIME_NOW, 0), INT64_MIN) >= 1);
    CHECK(dk_time(1, INT64_MAX) == (uint64_t)INT64_MAX);
}

/* ---- pool growth: consumer submitted before producer ---- */

static dk_semaphore_t *pc_items;
static long pc_consumed;

static void
consumer(void *p)
{
    (void)p;
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(dk_semaphore_wait(pc_items, UINT64_MAX), 0);
        __atomic_add_fetch(&pc_consumed, 1, __ATOMIC_RELAXED);
    }
}

static void
pc_producer(void *p)
{
    (void)p;
    for (int i = 0; i < 5; i++) {
        dk_semaphore_signal(pc_items);
    }
}

DK_TEST(pool_grows_when_workers_block)
{
    /* More blocked consumers than CPUs: producers must still get a
     * thread. */
    pc_items = t_semaphore(0);
    dk_group_t *g = t_group();
    dk_queue_t *q = dk_queue_global(0);
    int n = 8;
    for (int i = 0; i < n; i++) {
        CHECK_EQ(dk_group_async_f(g, q, NULL, consumer), 0);
    }
    for (int i = 0; i < n; i++) {
        CHECK_EQ(dk_group_async_f(g, q, NULL, pc_producer), 0);
    }
    CHECK_EQ(dk_group_wait(g, in_ns(SECONDS(30))), 0);
    CHECK_EQ(pc_consumed, 5 * n);
    dk_release(g);
}

/* ---- specifics and context ---- */

static int key_a, key_b;

static void
get_specific_into(void *p)
{
    ((void **)p)[0] = dk_get_specific(&key_a);
    ((void **)p)[1] = dk_get_specific(&key_b);
}

DK_TEST(specific_values_follow_the_target_chain)
{
    dk_queue_t *parent = t_queue("p", 0, 0, 0, NULL);
    dk_queue_t *child = t_queue("c", 0, 0, 0, parent);
    CHECK_EQ(dk_queue_set_specific(parent, &key_a, (void *)"pa", NULL), 0);
    CHECK_EQ(dk_queue_set_specific(parent, &key_b, (void *)"pb", NULL), 0);
    CHECK_EQ(dk_queue_set_specific(child, &key_a, (void *)"ca", NULL), 0);
    void *got[2];
    CHECK_EQ(dk_queue_sync_f(child, got, get_specific_into), 0);
    CHECK(got[0] == (void *)"ca");
    CHECK(got[1] == (void *)"pb");
    CHECK(dk_get_specific(&key_a) == NULL);
    CHECK_EQ(dk_queue_set_specific(child, &key_a, NULL, NULL), 0);
    CHECK(dk_queue_get_specific(child, &key_a) == NULL);
    dk_release(child);
    dk_release(parent);
}

DK_TEST(context_finalizer_runs_after_release)
{
    dk_semaphore_t *s = t_semaphore(0);
    dk_queue_t *q = t_queue("ctx", 0, 0, 0, NULL);
    dk_queue_set_context(q, s);
    dk_queue_set_finalizer_f(q, finalize);
    CHECK(dk_queue_get_context(q) == s);
    dk_release(q);
    CHECK_EQ(dk_semaphore_wait(s, in_ns(SECONDS(10))), 0);
    dk_release(s);
}

/* ---- main queue ---- */

DK_TEST(main_queue_drained_only_by_main_thread)
{
    dk_queue_t *m = dk_queue_main();
    CHECK(strcmp(dk_queue_label(m), "com.apple.main-thread") == 0);
    CHECK(dk_is_main_thread());
    long n = 0;
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(dk_queue_async_f(m, &n, count_item), 0);
    }
    usleep(10000);
    CHECK_EQ(__atomic_load_n(&n, __ATOMIC_ACQUIRE), 0);
    CHECK_EQ(dk_main_drain(0), 5);
    CHECK_EQ(n, 5);
    CHECK_EQ(dk_main_drain(0), 0);
    CHECK_EQ(dk_main_drain(in_ns(1000000)), -ETIMEDOUT);
    /* sync from the main thread drains through to its own item */
    CHECK_EQ(dk_queue_async_f(m, &n, count_item), 0);
    CHECK_EQ(dk_queue_sync_f(m, &n, count_item), 0);
    CHECK_EQ(n, 7);
}

static void *
main_from_other_thread(void *p)
{
    long *rc = p;
    *rc = dk_main_drain(0);
    return NULL;
}

DK_TEST(main_drain_refused_off_main_thread)
{
    pthread_t t;
    long rc = 0;
    pthread_create(&t, NULL, main_from_other_thread, &rc);
    pthread_join(t, NULL);
    CHECK_EQ(rc, -EPERM);
}

/* ---- global queues ---- */

DK_TEST(global_queues_by_priority_and_qos)
{
    CHECK(dk_queue_global(DK_PRIORITY_HIGH) ==
          dk_queue_global(DK_QOS_USER_INITIATED));
    CHECK(dk_queue_global(0) == dk_queue_global(DK_QOS_DEFAULT));
    CHECK(strcmp(dk_queue_label(dk_queue_global(0)),
                 "com.apple.root.default-qos") == 0);
    CHECK(strcmp(dk_queue_label(dk_queue_global(DK_PRIORITY_BACKGROUND)),
                 "com.apple.root.background-qos") == 0);
    CHECK(dk_queue_global(12345) == NULL);
    CHECK(dk_queue_is_global(dk_queue_global(DK_PRIORITY_LOW)));
}

/* ---- fork ---- */

static void
wait_on_semaphore(void *s)
{
    CHECK_EQ(dk_semaphore_wait(s, UINT64_MAX), 0);
}

static bool
wait_quiescent(int ms)
{
    for (int i = 0; i < ms && !dk_pool_quiescent(); i++) {
        usleep(1000);
    }
    return dk_pool_quiescent();
}

DK_TEST(pool_is_quiescent_only_while_every_worker_is_parked)
{
    dk_semaphore_t *gate = t_semaphore(0);
    dk_group_t *g = t_group();
    CHECK_EQ(dk_group_async_f(g, dk_queue_global(0), gate, wait_on_semaphore),
             0);
    /* A worker blocked in an item is never parked. */
    CHECK(!wait_quiescent(200));
    dk_semaphore_signal(gate);
    CHECK_EQ(dk_group_wait(g, in_ns(SECONDS(20))), 0);
    CHECK(wait_quiescent(20000));
    dk_release(g);
    dk_release(gate);
}

DK_TEST(forked_child_gets_a_working_runtime)
{
    dk_queue_t *q = t_queue("pre-fork", 0, 0, 0, NULL);
    long n = 0;
    for (int i = 0; i < 1000; i++) {
        CHECK_EQ(dk_queue_async_f(q, &n, count_item), 0);
    }
    dk_group_t *warm = t_group();
    CHECK_EQ(dk_group_async_f(warm, dk_queue_global(0), &n, noop), 0);
    CHECK_EQ(dk_group_wait(warm, UINT64_MAX), 0);
#if defined(__SANITIZE_ADDRESS__)
    /* GCC 12's ASan allocator takes no lock around fork(): a worker inside
     * free() at that moment (its quarantine refilling) leaves a size-class
     * lock held in the child, and every thread there then hangs in malloc.
     * glibc's malloc is fork-safe, so only the ASan build waits for the
     * pool to park before forking. */
    wait_quiescent(5000);
#endif
    pid_t pid = fork();
    if (pid == 0) {
        long m = 0;
        dk_group_t *g = t_group();
        for (int i = 0; i < 100; i++) {
            CHECK_EQ(dk_group_async_f(g, dk_queue_global(0), &m, count_item),
                     0);
            CHECK_EQ(dk_group_async_f(g, q, &m, count_item), 0);
        }
        int rc = dk_group_wait(g, in_ns(SECONDS(20)));
        /* Distinct codes say which part failed: 2 timed out, 3 lost items. */
        _exit(rc != 0                                        ? 2
              : __atomic_load_n(&m, __ATOMIC_ACQUIRE) != 200 ? 3
                                                             : 0);
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop), 0);
    CHECK_EQ(n, 1000);
    dk_release(warm);
    dk_release(q);
}

/* Two threads enter and leave a group as fast as they can, so its lock
 * (taken by every leave that empties it) is often held when another
 * thread forks; each child then adds a notify to the group, which takes
 * that lock. Without fork handlers for group locks, about a quarter of
 * the children hung there, on a lock held by a thread they do not have. */
struct group_churn {
    dk_group_t *g;
    uint32_t stop;
};

static void *
group_churn(void *p)
{
    struct group_churn *c = p;
    while (!dk__atomic_load_relaxed(&c->stop)) {
        dk_group_enter(c->g);
        CHECK_EQ(dk_group_leave(c->g), 0);
    }
    return NULL;
}

DK_TEST(fork_while_a_group_lock_is_taken)
{
    struct group_churn c = {.g = t_group()};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(pthread_create(&t[i], NULL, group_churn, &c), 0);
    }
    int hung = 0;
    for (int i = 0; i < 40 && hung == 0; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10); /* a hang ends with SIGALRM */
            _exit(dk_group_notify_f(c.g, dk_queue_global(0), NULL, noop) == 0
                      ? 0
                      : 2);
        }
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        hung += WIFSIGNALED(status);
        CHECK(WIFSIGNALED(status) || WEXITSTATUS(status) == 0);
    }
    dk__atomic_store_relaxed(&c.stop, 1);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    }
    CHECK_EQ(hung, 0);
    dk_release(c.g);
}

/* ---- workloops ---- */

struct order_log {
    int seen[16];
    int n;
};

struct order_item {
    struct order_log *log;
    int tag;
};

static void
log_tag(void *p)
{
    struct order_item *it = p;
    it->log->seen[it->log->n++] = it->tag;
}

static void
wait_gate(void *p)
{
    CHECK_EQ(dk_semaphore_wait(p, UINT64_MAX), 0);
}

DK_TEST(workloop_runs_higher_qos_first_fifo_within)
{
    dk_queue_t *wl =
        t_queue("wl", DK_QUEUE_WORKLOOP | DK_QUEUE_INACTIVE, 0, 0, NULL);
    CHECK(dk_queue_is_workloop(wl));
    dk_queue_t *bad;
    CHECK_EQ(dk_queue_create("bad", DK_QUEUE_WORKLOOP | DK_QUEUE_CONCURRENT, 0,
                             0, NULL, &bad),
             -EINVAL);
    CHECK_EQ(dk_queue_create("bad", 0x80, 0, 0, NULL, &bad), -EINVAL);
    dk_semaphore_t *gate = t_semaphore(0);
    struct order_log log = {{0}, 0};
    struct order_item items[6] = {
        {&log, 1}, {&log, 2}, {&log, 3}, {&log, 4}, {&log, 5}, {&log, 6},
    };
    CHECK_EQ(dk_queue_activate(wl), 0);
    CHECK_EQ(dk_queue_async_f(wl, gate, wait_gate),
             0); /* holds the workloop */
    usleep(10000);
    CHECK_EQ(dk_queue_async_qos_f(wl, DK_QOS_BACKGROUND, &items[0], log_tag),
             0);
    CHECK_EQ(dk_queue_async_qos_f(wl, DK_QOS_UTILITY, &items[1], log_tag), 0);
    CHECK_EQ(dk_queue_async_f(wl, &items[2], log_tag), 0); /* default QoS */
    CHECK_EQ(
        dk_queue_async_qos_f(wl, DK_QOS_USER_INTERACTIVE, &items[3], log_tag),
        0);
    CHECK_EQ(dk_queue_async_qos_f(wl, DK_QOS_UTILITY, &items[4], log_tag), 0);
    CHECK_EQ(
        dk_queue_async_qos_f(wl, DK_QOS_USER_INITIATED, &items[5], log_tag),
        0);
    CHECK_EQ(dk_queue_async_qos_f(wl, 0x42, &items[0], log_tag), -EINVAL);
    /* A background item submitted last runs last (FIFO within its class);
     * a sync item would run at default QoS, before the lower classes. */
    dk_semaphore_t *done = t_semaphore(0);
    CHECK_EQ(dk_queue_async_qos_f(wl, DK_QOS_BACKGROUND, done, finalize), 0);
    dk_semaphore_signal(gate);
    CHECK_EQ(dk_semaphore_wait(done, dk_now() + 5 * DK_NSEC_PER_SEC), 0);
    CHECK_EQ(log.n, 6);
    int want[6] = {4, 6, 3, 2, 5, 1};
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(log.seen[i], want[i]);
    }
    struct sync_ctx c = {wl, 1, false};
    CHECK_EQ(dk_queue_sync_f(wl, &c, sync_inside), 0);
    CHECK_EQ(c.rc, -EDEADLK);
    dk_release(wl);
    dk_release(gate);
    dk_release(done);
}

/* ---- sync flags ---- */

struct current_seen {
    dk_queue_t *q;
    bool plain, barrier, would_deadlock, would_deadlock_barrier;
};

static void
record_current(void *p)
{
    struct current_seen *c = p;
    c->plain = dk_queue_is_current(c->q, 0);
    c->barrier = dk_queue_is_current(c->q, DK_SYNC_BARRIER);
    c->would_deadlock = dk_queue_sync_would_deadlock(c->q, 0);
    c->would_deadlock_barrier =
        dk_queue_sync_would_deadlock(c->q, DK_SYNC_BARRIER);
}

DK_TEST(sync_flags_say_barrier_at_the_call_site)
{
    dk_queue_t *q = t_queue("flags", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    struct current_seen c = {.q = q};
    /* A plain item of a concurrent queue: current, not alone on it; only
     * a barrier sync from inside it would deadlock. */
    CHECK_EQ(dk_queue_sync_f(q, &c, record_current), 0);
    CHECK(c.plain && !c.barrier);
    CHECK(!c.would_deadlock && c.would_deadlock_barrier);
    /* A barrier item runs alone: both kinds of sync would deadlock. */
    CHECK_EQ(dk_queue_barrier_sync_f(q, &c, record_current), 0);
    CHECK(c.plain && c.barrier);
    CHECK(c.would_deadlock && c.would_deadlock_barrier);
    CHECK(!dk_queue_is_current(q, 0));
    dk_sync_frame_t frame;
    CHECK_EQ(dk_queue_sync_enter(q, 0x2, &frame), -EINVAL);
    CHECK_EQ(dk_queue_sync_enter(q, DK_SYNC_BARRIER, &frame), 0);
    CHECK(dk_queue_is_current(q, DK_SYNC_BARRIER));
    dk_queue_sync_exit(q, &frame);
    dk_release(q);
}
