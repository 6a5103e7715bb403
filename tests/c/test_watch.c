/*
 * The futex watcher (src/watch.c) and the async wait steps: many words at
 * once, wake-ups from other threads, deadlines, cancellation, the
 * one-word fallback, and a semaphore step that leaves no waiter counted.
 */
#include "runner.h"
#include "objects.h"

#include "atomic.h"
#include "dk/mutex.h"
#include "dk/sem.h"
#include "dk/time.h"
#include "os/linux/os.h"
#include "os/linux/uring.h"
#include "watch.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define NWORDS 300 /* more than one futex_waitv call takes: 3 shards */

static uint32_t words[NWORDS];
static dk__watch_t watches[NWORDS];
static int results[NWORDS];
static uint32_t fired;

static void
on_fire(dk__watch_t *w, int rc)
{
    results[w - watches] = rc == 0 ? 1 : rc;
    dk__atomic_add_seq_cst(&fired, 1);
    dk__os_futex_wake(&fired, 1, false);
}

static void
wait_fired(uint32_t n)
{
    uint64_t deadline = dk__os_monotonic_ns() + 20ull * DK_NSEC_PER_SEC;
    uint32_t f;
    while ((f = dk__atomic_load_seq_cst(&fired)) < n) {
        CHECK(dk__os_monotonic_ns() < deadline);
        dk__os_futex_wait(&fired, f, dk__os_monotonic_ns() + 1000000, false);
    }
}

static void
watch_word(int i, uint64_t deadline)
{
    memset(&watches[i], 0, sizeof watches[i]);
    watches[i].word = &words[i];
    watches[i].busy = 0;
    watches[i].shared = false;
    watches[i].deadline = deadline;
    watches[i].fn = on_fire;
    CHECK_EQ(dk__watch_add(&watches[i]), 0);
}

static void
many_words(void)
{
    memset(words, 0, sizeof words);
    memset(results, 0, sizeof results);
    dk__atomic_store_seq_cst(&fired, 0);
    for (int i = 0; i < NWORDS; i++) {
        watch_word(i, UINT64_MAX);
    }
    usleep(20000);
    CHECK_EQ(dk__atomic_load_seq_cst(&fired), 0);
    /* Change half the words and wake them; cancel the other half. */
    for (int i = 0; i < NWORDS; i += 2) {
        dk__atomic_store_seq_cst(&words[i], 1);
        dk__os_futex_wake(&words[i], 1, false);
    }
    wait_fired(NWORDS / 2);
    for (int i = 1; i < NWORDS; i += 2) {
        CHECK(dk__watch_cancel(&watches[i]));
        CHECK(!dk__watch_cancel(&watches[i]));
    }
    for (int i = 0; i < NWORDS; i++) {
        CHECK_EQ(results[i], i % 2 == 0 ? 1 : 0);
    }
    usleep(20000);
    CHECK_EQ(dk__atomic_load_seq_cst(&fired), NWORDS / 2);
}

DK_TEST(watch_many_words_wake_and_cancel)
{
    many_words();
}

DK_TEST(watch_fallback_without_futex_waitv)
{
    setenv("DK_NO_FUTEX_WAITV", "1", 1);
    CHECK(!dk__watch_uses_waitv());
    /* One thread per word in the fallback: keep it small. */
    memset(words, 0, sizeof words);
    dk__atomic_store_seq_cst(&fired, 0);
    for (int i = 0; i < 8; i++) {
        watch_word(i, UINT64_MAX);
    }
    CHECK(dk__watch_cancel(&watches[7]));
    for (int i = 0; i < 7; i++) {
        dk__atomic_store_seq_cst(&words[i], 1);
        dk__os_futex_wake(&words[i], 1, false);
    }
    wait_fired(7);
}

DK_TEST(watch_deadline_and_changed_word)
{
    memset(words, 0, sizeof words);
    dk__atomic_store_seq_cst(&fired, 0);
    watch_word(0, dk__os_monotonic_ns() + 30000000ull);
    wait_fired(1);
    CHECK_EQ(results[0], -ETIMEDOUT);
    /* A word that already differs fires at once, with no wake. */
    words[1] = 5;
    watch_word(1, UINT64_MAX);
    wait_fired(2);
    CHECK_EQ(results[1], 1);
    /* Two waiters on one word share a slot and both fire. */
    watch_word(2, UINT64_MAX);
    memset(&watches[3], 0, sizeof watches[3]);
    watches[3].word = &words[2];
    watches[3].fn = on_fire;
    watches[3].deadline = UINT64_MAX;
    CHECK_EQ(dk__watch_add(&watches[3]), 0);
    dk__atomic_store_seq_cst(&words[2], 1);
    dk__os_futex_wake(&words[2], 1, false);
    wait_fired(4);
    CHECK_EQ(results[2], 1);
    CHECK_EQ(results[3], 1);
}

static dk_shm_semaphore_t sem;

static void *
poster(void *arg)
{
    (void)arg;
    usleep(20000);
    CHECK_EQ(dk_shm_semaphore_post(&sem, 1, 0), 0);
    return NULL;
}

DK_TEST(watch_semaphore_step_is_woken_by_post)
{
    memset(&sem, 0, sizeof sem);
    CHECK_EQ(dk_shm_semaphore_init(&sem, 0, DK_SHM_SET_COUNT), 0);
    dk__atomic_store_seq_cst(&fired, 0);
    uint32_t *word;
    uint32_t busy;
    CHECK_EQ(dk__shm_semaphore_wait_step(&sem, &word, &busy), -EAGAIN);
    CHECK_EQ(sem.waiters, 1); /* announced: the post will wake */
    memset(&watches[0], 0, sizeof watches[0]);
    watches[0].word = word;
    watches[0].busy = busy;
    watches[0].deadline = UINT64_MAX;
    watches[0].fn = on_fire;
    CHECK_EQ(dk__watch_add(&watches[0]), 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, poster, NULL), 0);
    wait_fired(1);
    pthread_join(t, NULL);
    dk__shm_semaphore_unannounce(&sem);
    CHECK_EQ(dk__shm_semaphore_wait_step(&sem, &word, &busy), 0);
    CHECK_EQ(sem.waiters, 0);
    CHECK_EQ(sem.count, 0);
}

DK_TEST(watch_futex_waitv_wrapper)
{
    uint32_t a = 1, b = 2;
    struct dk__os_waitv v[2] = {{&a, 1, false}, {&b, 3, false}};
    int rc = dk__os_futex_waitv(v, 2, DK_TIME_FOREVER);
    CHECK(rc == -EAGAIN || rc == -ENOSYS); /* b differs at once */
    v[1].expected = 2;
    rc = dk__os_futex_waitv(v, 2, dk__os_monotonic_ns() + 1000000);
    CHECK(rc == -ETIMEDOUT || rc == -ENOSYS);
    CHECK_EQ(dk__os_futex_waitv(v, 0, DK_TIME_FOREVER), -EINVAL);
}

DK_TEST(watch_fork_child_starts_fresh)
{
    memset(words, 0, sizeof words);
    memset(results, 0, sizeof results);
    dk__atomic_store_seq_cst(&fired, 0);
    watch_word(0, UINT64_MAX);
    /* Fork only once the watcher thread has run a watch to the end: a
     * thread still starting allocates (under ASan, in the sanitizer's
     * thread set-up), and a sanitizer runtime without fork handlers
     * leaves the lock it held taken in the child, where the new watcher
     * thread then waits for it forever. */
    dk__atomic_store_seq_cst(&words[2], 1);
    watch_word(2, UINT64_MAX);
    wait_fired(1);
    CHECK_EQ(results[2], 1);
    dk__atomic_store_seq_cst(&fired, 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* The parent's watch never fires here and cannot be cancelled;
         * a new one works (a new watcher thread). */
        if (dk__watch_cancel(&watches[0])) {
            _exit(2);
        }
        watch_word(1, UINT64_MAX);
        dk__atomic_store_seq_cst(&words[1], 1);
        dk__os_futex_wake(&words[1], 1, false);
        wait_fired(1);
        _exit(results[1] == 1 && results[0] == 0 ? 0 : 3);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    CHECK(dk__watch_cancel(&watches[0])); /* still ours in the parent */
}

/* ---- dispatch semaphore steps --------------------------------------- */

static dk_semaphore_t *dsem;
static uint32_t *dsem_word;
static int blocked_rc = -1;

static void *
blocking_dsem_waiter(void *unused)
{
    (void)unused;
    blocked_rc = dk_semaphore_wait(dsem, DK_TIME_FOREVER);
    return NULL;
}

static void *
stand_in_watcher(void *unused)
{
    /* Sleeps on the token word as the watcher thread does. */
    (void)unused;
    dk__os_futex_wait(dsem_word, 0, dk__os_monotonic_ns() + 10000000000ull,
                      false);
    return NULL;
}

DK_TEST(watch_dsem_abandon_passes_a_taken_wake_on)
{
    /* An asynchronous waiter and a parked blocking one both wait. The
     * signal's single wake-up goes to the watcher (here a stand-in that
     * sleeps on the word first), then the asynchronous waiter gives up:
     * the blocking waiter, which the signal's unit is now owed to, must
     * still be woken. */
    dsem = t_semaphore(0);
    CHECK(dsem != NULL);
    uint32_t busy;
    CHECK_EQ(dk__semaphore_wait_begin(dsem, &dsem_word, &busy), -EAGAIN);
    pthread_t watcher, blocked;
    CHECK_EQ(pthread_create(&watcher, NULL, stand_in_watcher, NULL), 0);
    usleep(50000); /* the stand-in sleeps first, so it gets the wake */
    CHECK_EQ(pthread_create(&blocked, NULL, blocking_dsem_waiter, NULL), 0);
    while (dk_semaphore_value(dsem) != -2) {
        usleep(1000);
    }
    usleep(50000); /* past its spin: parked */
    CHECK(dk_semaphore_signal(dsem));
    CHECK_EQ(pthread_join(watcher, NULL), 0);
    dk__semaphore_wait_abandon(dsem);
    CHECK_EQ(pthread_join(blocked, NULL), 0);
    CHECK_EQ(blocked_rc, 0);
    CHECK_EQ(dk_semaphore_value(dsem), 0);
    dk_release(dsem);
}

/* ---- ring watches (io_uring futex waits) ------------------------------ */

static uint32_t ring_word;
static int ring_blocked_rc = -99;

static void *
ring_waker(void *unused)
{
    (void)unused;
    usleep(20000);
    dk__atomic_store_seq_cst(&ring_word, 1);
    dk__os_futex_wake(&ring_word, 1, false);
    return NULL;
}

static void *
ring_blocked_waiter(void *unused)
{
    (void)unused;
    ring_blocked_rc = dk__os_futex_wait(
        &ring_word, 0, dk__os_monotonic_ns() + 10ull * DK_NSEC_PER_SEC, false);
    return NULL;
}

/* The next completion, waiting on the eventfd for it (the loop's way). */
static struct dk__os_uring_cqe
ring_next(dk__os_uring_t *r, int efd)
{
    struct dk__os_uring_cqe c = {0, 0};
    uint64_t deadline = dk__os_monotonic_ns() + 10ull * DK_NSEC_PER_SEC;
    while (dk__os_uring_reap(r, &c, 1) == 0) {
        CHECK(dk__os_monotonic_ns() < deadline);
        struct pollfd p = {efd, POLLIN, 0};
        (void)poll(&p, 1, 100);
        dk__os_eventfd_drain(efd);
    }
    return c;
}

DK_TEST(watch_ring_futex_waits)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(efd >= 0);
    dk__os_uring_t *r;
    int rc = dk__watch_ring_open(efd, &r);
    if (rc == -ENOSYS) {
        close(efd);
        return; /* no io_uring futex waits here: the watcher serves */
    }
    CHECK_EQ(rc, 0);
    /* Woken from another thread; the wake signals the eventfd. */
    ring_word = 0;
    CHECK_EQ(
        dk__os_uring_futex_wait(r, &ring_word, 0, false, DK_TIME_FOREVER, 7),
        0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, ring_waker, NULL), 0);
    struct dk__os_uring_cqe c = ring_next(r, efd);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(c.user_data, 7);
    CHECK_EQ(c.res, 0);
    /* A word that differs completes at once. */
    CHECK_EQ(
        dk__os_uring_futex_wait(r, &ring_word, 0, true, DK_TIME_FOREVER, 8),
        0);
    c = ring_next(r, efd);
    CHECK_EQ(c.user_data, 8);
    CHECK_EQ(c.res, -EAGAIN);
    /* A deadline: cancelled by its linked timeout (whose own completion
     * reap skips). */
    ring_word = 0;
    uint64_t t0 = dk__os_monotonic_ns();
    CHECK_EQ(
        dk__os_uring_futex_wait(r, &ring_word, 0, false, t0 + 30000000ull, 9),
        0);
    c = ring_next(r, efd);
    CHECK_EQ(c.user_data, 9);
    CHECK_EQ(c.res, -ECANCELED);
    CHECK(dk__os_monotonic_ns() >= t0 + 30000000ull);
    /* Cancelled: off the futex at once, so one wake reaches a thread
     * that waits behind it (the abandoning waiter's rule). */
    CHECK_EQ(
        dk__os_uring_futex_wait(r, &ring_word, 0, false, DK_TIME_FOREVER, 10),
        0);
    CHECK_EQ(pthread_create(&t, NULL, ring_blocked_waiter, NULL), 0);
    usleep(50000); /* the thread sleeps behind our request */
    CHECK_EQ(dk__os_uring_cancel(r, 10), 0);
    c = ring_next(r, efd);
    CHECK_EQ(c.user_data, 10);
    CHECK_EQ(c.res, -ECANCELED);
    CHECK_EQ(dk__os_futex_wake(&ring_word, 1, false), 1);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(ring_blocked_rc, 0);
    /* Many waits at once, more than the ring's entries, all woken. */
    uint32_t many[64];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 64; i++) {
        CHECK_EQ(dk__os_uring_futex_wait(r, &many[i], 0, false,
                                         DK_TIME_FOREVER, 100 + (uint64_t)i),
                 0);
    }
    for (int i = 0; i < 64; i++) {
        dk__atomic_store_seq_cst(&many[i], 1);
        dk__os_futex_wake(&many[i], 1, false);
    }
    uint64_t seen = 0;
    for (int i = 0; i < 64; i++) {
        c = ring_next(r, efd);
        CHECK(c.user_data >= 100 && c.user_data < 164);
        CHECK_EQ(c.res, 0);
        seen |= 1ull << (c.user_data - 100);
    }
    CHECK_EQ(seen, ~0ull);
    /* Closing with a wait pending cancels it; nothing touches us after. */
    CHECK_EQ(
        dk__os_uring_futex_wait(r, &ring_word, 1, false, DK_TIME_FOREVER, 11),
        0);
    dk__os_uring_close(r);
    close(efd);
}

DK_TEST(watch_ring_refused_when_disabled)
{
    setenv("DK_NO_IO_URING", "1", 1);
    dk__os_uring_t *r;
    CHECK_EQ(dk__watch_ring_open(-1, &r), -ENOSYS);
}
