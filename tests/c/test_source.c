/* Tests of dispatch sources: timers, signals, fds, processes. */
#include "objects.h"
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)

struct counter {
    dk_source_t *s;
    dk_semaphore_t *sem;
    long calls;
    uintptr_t data_sum;
    uintptr_t first_data; /* what the first delivery saw */
    int inside;
    int overlaps;
    int cancelled; /* the cancel handler has run */
    unsigned sleep_us;
};

static void
count_handler(void *p)
{
    struct counter *c = p;
    if (__atomic_exchange_n(&c->inside, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&c->overlaps, 1, __ATOMIC_RELAXED);
    }
    uintptr_t data = dk_source_get_data(c->s);
    if (__atomic_add_fetch(&c->calls, 1, __ATOMIC_ACQ_REL) == 1) {
        __atomic_store_n(&c->first_data, data, __ATOMIC_RELEASE);
    }
    __atomic_add_fetch(&c->data_sum, data, __ATOMIC_RELEASE);
    if (c->sleep_us) {
        usleep(c->sleep_us);
    }
    __atomic_store_n(&c->inside, 0, __ATOMIC_RELEASE);
    dk_semaphore_signal(c->sem);
}

static void
cancel_handler(void *p)
{
    struct counter *c = p;
    __atomic_add_fetch(&c->calls, 1000, __ATOMIC_RELEASE);
    __atomic_store_n(&c->cancelled, 1, __ATOMIC_RELEASE);
    dk_semaphore_signal(c->sem);
}

static struct counter *
counter_new(dk_source_t *s)
{
    struct counter *c = calloc(1, sizeof *c);
    c->s = s;
    c->sem = t_semaphore(0);
    dk_source_set_context(s, c);
    dk_source_set_event_handler_f(s, count_handler);
    dk_source_set_cancel_handler_f(s, cancel_handler);
    return c;
}

DK_TEST(timer_repeats_and_cancel_handler_runs_once)
{
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    CHECK(s != NULL);
    struct counter *c = counter_new(s);
    CHECK_EQ(dk_source_set_timer(s, DK_TIME_NOW, 5 * T_MS, 0), 0);
    CHECK_EQ(dk_source_resume(s), 0);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    }
    dk_source_cancel(s);
    CHECK(dk_source_testcancel(s));
    /* The cancel handler's signal may follow more event signals. */
    while (LOAD(c->calls) < 1000) {
        CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    }
    long calls = LOAD(c->calls);
    usleep(30000);
    CHECK_EQ(LOAD(c->calls), calls); /* nothing after the cancel handler */
    CHECK(calls >= 1003);
    CHECK(LOAD(c->data_sum) >= 3);
    dk_source_cancel(s); /* idempotent */
    dk_release(s);
}

DK_TEST(one_shot_timer_fires_once)
{
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    struct counter *c = counter_new(s);
    CHECK_EQ(dk_source_set_timer(s, dk_time(DK_TIME_NOW, (int64_t)(10 * T_MS)),
                                 DK_TIME_FOREVER, 0),
             0);
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(60)), -ETIMEDOUT);
    CHECK_EQ(LOAD(c->calls), 1);
    CHECK(!dk_source_testcancel(s));
    dk_source_cancel(s);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    dk_release(s);
}

DK_TEST(slow_timer_handler_never_overlaps_and_fires_coalesce)
{
    dk_queue_t *cq = t_queue("c", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, cq);
    struct counter *c = counter_new(s);
    c->sleep_us = 20000; /* much longer than the interval */
    CHECK_EQ(dk_source_set_timer(s, DK_TIME_NOW, 1 * T_MS, 0), 0);
    CHECK_EQ(dk_source_resume(s), 0);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    }
    dk_source_cancel(s);
    while (LOAD(c->calls) < 1000) {
        CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    }
    CHECK_EQ(LOAD(c->overlaps), 0);
    /* Fires that happened during a handler were counted, not lost. */
    CHECK(LOAD(c->data_sum) > (uintptr_t)(LOAD(c->calls) - 1000));
    dk_release(s);
    dk_release(cq);
}

DK_TEST(suspended_timer_accumulates_and_delivers_on_resume)
{
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    struct counter *c = counter_new(s);
    CHECK_EQ(dk_source_set_timer(s, DK_TIME_NOW, 2 * T_MS, 0), 0);
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    dk_source_suspend(s);
    long before = __atomic_load_n(&c->calls, __ATOMIC_ACQUIRE);
    usleep(40000);
    CHECK(__atomic_load_n(&c->calls, __ATOMIC_ACQUIRE) <= before + 1);
    uintptr_t sum_before = LOAD(c->data_sum);
    CHECK_EQ(dk_source_resume(s), 0);
    /* A handler in flight at suspend() may have signalled the semaphore:
     * wait for the delivery of what accumulated, not for a signal. */
    uint64_t until = dk_now() + 5ull * DK_NSEC_PER_SEC;
    while (LOAD(c->data_sum) - sum_before < 5 && dk_now() < until) {
        int rc = dk_semaphore_wait(c->sem, t_in_ms(100));
        CHECK(rc == 0 || rc == -ETIMEDOUT);
    }
    CHECK(LOAD(c->data_sum) - sum_before >= 5); /* ~20 fires coalesced */
    CHECK_EQ(dk_source_resume(s), 0 - EOVERFLOW);
    dk_source_cancel(s);
    dk_release(s);
}

static struct counter *sig_c1, *sig_c2;

DK_TEST(signal_source_sees_ignored_signal_and_restores_disposition)
{
    signal(SIGUSR1, SIG_IGN);
    dk_source_t *a = t_source(DK_SOURCE_SIGNAL, SIGUSR1, 0, NULL);
    dk_source_t *b = t_source(DK_SOURCE_SIGNAL, SIGUSR1, 0, NULL);
    sig_c1 = counter_new(a);
    sig_c2 = counter_new(b);
    CHECK_EQ(dk_source_resume(a), 0);
    CHECK_EQ(dk_source_resume(b), 0);
    kill(getpid(), SIGUSR1);
    CHECK_EQ(dk_semaphore_wait(sig_c1->sem, t_in_ms(5000)), 0);
    CHECK_EQ(dk_semaphore_wait(sig_c2->sem, t_in_ms(5000)), 0);
    CHECK(LOAD(sig_c1->data_sum) >= 1 && LOAD(sig_c2->data_sum) >= 1);
    dk_source_cancel(a);
    struct sigaction sa;
    sigaction(SIGUSR1, NULL, &sa);
    CHECK(sa.sa_handler != SIG_IGN); /* b still holds it */
    dk_source_cancel(b);
    sigaction(SIGUSR1, NULL, &sa);
    CHECK(sa.sa_handler == SIG_IGN); /* restored */
    dk_release(a);
    dk_release(b);
}

static volatile sig_atomic_t chained;

static void
user_handler(int sig)
{
    (void)sig;
    chained++;
}

DK_TEST(signal_source_chains_to_existing_handler)
{
    signal(SIGUSR2, user_handler);
    dk_source_t *s = t_source(DK_SOURCE_SIGNAL, SIGUSR2, 0, NULL);
    struct counter *c = counter_new(s);
    CHECK_EQ(dk_source_resume(s), 0);
    kill(getpid(), SIGUSR2);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    CHECK_EQ(chained, 1);
    dk_source_cancel(s);
    dk_release(s);
}

DK_TEST(source_creation_rejects_bad_input)
{
    dk_source_t *bad = (dk_source_t *)&bad;
    CHECK_EQ(dk_source_create(DK_SOURCE_SIGNAL, SIGKILL, 0, NULL, &bad),
             -EINVAL);
    CHECK(bad == NULL);
    CHECK_EQ(dk_source_create(DK_SOURCE_SIGNAL, 0, 0, NULL, &bad), -EINVAL);
    CHECK_EQ(dk_source_create(DK_SOURCE_SIGNAL, 999, 0, NULL, &bad), -EINVAL);
    /* Fault signals: a returning handler would re-run the fault forever. */
    const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        CHECK_EQ(dk_source_create(DK_SOURCE_SIGNAL, (uintptr_t)faults[i], 0,
                                  NULL, &bad),
                 -EINVAL);
    }
    CHECK_EQ(dk_source_create(DK_SOURCE_READ, 987, 0, NULL, &bad), -EBADF);
    CHECK_EQ(
        dk_source_create(DK_SOURCE_PROC, 0x3fffffff, DK_PROC_EXIT, NULL, &bad),
        -ESRCH);
    CHECK_EQ(
        dk_source_create(DK_SOURCE_PROC, (uintptr_t)getpid(), 0x1, NULL, &bad),
        -EINVAL);
    CHECK_EQ(dk_source_create((dk_source_type_t)42, 0, 0, NULL, &bad),
             -EINVAL);
    dk_source_t *t = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    CHECK_EQ(dk_source_set_timer(t, DK_TIME_NOW, 0, 0), -EINVAL);
    dk_source_cancel(t);
    dk_release(t);
}

DK_TEST(read_and_write_sources_on_a_pipe)
{
    int p[2];
    CHECK_EQ(pipe(p), 0);
    dk_source_t *r = t_source(DK_SOURCE_READ, (uintptr_t)p[0], 0, NULL);
    dk_source_t *w = t_source(DK_SOURCE_WRITE, (uintptr_t)p[1], 0, NULL);
    struct counter *rc = counter_new(r);
    struct counter *wc = counter_new(w);
    CHECK_EQ(dk_source_resume(r), 0);
    CHECK_EQ(dk_semaphore_wait(rc->sem, t_in_ms(50)), -ETIMEDOUT);
    CHECK_EQ(write(p[1], "hello", 5), 5);
    CHECK_EQ(dk_semaphore_wait(rc->sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(rc->first_data), 5); /* bytes available */
    /* Level-triggered: still readable, so it fires again. */
    CHECK_EQ(dk_semaphore_wait(rc->sem, t_in_ms(5000)), 0);
    char buf[8];
    CHECK_EQ(read(p[0], buf, sizeof buf), 5);
    CHECK_EQ(dk_source_resume(w), 0);
    CHECK_EQ(dk_semaphore_wait(wc->sem, t_in_ms(5000)), 0);
    CHECK(LOAD(wc->data_sum) > 0); /* buffer space */
    dk_source_cancel(w);
    dk_source_cancel(r);
    /* Not calls >= 1000: a level-triggered source run on the event thread
     * can fire 1000 times before it is cancelled. */
    while (!LOAD(rc->cancelled) || !LOAD(wc->cancelled)) {
        usleep(1000);
    }
    long n = LOAD(rc->calls);
    CHECK_EQ(write(p[1], "x", 1), 1);
    usleep(20000);
    CHECK_EQ(LOAD(rc->calls), n);
    dk_release(r);
    dk_release(w);
    close(p[0]);
    close(p[1]);
}

DK_TEST(proc_source_sees_child_exit)
{
    pid_t pid = fork();
    if (pid == 0) {
        usleep(50000);
        _exit(3);
    }
    dk_source_t *s =
        t_source(DK_SOURCE_PROC, (uintptr_t)pid, DK_PROC_EXIT, NULL);
    CHECK(s != NULL);
    struct counter *c = counter_new(s);
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(c->sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(c->data_sum), DK_PROC_EXIT);
    int status;
    waitpid(pid, &status, 0);
    CHECK_EQ(WEXITSTATUS(status), 3);
    dk_source_cancel(s);
    dk_release(s);
}

struct coalesce {
    dk_semaphore_t *sem;
    uint64_t fired_at;
};

static void
stamp(void *p)
{
    struct coalesce *c = p;
    c->fired_at = dk_now();
    dk_semaphore_signal(c->sem);
}

DK_TEST(timers_with_leeway_fire_within_their_window)
{
    struct coalesce a = {t_semaphore(0), 0};
    struct coalesce b = {a.sem, 0};
    dk_source_t *sa = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    dk_source_t *sb = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    dk_source_set_context(sa, &a);
    dk_source_set_context(sb, &b);
    dk_source_set_event_handler_f(sa, stamp);
    dk_source_set_event_handler_f(sb, stamp);
    uint64_t t0 = dk_now();
    CHECK_EQ(dk_source_set_timer(sa,
                                 dk_time(DK_TIME_NOW, (int64_t)(20 * T_MS)),
                                 DK_TIME_FOREVER, 30 * T_MS),
             0);
    CHECK_EQ(dk_source_set_timer(sb,
                                 dk_time(DK_TIME_NOW, (int64_t)(40 * T_MS)),
                                 DK_TIME_FOREVER, 0),
             0);
    CHECK_EQ(dk_source_resume(sa), 0);
    CHECK_EQ(dk_source_resume(sb), 0);
    CHECK_EQ(dk_semaphore_wait(a.sem, t_in_ms(5000)), 0);
    CHECK_EQ(dk_semaphore_wait(a.sem, t_in_ms(5000)), 0);
    /* a may be late by its leeway (to share b's wake-up), never early. */
    CHECK(a.fired_at >= t0 + 20 * T_MS);
    CHECK(b.fired_at >= t0 + 40 * T_MS);
    dk_source_cancel(sa);
    dk_source_cancel(sb);
    dk_release(sa);
    dk_release(sb);
}

/* ---- handlers run on the event thread that received the event ------- */

static void
noop_fn(void *p)
{
    (void)p;
}

struct inline_probe {
    dk_semaphore_t *timer_ran; /* signalled by the timer's handler */
    dk_semaphore_t *done;      /* signalled when the fd handler returns */
    int fd;
    int on_event_thread; /* the fd handler ran on an event thread */
    int saw_timer;       /* ... and saw the timer fire meanwhile */
    int timer_on_event;  /* the timer's handler ran on an event thread */
};

static void
blocking_read_handler(void *p)
{
    struct inline_probe *x = p;
    char c;
    if (read(x->fd, &c, 1) != 1) {
        return;
    }
    __atomic_store_n(&x->on_event_thread, dk_is_event_thread(),
                     __ATOMIC_RELEASE);
    /* Block until a timer armed by the test fires: were the epoll role
     * stalled behind this handler, it never would. */
    __atomic_store_n(&x->saw_timer,
                     dk_semaphore_wait(x->timer_ran, t_in_ms(10000)) == 0,
                     __ATOMIC_RELEASE);
    dk_semaphore_signal(x->done);
}

static void
timer_ran_handler(void *p)
{
    struct inline_probe *x = p;
    __atomic_store_n(&x->timer_on_event, dk_is_event_thread(),
                     __ATOMIC_RELEASE);
    dk_semaphore_signal(x->timer_ran);
}

DK_TEST(read_handler_runs_on_event_thread_and_long_one_stalls_no_timer)
{
    int p[2];
    CHECK_EQ(pipe(p), 0);
    struct inline_probe x = {t_semaphore(0), t_semaphore(0), p[0], 0, 0, 0};
    dk_source_t *r = t_source(DK_SOURCE_READ, (uintptr_t)p[0], 0, NULL);
    dk_source_set_context(r, &x);
    dk_source_set_event_handler_f(r, blocking_read_handler);
    CHECK_EQ(dk_source_resume(r), 0);
    dk_source_t *t = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    dk_source_set_context(t, &x);
    dk_source_set_event_handler_f(t, timer_ran_handler);
    CHECK_EQ(dk_source_set_timer(t, dk_time(DK_TIME_NOW, (int64_t)(30 * T_MS)),
                                 DK_TIME_FOREVER, 0),
             0);
    CHECK_EQ(write(p[1], "x", 1), 1);
    CHECK_EQ(dk_source_resume(t), 0);
    CHECK_EQ(dk_semaphore_wait(x.done, t_in_ms(20000)), 0);
    CHECK(LOAD(x.on_event_thread));
    CHECK(LOAD(x.saw_timer));
    /* The other event thread did not run the timer's handler while the
     * first one ran user code: it went to the pool. */
    CHECK(!LOAD(x.timer_on_event));
    dk_source_cancel(t);
    dk_source_cancel(r);
    dk_release(t);
    dk_release(r);
    close(p[0]);
    close(p[1]);
}

struct serial_probe {
    dk_source_t *s;
    dk_semaphore_t *sem;
    int inside;
    int overlaps;
    long runs;
    int inline_runs;
};

static void
serial_probe_enter(struct serial_probe *x)
{
    if (__atomic_exchange_n(&x->inside, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&x->overlaps, 1, __ATOMIC_RELAXED);
    }
    if (dk_is_event_thread()) {
        __atomic_add_fetch(&x->inline_runs, 1, __ATOMIC_RELAXED);
    }
    for (volatile int i = 0; i < 2000; i++) {
    }
    __atomic_add_fetch(&x->runs, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&x->inside, 0, __ATOMIC_RELEASE);
}

static void
serial_probe_item(void *p)
{
    serial_probe_enter(p);
}

static void
serial_probe_after(void *p)
{
    struct serial_probe *x = p;
    serial_probe_enter(x);
    dk_semaphore_signal(x->sem);
}

DK_TEST(handlers_on_event_thread_keep_serial_queue_exclusive)
{
    dk_queue_t *q = t_queue("serial", 0, 0, 0, NULL);
    struct serial_probe x = {NULL, t_semaphore(0), 0, 0, 0, 0};
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, q);
    x.s = s;
    dk_source_set_context(s, &x);
    dk_source_set_event_handler_f(s, serial_probe_item);
    CHECK_EQ(dk_source_set_timer(s, DK_TIME_NOW, 200000, 0),
             0); /* every 0.2 ms */
    CHECK_EQ(dk_source_resume(s), 0);
    /* dispatch_after items and plain items on the same queue, while the
     * timer's handler competes for it from the event threads. An event
     * thread runs the handler itself only when it finds the queue idle;
     * on a loaded machine the worker drains the items slower than they
     * come, and the first 200 rounds may never leave it idle (7 of 90
     * ASan runs, three at once, ended with no inline run at all): the
     * rounds then go on, each letting the queue drain before its pause,
     * until one has been seen. */
    int rounds = 0;
    while (rounds < 200 || (LOAD(x.inline_runs) == 0 && rounds < 200 + 2000)) {
        int i = rounds++;
        CHECK_EQ(
            dk_queue_after_f(q, dk_time(DK_TIME_NOW, 100000 + i % 200 * 1000),
                             &x, serial_probe_after),
            0);
        for (int j = 0; j < 20; j++) {
            CHECK_EQ(dk_queue_async_f(q, &x, serial_probe_item), 0);
        }
        if (i >= 200) {
            CHECK_EQ(dk_queue_sync_f(q, NULL, noop_fn), 0);
        }
        if (i % 20 == 0 || i >= 200) {
            usleep(1000); /* let the queue go idle now and then */
        }
    }
    for (int i = 0; i < rounds; i++) {
        CHECK_EQ(dk_semaphore_wait(x.sem, t_in_ms(10000)), 0);
    }
    dk_source_cancel(s);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop_fn), 0);
    CHECK_EQ(LOAD(x.overlaps), 0);
    CHECK(LOAD(x.inline_runs) > 0);
    dk_release(s);
    dk_release(q);
    dk_release(x.sem);
}

static int after_ran;

static void
mark_after(void *p)
{
    (void)p;
    __atomic_store_n(&after_ran, 1, __ATOMIC_RELEASE);
}

DK_TEST(dispatch_after_on_a_suspended_queue_waits_for_resume)
{
    dk_queue_t *q = t_queue("suspended", 0, 0, 0, NULL);
    dk_queue_suspend(q);
    CHECK_EQ(dk_queue_after_f(q, dk_time(DK_TIME_NOW, (int64_t)(5 * T_MS)),
                              NULL, mark_after),
             0);
    usleep(60000);
    CHECK_EQ(LOAD(after_ran), 0);
    CHECK_EQ(dk_queue_resume(q), 0);
    CHECK_EQ(dk_queue_sync_f(q, NULL, noop_fn), 0);
    CHECK_EQ(LOAD(after_ran), 1);
    dk_release(q);
}

struct estimate_probe {
    dk_source_t *s;
    int fd;
    dk_semaphore_t *sem;
    uintptr_t before, after;
};

/* A suspended read source on a new pipe p, whose handler gets x. */
static dk_source_t *
probed_pipe_source(int p[2], struct estimate_probe *x, dk_function_t handler)
{
    CHECK_EQ(pipe(p), 0);
    dk_source_t *r = t_source(DK_SOURCE_READ, (uintptr_t)p[0], 0, NULL);
    *x = (struct estimate_probe){r, p[0], t_semaphore(0), 0, 0};
    dk_source_set_context(r, x);
    dk_source_set_event_handler_f(r, handler);
    return r;
}

static void
estimate_handler(void *p)
{
    struct estimate_probe *x = p;
    char c[2];
    if (read(x->fd, c, 2) != 2) {
        return;
    }
    x->before = dk_source_get_data(x->s);
    if (read(x->fd, c, 1) != 1) {
        return;
    }
    x->after = dk_source_get_data(x->s);
    dk_source_suspend(x->s); /* once is enough */
    dk_semaphore_signal(x->sem);
}

DK_TEST(read_estimate_is_taken_when_first_asked_and_kept)
{
    int p[2];
    struct estimate_probe x;
    dk_source_t *r = probed_pipe_source(p, &x, estimate_handler);
    CHECK_EQ(write(p[1], "abcdef", 6), 6);
    CHECK_EQ(dk_source_resume(r), 0);
    CHECK_EQ(dk_semaphore_wait(x.sem, t_in_ms(5000)), 0);
    /* Taken when the handler first asks (after it read two of six
     * bytes), then kept for the rest of the call. */
    CHECK_EQ(x.before, 4);
    CHECK_EQ(x.after, 4);
    dk_source_cancel(r);
    CHECK_EQ(dk_source_resume(r), 0);
    dk_release(r);
    dk_release(x.sem);
    close(p[0]);
    close(p[1]);
}

static pid_t forked_child;

#if defined(__SANITIZE_ADDRESS__)
static void
exit_before_leak_check(void)
{
    _exit(0);
}

/* Whether thread tid of this process sleeps in a call that parks it
 * (/proc's syscall file names the call a blocked thread is in and says
 * "running" otherwise), and whether it is the event thread's relief. */
static bool
thread_parked(const char *tid, bool *relief)
{
    char path[64], text[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", tid);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        *relief = fgets(text, sizeof text, f) != NULL &&
                  strncmp(text, "dk-event-relief", 15) == 0;
        fclose(f);
    }
    snprintf(path, sizeof path, "/proc/self/task/%s/syscall", tid);
    f = fopen(path, "r");
    long nr = -1;
    if (f == NULL || fscanf(f, "%ld", &nr) != 1) {
        nr = -1; /* "running" */
    }
    if (f != NULL) {
        fclose(f);
    }
    static const long parking[] = {
        SYS_ppoll,
        SYS_epoll_pwait,
        SYS_futex,
#if defined(SYS_poll)
        SYS_poll,
        SYS_epoll_wait, /* x86-64 has these, aarch64 not */
#endif
    };
    for (size_t i = 0; i < sizeof parking / sizeof parking[0]; i++) {
        if (nr == parking[i]) {
            return true;
        }
    }
    return false;
}

/* Wait up to ms for every other thread to be parked, the relief thread
 * among them (it starts with the event thread, so it may still be in
 * its set-up when the first event comes). */
static bool
wait_other_threads_parked(int ms)
{
    char me[32];
    snprintf(me, sizeof me, "%ld", (long)syscall(SYS_gettid));
    for (int i = 0; i < ms; i++) {
        DIR *d = opendir("/proc/self/task");
        CHECK(d != NULL);
        bool all = true, relief_seen = false;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' || strcmp(e->d_name, me) == 0) {
                continue;
            }
            bool relief = false;
            all = thread_parked(e->d_name, &relief) && all;
            relief_seen = relief_seen || relief;
        }
        closedir(d);
        if (all && relief_seen) {
            return true;
        }
        usleep(1000);
    }
    return false;
}
#endif

static void
forking_handler(void *p)
{
    struct estimate_probe *x = p;
    char c;
    if (read(x->fd, &c, 1) != 1) {
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
#if defined(__SANITIZE_ADDRESS__)
        /* The child ends when this, its only thread, leaves the event
         * loop, through exit(): LeakSanitizer's check there would report
         * every object of the parent's it inherited. */
        atexit(exit_before_leak_check);
#endif
        return; /* the child returns from the handler, on the event thread */
    }
    forked_child = pid;
    dk_semaphore_signal(x->sem);
}

DK_TEST(child_forked_in_a_handler_can_return_from_it)
{
    int p[2];
    struct estimate_probe x;
    dk_source_t *r = probed_pipe_source(p, &x, forking_handler);
    CHECK_EQ(dk_source_resume(r), 0);
#if defined(__SANITIZE_ADDRESS__)
    /* GCC 12's ASan allocator takes no lock around fork(): the relief
     * thread still in its set-up (allocating) when the handler forks
     * leaves a size-class lock held in the child, whose event thread
     * then hangs in ASan's thread teardown on its way out (4 of 250
     * ASan runs of the test alone hung so). glibc's malloc is fork-safe,
     * so only the ASan build lets the threads settle before the event. */
    CHECK(wait_other_threads_parked(5000));
#endif
    CHECK_EQ(write(p[1], "x", 1), 1);
    CHECK_EQ(dk_semaphore_wait(x.sem, t_in_ms(5000)), 0);
    int status = 0;
    CHECK_EQ(waitpid(forked_child, &status, 0), forked_child);
    /* The child's event thread ends quietly; it must not abort on the
     * parent's (closed) epoll set. */
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    dk_source_cancel(r);
    dk_release(r);
    dk_release(x.sem);
    close(p[0]);
    close(p[1]);
}
