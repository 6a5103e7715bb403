/* Programs written against libdispatch's _f API (<dk/dispatch.h>). */
#include "runner.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "dk/dispatch.h"

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
    dispatch_io_release(ch);
    dispatch_release(ab);
    dispatch_release(a);
    dispatch_release(b);
    close(p[0]);
    close(p[1]);
}
