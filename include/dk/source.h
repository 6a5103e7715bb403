/*
 * Dispatch sources: timers, signals, readable/writable file descriptors,
 * process exits and user data merged by the program, delivered as an
 * event handler submitted to a target queue. As in GCD:
 *
 * - A source is created suspended; dk_source_resume starts it.
 * - Its event handler never runs concurrently with itself, even on a
 *   concurrent queue; events that arrive meanwhile coalesce and
 *   dk_source_get_data (inside the handler) tells how many or which.
 * - dk_source_cancel stops delivery; a handler already running completes;
 *   the cancel handler then runs once on the target queue (also for a
 *   suspended source). Cancel a read or write source before closing its fd.
 *
 * Data per type: TIMER, fires since the last handler; SIGNAL, signals
 * received since the last handler; READ, bytes available (an estimate);
 * WRITE, buffer space (an estimate); PROC, the DK_PROC_* events seen;
 * DATA_ADD, the sum of the values merged since the last handler; DATA_OR,
 * their bitwise OR; DATA_REPLACE, the last value merged.
 *
 * Data sources (DATA_ADD, DATA_OR, DATA_REPLACE) are GCD's way to
 * coalesce events from any thread: dk_source_merge_data may be called by
 * any number of threads at once; merges that arrive while the handler is
 * queued or running are combined into its next call. A merged 0 is no
 * event (DATA_REPLACE: a 0 replaces a pending value, so the handler is not
 * called for it).
 *
 * Linux specifics: a signal source installs its own handler, so it sees
 * the signal even when its disposition was SIG_IGN, chains to a previous
 * handler function (so Python's signal handlers still run), and restores
 * the previous disposition when the last source for that signal is
 * cancelled. SIGKILL and SIGSTOP cannot be caught, and the fault signals
 * SIGSEGV, SIGBUS, SIGFPE and SIGILL are refused (a handler that returns
 * re-runs the faulting instruction forever): EINVAL. A process
 * source watches a pidfd: only DK_PROC_EXIT is delivered (fork, exec and
 * signal events need privileges Linux does not give an ordinary process);
 * the other bits are accepted and never set.
 */
#ifndef DK_SOURCE_H
#define DK_SOURCE_H

#include "dk/queue.h"
#include "dk/time.h"

DK_BEGIN_DECLS

typedef struct dk_source_s dk_source_t;

typedef enum dk_source_type {
    DK_SOURCE_TIMER = 1,
    DK_SOURCE_SIGNAL = 2,
    DK_SOURCE_READ = 3,
    DK_SOURCE_WRITE = 4,
    DK_SOURCE_PROC = 5,
    DK_SOURCE_DATA_ADD = 6,
    DK_SOURCE_DATA_OR = 7,
    DK_SOURCE_DATA_REPLACE = 8,
} dk_source_type_t;

#define DK_PROC_EXIT 0x80000000ul
#define DK_PROC_FORK 0x40000000ul
#define DK_PROC_EXEC 0x20000000ul
#define DK_PROC_SIGNAL 0x08000000ul

/*
 * Create a source in *out. handle: TIMER and DATA_* 0; SIGNAL the signal
 * number; READ/WRITE the fd; PROC the pid. mask: PROC a DK_PROC_* mask,
 * else 0. q NULL means the default global queue. Returns 0, -EINVAL (bad
 * type, signal, mask, or a data source's handle or mask not 0), -EBADF
 * (fd not open), -ESRCH (no such process), -EMFILE or -ENOMEM; *out is
 * NULL on failure.
 */
DK_EXPORT int dk_source_create(dk_source_type_t type, uintptr_t handle,
                               unsigned long mask, dk_queue_t *q,
                               dk_source_t **out) DK_WARN_UNUSED;

DK_EXPORT void dk_source_set_context(dk_source_t *s, void *ctx);
DK_EXPORT void *dk_source_get_context(const dk_source_t *s);
/* Handlers are called with the source's context. Set them before the first
 * resume (later changes take effect for later events). */
DK_EXPORT void dk_source_set_event_handler_f(dk_source_t *s,
                                             dk_function_t handler);
DK_EXPORT void dk_source_set_cancel_handler_f(dk_source_t *s,
                                              dk_function_t handler);
/* The registration handler runs once on the target queue after the first
 * resume has registered the source, before any event handler call; not at
 * all if the source is cancelled first. Set after registration, it runs
 * as soon as the source is not suspended. */
DK_EXPORT void dk_source_set_registration_handler_f(dk_source_t *s,
                                                    dk_function_t handler);

/*
 * Timer sources: first fire at `start`, then every `interval_ns`
 * (DK_TIME_FOREVER: once). The fire may be up to `leeway_ns` late, which
 * lets nearby timers share one wake-up; leeway is capped at half the
 * interval. Resets pending fires. Returns 0 or -EINVAL (not a timer,
 * interval 0).
 */
DK_EXPORT int dk_source_set_timer(dk_source_t *s, dk_time_t start,
                                  uint64_t interval_ns,
                                  uint64_t leeway_ns) DK_WARN_UNUSED;

/*
 * Data sources: combine `value` with the pending data (add, or, replace
 * by type) and schedule the event handler. Any thread may call it, the
 * handler itself included; a merge into a suspended source is delivered
 * after resume, a merge after dk_source_cancel is dropped. Returns 0, or
 * -EINVAL when s is not a data source.
 */
DK_EXPORT int dk_source_merge_data(dk_source_t *s,
                                   uintptr_t value) DK_WARN_UNUSED;

/* Suspension nests; a new source starts with a count of one. Resume
 * returns -EOVERFLOW when not suspended. */
DK_EXPORT void dk_source_suspend(dk_source_t *s);
DK_EXPORT int dk_source_resume(dk_source_t *s) DK_WARN_UNUSED;

DK_EXPORT void dk_source_cancel(dk_source_t *s);
DK_EXPORT bool dk_source_testcancel(const dk_source_t *s);

/* Inside the event handler: the data of this delivery (see above). */
DK_EXPORT uintptr_t dk_source_get_data(const dk_source_t *s);
DK_EXPORT uintptr_t dk_source_get_handle(const dk_source_t *s);
DK_EXPORT unsigned long dk_source_get_mask(const dk_source_t *s);
DK_EXPORT dk_source_type_t dk_source_get_type(const dk_source_t *s);

DK_END_DECLS

#endif /* DK_SOURCE_H */
