/*
 * Dispatch queues. A serial queue runs its work items one at a time in
 * FIFO order; a concurrent queue may run them in parallel, except that a
 * barrier item waits for everything before it and runs alone. Every queue
 * has a target queue (by default the global queue of its QoS class); work
 * reaches the worker pool through that hierarchy, so a serial queue that
 * targets another serial queue is also mutually exclusive with it.
 *
 * Threads: every function may be called from any thread. Work items run on
 * the runtime's worker threads, except that dk_queue_sync_f on an idle
 * queue runs the item on the calling thread (as GCD does) and the main
 * queue is drained only by the main thread (dk_main_drain).
 */
#ifndef DK_QUEUE_H
#define DK_QUEUE_H

#include "dk/base.h"
#include "dk/time.h"

DK_BEGIN_DECLS

typedef struct dk_queue_s dk_queue_t;

/* QoS classes, with Apple's values. */
enum {
    DK_QOS_UNSPECIFIED = 0x00,
    DK_QOS_BACKGROUND = 0x09,
    DK_QOS_UTILITY = 0x11,
    DK_QOS_DEFAULT = 0x15,
    DK_QOS_USER_INITIATED = 0x19,
    DK_QOS_USER_INTERACTIVE = 0x21,
};

/* Legacy global-queue priorities, with GCD's values. */
enum {
    DK_PRIORITY_HIGH = 2,
    DK_PRIORITY_DEFAULT = 0,
    DK_PRIORITY_LOW = -2,
    DK_PRIORITY_BACKGROUND = -32768,
};

/* Attributes for dk_queue_create. A workloop is a serial queue whose
 * pending items run highest QoS first (FIFO within a QoS class): submit
 * with dk_queue_async_qos_f. */
#define DK_QUEUE_CONCURRENT 0x1u
#define DK_QUEUE_INACTIVE 0x2u
#define DK_QUEUE_WORKLOOP 0x4u

/*
 * Create a queue in *out. `label` is copied (NULL means ""). `qos` is a
 * DK_QOS_* value or 0; `relpri` in [-15, 0] (other values ignore the QoS
 * request, as in GCD). `target` may be NULL (the global queue of the QoS
 * class). Returns 0, -EINVAL (an unknown attribute, or both CONCURRENT
 * and WORKLOOP) or -ENOMEM; *out is NULL on failure.
 */
DK_EXPORT int dk_queue_create(const char *label, unsigned attrs, int qos,
                              int relpri, dk_queue_t *target,
                              dk_queue_t **out) DK_WARN_UNUSED;

/* The global concurrent queue for a DK_PRIORITY_* or DK_QOS_* value, or
 * NULL for any other value. Immortal: a lookup, not a constructor (no
 * reference to release, nothing to fail but the value). */
DK_EXPORT dk_queue_t *dk_queue_global(long priority);

/* The main queue: a serial queue drained by the main thread. Immortal. */
DK_EXPORT dk_queue_t *dk_queue_main(void);

DK_EXPORT const char *dk_queue_label(const dk_queue_t *q);
DK_EXPORT bool dk_queue_is_concurrent(const dk_queue_t *q);
DK_EXPORT bool dk_queue_is_global(const dk_queue_t *q);
DK_EXPORT bool dk_queue_is_inactive(const dk_queue_t *q);
/* The number of outstanding dk_queue_suspend calls. */
DK_EXPORT unsigned dk_queue_suspend_count(const dk_queue_t *q);

/* Submit fn(ctx). Returns 0, or -ENOMEM (nothing was submitted). */
DK_EXPORT int dk_queue_async_f(dk_queue_t *q, void *ctx,
                               dk_function_t fn) DK_WARN_UNUSED;
DK_EXPORT int dk_queue_barrier_async_f(dk_queue_t *q, void *ctx,
                                       dk_function_t fn) DK_WARN_UNUSED;
/* Submit with a QoS class (DK_QOS_*; 0 = default). Only workloops order by
 * it; other queues treat this as dk_queue_async_f. -EINVAL for an unknown
 * class. */
DK_EXPORT int dk_queue_async_qos_f(dk_queue_t *q, int qos, void *ctx,
                                   dk_function_t fn) DK_WARN_UNUSED;
DK_EXPORT bool dk_queue_is_workloop(const dk_queue_t *q);

/*
 * Run fn(ctx) on q and wait for it. Returns 0, or -EDEADLK when the calling
 * thread is itself running on q (or on a serial queue q depends on) so the
 * call could never finish; nothing runs then.
 */
DK_EXPORT int dk_queue_sync_f(dk_queue_t *q, void *ctx,
                              dk_function_t fn) DK_WARN_UNUSED;
DK_EXPORT int dk_queue_barrier_sync_f(dk_queue_t *q, void *ctx,
                                      dk_function_t fn) DK_WARN_UNUSED;

/* The flags of the three calls below: 0 for a plain sync (or check), or
 * DK_SYNC_BARRIER for a barrier one. Another bit is a client bug (the
 * bool calls abort; dk_queue_sync_enter returns -EINVAL). */
#define DK_SYNC_BARRIER 0x1u

/* True when a sync (or, with DK_SYNC_BARRIER, a barrier sync) on q from
 * this thread would deadlock. */
DK_EXPORT bool dk_queue_sync_would_deadlock(dk_queue_t *q, unsigned flags);

/*
 * Try to take q for running one synchronous item on the calling thread
 * right now: succeeds (returns 0) only when q is active, not suspended,
 * idle and its target is a global queue. The caller then runs its item and
 * must call dk_queue_sync_exit. Returns -EAGAIN otherwise (-EINVAL for
 * unknown flags). This is how language bindings run a sync item without
 * leaving the calling thread.
 */
typedef struct dk_sync_frame {
    void *opaque[4];
} dk_sync_frame_t;
DK_EXPORT int dk_queue_sync_enter(dk_queue_t *q, unsigned flags,
                                  dk_sync_frame_t *frame) DK_WARN_UNUSED;
DK_EXPORT void dk_queue_sync_exit(dk_queue_t *q, dk_sync_frame_t *frame);

/* Submit fn(ctx) to q at time `when` (see time.h). FOREVER never runs it.
 * Returns 0 or -ENOMEM. */
DK_EXPORT int dk_queue_after_f(dk_queue_t *q, dk_time_t when, void *ctx,
                               dk_function_t fn) DK_WARN_UNUSED;

/*
 * Suspension: a suspended queue accepts work but starts none (an item
 * already running completes). Counts nest. Resume returns -EOVERFLOW when
 * the queue is not suspended (over-resume). Both do nothing on global
 * queues and the main queue.
 */
DK_EXPORT void dk_queue_suspend(dk_queue_t *q);
DK_EXPORT int dk_queue_resume(dk_queue_t *q) DK_WARN_UNUSED;

/* Activate a queue created with DK_QUEUE_INACTIVE. Returns -EALREADY if it
 * is already active. */
DK_EXPORT int dk_queue_activate(dk_queue_t *q) DK_WARN_UNUSED;

/*
 * Change q's target (NULL = default). Allowed while q is inactive, or on a
 * queue created active while it has no work. Returns -EPERM for global and
 * main queues and for a queue created inactive after its activation,
 * -EBUSY when q has work queued or running, -ELOOP if the target's
 * hierarchy contains q.
 */
DK_EXPORT int dk_queue_set_target(dk_queue_t *q,
                                  dk_queue_t *target) DK_WARN_UNUSED;
/* The current target (NULL for global queues). Borrowed. */
DK_EXPORT dk_queue_t *dk_queue_target(const dk_queue_t *q);

/* Context pointer and finalizer, run on the target queue when q is
 * destroyed with a non-NULL context. Ignored on global queues. */
DK_EXPORT void dk_queue_set_context(dk_queue_t *q, void *ctx);
DK_EXPORT void *dk_queue_get_context(const dk_queue_t *q);
DK_EXPORT void dk_queue_set_finalizer_f(dk_queue_t *q, dk_function_t fn);

/*
 * Queue-specific values, keyed by address. Setting NULL removes the key.
 * A replaced or removed value's destructor runs asynchronously on the
 * default global queue. Returns 0 or -ENOMEM.
 */
DK_EXPORT int dk_queue_set_specific(dk_queue_t *q, const void *key,
                                    void *value,
                                    dk_function_t destructor) DK_WARN_UNUSED;
DK_EXPORT void *dk_queue_get_specific(dk_queue_t *q, const void *key);
/* Value for key on the queue the caller is running on, then its target
 * chain; NULL off any queue. */
DK_EXPORT void *dk_get_specific(const void *key);

/* The queue the calling thread is running a work item of, or NULL. */
DK_EXPORT dk_queue_t *dk_queue_current(void);

/*
 * True when the calling thread runs an item submitted to q or to a queue
 * that targets q, directly or on behalf of a thread waiting in
 * dk_queue_sync_f (followed recursively). The main queue is current
 * anywhere on the main thread. With DK_SYNC_BARRIER, the item must also run
 * alone on q: always so for a serial queue; on a concurrent queue only a
 * barrier item of q itself (never on a global queue).
 */
DK_EXPORT bool dk_queue_is_current(const dk_queue_t *q, unsigned flags);

/* The QoS class (DK_QOS_*) q was created with, and its relative priority
 * in *relpri (may be NULL): DK_QOS_UNSPECIFIED and 0 for a queue created
 * without one; a global queue's own class; DK_QOS_USER_INTERACTIVE for
 * the main queue. */
DK_EXPORT int dk_queue_qos(const dk_queue_t *q, int *relpri);

/*
 * The main queue. dk_main_drain runs the main queue's ready items on the
 * calling thread, which must be the main thread, waiting until `deadline`
 * (absolute CLOCK_MONOTONIC ns; 0 = do not wait, DK_TIME_FOREVER = forever)
 * for the first one. Returns the number of items run, -ETIMEDOUT, -EINTR
 * if interrupted by a signal handler while waiting, or -EPERM off the main
 * thread. dk_main_fd is an fd that is readable while work is pending.
 */
DK_EXPORT long dk_main_drain(uint64_t deadline) DK_WARN_UNUSED;
DK_EXPORT int dk_main_fd(void);
/* True on the thread that drains the main queue. */
DK_EXPORT bool dk_is_main_thread(void);
/* True when every worker thread of the pool is parked (none is running
 * an item, starting or retiring; also before the pool starts). A program
 * whose allocator is not fork-safe (GCC 12's ASan) can wait for it before
 * fork(); glibc's malloc needs no such wait. */
DK_EXPORT bool dk_pool_quiescent(void);

/*
 * Hooks for language runtimes whose callbacks need a global lock (the
 * CPython GIL): `idle` runs on a worker thread before it waits for work or
 * blocks in the runtime; `exit` runs on a worker thread before it ends.
 */
struct dk_thread_hooks {
    void (*idle)(void);
    void (*exit)(void);
};
DK_EXPORT void dk_set_thread_hooks(const struct dk_thread_hooks *hooks);
/*
 * A worker about to wait for a language runtime's lock (the GIL) says so:
 * the pool does not add threads while any worker waits for it, since a
 * new thread would only queue for the same lock.
 */
DK_EXPORT void dk_worker_lock_wait_begin(void);
DK_EXPORT void dk_worker_lock_wait_end(void);
/* How many workers are between those two calls (a snapshot). */
DK_EXPORT unsigned dk_worker_lock_waiters(void);
/* True on the runtime's own worker threads. */
DK_EXPORT bool dk_is_worker_thread(void);
/*
 * True on the runtime's event threads, which run a source's handler or a
 * dispatch_after item themselves when its queue is idle (see
 * docs/dispatch.md). Not worker threads: the hooks above do not run there,
 * and a language runtime releases its lock after each callback.
 */
DK_EXPORT bool dk_is_event_thread(void);

DK_END_DECLS

#endif /* DK_QUEUE_H */
