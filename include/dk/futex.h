/*
 * Futex wait and wake on a 32-bit word, for words in process memory or in
 * memory shared between processes (flags DK_SHARED). Deadlines are
 * absolute CLOCK_MONOTONIC nanoseconds (DK_TIME_FOREVER: none), so
 * retries never stretch a wait.
 */
#ifndef DK_FUTEX_H
#define DK_FUTEX_H

#include "dk/base.h"

DK_BEGIN_DECLS

/* Sleep while *word == expected. flags: 0 or DK_SHARED. Returns 0 when
 * woken (possibly spuriously), -EAGAIN if *word != expected on entry,
 * -ETIMEDOUT, -EINTR when a signal handler ran, or -EINVAL for unknown
 * flags. word must be 4-byte aligned. */
DK_EXPORT int dk_futex_wait(uint32_t *word, uint32_t expected,
                            uint64_t deadline, unsigned flags) DK_WARN_UNUSED;
/* Wake up to n waiters; returns how many were woken, or -EINVAL for
 * unknown flags. */
DK_EXPORT int dk_futex_wake(uint32_t *word, int n, unsigned flags);

DK_END_DECLS

#endif /* DK_FUTEX_H */
