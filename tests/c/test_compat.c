/* Programs written against libdispatch's _f API (<dk/dispatch.h>). */
#include "runner.h"

#include <signal.h>
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
