/*
 * futex_waitv (Linux 5.16+, syscall 449): one thread sleeps on up to
 * DK__OS_WAITV_MAX futex words at once. The watcher (src/watch.c) uses it
 * so that any number of asynchronous waits costs one sleeping thread.
 * Kernels without it answer -ENOSYS, and the watcher falls back to one
 * word per thread.
 */
#include "os/linux/os.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

/* The kernel's struct futex_waitv (include/uapi/linux/futex.h, 5.16),
 * declared here so older headers build too. */
struct kernel_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

int
dk__os_futex_waitv(const struct dk__os_waitv *v, int n, uint64_t deadline)
{
    if (n <= 0 || n > DK__OS_WAITV_MAX) {
        return -EINVAL;
    }
    struct kernel_waitv kv[DK__OS_WAITV_MAX];
    for (int i = 0; i < n; i++) {
        kv[i].val = v[i].expected;
        kv[i].uaddr = (uint64_t)(uintptr_t)v[i].word;
        kv[i].flags = FUTEX_32 | (v[i].shared ? 0 : FUTEX_PRIVATE_FLAG);
        kv[i].reserved = 0;
    }
    struct timespec ts;
    struct timespec *tsp = NULL;
    if (deadline != DK_TIME_FOREVER) {
        ts.tv_sec = (time_t)(deadline / 1000000000u);
        ts.tv_nsec = (long)(deadline % 1000000000u);
        tsp = &ts;
    }
    long rc =
        syscall(SYS_futex_waitv, kv, (unsigned)n, 0u, tsp, CLOCK_MONOTONIC);
    if (rc >= 0) {
        return (int)rc;
    }
    switch (errno) {
    case EAGAIN:
    case ETIMEDOUT:
    case EINTR:
    case ENOSYS:
        return -errno;
    case EFAULT:
        /* A word's mapping went away (shared memory unmapped by its
         * owner): the caller rechecks its words and drops that one. */
        return -EFAULT;
    default:
        fprintf(stderr, "dispatchkit: futex_waitv failed: errno %d\n", errno);
        abort();
    }
}
