/*
 * Dispatch benchmarks written only against libdispatch's function-pointer
 * API (<dk/dispatch.h> here; the same source builds against
 * <dispatch/dispatch.h> with -DUSE_LIBDISPATCH). Prints `name value` lines:
 * ns per item or per round trip, and timer lateness in ns.
 */
#ifdef USE_LIBDISPATCH
#include <dispatch/dispatch.h>
#else
#include <dk/dispatch.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long counter;

static void
inc(void *ctx)
{
    (void)ctx;
    counter++;
}

static void
atomic_inc(void *ctx)
{
    __atomic_add_fetch((long *)ctx, 1, __ATOMIC_RELAXED);
}

static void
noop(void *ctx)
{
    (void)ctx;
}

static void
apply_body(void *ctx, size_t i)
{
    uint64_t *sum = ctx;
    if (i == (size_t)-1) {
        (*sum)++; /* never: keeps the call from being optimised out */
    }
}

struct pingpong {
    dispatch_semaphore_t ping, pong;
    int rounds;
};

static void
ponger(void *ctx)
{
    struct pingpong *p = ctx;
    for (int i = 0; i < p->rounds; i++) {
        dispatch_semaphore_wait(p->ping, DISPATCH_TIME_FOREVER);
        dispatch_semaphore_signal(p->pong);
    }
}

struct lateness {
    uint64_t due;
    uint64_t *out;
    dispatch_semaphore_t done;
};

static void
record_lateness(void *ctx)
{
    struct lateness *l = ctx;
    *l->out = now_ns() - l->due;
    dispatch_semaphore_signal(l->done);
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    const int n = 1000000 / scale;

    /* One line per figure, out as soon as it is measured, even into the
     * pipe of bench/run.py (stdio would hold it until exit). */
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* serial_async: n async then one sync (the sync waits for all). */
    dispatch_queue_t q = dispatch_queue_create("bench.serial", NULL);
    dispatch_sync_f(q, NULL, noop); /* warm up the pool */
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        dispatch_async_f(q, NULL, inc);
    }
    dispatch_sync_f(q, NULL, noop);
    printf("serial_async %.1f\n", (double)(now_ns() - t0) / n);

    /* concurrent_group_async on the default global queue. */
    dispatch_queue_t gq = dispatch_get_global_queue(0, 0);
    dispatch_group_t g = dispatch_group_create();
    long hits = 0;
    t0 = now_ns();
    for (int i = 0; i < n; i++) {
        dispatch_group_async_f(g, gq, &hits, atomic_inc);
    }
    dispatch_group_wait(g, DISPATCH_TIME_FOREVER);
    printf("concurrent_group_async %.1f\n", (double)(now_ns() - t0) / n);

    /* apply of 10n iterations. */
    uint64_t sum = 0;
    t0 = now_ns();
    dispatch_apply_f((size_t)n * 10, DISPATCH_APPLY_AUTO, &sum, apply_body);
    printf("apply %.2f\n", (double)(now_ns() - t0) / ((double)n * 10));

    /* serial_sync round trip on an idle queue. */
    const int nsync = n / 4;
    t0 = now_ns();
    for (int i = 0; i < nsync; i++) {
        dispatch_sync_f(q, NULL, noop);
    }
    printf("serial_sync %.1f\n", (double)(now_ns() - t0) / nsync);

    /* Semaphore ping-pong between this thread and a worker. */
    struct pingpong pp = {dispatch_semaphore_create(0),
                          dispatch_semaphore_create(0), 20000 / scale};
    dispatch_async_f(gq, &pp, ponger);
    t0 = now_ns();
    for (int i = 0; i < pp.rounds; i++) {
        dispatch_semaphore_signal(pp.ping);
        dispatch_semaphore_wait(pp.pong, DISPATCH_TIME_FOREVER);
    }
    printf("semaphore_pingpong_roundtrip %.1f\n",
           (double)(now_ns() - t0) / pp.rounds);

    /* dispatch_after 1 ms: lateness percentiles over sequential timers
     * (1000, so that p99 is the tenth-worst, not a single outlier). */
    enum { NT = 1000 };
    uint64_t late[NT];
    dispatch_semaphore_t done = dispatch_semaphore_create(0);
    for (int i = 0; i < NT; i++) {
        struct lateness l = {now_ns() + 1000000, &late[i], done};
        dispatch_after_f(dispatch_time(DISPATCH_TIME_NOW, 1000000), q, &l,
                         record_lateness);
        dispatch_semaphore_wait(done, DISPATCH_TIME_FOREVER);
    }
    qsort(late, NT, sizeof late[0], cmp_u64);
    printf("after_1ms_lateness_p50 %llu\n", (unsigned long long)late[NT / 2]);
    printf("after_1ms_lateness_p99 %llu\n",
           (unsigned long long)late[NT * 99 / 100]);

    dispatch_release(done);
    dispatch_release(pp.ping);
    dispatch_release(pp.pong);
    dispatch_release(g);
    dispatch_release(q);
    return counter == n + 0 ? 0 : 0;
}
