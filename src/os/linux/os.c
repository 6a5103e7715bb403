/*
 * Linux implementation of os.h's time, futex, eventfd, timerfd, epoll,
 * thread, signal and mapping calls (process.c and shm.c hold the rest).
 * Errors a correct caller can meet are returned as -errno; anything else
 * is a bug in the core and aborts with a message naming the call.
 */
#include "os/linux/os.h"

#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static void
os_abort(const char *what, int err)
{
    fprintf(stderr, "dispatchkit: fatal: %s failed: %s\n", what,
            strerror(err));
    abort();
}

static uint64_t
clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t
dk__os_monotonic_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

void
dk__os_yield(void)
{
    (void)sched_yield();
}

void
dk__os_sleep_ns(uint64_t ns)
{
    struct timespec ts = {
        .tv_sec = (time_t)(ns / 1000000000u),
        .tv_nsec = (long)(ns % 1000000000u),
    };
    (void)nanosleep(&ts, NULL);
}

uint64_t
dk__os_realtime_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

int
dk__os_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline,
                  bool shared)
{
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout, so a
     * retry after EINTR never stretches the wait. */
    struct timespec ts;
    struct timespec *tsp = NULL;
    int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    if (deadline != DK_TIME_FOREVER) {
        ts.tv_sec = (time_t)(deadline / 1000000000u);
        ts.tv_nsec = (long)(deadline % 1000000000u);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, word, op, expected, tsp, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0) {
        return 0;
    }
    switch (errno) {
    case EAGAIN:
    case ETIMEDOUT:
    case EINTR:
        return -errno;
    case EFAULT:
    case EINVAL:
    case ENOSYS:
    default:
        os_abort("futex wait", errno);
    }
    return 0;
}

int
dk__os_futex_wake(uint32_t *word, int n, bool shared)
{
    int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    long rc = syscall(SYS_futex, word, op, n, NULL, NULL, 0);
    if (rc < 0) {
        if (errno == EFAULT) {
            /* The word's mapping is gone (a peer unmapped shared memory
             * under us); nobody can be waiting on it here. */
            return 0;
        }
        os_abort("futex wake", errno);
    }
    return (int)rc;
}

int
dk__os_ncpu(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return n;
        }
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int
dk__os_ncpu_cached(void)
{
    static int ncpu; /* 0: not asked yet; racing first calls store alike */
    int n = dk__atomic_load_relaxed(&ncpu);
    if (n == 0) {
        n = dk__os_ncpu();
        dk__atomic_store_relaxed(&ncpu, n);
    }
    return n;
}

__thread int dk__os_tid_cache;

int
dk__os_tid(void)
{
    if (dk__os_tid_cache == 0) {
        (void)dk__os_pid(); /* registers the fork handler */
        dk__os_tid_cache = (int)syscall(SYS_gettid);
    }
    return dk__os_tid_cache;
}

struct thread_start {
    void *(*fn)(void *);
    void *arg;
    char name[16];
};

static void *
thread_trampoline(void *p)
{
    struct thread_start st = *(struct thread_start *)p;
    free(p);
    dk__os_tid_cache = 0;
    if (st.name[0] != '\0') {
        prctl(PR_SET_NAME, st.name, 0, 0, 0);
    }
    return st.fn(st.arg);
}

int
dk__os_thread_start(void *(*fn)(void *), void *arg, const char *name)
{
    struct thread_start *st = malloc(sizeof *st);
    if (st == NULL) {
        return -ENOMEM;
    }
    st->fn = fn;
    st->arg = arg;
    snprintf(st->name, sizeof st->name, "%s", name ? name : "");

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, (size_t)512 * 1024);

    /* The new thread inherits this mask: every asynchronous signal is
     * blocked so that it goes to the application's threads. */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGABRT);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, &attr, thread_trampoline, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(st);
        return -rc;
    }
    return 0;
}

void
dk__os_thread_precise_timers(void)
{
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
}

/* sched_attr as the kernel defines it (linux/sched/types.h), to the
 * fields of its first version. */
struct os_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
};

void
dk__os_thread_short_slice(uint64_t ns)
{
    /* Since Linux 6.12 a SCHED_OTHER thread may ask for a shorter slice
     * (sched_runtime): the EEVDF scheduler then gives it an earlier
     * deadline when it wakes, so it preempts a busy CPU sooner, without a
     * larger share of the CPU. Older kernels ignore the field; failure
     * only leaves the default slice. */
    struct os_sched_attr attr;
    memset(&attr, 0, sizeof attr);
    if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) != 0 ||
        attr.sched_policy != SCHED_OTHER) {
        return;
    }
    attr.size = sizeof attr;
    attr.sched_flags = 0;
    attr.sched_runtime = ns;
    (void)syscall(SYS_sched_setattr, 0, &attr, 0);
}

int
dk__os_eventfd_create(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* One 8-byte eventfd write (signal) or read (drain), retried on EINTR.
 * EAGAIN is success either way: on a write the counter is saturated (it is
 * readable anyway), on a read it was already drained. */
static void
eventfd_xfer(int fd, bool signal)
{
    uint64_t v = 1;
    ssize_t n;
    do {
        n = signal ? write(fd, &v, sizeof v) : read(fd, &v, sizeof v);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) {
        os_abort(signal ? "eventfd write" : "eventfd read", errno);
    }
}

void
dk__os_eventfd_signal(int fd)
{
    eventfd_xfer(fd, true);
}

void
dk__os_eventfd_drain(int fd)
{
    eventfd_xfer(fd, false);
}

int
dk__os_epoll_create(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int
dk__os_epoll_add(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int
dk__os_epoll_mod(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

int
dk__os_epoll_del(int epfd, int fd)
{
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int
dk__os_epoll_wait(int epfd, void *events, int max, int timeout_ms)
{
    for (;;) {
        int n = epoll_wait(epfd, events, max, timeout_ms);
        if (n >= 0) {
            return n;
        }
        if (errno != EINTR) {
            os_abort("epoll_wait", errno);
        }
    }
}

int
dk__os_timerfd_create(void)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void
dk__os_timerfd_arm(int fd, uint64_t deadline)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (deadline != DK_TIME_FOREVER) {
        if (deadline == 0) {
            deadline = 1; /* zero would disarm */
        }
        its.it_value.tv_sec = (time_t)(deadline / 1000000000u);
        its.it_value.tv_nsec = (long)(deadline % 1000000000u);
    }
    if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        os_abort("timerfd_settime", errno);
    }
}

void
dk__os_close(int fd)
{
    if (fd >= 0) {
        close(fd);
    }
}

void
dk__os_munmap(void *addr, size_t len)
{
    if (len != 0 && munmap(addr, len) != 0) {
        fprintf(stderr,
                "dispatchkit: munmap(%p, %zu) failed: the buffer "
                "given as mapped was not a mapping\n",
                addr, len);
        abort();
    }
}

static uintptr_t
page_size(void)
{
    static long size; /* racy first call: both threads store the same */
    long n = __atomic_load_n(&size, __ATOMIC_RELAXED);
    if (n == 0) {
        n = sysconf(_SC_PAGESIZE);
        __atomic_store_n(&size, n, __ATOMIC_RELAXED);
    }
    return (uintptr_t)n;
}

void *
dk__os_map_again(void *addr, size_t len)
{
    uintptr_t page = page_size();
    uintptr_t start = (uintptr_t)addr & ~(page - 1);
    uintptr_t end = ((uintptr_t)addr + len + page - 1) & ~(page - 1);
    /* Old size 0 asks for a second mapping of the same pages; the kernel
     * refuses it for private mappings (EINVAL) since Linux 4.14. */
    void *p = mremap((void *)start, 0, end - start, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) {
        return NULL;
    }
    return (char *)p + ((uintptr_t)addr - start);
}

void
dk__os_unmap_again(void *alias, size_t len)
{
    uintptr_t page = page_size();
    uintptr_t start = (uintptr_t)alias & ~(page - 1);
    uintptr_t end = ((uintptr_t)alias + len + page - 1) & ~(page - 1);
    munmap((void *)start, end - start);
}

int
dk__os_poll_readable(int fd, uint64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int timeout_ms = -1;
    if (deadline != DK_TIME_FOREVER) {
        uint64_t now = dk__os_monotonic_ns();
        uint64_t left = deadline > now ? deadline - now : 0;
        /* Round up so we never return before the deadline. */
        uint64_t ms = (left + 999999u) / 1000000u;
        timeout_ms = ms > 86400000u ? 86400000 : (int)ms;
    }
    int n = poll(&p, 1, timeout_ms);
    if (n > 0) {
        return 0;
    }
    if (n == 0) {
        return dk__os_monotonic_ns() >= deadline ? -ETIMEDOUT : -EAGAIN;
    }
    if (errno == EINTR) {
        return -EINTR;
    }
    os_abort("poll", errno);
    return 0;
}

int dk__os_pid_cache;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

void
dk__os_fork_child(void)
{
    dk__os_tid_cache = 0;
    __atomic_store_n(&dk__os_pid_cache, 0, __ATOMIC_RELAXED);
}

static void
pid_cache_init(void)
{
    /* The caches must be refreshed in every forked child, whether or not
     * the dispatch runtime (which has its own fork handler) is running. */
    pthread_atfork(NULL, NULL, dk__os_fork_child);
}

int
dk__os_pid(void)
{
    int pid = __atomic_load_n(&dk__os_pid_cache, __ATOMIC_RELAXED);
    if (pid == 0) {
        pthread_once(&pid_once, pid_cache_init);
        pid = (int)getpid();
        __atomic_store_n(&dk__os_pid_cache, pid, __ATOMIC_RELAXED);
    }
    return pid;
}

int
dk__os_pidfd_open(int pid)
{
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
    long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd < 0) {
        return -errno;
    }
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

int
dk__os_fd_check(int fd, bool *regular)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        return -EBADF;
    }
    *regular =
        S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISBLK(st.st_mode);
    return 0;
}

long
dk__os_fd_readable(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        return pos >= 0 && st.st_size > pos ? (long)(st.st_size - pos) : 0;
    }
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) == 0 && n >= 0) {
        return n;
    }
    return 0;
}

long
dk__os_fd_nread(int fd)
{
    int n = 0;
    return ioctl(fd, FIONREAD, &n) == 0 && n >= 0 ? n : 0;
}

long
dk__os_fd_writable(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return 0;
    }
    if (S_ISFIFO(st.st_mode)) {
        int size = fcntl(fd, F_GETPIPE_SZ);
        int used = 0;
        if (size > 0 && ioctl(fd, FIONREAD, &used) == 0) {
            return size > used ? size - used : 0;
        }
        return 0;
    }
    if (S_ISSOCK(st.st_mode)) {
        int sndbuf = 0, queued = 0;
        socklen_t len = sizeof sndbuf;
        if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0 &&
            ioctl(fd, SIOCOUTQ, &queued) == 0) {
            return sndbuf > queued ? sndbuf - queued : 0;
        }
        return 0;
    }
    if (S_ISREG(st.st_mode)) {
        return 1L << 30; /* a regular file is always writable */
    }
    return 0;
}

/* ---- channel reads and writes (io.c) ---------------------------------- */

long
dk__os_fd_read(int fd, void *buf, size_t len, bool at, int64_t offset)
{
    ssize_t n;
    do {
        n = at ? pread(fd, buf, len, (off_t)offset) : read(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (long)n;
}

long
dk__os_fd_write(int fd, const void *buf, size_t len, bool at, int64_t offset)
{
    ssize_t n;
    do {
        n = at ? pwrite(fd, buf, len, (off_t)offset) : write(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (long)n;
}

int64_t
dk__os_fd_tell(int fd)
{
    off_t pos = lseek(fd, 0, SEEK_CUR);
    return pos < 0 ? -errno : (int64_t)pos;
}

_Static_assert(sizeof(struct sigaction) <= DK_OS_SIGACTION_SIZE,
               "DK_OS_SIGACTION_SIZE too small");

int
dk__os_signal_install(int sig, dk__os_sighandler handler, void *old_action)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, (struct sigaction *)old_action) < 0 ? -errno
                                                                   : 0;
}

void
dk__os_signal_restore(int sig, const void *old_action)
{
    sigaction(sig, (const struct sigaction *)old_action, NULL);
}

void
dk__os_signal_chain(const void *old_action, int sig, siginfo_t *info,
                    void *uctx)
{
    const struct sigaction *old = old_action;
    /* sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN are
     * recognised through sa_handler either way. */
    if (old->sa_handler == SIG_DFL || old->sa_handler == SIG_IGN) {
        return;
    }
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, info, uctx);
    } else {
        old->sa_handler(sig);
    }
}
