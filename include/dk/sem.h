/*
 * Dispatch semaphores (process-local counting semaphores, GCD semantics):
 * wait decrements and blocks while the value is negative; signal
 * increments and wakes one waiter. Uncontended operations are one or two
 * atomic instructions. A waiter spins for up to 20 us (adaptively, only
 * with several CPUs) before it sleeps, and a signal pays the futex wake
 * only when a waiter sleeps.
 */
#ifndef DK_SEM_H
#define DK_SEM_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef struct dk_semaphore_s dk_semaphore_t;

/* Create a semaphore in *out. Returns 0, -EINVAL (a negative value) or
 * -ENOMEM; *out is NULL on failure. */
DK_EXPORT int dk_semaphore_create(long value,
                                  dk_semaphore_t **out) DK_WARN_UNUSED;
/* Wait until a unit is available or `deadline` (absolute CLOCK_MONOTONIC
 * ns; 0 polls; DK_TIME_FOREVER waits forever). Returns 0 or -ETIMEDOUT; the
 * _interruptible variant also returns -EINTR when a signal handler ran
 * (the unit is not taken then). */
DK_EXPORT int dk_semaphore_wait(dk_semaphore_t *s,
                                uint64_t deadline) DK_WARN_UNUSED;
DK_EXPORT int
dk_semaphore_wait_interruptible(dk_semaphore_t *s,
                                uint64_t deadline) DK_WARN_UNUSED;
/* Returns true if a waiting thread was woken: one that had stopped
 * spinning (a spinning waiter takes the unit by itself, as if it had
 * arrived just after the signal). */
DK_EXPORT bool dk_semaphore_signal(dk_semaphore_t *s);
/* The current value (a snapshot; negative: that many waiters). */
DK_EXPORT long dk_semaphore_value(const dk_semaphore_t *s);

DK_END_DECLS

#endif /* DK_SEM_H */
