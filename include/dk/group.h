/*
 * Dispatch groups: a count of outstanding work. dk_group_wait returns once
 * the count is zero; notify items are submitted when it drops to zero (or
 * at once if it is zero already).
 */
#ifndef DK_GROUP_H
#define DK_GROUP_H

#include "dk/queue.h"

DK_BEGIN_DECLS

typedef struct dk_group_s dk_group_t;

/* Create a group in *out. Returns 0 or -ENOMEM (*out NULL). */
DK_EXPORT int dk_group_create(dk_group_t **out) DK_WARN_UNUSED;
/* Submit fn(ctx) to q as part of g. Returns 0 or -ENOMEM. */
DK_EXPORT int dk_group_async_f(dk_group_t *g, dk_queue_t *q, void *ctx,
                               dk_function_t fn) DK_WARN_UNUSED;
DK_EXPORT void dk_group_enter(dk_group_t *g);
/* Returns 0, or -EOVERFLOW for a leave without a matching enter (the count
 * is left unchanged). */
DK_EXPORT int dk_group_leave(dk_group_t *g) DK_WARN_UNUSED;
/* Wait until the count is zero or `deadline` (absolute CLOCK_MONOTONIC ns,
 * DK_TIME_FOREVER = forever) passes. Returns 0 or -ETIMEDOUT. The
 * _interruptible variant also returns -EINTR when a signal handler runs. */
DK_EXPORT int dk_group_wait(dk_group_t *g, uint64_t deadline) DK_WARN_UNUSED;
DK_EXPORT int dk_group_wait_interruptible(dk_group_t *g,
                                          uint64_t deadline) DK_WARN_UNUSED;
/* Submit fn(ctx) to q when the count next reaches zero. 0 or -ENOMEM. */
DK_EXPORT int dk_group_notify_f(dk_group_t *g, dk_queue_t *q, void *ctx,
                                dk_function_t fn) DK_WARN_UNUSED;
/* The outstanding count (a snapshot). */
DK_EXPORT long dk_group_count(const dk_group_t *g);

DK_END_DECLS

#endif /* DK_GROUP_H */
