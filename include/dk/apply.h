/*
 * Parallel loops. dk_apply_f calls fn(ctx, i) for every i in [0, n) and
 * returns when all calls have returned; the calls run concurrently on the
 * worker pool and the calling thread. On a serial queue they run one after
 * another on that queue. dk_apply_range_f hands out contiguous ranges
 * instead, fn(ctx, begin, end), for callers with per-call setup costs.
 */
#ifndef DK_APPLY_H
#define DK_APPLY_H

#include "dk/queue.h"

DK_BEGIN_DECLS

typedef void (*dk_apply_function_t)(void *ctx, size_t index);
typedef void (*dk_apply_range_function_t)(void *ctx, size_t begin, size_t end);

/* q NULL means the default global queue. Returns 0, -EDEADLK (q is a serial
 * queue the caller is running on), or -ENOMEM. */
DK_EXPORT int dk_apply_f(size_t n, dk_queue_t *q, void *ctx,
                         dk_apply_function_t fn) DK_WARN_UNUSED;
DK_EXPORT int dk_apply_range_f(size_t n, dk_queue_t *q, void *ctx,
                               dk_apply_range_function_t fn) DK_WARN_UNUSED;

/* Like dk_apply_range_f, but fn returns false to stop the loop: no range
 * not yet handed out is handed out afterwards (ranges already running
 * finish), so an error in one call ends the loop at once rather than
 * after every remaining range. On a serial queue fn gets one range, the
 * whole loop. Same returns as dk_apply_f. */
typedef bool (*dk_apply_range_while_function_t)(void *ctx, size_t begin,
                                                size_t end);
DK_EXPORT int
dk_apply_range_while_f(size_t n, dk_queue_t *q, void *ctx,
                       dk_apply_range_while_function_t fn) DK_WARN_UNUSED;

/* dk_apply_range_while_f for a caller that holds a lock its iterations
 * need (the Python binding's GIL): the calling thread's ranges go to
 * caller->run, called with the lock still held, and the helpers' ranges
 * to fn, which takes the lock itself. Before the caller waits for the
 * helpers' ranges it calls caller->unlock(ctx), and caller->relock(ctx)
 * after. Concurrent queues only: -EINVAL for a serial one (its single
 * range would wait for the queue with the lock held); otherwise the
 * returns of dk_apply_f. */
typedef struct {
    dk_apply_range_while_function_t run;
    void (*unlock)(void *ctx);
    void (*relock)(void *ctx);
} dk_apply_caller_t;
DK_EXPORT int
dk_apply_range_caller_f(size_t n, dk_queue_t *q, void *ctx,
                        dk_apply_range_while_function_t fn,
                        const dk_apply_caller_t *caller) DK_WARN_UNUSED;

DK_END_DECLS

#endif /* DK_APPLY_H */
