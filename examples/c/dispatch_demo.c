/*
 * A C program written only against libdispatch's function-pointer API:
 * serial and concurrent queues, a barrier, a group, a semaphore, once,
 * apply and after. Build: see meson.build (examples/c/dispatch-demo).
 */
#include <dk/dispatch.h>
#include <stdio.h>

static long counter;

static void
increment(void *ctx)
{
    (void)ctx;
    counter++; /* serial queue: no lock needed */
}

static void
square(void *ctx, size_t i)
{
    long *out = ctx;
    out[i] = (long)(i * i);
}

static void
say(void *ctx)
{
    printf("%s\n", (const char *)ctx);
}

static void
signal_sem(void *ctx)
{
    dispatch_semaphore_signal(ctx);
}

int
main(void)
{
    dispatch_queue_t serial =
        dispatch_queue_create("demo.serial", DISPATCH_QUEUE_SERIAL);
    for (int i = 0; i < 1000; i++) {
        dispatch_async_f(serial, NULL, increment);
    }
    dispatch_sync_f(serial, NULL, increment);
    printf("serial counter: %ld\n", counter);

    long squares[10];
    dispatch_apply_f(10, DISPATCH_APPLY_AUTO, squares, square);
    printf("apply: squares[9] = %ld\n", squares[9]);

    dispatch_group_t group = dispatch_group_create();
    dispatch_queue_t global =
        dispatch_get_global_queue(DISPATCH_QUEUE_PRIORITY_DEFAULT, 0);
    dispatch_group_async_f(group, global, "group task ran", say);
    dispatch_group_wait(group, DISPATCH_TIME_FOREVER);

    dispatch_queue_t rw =
        dispatch_queue_create("demo.rw", DISPATCH_QUEUE_CONCURRENT);
    dispatch_async_f(rw, "reader", say);
    dispatch_barrier_sync_f(rw, "barrier (exclusive)", say);

    static dispatch_once_t once;
    dispatch_once_f(&once, "once", say);
    dispatch_once_f(&once, "never printed", say);

    dispatch_semaphore_t done = dispatch_semaphore_create(0);
    dispatch_after_f(dispatch_time(DISPATCH_TIME_NOW, 10 * NSEC_PER_MSEC),
                     serial, done, signal_sem);
    long timed_out = dispatch_semaphore_wait(
        done, dispatch_time(DISPATCH_TIME_NOW, 5 * NSEC_PER_SEC));
    printf("after fired: %s\n", timed_out ? "no" : "yes");

    dispatch_release(done);
    dispatch_release(rw);
    dispatch_release(group);
    dispatch_release(serial);
    return timed_out ? 1 : 0;
}
