/* Tests of the OS layer: futex wait/wake semantics and clocks. */
#include "runner.h"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "atomic.h"
#include "os/linux/os.h"

DK_TEST(os_futex_wait_value_mismatch_is_eagain)
{
    uint32_t word = 1;
    CHECK_EQ(dk__os_futex_wait(&word, 0, DK_TIME_FOREVER, false), -EAGAIN);
}

DK_TEST(os_futex_wait_deadline_times_out)
{
    uint32_t word = 0;
    uint64_t deadline = dk__os_monotonic_ns() + 2000000;
    CHECK_EQ(dk__os_futex_wait(&word, 0, deadline, false), -ETIMEDOUT);
    CHECK(dk__os_monotonic_ns() >= deadline);
}

static uint32_t wake_word;

static void *
waker(void *arg)
{
    (void)arg;
    dk__atomic_store_release(&wake_word, 1);
    while (dk__os_futex_wake(&wake_word, 1, false) == 0 &&
           dk__atomic_load_acquire(&wake_word) == 1) {
        /* The waiter may not be asleep yet; it will see the value. */
        break;
    }
    return NULL;
}

DK_TEST(os_futex_wake_releases_waiter)
{
    pthread_t t;
    pthread_create(&t, NULL, waker, NULL);
    while (dk__atomic_load_acquire(&wake_word) == 0) {
        dk__os_futex_wait(&wake_word, 0, DK_TIME_FOREVER, false);
    }
    pthread_join(t, NULL);
    CHECK_EQ(wake_word, 1);
}

DK_TEST(os_clocks_are_monotonic_and_sane)
{
    uint64_t a = dk__os_monotonic_ns();
    uint64_t b = dk__os_monotonic_ns();
    CHECK(b >= a);
    /* After 2020-01-01. */
    CHECK(dk__os_realtime_ns() > 1577836800ull * 1000000000ull);
    CHECK(dk__os_ncpu() >= 1);
}

DK_TEST(os_eventfd_signal_and_drain)
{
    int fd = dk__os_eventfd_create();
    CHECK(fd >= 0);
    dk__os_eventfd_signal(fd);
    dk__os_eventfd_signal(fd);
    uint64_t v = 0;
    CHECK_EQ(read(fd, &v, sizeof v), 8);
    CHECK_EQ(v, 2);
    dk__os_eventfd_drain(fd); /* empty: must not block or abort */
    dk__os_close(fd);
}
