/*
 * The written contract between the core and Linux. Every futex, eventfd,
 * timerfd, epoll, pidfd, signal and mmap syscall the core makes goes
 * through here. The wrappers return what a correct program can see (0,
 * -ETIMEDOUT, -EINTR, -EAGAIN, ...) and abort on errors that only a bug
 * can cause. Deadlines are absolute CLOCK_MONOTONIC nanoseconds, so a retry
 * after EINTR never stretches a wait; DK_TIME_FOREVER waits without limit.
 */
#ifndef DK_SRC_OS_LINUX_OS_H
#define DK_SRC_OS_LINUX_OS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dk/base.h"

/* CLOCK_MONOTONIC and CLOCK_REALTIME in ns. Both use the vDSO: no syscall. */
uint64_t dk__os_monotonic_ns(void);
/* Let another runnable thread have this CPU (a spinning thread's courtesy
 * when the machine is oversubscribed); returns at once when none waits. */
void dk__os_yield(void);
uint64_t dk__os_realtime_ns(void);
/* CLOCK_REALTIME_COARSE: the time at the last kernel tick (1-4 ms old at
 * most), read from the vDSO without touching the clock hardware. */
uint64_t dk__os_realtime_coarse_ns(void);

/*
 * Sleep while *word == expected, until woken or deadline (absolute
 * CLOCK_MONOTONIC ns, DK_TIME_FOREVER for none). `shared` selects a futex
 * usable across processes (the word may live in shared memory).
 * Returns 0 when woken (possibly spuriously), -EAGAIN if *word != expected
 * on entry, -ETIMEDOUT past the deadline, -EINTR on a signal.
 */
int dk__os_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline,
                      bool shared);

/* Wake up to n waiters on word; returns how many were woken (>= 0). */
int dk__os_futex_wake(uint32_t *word, int n, bool shared);

/*
 * Sleep on several words at once (futex_waitv, Linux 5.16+): until one is
 * woken, or one differs from its `expected` on entry, or the deadline.
 * Returns the index of a woken word (>= 0; the wake may be spurious),
 * -EAGAIN (some word differed on entry), -ETIMEDOUT, -EINTR, -EFAULT (a
 * word is no longer mapped), or -ENOSYS (no futex_waitv in this kernel):
 * the caller falls back to
 * dk__os_futex_wait on one word. At most DK__OS_WAITV_MAX words.
 */
#define DK__OS_WAITV_MAX 128
struct dk__os_waitv {
    uint32_t *word;
    uint32_t expected;
    bool shared;
};
int dk__os_futex_waitv(const struct dk__os_waitv *v, int n, uint64_t deadline);

/* Number of CPUs this process may run on (>= 1). */
int dk__os_ncpu(void);

/* The kernel's id of the calling thread (cached per thread). */
int dk__os_tid(void);

/*
 * Start a detached thread running fn(arg) with all asynchronous signals
 * blocked, so that SIGINT and friends are delivered to the application's
 * own threads. Returns 0 or -errno (-EAGAIN when out of threads).
 */
int dk__os_thread_start(void *(*fn)(void *), void *arg, const char *name);

/* Lower the calling thread's timer slack to 1 ns (for the timer thread). */
void dk__os_thread_precise_timers(void);
/* Ask for a scheduler slice of ns (Linux 6.12+): woken sooner on a busy
 * CPU; ignored elsewhere. */
void dk__os_thread_short_slice(uint64_t ns);

/* eventfd used as a wake-up signal: create (nonblocking, cloexec),
 * signal (add 1), drain (read and discard). */
int dk__os_eventfd_create(void);
void dk__os_eventfd_signal(int fd);
void dk__os_eventfd_drain(int fd);

/* epoll and timerfd for the event thread. */
int dk__os_epoll_create(void);
int dk__os_epoll_add(int epfd, int fd, uint32_t events, uint64_t data);
int dk__os_epoll_mod(int epfd, int fd, uint32_t events, uint64_t data);
int dk__os_epoll_del(int epfd, int fd);
/* Returns the number of events (>= 0); -EINTR is retried internally. */
int dk__os_epoll_wait(int epfd, void *events, int max, int timeout_ms);
int dk__os_timerfd_create(void);
/* Arm for an absolute CLOCK_MONOTONIC deadline; DK_TIME_FOREVER disarms. */
void dk__os_timerfd_arm(int fd, uint64_t deadline);
void dk__os_close(int fd);
/* munmap a mapping the program made (a data object's buffer). */
void dk__os_munmap(void *addr, size_t len);

/* Wait until fd is readable or the deadline passes. Returns 0, -ETIMEDOUT
 * or -EINTR (a signal handler ran). */
int dk__os_poll_readable(int fd, uint64_t deadline);

/* Reset per-thread caches in a forked child (the calling thread). */
void dk__os_fork_child(void);

/* The process id, cached (no syscall); refreshed by dk__os_fork_child. */
int dk__os_pid(void);

/* pidfd_open: an fd readable once the process exits. Returns the fd or
 * -ESRCH (no such process), -EINVAL, -EMFILE, -ENOSYS. */
int dk__os_pidfd_open(int pid);

/* 0 if fd is open (*regular set for regular files), else -EBADF. */
int dk__os_fd_check(int fd, bool *regular);
/* Estimated bytes readable now (0 if unknown). */
long dk__os_fd_readable(int fd);
/* The same for an fd known not to be a regular file: FIONREAD alone. */
long dk__os_fd_nread(int fd);
/* Estimated bytes writable without blocking (0 if unknown). */
long dk__os_fd_writable(int fd);

/* Signals: install `handler` (SA_SIGINFO|SA_RESTART|SA_ONSTACK) for sig,
 * storing the previous action in *old_action (a struct sigaction); restore
 * it later. Returns 0 or -EINVAL. */
typedef void (*dk__os_sighandler)(int sig, siginfo_t *info, void *uctx);
int dk__os_signal_install(int sig, dk__os_sighandler handler,
                          void *old_action);
void dk__os_signal_restore(int sig, const void *old_action);
/* Call a saved action's handler function, if it is one (not SIG_DFL or
 * SIG_IGN). Async-signal-safe. */
void dk__os_signal_chain(const void *old_action, int sig, siginfo_t *info,
                         void *uctx);
/* Size of a saved action, for storage. */
#define DK_OS_SIGACTION_SIZE 256

#endif /* DK_SRC_OS_LINUX_OS_H */
