/*
 * libdispatch's function-pointer API on top of dispatchkit, so that a C
 * program written against <dispatch/dispatch.h> (the _f variants, no
 * blocks) compiles and runs unchanged with `#include <dk/dispatch.h>`.
 *
 * Client misuse that libdispatch traps on (over-resume, unbalanced group
 * leave, dispatch_sync on the queue you are running on) aborts here with a
 * "BUG IN CLIENT" message naming it, as libdispatch does.
 */
#ifndef DK_DISPATCH_H
#define DK_DISPATCH_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dk/apply.h"
#include "dk/data.h"
#include "dk/group.h"
#include "dk/io.h"
#include "dk/once.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"

DK_BEGIN_DECLS

typedef dk_queue_t *dispatch_queue_t;
typedef dk_queue_t *dispatch_queue_global_t;
typedef dk_queue_t *dispatch_queue_main_t;
typedef dk_queue_t *dispatch_queue_serial_t;
typedef dk_queue_t *dispatch_queue_concurrent_t;
typedef dk_group_t *dispatch_group_t;
typedef dk_semaphore_t *dispatch_semaphore_t;
typedef void *dispatch_object_t;
typedef dk_function_t dispatch_function_t;
typedef dk_time_t dispatch_time_t;
typedef long dispatch_once_t;
typedef long dispatch_queue_priority_t;

/* Queue attributes are small integers in pointer clothing: bit 0
 * concurrent, bit 1 inactive, bits 8-15 QoS class, bits 16-23 the
 * relative priority's magnitude, bits 24-25 the autorelease frequency. */
typedef const struct dispatch_queue_attr_s *dispatch_queue_attr_t;
#define DISPATCH_QUEUE_SERIAL ((dispatch_queue_attr_t)0)
#define DISPATCH_QUEUE_CONCURRENT ((dispatch_queue_attr_t)(uintptr_t)1)
#define DISPATCH_QUEUE_SERIAL_INACTIVE ((dispatch_queue_attr_t)(uintptr_t)2)
#define DISPATCH_QUEUE_CONCURRENT_INACTIVE                                    \
    ((dispatch_queue_attr_t)(uintptr_t)3)

#define DISPATCH_TIME_NOW DK_TIME_NOW
#define DISPATCH_TIME_FOREVER DK_TIME_FOREVER
/* As `when` for dispatch_time: the wall clock now. */
#define DISPATCH_WALLTIME_NOW DK_WALLTIME_NOW
#ifndef NSEC_PER_SEC
#define NSEC_PER_SEC 1000000000ull
#define NSEC_PER_MSEC 1000000ull
#define NSEC_PER_USEC 1000ull
#define USEC_PER_SEC 1000000ull
#define MSEC_PER_SEC 1000ull
#endif

#define DISPATCH_QUEUE_PRIORITY_HIGH 2
#define DISPATCH_QUEUE_PRIORITY_DEFAULT 0
#define DISPATCH_QUEUE_PRIORITY_LOW (-2)
#define DISPATCH_QUEUE_PRIORITY_BACKGROUND INT16_MIN
#ifndef QOS_CLASS_USER_INTERACTIVE
typedef unsigned int qos_class_t;
#define QOS_CLASS_USER_INTERACTIVE 0x21u
#define QOS_CLASS_USER_INITIATED 0x19u
#define QOS_CLASS_DEFAULT 0x15u
#define QOS_CLASS_UTILITY 0x11u
#define QOS_CLASS_BACKGROUND 0x09u
#define QOS_CLASS_UNSPECIFIED 0x00u
#endif
typedef qos_class_t dispatch_qos_class_t;

/* Autorelease pools are an Objective-C notion: on Linux the frequency is
 * recorded and has no other effect (as in libdispatch's Linux port). */
typedef unsigned long dispatch_autorelease_frequency_t;
#define DISPATCH_AUTORELEASE_FREQUENCY_INHERIT 0ul
#define DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM 1ul
#define DISPATCH_AUTORELEASE_FREQUENCY_NEVER 2ul

/* Pass to dispatch_queue_create_with_target, dispatch_set_target_queue or
 * dispatch_source_create for the default target queue. */
#define DISPATCH_TARGET_QUEUE_DEFAULT ((dispatch_queue_t)0)

#define DISPATCH_APPLY_AUTO ((dispatch_queue_t)0)
#define DISPATCH_CURRENT_QUEUE_LABEL ((dispatch_queue_t)0)

static inline void
dispatch__client_crash(const char *msg)
{
    fprintf(stderr, "dispatchkit: BUG IN CLIENT OF LIBDISPATCH: %s\n", msg);
    abort();
}

/* libdispatch's constructors return the object or NULL; dk's return 0 or
 * -errno and write the object to an out-parameter. This turns the second
 * form into the first (errno says why on NULL). */
static inline void *
dispatch__created(int rc, void *object)
{
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    return object;
}

static inline void
dispatch__assert_crash(const char *what, dispatch_queue_t q)
{
    fprintf(stderr, "dispatchkit: BUG IN CLIENT OF LIBDISPATCH: %s [%s]\n",
            what, dk_queue_label(q));
    abort();
}

static inline dispatch_queue_attr_t
dispatch_queue_attr_make_initially_inactive(dispatch_queue_attr_t attr)
{
    return (dispatch_queue_attr_t)((uintptr_t)attr | 2u);
}

/* NULL (the serial attribute, as in libdispatch) for an unknown
 * frequency. A queue created with a frequency other than INHERIT cannot
 * change its target once active (as in libdispatch). */
static inline dispatch_queue_attr_t
dispatch_queue_attr_make_with_autorelease_frequency(
    dispatch_queue_attr_t attr, dispatch_autorelease_frequency_t frequency)
{
    if (frequency > DISPATCH_AUTORELEASE_FREQUENCY_NEVER) {
        return (dispatch_queue_attr_t)0;
    }
    uintptr_t a = (uintptr_t)attr & ~((uintptr_t)3u << 24);
    return (dispatch_queue_attr_t)(a | ((uintptr_t)frequency << 24));
}

#define DISPATCH_QUEUE_SERIAL_WITH_AUTORELEASE_POOL                           \
    dispatch_queue_attr_make_with_autorelease_frequency(                      \
        DISPATCH_QUEUE_SERIAL, DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM)
#define DISPATCH_QUEUE_CONCURRENT_WITH_AUTORELEASE_POOL                       \
    dispatch_queue_attr_make_with_autorelease_frequency(                      \
        DISPATCH_QUEUE_CONCURRENT, DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM)

static inline dispatch_queue_attr_t
dispatch_queue_attr_make_with_qos_class(dispatch_queue_attr_t attr,
                                        qos_class_t qos, int relpri)
{
    uintptr_t a = (uintptr_t)attr & ~(uintptr_t)0xffff00u;
    uintptr_t mag = relpri < 0 ? (uintptr_t)(-relpri) & 0xffu : 0;
    if (relpri > 0) {
        mag = 0xffu; /* out of range: the QoS request is ignored */
    }
    return (dispatch_queue_attr_t)(a | ((uintptr_t)(qos & 0xffu) << 8) |
                                   (mag << 16));
}

static inline dispatch_queue_t
dispatch_queue_create_with_target(const char *label,
                                  dispatch_queue_attr_t attr,
                                  dispatch_queue_t target)
{
    uintptr_t a = (uintptr_t)attr;
    bool inactive = (a & 2u) != 0;
    /* An autorelease frequency pins the target once active: such a queue
     * is created inactive and activated here unless asked inactive (dk
     * refuses retargeting a queue that was activated). */
    bool pinned = ((a >> 24) & 3u) != DISPATCH_AUTORELEASE_FREQUENCY_INHERIT;
    unsigned flags = ((a & 1u) ? DK_QUEUE_CONCURRENT : 0) |
                     (inactive || pinned ? DK_QUEUE_INACTIVE : 0);
    dispatch_queue_t q;
    int rc = dk_queue_create(label, flags, (int)((a >> 8) & 0xffu),
                             -(int)((a >> 16) & 0xffu), target, &q);
    if (rc == 0 && pinned && !inactive && dk_queue_activate(q) != 0) {
        dispatch__client_crash("a new inactive queue refused activation");
    }
    return (dispatch_queue_t)dispatch__created(rc, q);
}

static inline dispatch_queue_t
dispatch_queue_create(const char *label, dispatch_queue_attr_t attr)
{
    return dispatch_queue_create_with_target(label, attr,
                                             DISPATCH_TARGET_QUEUE_DEFAULT);
}

/* The QoS class the queue was created with and its relative priority
 * (QOS_CLASS_UNSPECIFIED and 0 for none); a global queue's class. */
static inline dispatch_qos_class_t
dispatch_queue_get_qos_class(dispatch_queue_t q, int *relative_priority_ptr)
{
    return (dispatch_qos_class_t)dk_queue_qos(q, relative_priority_ptr);
}

/* Deprecated in libdispatch and kept, as there: the queue of the running
 * work item, else the default global queue. */
static inline dispatch_queue_t
dispatch_get_current_queue(void)
{
    dispatch_queue_t q = dk_queue_current();
    return q != NULL ? q : dk_queue_global(0);
}

/*
 * Abort with a message naming the queue unless the calling thread runs an
 * item submitted to q or to a queue targeting q, directly or for a thread
 * waiting in dispatch_sync (recursively); the main queue counts anywhere
 * on the main thread. _barrier also requires the item to run alone on q
 * (always so on a serial queue); _not aborts when dispatch_assert_queue
 * would return. The _debug forms compile to nothing under NDEBUG.
 */
static inline void
dispatch_assert_queue(dispatch_queue_t q)
{
    if (!dk_queue_is_current(q, 0)) {
        dispatch__assert_crash("dispatch_assert_queue: not running on queue",
                               q);
    }
}

static inline void
dispatch_assert_queue_barrier(dispatch_queue_t q)
{
    dispatch_assert_queue(q);
    if (!dk_queue_is_current(q, DK_SYNC_BARRIER)) {
        dispatch__assert_crash(
            "dispatch_assert_queue_barrier: not running as a barrier on queue",
            q);
    }
}

static inline void
dispatch_assert_queue_not(dispatch_queue_t q)
{
    if (dk_queue_is_current(q, 0)) {
        dispatch__assert_crash("dispatch_assert_queue_not: running on queue",
                               q);
    }
}

#ifdef NDEBUG
#define dispatch_assert_queue_debug(q) ((void)(0 && (q)))
#define dispatch_assert_queue_barrier_debug(q) ((void)(0 && (q)))
#define dispatch_assert_queue_not_debug(q) ((void)(0 && (q)))
#else
#define dispatch_assert_queue_debug(q) dispatch_assert_queue(q)
#define dispatch_assert_queue_barrier_debug(q) dispatch_assert_queue_barrier(q)
#define dispatch_assert_queue_not_debug(q) dispatch_assert_queue_not(q)
#endif

static inline dispatch_queue_global_t
dispatch_get_global_queue(long identifier, unsigned long flags)
{
    (void)flags;
    return dk_queue_global(identifier);
}

static inline dispatch_queue_main_t
dispatch_get_main_queue(void)
{
    return dk_queue_main();
}

static inline const char *
dispatch_queue_get_label(dispatch_queue_t q)
{
    if (q == DISPATCH_CURRENT_QUEUE_LABEL) {
        q = dk_queue_current();
        return q != NULL ? dk_queue_label(q) : "";
    }
    return dk_queue_label(q);
}

/* Drain the main queue on the calling (main) thread forever. */
static inline void
dispatch_main(void)
{
    for (;;) {
        dk_main_drain(DK_TIME_FOREVER);
    }
}

static inline void
dispatch_async_f(dispatch_queue_t q, void *ctx, dispatch_function_t fn)
{
    if (dk_queue_async_f(q, ctx, fn) < 0) {
        dispatch__client_crash("out of memory in dispatch_async_f");
    }
}

static inline void
dispatch_barrier_async_f(dispatch_queue_t q, void *ctx, dispatch_function_t fn)
{
    if (dk_queue_barrier_async_f(q, ctx, fn) < 0) {
        dispatch__client_crash("out of memory in dispatch_barrier_async_f");
    }
}

static inline void
dispatch_sync_f(dispatch_queue_t q, void *ctx, dispatch_function_t fn)
{
    if (dk_queue_sync_f(q, ctx, fn) < 0) {
        dispatch__client_crash(
            "dispatch_sync called on queue already owned by current thread");
    }
}

static inline void
dispatch_barrier_sync_f(dispatch_queue_t q, void *ctx, dispatch_function_t fn)
{
    if (dk_queue_barrier_sync_f(q, ctx, fn) < 0) {
        dispatch__client_crash("dispatch_barrier_sync called on queue "
                               "already owned by current thread");
    }
}

static inline void
dispatch_after_f(dispatch_time_t when, dispatch_queue_t q, void *ctx,
                 dispatch_function_t fn)
{
    if (dk_queue_after_f(q, when, ctx, fn) < 0) {
        dispatch__client_crash("dispatch_after_f failed (out of memory)");
    }
}

static inline void
dispatch_apply_f(size_t iterations, dispatch_queue_t q, void *ctx,
                 void (*work)(void *, size_t))
{
    if (dk_apply_f(iterations, q, ctx, work) < 0) {
        dispatch__client_crash(
            "dispatch_apply_f on a queue owned by the current thread");
    }
}

static inline dispatch_group_t
dispatch_group_create(void)
{
    dispatch_group_t g;
    int rc = dk_group_create(&g);
    return (dispatch_group_t)dispatch__created(rc, g);
}

static inline void
dispatch_group_async_f(dispatch_group_t g, dispatch_queue_t q, void *ctx,
                       dispatch_function_t fn)
{
    if (dk_group_async_f(g, q, ctx, fn) < 0) {
        dispatch__client_crash("out of memory in dispatch_group_async_f");
    }
}

static inline long
dispatch_group_wait(dispatch_group_t g, dispatch_time_t timeout)
{
    return dk_group_wait(g, dk_time_deadline(timeout)) == 0 ? 0 : 1;
}

static inline void
dispatch_group_notify_f(dispatch_group_t g, dispatch_queue_t q, void *ctx,
                        dispatch_function_t fn)
{
    if (dk_group_notify_f(g, q, ctx, fn) < 0) {
        dispatch__client_crash("out of memory in dispatch_group_notify_f");
    }
}

static inline void
dispatch_group_enter(dispatch_group_t g)
{
    dk_group_enter(g);
}

static inline void
dispatch_group_leave(dispatch_group_t g)
{
    if (dk_group_leave(g) < 0) {
        dispatch__client_crash("Unbalanced call to dispatch_group_leave()");
    }
}

static inline dispatch_semaphore_t
dispatch_semaphore_create(long value)
{
    dispatch_semaphore_t s; /* NULL for value < 0, as GCD */
    int rc = dk_semaphore_create(value, &s);
    return (dispatch_semaphore_t)dispatch__created(rc, s);
}

static inline long
dispatch_semaphore_wait(dispatch_semaphore_t s, dispatch_time_t timeout)
{
    return dk_semaphore_wait(s, timeout == DISPATCH_TIME_NOW
                                    ? 0
                                    : dk_time_deadline(timeout)) == 0
               ? 0
               : 1;
}

static inline long
dispatch_semaphore_signal(dispatch_semaphore_t s)
{
    return dk_semaphore_signal(s) ? 1 : 0;
}

static inline void
dispatch_once_f(dispatch_once_t *predicate, void *ctx, dispatch_function_t fn)
{
    _Static_assert(sizeof(dispatch_once_t) == sizeof(dk_once_t),
                   "dispatch_once_t layout");
    dk_once_f((dk_once_t *)predicate, ctx, fn);
}

/* DISPATCH_WALLTIME_NOW as `when` is dispatch_walltime(NULL, delta). */
static inline dispatch_time_t
dispatch_time(dispatch_time_t when, int64_t delta)
{
    return dk_time(when, delta);
}

static inline dispatch_time_t
dispatch_walltime(const struct timespec *when, int64_t delta)
{
    uint64_t ns = 0;
    if (when != NULL) {
        ns = (uint64_t)when->tv_sec * 1000000000ull + (uint64_t)when->tv_nsec;
    }
    return dk_walltime(ns, delta);
}

static inline void
dispatch_retain(dispatch_object_t object)
{
    dk_retain(object);
}

static inline void
dispatch_release(dispatch_object_t object)
{
    dk_release(object);
}

static inline void
dispatch_set_context(dispatch_object_t object, void *ctx)
{
    dk_object_set_context(object, ctx);
}

static inline void *
dispatch_get_context(dispatch_object_t object)
{
    return dk_object_get_context(object);
}

static inline void
dispatch_set_finalizer_f(dispatch_object_t object, dispatch_function_t fn)
{
    dk_object_set_finalizer_f(object, fn);
}

/*
 * Deprecated in libdispatch and kept, as there: log a description of the
 * object followed by the message, to stderr (libdispatch's default is
 * syslog). LIBDISPATCH_LOG=NO silences it, as in libdispatch.
 */
static inline void
dispatch_debugv(dispatch_object_t object, const char *message, va_list ap)
{
    const char *log = getenv("LIBDISPATCH_LOG");
    if (log != NULL && (log[0] == 'N' || log[0] == 'n') &&
        (log[1] == 'O' || log[1] == 'o') && log[2] == '\0') {
        return;
    }
    char desc[256];
    dk_object_describe(object, desc, sizeof desc);
    fprintf(stderr, "%s: ", desc);
    vfprintf(stderr, message, ap);
    fputc('\n', stderr);
}

static inline void __attribute__((format(printf, 2, 3)))
dispatch_debug(dispatch_object_t object, const char *message, ...)
{
    va_list ap;
    va_start(ap, message);
    dispatch_debugv(object, message, ap);
    va_end(ap);
}

static inline void
dispatch_suspend(dispatch_object_t object)
{
    dk_object_suspend(object);
}

static inline void
dispatch_resume(dispatch_object_t object)
{
    if (dk_object_resume(object) == -EOVERFLOW) {
        dispatch__client_crash("Over-resume of an object");
    }
}

static inline void
dispatch_activate(dispatch_object_t object)
{
    /* Activating an active object does nothing, as in libdispatch. */
    int rc = dk_object_activate(object);
    (void)rc;
}

static inline void
dispatch_set_target_queue(dispatch_object_t object, dispatch_queue_t target)
{
    int rc = dk_queue_set_target((dispatch_queue_t)object, target);
    if (rc == -EPERM) {
        dispatch__client_crash("Cannot change the target of this object "
                               "after it has been activated");
    }
}

static inline void
dispatch_queue_set_specific(dispatch_queue_t q, const void *key, void *context,
                            dispatch_function_t destructor)
{
    (void)dk_queue_set_specific(q, key, context, destructor);
}

static inline void *
dispatch_queue_get_specific(dispatch_queue_t q, const void *key)
{
    return dk_queue_get_specific(q, key);
}

static inline void *
dispatch_get_specific(const void *key)
{
    return dk_get_specific(key);
}

/* ---- dispatch sources ----------------------------------------------- */

typedef dk_source_t *dispatch_source_t;
typedef const struct dispatch_source_type_s *dispatch_source_type_t;
#define DISPATCH_SOURCE_TYPE_TIMER                                            \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_TIMER)
#define DISPATCH_SOURCE_TYPE_SIGNAL                                           \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_SIGNAL)
#define DISPATCH_SOURCE_TYPE_READ                                             \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_READ)
#define DISPATCH_SOURCE_TYPE_WRITE                                            \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_WRITE)
#define DISPATCH_SOURCE_TYPE_PROC                                             \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_PROC)
#define DISPATCH_SOURCE_TYPE_DATA_ADD                                         \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_DATA_ADD)
#define DISPATCH_SOURCE_TYPE_DATA_OR                                          \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_DATA_OR)
#define DISPATCH_SOURCE_TYPE_DATA_REPLACE                                     \
    ((dispatch_source_type_t)(uintptr_t)DK_SOURCE_DATA_REPLACE)
/* The mask types of libdispatch's source types (the Mach, memory-pressure
 * and vnode types themselves do not exist on Linux). */
typedef unsigned long dispatch_source_mach_send_flags_t;
typedef unsigned long dispatch_source_memorypressure_flags_t;
typedef unsigned long dispatch_source_proc_flags_t;
typedef unsigned long dispatch_source_vnode_flags_t;
typedef unsigned long dispatch_source_timer_flags_t;
#define DISPATCH_PROC_EXIT DK_PROC_EXIT
#define DISPATCH_PROC_FORK DK_PROC_FORK
#define DISPATCH_PROC_EXEC DK_PROC_EXEC
#define DISPATCH_PROC_SIGNAL DK_PROC_SIGNAL
#define DISPATCH_TIMER_STRICT 0x1ul

/* NULL for an invalid type, handle or mask (as libdispatch). */
static inline dispatch_source_t
dispatch_source_create(dispatch_source_type_t type, uintptr_t handle,
                       unsigned long mask, dispatch_queue_t queue)
{
    if (type == DISPATCH_SOURCE_TYPE_TIMER) {
        mask &= ~DISPATCH_TIMER_STRICT; /* timers are always strict here */
    }
    dispatch_source_t s;
    int rc = dk_source_create((dk_source_type_t)(uintptr_t)type, handle, mask,
                              queue, &s);
    return (dispatch_source_t)dispatch__created(rc, s);
}

/* Merge into a DATA_ADD, DATA_OR or DATA_REPLACE source; 0 has no effect
 * (DATA_REPLACE: replaces a pending value). Other sources: client crash. */
static inline void
dispatch_source_merge_data(dispatch_source_t s, uintptr_t value)
{
    if (dk_source_merge_data(s, value) < 0) {
        dispatch__client_crash(
            "dispatch_source_merge_data on a source that is not a "
            "DATA_ADD, DATA_OR or DATA_REPLACE source");
    }
}

static inline void
dispatch_source_set_registration_handler_f(dispatch_source_t s,
                                           dispatch_function_t handler)
{
    dk_source_set_registration_handler_f(s, handler);
}

static inline void
dispatch_source_set_event_handler_f(dispatch_source_t s,
                                    dispatch_function_t handler)
{
    dk_source_set_event_handler_f(s, handler);
}

static inline void
dispatch_source_set_cancel_handler_f(dispatch_source_t s,
                                     dispatch_function_t handler)
{
    dk_source_set_cancel_handler_f(s, handler);
}

static inline void
dispatch_source_set_timer(dispatch_source_t s, dispatch_time_t start,
                          uint64_t interval, uint64_t leeway)
{
    if (dk_source_set_timer(s, start, interval, leeway) < 0) {
        dispatch__client_crash("dispatch_source_set_timer on a source that "
                               "is not a timer, or with interval 0");
    }
}

static inline void
dispatch_source_cancel(dispatch_source_t s)
{
    dk_source_cancel(s);
}

static inline long
dispatch_source_testcancel(dispatch_source_t s)
{
    return dk_source_testcancel(s) ? 1 : 0;
}

static inline uintptr_t
dispatch_source_get_data(dispatch_source_t s)
{
    return dk_source_get_data(s);
}

static inline uintptr_t
dispatch_source_get_handle(dispatch_source_t s)
{
    return dk_source_get_handle(s);
}

static inline unsigned long
dispatch_source_get_mask(dispatch_source_t s)
{
    return dk_source_get_mask(s);
}

/* ---- dispatch data -------------------------------------------------- */

typedef dk_data_t *dispatch_data_t;
#define dispatch_data_empty (dk_data_empty())
/* libdispatch's destructors are blocks; here they are function pointers:
 * DEFAULT copies the buffer, FREE takes it and free()s it later, any other
 * function is called with the buffer once the data is gone. */
typedef void (*dispatch_data_destructor_t)(void *buffer);
#define DISPATCH_DATA_DESTRUCTOR_DEFAULT ((dispatch_data_destructor_t)0)
#define DISPATCH_DATA_DESTRUCTOR_FREE ((dispatch_data_destructor_t)free)
/* For a buffer from mmap(2): munmap(buffer, size) once the data is gone.
 * A marker value, never called. */
#define DISPATCH_DATA_DESTRUCTOR_MUNMAP                                       \
    ((dispatch_data_destructor_t)(uintptr_t)1)

static inline void
dispatch__data_destroy(void *ctx, void *buffer)
{
    union {
        void *p;
        dispatch_data_destructor_t f;
    } u = {ctx};
    u.f(buffer);
}

/* dispatch_data_create with a function-pointer destructor (the queue is
 * accepted for compatibility; destructors run on the releasing thread). */
static inline dispatch_data_t
dispatch_data_create_f(const void *buffer, size_t size, dispatch_queue_t queue,
                       dispatch_data_destructor_t destructor)
{
    (void)queue;
    dispatch_data_t d;
    int rc;
    if (destructor == DISPATCH_DATA_DESTRUCTOR_DEFAULT) {
        rc = dk_data_create(buffer, size, &d);
    } else if (destructor == DISPATCH_DATA_DESTRUCTOR_MUNMAP) {
        rc = dk_data_create_mapped((void *)buffer, size, &d);
    } else {
        union {
            dispatch_data_destructor_t f;
            void *p;
        } u = {destructor};
        rc = dk_data_create_nocopy((void *)buffer, size,
                                   dispatch__data_destroy, u.p, &d);
    }
    return (dispatch_data_t)dispatch__created(rc, d);
}

static inline size_t
dispatch_data_get_size(dispatch_data_t d)
{
    return dk_data_get_size(d);
}

static inline dispatch_data_t
dispatch_data_create_map(dispatch_data_t d, const void **buffer, size_t *size)
{
    const void *b = NULL;
    size_t n = 0;
    dispatch_data_t m;
    if (dk_data_create_map(d, &b, &n, &m) < 0) {
        b = NULL;
        n = 0;
    }
    if (buffer != NULL) {
        *buffer = b;
    }
    if (size != NULL) {
        *size = n;
    }
    return m;
}

static inline dispatch_data_t
dispatch_data_create_concat(dispatch_data_t a, dispatch_data_t b)
{
    dispatch_data_t d;
    int rc = dk_data_create_concat(a, b, &d);
    return (dispatch_data_t)dispatch__created(rc, d);
}

static inline dispatch_data_t
dispatch_data_create_subrange(dispatch_data_t d, size_t offset, size_t length)
{
    dispatch_data_t r;
    int rc = dk_data_create_subrange(d, offset, length, &r);
    return (dispatch_data_t)dispatch__created(rc, r);
}

static inline dispatch_data_t
dispatch_data_copy_region(dispatch_data_t d, size_t location, size_t *offset)
{
    dispatch_data_t r;
    int rc = dk_data_copy_region(d, location, offset, &r);
    return (dispatch_data_t)dispatch__created(rc, r);
}

/* The applier gets each region's bytes; the region object argument of
 * libdispatch's block is not provided (NULL). */
typedef bool (*dispatch_data_applier_function_t)(void *ctx,
                                                 dispatch_data_t region,
                                                 size_t offset,
                                                 const void *buffer,
                                                 size_t size);
struct dispatch__apply_ctx {
    void *ctx;
    dispatch_data_applier_function_t fn;
};

static inline bool
dispatch__data_apply_tramp(void *p, size_t offset, const void *bytes,
                           size_t len)
{
    struct dispatch__apply_ctx *a = (struct dispatch__apply_ctx *)p;
    return a->fn(a->ctx, NULL, offset, bytes, len);
}

static inline bool
dispatch_data_apply_f(dispatch_data_t d, void *ctx,
                      dispatch_data_applier_function_t applier)
{
    struct dispatch__apply_ctx a = {ctx, applier};
    return dk_data_apply(d, &a, dispatch__data_apply_tramp);
}

/* ---- dispatch I/O ---------------------------------------------------- */

typedef dk_io_t *dispatch_io_t;
typedef unsigned long dispatch_io_type_t;
typedef unsigned long dispatch_io_close_flags_t;
typedef unsigned long dispatch_io_interval_flags_t;
typedef int dispatch_fd_t;
#define DISPATCH_IO_STREAM 0
#define DISPATCH_IO_RANDOM 1
#define DISPATCH_IO_STOP 0x1
#define DISPATCH_IO_STRICT_INTERVAL 0x1
typedef void (*dispatch_io_handler_function_t)(void *ctx, bool done,
                                               dispatch_data_t data,
                                               int error);

static inline dispatch_io_t
dispatch_io_create_f(dispatch_io_type_t type, dispatch_fd_t fd,
                     dispatch_queue_t queue, void *ctx,
                     void (*cleanup_handler)(void *ctx, int error))
{
    dispatch_io_t io;
    int rc = dk_io_create((int)type, fd, queue, ctx, cleanup_handler, &io);
    return (dispatch_io_t)dispatch__created(rc, io);
}

static inline void
dispatch_io_read_f(dispatch_io_t channel, off_t offset, size_t length,
                   dispatch_queue_t queue, void *ctx,
                   dispatch_io_handler_function_t handler)
{
    if (dk_io_read_data(channel, offset, length, queue, ctx, handler) < 0) {
        handler(ctx, true, dk_data_empty(), ECANCELED);
    }
}

static inline void
dispatch_io_write_f(dispatch_io_t channel, off_t offset, dispatch_data_t data,
                    dispatch_queue_t queue, void *ctx,
                    dispatch_io_handler_function_t handler)
{
    if (dk_io_write_data(channel, offset, data, queue, ctx, handler) < 0) {
        handler(ctx, true, data, ECANCELED);
    }
}

static inline void
dispatch_io_close(dispatch_io_t channel, dispatch_io_close_flags_t flags)
{
    dk_io_close(channel, (unsigned)flags);
}

static inline void
dispatch_io_barrier_f(dispatch_io_t channel, void *ctx,
                      dispatch_function_t barrier)
{
    (void)dk_io_barrier_f(channel, ctx, barrier);
}

static inline dispatch_fd_t
dispatch_io_get_descriptor(dispatch_io_t channel)
{
    return dk_io_is_closed(channel) ? -1 : dk_io_get_fd(channel);
}

static inline void
dispatch_io_set_high_water(dispatch_io_t channel, size_t high_water)
{
    dk_io_set_high_water(channel, high_water);
}

static inline void
dispatch_io_set_low_water(dispatch_io_t channel, size_t low_water)
{
    dk_io_set_low_water(channel, low_water);
}

static inline void
dispatch_io_set_interval(dispatch_io_t channel, uint64_t interval,
                         dispatch_io_interval_flags_t flags)
{
    dk_io_set_interval(channel, interval, (unsigned)flags);
}

/* Channels are objects like the others (dispatch_retain and
 * dispatch_release apply); dispatch_io_release is dispatch_release. */
static inline void
dispatch_io_release(dispatch_io_t channel)
{
    dk_io_release(channel);
}

static inline void
dispatch_read_f(dispatch_fd_t fd, size_t length, dispatch_queue_t queue,
                void *ctx,
                void (*handler)(void *ctx, dispatch_data_t data, int error))
{
    int rc = dk_read_data(fd, length, queue, ctx, handler);
    if (rc < 0) {
        handler(ctx, dk_data_empty(), -rc);
    }
}

static inline void
dispatch_write_f(dispatch_fd_t fd, dispatch_data_t data,
                 dispatch_queue_t queue, void *ctx,
                 void (*handler)(void *ctx, dispatch_data_t remaining,
                                 int error))
{
    int rc = dk_write_data(fd, data, queue, ctx, handler);
    if (rc < 0) {
        handler(ctx, data, -rc);
    }
}

DK_END_DECLS

#endif /* DK_DISPATCH_H */
