/*
 * Definitions shared by every public dispatchkit header: visibility, the
 * callback type and the time type, the object model, and the conventions
 * every header follows (docs/design.md, "The C API"):
 *
 * - Errors: a function that can fail returns 0 (or a count, or 1 for a
 *   second kind of success) or -errno, and never reports through errno.
 *   Its comment lists every code it returns.
 * - Constructors return that int and write the object to their last
 *   parameter: dk_queue_t *q; int rc = dk_queue_create("q", 0, 0, 0,
 *   NULL, &q); *out is NULL on failure, and the object comes with one
 *   reference (dk_release). Lookups of immortal objects (dk_queue_global,
 *   dk_queue_main, dk_data_empty) return the object itself. dk/dispatch.h
 *   keeps libdispatch's pointer-returning constructors on top.
 * - Options are one `flags` argument of named constants (DK_SHARED below,
 *   DK_SHM_* in dk/mutex.h, DK_SYNC_BARRIER in dk/queue.h, DK_QUEUE_* for
 *   queue attributes), never a list of bools: 0 is the plain call. A bit
 *   the function does not take is -EINVAL, or a client bug that aborts
 *   where the function cannot return an error.
 * - DK_WARN_UNUSED marks every function whose result says whether it
 *   worked: constructors, submissions (-ENOMEM), waits, resume and
 *   activate, the shared-memory and zerobuffer status calls, the CAS and
 *   byte-level atomics. Queries and informational results (counts woken,
 *   description lengths, old values) are unmarked. GCC does not take a
 *   (void) cast as use: a caller that knows a result cannot be an error
 *   keeps it in a variable and says why in a comment.
 * - Time is an absolute CLOCK_MONOTONIC deadline in ns: 0 does not wait,
 *   DK_TIME_FOREVER waits forever.
 * - Callbacks (`_f` functions) take a context pointer and a function.
 * - Misuse from C that no return value can report (an over-release,
 *   releasing a suspended queue or a group with outstanding enters)
 *   aborts with a message naming it.
 */
#ifndef DK_BASE_H
#define DK_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DK_EXPORT __attribute__((visibility("default")))
#define DK_WARN_UNUSED __attribute__((warn_unused_result))

#ifdef __cplusplus
#define DK_BEGIN_DECLS extern "C" {
#define DK_END_DECLS }
#else
#define DK_BEGIN_DECLS
#define DK_END_DECLS
#endif

/* The one "no deadline": every absolute CLOCK_MONOTONIC deadline of the
 * API (a uint64_t) and every dispatch time (dk_time_t, dk/time.h) waits
 * forever at this value. 0 is the other end: do not wait. */
#define DK_TIME_FOREVER UINT64_MAX

/* Flags of the calls on in-place words (dk/futex.h, dk/mutex.h,
 * dk/shm_event.h): the memory is shared between processes, so the
 * kernel's process-shared futexes are used. Every user of one word must
 * agree on it. Each header adds its own flags in higher bits. */
#define DK_SHARED 0x1u

/* A work item: called with the context pointer given at submission. */
typedef void (*dk_function_t)(void *ctx);

DK_BEGIN_DECLS

/*
 * Reference counting shared by every heap object of the runtime: queues,
 * groups, semaphores, sources, data objects and I/O channels. A
 * constructor returns the object with one reference. Global queues, the
 * main queue and the empty data object are immortal: retain and release
 * do nothing to them. Releasing the last reference to a suspended or
 * inactive queue, or to a group with outstanding enters, is a client bug
 * and aborts with a message naming it, as do an over-release and a
 * release of something that is not an object.
 */
DK_EXPORT void dk_retain(void *object);
DK_EXPORT void dk_release(void *object);

/*
 * Operations on any object, as libdispatch's dispatch_suspend etc.:
 * suspend/resume apply to queues and sources (resume returns -EOVERFLOW
 * when not suspended, -EINVAL for other objects); activate to queues
 * (-EALREADY when active); contexts and finalizers to every object (a
 * finalizer runs once, asynchronously, with the context once the object
 * is destroyed, if the context is not NULL: on the target queue of a
 * source, on the cleanup queue of an I/O channel, on a queue's target if
 * that is a global queue, else on the default global queue; on the
 * calling thread if that queue cannot take it for lack of memory).
 */
DK_EXPORT void dk_object_suspend(void *object);
DK_EXPORT int dk_object_resume(void *object) DK_WARN_UNUSED;
DK_EXPORT int dk_object_activate(void *object) DK_WARN_UNUSED;
DK_EXPORT void dk_object_set_context(void *object, void *ctx);
DK_EXPORT void *dk_object_get_context(const void *object);
DK_EXPORT void dk_object_set_finalizer_f(void *object, dk_function_t fn);

/*
 * A one-line description of an object for debugging (its kind, address,
 * reference count and state: a queue's label, kind and suspend count, a
 * source's type, handle and state, a data object's size), written to buf
 * as snprintf does. Returns the length of the full description.
 */
DK_EXPORT int dk_object_describe(const void *object, char *buf, size_t len);

DK_END_DECLS

#endif /* DK_BASE_H */
