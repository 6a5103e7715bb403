/* Programs written against libdispatch's _f API (<dk/dispatch.h>). */
#include "runner.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dk/dispatch.h"
/* The shared-memory event's older header name still compiles. */
#include "dk/event.h"

_Static_assert(sizeof(dk_shm_event_t) == 4,
               "dk/event.h still declares the shared-memory event");

static void
tick(void *ctx)
{
    dispatch_source_t s = ctx;
    static int fires;
    if (++fires == 3) {
        dispatch_source_cancel(s);
    }
}

static void
cancelled(void *ctx)
{
    (void)ctx;
}

static void
signal_done(void *ctx)
{
    dispatch_semaphore_signal(ctx);
}

DK_TEST(compat_timer_source_and_object_context)
{
    dispatch_queue_t q =
        dispatch_queue_create("compat", DISPATCH_QUEUE_SERIAL);
    dispatch_source_t t =
        dispatch_source_create(DISPATCH_SOURCE_TYPE_TIMER, 0, 0, q);
    CHECK(t != NULL);
    dispatch_semaphore_t done = dispatch_semaphore_create(0);
    dispatch_set_context(t, t);
    CHECK(dispatch_get_context(t) == t);
    dispatch_source_set_event_handler_f(t, tick);
    dispatch_source_set_cancel_handler_f(t, cancelled);
    dispatch_source_set_timer(t, DISPATCH_TIME_NOW, 2 * NSEC_PER_MSEC, 0);
    dispatch_resume(t);
    while (!dispatch_source_testcancel(t)) {
        usleep(1000);
    }
    /* A context finalizer on a queue runs after its release. */
    dispatch_set_context(q, done);
    dispatch_set_finalizer_f(q, signal_done);
    dispatch_release(q);
    dispatch_release(t); /* the source held the queue too */
    CHECK_EQ(dispatch_semaphore_wait(
                 done, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    dispatch_release(done);
}

static void
on_sig(void *ctx)
{
    dispatch_semaphore_signal(ctx);
}

DK_TEST(compat_signal_source_and_bad_types)
{
    signal(SIGUSR1, SIG_IGN);
    dispatch_semaphore_t got = dispatch_semaphore_create(0);
    dispatch_source_t s =
        dispatch_source_create(DISPATCH_SOURCE_TYPE_SIGNAL, SIGUSR1, 0,
                               dispatch_get_global_queue(0, 0));
    dispatch_set_context(s, got);
    dispatch_source_set_event_handler_f(s, on_sig);
    dispatch_activate(s);
    kill(getpid(), SIGUSR1);
    CHECK_EQ(dispatch_semaphore_wait(
                 got, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK(dispatch_source_get_handle(s) == SIGUSR1);
    dispatch_source_cancel(s);
    dispatch_release(s);
    CHECK(dispatch_source_create(DISPATCH_SOURCE_TYPE_SIGNAL, SIGKILL, 0,
                                 NULL) == NULL);
    dispatch_release(got);
}

struct io_result {
    dispatch_semaphore_t sem;
    size_t total;
    int error;
    bool done;
    char buf[64];
};

static void
on_chunk(void *ctx, bool done, dispatch_data_t data, int error)
{
    struct io_result *r = ctx;
    const void *bytes;
    size_t n;
    dispatch_data_t m = dispatch_data_create_map(data, &bytes, &n);
    memcpy(r->buf + r->total, bytes, n);
    r->total += n;
    dispatch_release(m);
    if (done) {
        r->error = error;
        r->done = true;
        dispatch_semaphore_signal(r->sem);
    }
}

static void
on_read(void *ctx, dispatch_data_t data, int error)
{
    on_chunk(ctx, true, data, error);
}

static bool
count_region(void *ctx, dispatch_data_t region, size_t offset,
             const void *buffer, size_t size)
{
    (void)region;
    (void)offset;
    (void)buffer;
    *(size_t *)ctx += size;
    return true;
}

DK_TEST(compat_data_and_io)
{
    dispatch_data_t a = dispatch_data_create_f(
        "hello ", 6, NULL, DISPATCH_DATA_DESTRUCTOR_DEFAULT);
    char *heap = malloc(5);
    memcpy(heap, "world", 5);
    dispatch_data_t b =
        dispatch_data_create_f(heap, 5, NULL, DISPATCH_DATA_DESTRUCTOR_FREE);
    dispatch_data_t ab = dispatch_data_create_concat(a, b);
    CHECK_EQ(dispatch_data_get_size(ab), 11);
    size_t total = 0;
    CHECK(dispatch_data_apply_f(ab, &total, count_region));
    CHECK_EQ(total, 11);
    size_t off;
    dispatch_data_t r = dispatch_data_copy_region(ab, 8, &off);
    CHECK_EQ(off, 6);
    dispatch_release(r);

    int p[2];
    CHECK_EQ(pipe(p), 0);
    struct io_result w = {dispatch_semaphore_create(0), 0, -1, false, {0}};
    dispatch_write_f(p[1], ab, NULL, &w, on_read);
    CHECK_EQ(dispatch_semaphore_wait(
                 w.sem, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK_EQ(w.error, 0);
    dispatch_io_t ch =
        dispatch_io_create_f(DISPATCH_IO_STREAM, p[0], NULL, NULL, NULL);
    dispatch_io_set_high_water(ch, 4);
    struct io_result rr = {dispatch_semaphore_create(0), 0, -1, false, {0}};
    dispatch_io_read_f(ch, 0, 11, NULL, &rr, on_chunk);
    CHECK_EQ(dispatch_semaphore_wait(
                 rr.sem, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK_EQ(rr.total, 11);
    CHECK(memcmp(rr.buf, "hello world", 11) == 0);
    CHECK_EQ(dispatch_io_get_descriptor(ch), p[0]);
    dispatch_io_close(ch, 0);
    /* Channels are objects like the others: dispatch_retain and
     * dispatch_release apply, dispatch_io_release is dispatch_release. */
    dispatch_retain(ch);
    dispatch_io_release(ch);
    dispatch_release(ch);
    dispatch_release(ab);
    dispatch_release(a);
    dispatch_release(b);
    dispatch_release(w.sem);
    dispatch_release(rr.sem);
    close(p[0]);
    close(p[1]);
}

/* ---- data sources and the registration handler ---------------------- */

struct merged {
    dispatch_source_t s;
    dispatch_semaphore_t sem;
    uintptr_t sum, target;
    int inside, overlaps, registered_first;
    long calls;
};

static void
on_merged(void *ctx)
{
    struct merged *m = ctx;
    if (__atomic_exchange_n(&m->inside, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&m->overlaps, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&m->calls, 1, __ATOMIC_RELAXED);
    uintptr_t sum = __atomic_add_fetch(&m->sum, dispatch_source_get_data(m->s),
                                       __ATOMIC_ACQ_REL);
    __atomic_store_n(&m->inside, 0, __ATOMIC_RELEASE);
    if (sum == m->target) {
        dispatch_semaphore_signal(m->sem);
    }
}

static void
on_registered(void *ctx)
{
    struct merged *m = ctx;
    m->registered_first = __atomic_load_n(&m->calls, __ATOMIC_ACQUIRE) == 0;
    dispatch_semaphore_signal(m->sem);
}

static void *
merge_thread(void *ctx)
{
    struct merged *m = ctx;
    for (uintptr_t i = 1; i <= 10000; i++) {
        dispatch_source_merge_data(m->s, i);
    }
    return NULL;
}

DK_TEST(compat_data_add_source_coalesces_merges_from_threads)
{
    struct merged m = {0};
    m.sem = dispatch_semaphore_create(0);
    m.target = 3 * (10000ul * 10001ul / 2);
    m.s = dispatch_source_create(DISPATCH_SOURCE_TYPE_DATA_ADD, 0, 0,
                                 dispatch_get_global_queue(0, 0));
    CHECK(m.s != NULL);
    dispatch_set_context(m.s, &m);
    dispatch_source_set_event_handler_f(m.s, on_merged);
    dispatch_source_set_registration_handler_f(m.s, on_registered);
    dispatch_resume(m.s);
    CHECK_EQ(dispatch_semaphore_wait(
                 m.sem, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK(m.registered_first);
    t_run_threads(3, merge_thread, &m);
    CHECK_EQ(dispatch_semaphore_wait(
                 m.sem, dispatch_time(DISPATCH_TIME_NOW, 20 * NSEC_PER_SEC)),
             0);
    CHECK_EQ(__atomic_load_n(&m.sum, __ATOMIC_ACQUIRE), m.target);
    CHECK_EQ(__atomic_load_n(&m.overlaps, __ATOMIC_ACQUIRE), 0);
    dispatch_source_cancel(m.s);
    dispatch_source_t s = m.s;
    /* A cancelled source drops merges; no handler starts after cancel. */
    dispatch_source_merge_data(s, 1);
    usleep(20000);
    CHECK_EQ(__atomic_load_n(&m.sum, __ATOMIC_ACQUIRE), m.target);
    dispatch_release(s);
    dispatch_release(m.sem);
}

struct last_value {
    dispatch_source_t s;
    dispatch_semaphore_t sem;
    uintptr_t value;
};

static void
on_value(void *ctx)
{
    struct last_value *v = ctx;
    v->value = dispatch_source_get_data(v->s);
    dispatch_semaphore_signal(v->sem);
}

static uintptr_t
merged_while_suspended(dispatch_source_type_t type, const uintptr_t *values,
                       int n)
{
    struct last_value v = {0};
    v.sem = dispatch_semaphore_create(0);
    v.s = dispatch_source_create(type, 0, 0, NULL);
    CHECK(v.s != NULL);
    dispatch_set_context(v.s, &v);
    dispatch_source_set_event_handler_f(v.s, on_value);
    for (int i = 0; i < n; i++) {
        dispatch_source_merge_data(v.s, values[i]);
    }
    dispatch_resume(v.s);
    CHECK_EQ(dispatch_semaphore_wait(
                 v.sem, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    dispatch_source_cancel(v.s);
    dispatch_release(v.s);
    dispatch_release(v.sem);
    return v.value;
}

DK_TEST(compat_data_or_and_replace_sources)
{
    const uintptr_t values[] = {1, 8, 0, 2, 8};
    CHECK_EQ(merged_while_suspended(DISPATCH_SOURCE_TYPE_DATA_OR, values, 5),
             11);
    CHECK_EQ(
        merged_while_suspended(DISPATCH_SOURCE_TYPE_DATA_REPLACE, values, 5),
        8);
    CHECK_EQ(merged_while_suspended(DISPATCH_SOURCE_TYPE_DATA_ADD, values, 5),
             19);
    /* The handle and mask of a data source must be 0. */
    CHECK(dispatch_source_create(DISPATCH_SOURCE_TYPE_DATA_ADD, 1, 0, NULL) ==
          NULL);
    CHECK(dispatch_source_create(DISPATCH_SOURCE_TYPE_DATA_OR, 0,
                                 DISPATCH_TIMER_STRICT, NULL) == NULL);
    dispatch_source_t t = dispatch_source_create(DISPATCH_SOURCE_TYPE_TIMER, 0,
                                                 DISPATCH_TIMER_STRICT, NULL);
    CHECK(t != NULL);
    dispatch_source_cancel(t);
    dispatch_resume(t);
    dispatch_release(t);
}

/* ---- misuse that aborts, each in a child forked before any thread ---- */

static void
expect_abort(void (*scenario)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        scenario();
        _exit(0); /* not aborted: the parent sees exit status 0 */
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGABRT);
}

static void
merge_into_timer(void)
{
    dispatch_source_t t =
        dispatch_source_create(DISPATCH_SOURCE_TYPE_TIMER, 0, 0, NULL);
    dispatch_source_merge_data(t, 1);
}

static void
assert_off_queue(void)
{
    dispatch_assert_queue(dispatch_queue_create("q", DISPATCH_QUEUE_SERIAL));
}

static void
call_assert_not(void *q)
{
    dispatch_assert_queue_not(q);
}

static void
assert_not_on_own_queue(void)
{
    dispatch_queue_t q = dispatch_queue_create("q", DISPATCH_QUEUE_SERIAL);
    dispatch_sync_f(q, q, call_assert_not);
}

static void
call_assert_barrier(void *q)
{
    dispatch_assert_queue_barrier(q);
}

static void
assert_barrier_in_plain_concurrent_item(void)
{
    dispatch_queue_t q = dispatch_queue_create("c", DISPATCH_QUEUE_CONCURRENT);
    dispatch_sync_f(q, q, call_assert_barrier);
}

static void
assert_barrier_on_global_queue(void)
{
    dispatch_queue_t g = dispatch_get_global_queue(0, 0);
    dispatch_sync_f(g, g, call_assert_barrier);
}

static void
assert_not_main_on_main_thread(void)
{
    dispatch_assert_queue_not(dispatch_get_main_queue());
}

static void *
assert_main_thread_fn(void *unused)
{
    (void)unused;
    dispatch_assert_queue(dispatch_get_main_queue());
    return NULL;
}

static void
assert_main_off_main_thread(void)
{
    pthread_t t;
    pthread_create(&t, NULL, assert_main_thread_fn, NULL);
    pthread_join(t, NULL);
}

/* A on the caller's thread; B (targeting C, so its sync items always run
 * on a worker) runs `inner` on behalf of the caller. */
struct chain {
    dispatch_queue_t a, b, c;
    void (*inner)(struct chain *);
    int passed;
};

static void
chain_inner(void *p)
{
    struct chain *ch = p;
    ch->inner(ch);
}

static void
chain_outer(void *p)
{
    struct chain *ch = p;
    dispatch_sync_f(ch->b, ch, chain_inner);
}

static void
run_chain(struct chain *ch)
{
    ch->a = dispatch_queue_create("A", DISPATCH_QUEUE_SERIAL);
    ch->c = dispatch_queue_create("C", DISPATCH_QUEUE_SERIAL);
    ch->b =
        dispatch_queue_create_with_target("B", DISPATCH_QUEUE_SERIAL, ch->c);
    dispatch_sync_f(ch->a, ch, chain_outer);
}

static void
inner_assert_not_a(struct chain *ch)
{
    dispatch_assert_queue_not(ch->a);
}

static void
assert_not_caller_queue_through_sync(void)
{
    struct chain ch = {.inner = inner_assert_not_a};
    run_chain(&ch);
}

static void
retarget_autorelease_queue(void)
{
    dispatch_queue_t q = dispatch_queue_create(
        "pinned", DISPATCH_QUEUE_SERIAL_WITH_AUTORELEASE_POOL);
    dispatch_set_target_queue(q, dispatch_get_global_queue(0, 0));
}

static void
assert_debug_off_queue(void)
{
    dispatch_assert_queue_debug(
        dispatch_queue_create("q", DISPATCH_QUEUE_SERIAL));
}

DK_TEST(compat_client_misuse_aborts)
{
    expect_abort(merge_into_timer);
    expect_abort(assert_off_queue);
    expect_abort(assert_not_on_own_queue);
    expect_abort(assert_barrier_in_plain_concurrent_item);
    expect_abort(assert_barrier_on_global_queue);
    expect_abort(assert_not_main_on_main_thread);
    expect_abort(assert_main_off_main_thread);
    expect_abort(assert_not_caller_queue_through_sync);
    expect_abort(retarget_autorelease_queue);
#ifndef NDEBUG
    expect_abort(assert_debug_off_queue);
#endif
}

/* ---- dispatch_assert_queue where it must return ---------------------- */

static void
inner_asserts_caller_queues(struct chain *ch)
{
    dispatch_assert_queue(ch->a); /* through the waiting caller */
    dispatch_assert_queue(ch->b);
    dispatch_assert_queue(ch->c); /* B targets C */
    dispatch_assert_queue_barrier(ch->a);
    dispatch_assert_queue_not(dispatch_get_main_queue());
    CHECK(dispatch_get_current_queue() == ch->b);
    ch->passed = 1;
}

struct on_queue {
    dispatch_queue_t q, other;
    dispatch_semaphore_t done;
    int passed;
};

static void
asserts_in_item(void *p)
{
    struct on_queue *o = p;
    dispatch_assert_queue(o->q);
    dispatch_assert_queue_debug(o->q);
    dispatch_assert_queue_barrier(o->q);
    dispatch_assert_queue_barrier_debug(o->q);
    dispatch_assert_queue_not(o->other);
    dispatch_assert_queue_not_debug(o->other);
    /* The global queue the item's queue targets. */
    dispatch_assert_queue(dispatch_get_global_queue(0, 0));
    CHECK(dispatch_get_current_queue() == o->q);
    o->passed = 1;
    dispatch_semaphore_signal(o->done);
}

DK_TEST(compat_assert_queue_returns_on_the_queue)
{
    dispatch_queue_t main_q = dispatch_get_main_queue();
    dispatch_assert_queue(main_q); /* the test runs on the main thread */
    CHECK(dispatch_get_current_queue() == dispatch_get_global_queue(0, 0));

    struct on_queue o = {
        dispatch_queue_create("serial", DISPATCH_QUEUE_SERIAL),
        dispatch_queue_create("other", DISPATCH_QUEUE_SERIAL),
        dispatch_semaphore_create(0), 0};
    dispatch_async_f(o.q, &o, asserts_in_item);
    CHECK_EQ(dispatch_semaphore_wait(
                 o.done, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK(o.passed);
    /* A barrier item of a concurrent queue runs alone on it. */
    dispatch_queue_t cq =
        dispatch_queue_create("concurrent", DISPATCH_QUEUE_CONCURRENT);
    o.passed = 0;
    dispatch_release(o.q);
    o.q = cq;
    dispatch_barrier_async_f(cq, &o, asserts_in_item);
    CHECK_EQ(dispatch_semaphore_wait(
                 o.done, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC)),
             0);
    CHECK(o.passed);

    struct chain ch = {.inner = inner_asserts_caller_queues};
    run_chain(&ch);
    CHECK(ch.passed);
    dispatch_release(ch.b);
    dispatch_release(ch.c);
    dispatch_release(ch.a);
    dispatch_release(cq);
    dispatch_release(o.other);
    dispatch_release(o.done);
}

/* ---- QoS, autorelease frequency, constants, debug, MUNMAP ----------- */

static void
noop_item(void *ctx)
{
    (void)ctx;
}

DK_TEST(compat_queue_qos_class_and_autorelease_frequency)
{
    dispatch_qos_class_t qos;
    int relpri = 99;
    dispatch_queue_t plain = dispatch_queue_create("plain", NULL);
    CHECK_EQ(dispatch_queue_get_qos_class(plain, &relpri),
             QOS_CLASS_UNSPECIFIED);
    CHECK_EQ(relpri, 0);
    dispatch_queue_attr_t attr = dispatch_queue_attr_make_with_qos_class(
        DISPATCH_QUEUE_SERIAL, QOS_CLASS_UTILITY, -3);
    dispatch_queue_t util = dispatch_queue_create("utility", attr);
    CHECK_EQ(dispatch_queue_get_qos_class(util, &relpri), QOS_CLASS_UTILITY);
    CHECK_EQ(relpri, -3);
    CHECK_EQ(dispatch_queue_get_qos_class(util, NULL), QOS_CLASS_UTILITY);
    qos = dispatch_queue_get_qos_class(
        dispatch_get_global_queue(DISPATCH_QUEUE_PRIORITY_HIGH, 0), &relpri);
    CHECK_EQ(qos, QOS_CLASS_USER_INITIATED);
    CHECK_EQ(relpri, 0);
    CHECK_EQ(dispatch_queue_get_qos_class(
                 dispatch_get_global_queue(QOS_CLASS_BACKGROUND, 0), NULL),
             QOS_CLASS_BACKGROUND);
    CHECK_EQ(dispatch_queue_get_qos_class(dispatch_get_main_queue(), NULL),
             QOS_CLASS_USER_INTERACTIVE);

    /* A frequency keeps the other attributes; an unknown one gives NULL. */
    dispatch_autorelease_frequency_t f =
        DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM;
    dispatch_queue_attr_t both = dispatch_queue_attr_make_with_qos_class(
        dispatch_queue_attr_make_with_autorelease_frequency(
            DISPATCH_QUEUE_CONCURRENT, f),
        QOS_CLASS_USER_INITIATED, 0);
    dispatch_queue_t pooled = dispatch_queue_create("pooled", both);
    CHECK(dk_queue_is_concurrent(pooled));
    CHECK(!dk_queue_is_inactive(pooled));
    CHECK_EQ(dispatch_queue_get_qos_class(pooled, NULL),
             QOS_CLASS_USER_INITIATED);
    dispatch_sync_f(pooled, NULL, noop_item);
    CHECK(dispatch_queue_attr_make_with_autorelease_frequency(
              DISPATCH_QUEUE_CONCURRENT, 3) == NULL);
    dispatch_queue_t never = dispatch_queue_create(
        "never", dispatch_queue_attr_make_with_autorelease_frequency(
                     DISPATCH_QUEUE_SERIAL_INACTIVE,
                     DISPATCH_AUTORELEASE_FREQUENCY_NEVER));
    CHECK(dk_queue_is_inactive(never)); /* retargetable until activated */
    dispatch_set_target_queue(never, DISPATCH_TARGET_QUEUE_DEFAULT);
    dispatch_activate(never);
    dispatch_sync_f(never, NULL, noop_item);
    /* INHERIT is the default: the queue stays retargetable. */
    dispatch_queue_t inherit = dispatch_queue_create(
        "inherit", dispatch_queue_attr_make_with_autorelease_frequency(
                       NULL, DISPATCH_AUTORELEASE_FREQUENCY_INHERIT));
    dispatch_set_target_queue(inherit, util);
    dispatch_set_target_queue(inherit, DISPATCH_TARGET_QUEUE_DEFAULT);

    /* The remaining type names compile as libdispatch's. */
    dispatch_source_proc_flags_t pf = DISPATCH_PROC_EXIT;
    dispatch_source_timer_flags_t tf = DISPATCH_TIMER_STRICT;
    dispatch_source_mach_send_flags_t mf = 0;
    dispatch_source_memorypressure_flags_t mpf = 0;
    dispatch_source_vnode_flags_t vf = 0;
    CHECK_EQ(pf | tf | mf | mpf | vf, DISPATCH_PROC_EXIT | 1);

    dispatch_release(inherit);
    dispatch_release(never);
    dispatch_release(pooled);
    dispatch_release(util);
    dispatch_release(plain);
}

DK_TEST(compat_walltime_now_and_debug_log)
{
    /* dispatch_time(DISPATCH_WALLTIME_NOW, d) is dispatch_walltime(NULL,
     * d): a wall-clock time, so a wait on it ends (does not wait ~forever
     * or use the monotonic clock). */
    dispatch_time_t a = dispatch_time(DISPATCH_WALLTIME_NOW, 0);
    dispatch_time_t b = dispatch_walltime(NULL, 0);
    CHECK((int64_t)a < 0 && (int64_t)b < 0); /* wall-clock encoding */
    CHECK((int64_t)(a - b) < (int64_t)NSEC_PER_SEC &&
          (int64_t)(b - a) < (int64_t)NSEC_PER_SEC);
    dispatch_semaphore_t sem = dispatch_semaphore_create(0);
    CHECK(dispatch_semaphore_wait(
              sem, dispatch_time(DISPATCH_WALLTIME_NOW,
                                 20 * (int64_t)NSEC_PER_MSEC)) != 0);

    /* dispatch_debug writes the object's description and the message to
     * stderr; LIBDISPATCH_LOG=NO silences it. */
    FILE *log = tmpfile();
    CHECK(log != NULL);
    fflush(stderr);
    int saved = dup(2);
    CHECK(dup2(fileno(log), 2) == 2);
    dispatch_queue_t q = dispatch_queue_create("debugged", NULL);
    dispatch_debug(q, "hello %d", 42);
    setenv("LIBDISPATCH_LOG", "NO", 1);
    dispatch_debug(q, "silenced");
    unsetenv("LIBDISPATCH_LOG");
    dispatch_debug(sem, "sem");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char text[1024] = {0};
    rewind(log);
    size_t n = fread(text, 1, sizeof text - 1, log);
    fclose(log);
    CHECK(n > 0);
    CHECK(strstr(text, "\"debugged\"") != NULL);
    CHECK(strstr(text, "hello 42\n") != NULL);
    CHECK(strstr(text, "semaphore[") != NULL);
    CHECK(strstr(text, "silenced") == NULL);
    dispatch_release(q);
    dispatch_release(sem);
}

DK_TEST(compat_data_destructor_munmap_unmaps_when_released)
{
    size_t len = (size_t)sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    memcpy(p, "mapped", 6);
    dispatch_data_t d =
        dispatch_data_create_f(p, len, NULL, DISPATCH_DATA_DESTRUCTOR_MUNMAP);
    dispatch_data_t head = dispatch_data_create_subrange(d, 0, 6);
    dispatch_release(d);
    const void *bytes;
    size_t size;
    dispatch_data_t m = dispatch_data_create_map(head, &bytes, &size);
    CHECK_EQ(size, 6);
    CHECK(memcmp(bytes, "mapped", 6) == 0);
    CHECK_EQ(msync(p, len, MS_ASYNC), 0); /* still mapped: head uses it */
    dispatch_release(m);
    dispatch_release(head);
    errno = 0;
    CHECK_EQ(msync(p, len, MS_ASYNC), -1); /* unmapped with the last user */
    CHECK_EQ(errno, ENOMEM);
}
