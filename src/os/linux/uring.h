/*
 * io_uring futex waits (Linux 6.7+): the kernel completes a wait on a
 * futex word into a ring, so a thread that polls the ring (an event loop
 * watching its fd, or an eventfd the ring signals) is woken by a futex
 * wake from any thread or process, with no thread of ours asleep on the
 * word.
 *
 * A ring has no lock: its owner serialises every call on it (the Python
 * binding does so with the GIL). Raw syscalls, no liburing.
 */
#ifndef DK_SRC_OS_LINUX_URING_H
#define DK_SRC_OS_LINUX_URING_H

#include <stdbool.h>
#include <stdint.h>

typedef struct dk__os_uring dk__os_uring_t;

/* One completion: the user_data given to futex_wait and its result. */
struct dk__os_uring_cqe {
    uint64_t user_data;
    int res;
};

/* A ring whose completions signal `eventfd`, or none when eventfd < 0
 * (poll dk__os_uring_fd instead). -ENOSYS when this kernel (or a seccomp
 * policy, or kernel.io_uring_disabled) refuses io_uring or has no futex
 * wait op; -ENOMEM; -EMFILE. */
int dk__os_uring_open(int eventfd, dk__os_uring_t **out);
/* The ring's fd: readable (poll, epoll) while a completion waits to be
 * reaped, so a loop can watch it directly and reap from shared memory
 * with no read() (level-triggered: readable again after a reap if the
 * kernel posted more meanwhile). */
int dk__os_uring_fd(const dk__os_uring_t *r);
/* Close the ring; the kernel cancels what is still pending, and none of
 * those requests completes into our memory afterwards. */
void dk__os_uring_close(dk__os_uring_t *r);

/*
 * Start a wait on *word while it equals `expected` (shared: a futex
 * usable across processes). It completes once, with `user_data` (never
 * 0) and res 0 when woken (possibly spuriously), -EAGAIN when the word
 * differed at submission, -ECANCELED when the deadline (absolute
 * CLOCK_MONOTONIC ns; DK_TIME_FOREVER: none) passed or it was
 * cancelled. Returns 0 or -errno (nothing started).
 */
int dk__os_uring_futex_wait(dk__os_uring_t *r, uint32_t *word,
                            uint32_t expected, bool shared, uint64_t deadline,
                            uint64_t user_data);
/* Cancel the wait started with user_data. Synchronous: when this returns
 * the wait is off the futex (a later wake goes to another waiter) and
 * completes with -ECANCELED, or it had completed already. 0 or -errno. */
int dk__os_uring_cancel(dk__os_uring_t *r, uint64_t user_data);
/* Take up to max completions of futex waits (the ring's own bookkeeping
 * completions are skipped). Returns how many were stored in out. */
int dk__os_uring_reap(dk__os_uring_t *r, struct dk__os_uring_cqe *out,
                      int max);

#endif /* DK_SRC_OS_LINUX_URING_H */
