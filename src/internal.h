/*
 * Internal structures of the dispatch runtime shared across src/ files:
 * objects, work items, the intrusive MPSC list, queue state and the
 * thread-local frame stack.
 */
#ifndef DK_SRC_INTERNAL_H
#define DK_SRC_INTERNAL_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "atomic.h"
#include "dk/apply.h"
#include "dk/data.h"
#include "dk/group.h"
#include "dk/once.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"
#include "os/linux/os.h"

/* Abort with a message naming a client's misuse (from C). */
#define DK_CLIENT_CRASH(msg)                                                  \
    do {                                                                      \
        fprintf(stderr, "dispatchkit: BUG IN CLIENT: %s\n", (msg));           \
        abort();                                                              \
    } while (0)
#define DK_INTERNAL_CRASH(msg)                                                \
    do {                                                                      \
        fprintf(stderr, "dispatchkit: internal error: %s\n", (msg));          \
        abort();                                                              \
    } while (0)

/*
 * The object model (object.c). Every heap object (queue, group,
 * semaphore, source, data, I/O channel) starts with a struct dk__object:
 * its reference count, a kind tag, and the context and finalizer of
 * dk_object_set_context/dk_object_set_finalizer_f. The kind tag names the
 * object's vtable (struct dk__vtable) and lets dk_release recognise a
 * pointer that is not an object. Immortal objects (global queues, the
 * main queue, the empty data object) carry DK_REFCNT_IMMORTAL.
 */
enum dk__kind {
    DK_KIND_QUEUE = 0x51554555,
    DK_KIND_GROUP = 0x47525550,
    DK_KIND_SEMAPHORE = 0x53454d41,
    DK_KIND_SOURCE = 0x534f5552,
    DK_KIND_DATA = 0x44415441,
    DK_KIND_IO = 0x494f4348,
};

#define DK_REFCNT_IMMORTAL 0x80000000u

struct dk__object {
    uint32_t refcnt;
    uint32_t kind;
    void *context;
    dk_function_t finalizer;
};

/*
 * What the object model needs of each kind, one table per kind (defined
 * beside the kind's code, listed in object.c). When the last reference
 * goes, dk_release calls finalize, submits the client's finalizer with
 * its context to the queue finalize returned (dk__finalizer_run), then
 * calls dispose.
 */
struct dk__vtable {
    uint32_t kind; /* DK_KIND_* */
    const char *name;
    /* Abort if destroying the object now is a client bug (a suspended
     * queue, a group with outstanding enters); return the queue the
     * finalizer runs on (borrowed: the object still holds it). */
    dk_queue_t *(*finalize)(struct dk__object *o);
    /* Release everything the object holds and free it. */
    void (*dispose)(struct dk__object *o);
    /* dk_object_describe for this kind; `refcnt` is the count, printed. */
    int (*describe)(const struct dk__object *o, const char *refcnt, char *buf,
                    size_t len);
};
extern const struct dk__vtable dk__queue_vtable, dk__group_vtable,
    dk__semaphore_vtable, dk__source_vtable, dk__data_vtable, dk__io_vtable;

/* A new object of `kind` with one reference, no context, no finalizer. */
void dk__object_init(struct dk__object *o, uint32_t kind);
/* The finalize of a kind with nothing to check and no queue of its own:
 * the client's finalizer runs on the default root queue. */
dk_queue_t *dk__finalize_on_root(struct dk__object *o);
/* Run fn(ctx) asynchronously on q, or on the calling thread if q cannot
 * take it (out of memory) rather than lose it. Nothing when fn or ctx is
 * NULL. The one way finalizers and queue-specific destructors run. */
void dk__finalizer_run(dk_queue_t *q, void *ctx, dk_function_t fn);

/* Work item flags. */
#define DK_ITEM_BARRIER 0x1u   /* exclusive on a concurrent queue */
#define DK_ITEM_DRAIN 0x2u     /* a serial queue's drain request */
#define DK_ITEM_CQ 0x4u        /* from a concurrent queue: complete after */
#define DK_ITEM_SYNC 0x8u      /* a waiter's item: signal when done */
#define DK_ITEM_GROUP 0x10u    /* leave item->group after running */
#define DK_ITEM_EMBEDDED 0x20u /* not malloc'ed: never freed */
#define DK_ITEM_QOS 0x40u      /* workloops: bits 24-26 hold a QoS band */
#define DK_ITEM_BAND_SHIFT 24

struct dk__item {
    struct dk__item *next;
    dk_function_t fn;
    void *ctx;
    dk_queue_t *queue; /* DRAIN: the queue to drain */
    dk_queue_t *cq;    /* CQ: the concurrent queue it belongs to */
    dk_group_t *group;
    uint32_t flags;
    uint32_t done; /* SYNC: futex word set to 1 when finished */
    /* SYNC: the waiting thread's frames, so that an item run for it on
     * another thread still counts as running on the caller's queues
     * (dk_queue_is_current). NULL for other items. */
    struct dk__frame *caller;
};

/* Vyukov's intrusive multi-producer single-consumer list. Producers only
 * exchange `tail`; the single consumer owns `head`. */
struct dk__mpsc {
    struct dk__item *head;
    struct dk__item stub;
    struct dk__item *tail DK_CACHE_ALIGNED;
};

void dk__mpsc_init(struct dk__mpsc *l);
/* Push one item (any thread). */
void dk__mpsc_push(struct dk__mpsc *l, struct dk__item *it);
/* Pop the oldest item: NULL when empty. Spins while a producer is between
 * its two steps (a few instructions). Single consumer only. */
struct dk__item *dk__mpsc_pop(struct dk__mpsc *l);
bool dk__mpsc_empty(struct dk__mpsc *l);

/*
 * The queue state word, `state` (as libdispatch's dq_state, field by
 * field). 64 bits, changed only with atomics:
 *
 *   bit 0     SCHEDULED     Ownership of a serial queue's (or workloop's)
 *                           drain. Set by the one CAS that wins in
 *                           serial_wakeup (a push, resume or activate
 *                           that finds the queue runnable) or in
 *                           dk_queue_sync_enter (a sync caller draining
 *                           inline); cleared only by the owner, in
 *                           serial_release (C), which then looks at the
 *                           list again (D): see the (A)-(D) block at the
 *                           top of queue.c. Concurrent queues do not use it.
 *   bit 1     INACTIVE      Created inactive and not activated yet: set at
 *                           creation, cleared once by dk_queue_activate.
 *                           Nothing drains while it is set.
 *   bit 2     WAS_INACTIVE  Created inactive. Never cleared: after
 *                           activation the target may no longer change.
 *   bits 3-7                Reserved, always 0.
 *   bits 8-63 suspend count dk_queue_suspend adds DK_QS_SUSPEND_ONE,
 *                           dk_queue_resume subtracts it (CAS, refusing
 *                           to go below 0: -EOVERFLOW). Nothing drains
 *                           while it is not 0; the resume that brings it
 *                           to 0 kicks the queue (queue_kick).
 *
 * A queue is runnable (state_runnable) when SCHEDULED, INACTIVE and the
 * suspend count are all 0.
 */
#define DK_QS_SCHEDULED 0x1ull
#define DK_QS_INACTIVE 0x2ull
#define DK_QS_WAS_INACTIVE 0x4ull
#define DK_QS_SUSPEND_ONE 0x100ull
#define DK_QS_SUSPEND_SHIFT 8

enum dk__qtype {
    DK_Q_SERIAL,
    DK_Q_CONCURRENT,
    DK_Q_ROOT,
    DK_Q_MAIN,
    DK_Q_WORKLOOP,
};

#define DK_WL_BANDS 5

struct dk__specific {
    struct dk__specific *next;
    const void *key;
    void *value;
    dk_function_t destructor;
};

struct dk_queue_s {
    struct dk__object obj;
    enum dk__qtype type;
    int qos;
    int relpri; /* of a QoS given at creation; 0 without */
    uint64_t state;
    dk_queue_t *target;
    char *label;
    pthread_mutex_t lock; /* specifics, retired targets; CQ list */
    struct dk__specific *specifics;
    dk_queue_t **retired_targets;
    size_t nretired;

    /* Serial and main queues, and root queues: the item list. */
    struct dk__mpsc items;
    struct dk__item drain_item; /* the one outstanding drain request */

    /* Concurrent queues, under `lock`. */
    struct dk__item *cq_head, *cq_tail;
    uint32_t cq_running;
    bool cq_barrier_running;

    /* Workloops, under `lock`: one FIFO per QoS band, highest first. */
    struct dk__item *wl_head[DK_WL_BANDS], *wl_tail[DK_WL_BANDS];
    uint64_t wl_count; /* items in the bands (atomic, for emptiness) */

    /* Root queues: consumers serialise their pops on this lock. */
    uint32_t pop_lock;
    int root_index;

    /* Registry of live queues (for fork). */
    dk_queue_t *reg_next, *reg_prev;
};

/* Thread-local stack of the queues this thread is running items of. */
struct dk__frame {
    dk_queue_t *queue;
    struct dk__frame *prev;
    struct dk__frame *caller; /* a sync item's waiting thread's frames */
    bool barrier;
};
extern __thread struct dk__frame *dk__current_frame;

/* pool.c */
#define DK_NUM_ROOTS 5
extern struct dk_queue_s dk__roots[DK_NUM_ROOTS];
void dk__pool_push(dk_queue_t *root, struct dk__item *it);
void dk__runtime_init(void);
void dk__runtime_ensure(void);
void dk__pool_thread_idle(void); /* run the idle hook if registered */
bool dk__pool_tick(void);
bool dk__pool_start_watch(void);
bool dk__pool_watching(void);
unsigned dk__pool_ncpu(void);
extern const struct dk_thread_hooks *dk__hooks;

/* queue.c */
void dk__queue_push(dk_queue_t *q, struct dk__item *it);
/* Run an item popped from `from` (the queue whose list held it). */
void dk__item_run(struct dk__item *it, dk_queue_t *from);
struct dk__item *dk__item_alloc(void);
/* An item that will call fn(ctx), or NULL when out of memory. */
struct dk__item *dk__item_new(void *ctx, dk_function_t fn, uint32_t flags);
void dk__item_free(struct dk__item *it);
void dk__queue_fork_child(void);
void dk__main_queue_init(void);
dk_queue_t *dk__default_root(void);

/* event.c: the event thread (and its relief), the timer heap and epoll
 * registrations. */
struct dk__timer {
    uint64_t deadline; /* absolute CLOCK_MONOTONIC ns */
    uint64_t interval; /* 0 or DK_TIME_FOREVER: one-shot */
    uint64_t leeway;
    uint64_t seq;
    size_t heap_index;
    struct dk__object *owner; /* retained while in the heap; may be NULL */
    void (*fire)(struct dk__timer *t, uint64_t fires);
    bool dead; /* killed: never inserted again (under the heap lock) */
};
/* Keys naming epoll registrations: the event threads' own fds, then
 * source.c's registrations (an index and a generation, never a pointer,
 * so a stale event is recognised). */
#define DK_EVENT_KEY_TIMER 0u
#define DK_EVENT_KEY_WAKE 1u
#define DK_EVENT_KEY_SIGNAL 2u
#define DK_EVENT_KEY_FIRST 3u
int dk__event_ensure(void);
void dk__timer_init(struct dk__timer *t, struct dk__object *owner,
                    void (*fire)(struct dk__timer *t, uint64_t fires));
/* Insert or move. Returns 0 (also when killed: nothing happens) or -errno. */
int dk__timer_set(struct dk__timer *t, uint64_t deadline, uint64_t interval,
                  uint64_t leeway);
void dk__timer_disarm(struct dk__timer *t);
/* dk__timer_disarm, then wait until no callback of t runs and event.c
 * holds no reference to its owner for one. Not from a timer callback,
 * nor holding a lock that one takes. */
void dk__timer_disarm_wait(struct dk__timer *t);
void dk__timer_kill(struct dk__timer *t);
int dk__timer_after(dk_queue_t *q, uint64_t deadline, void *ctx,
                    dk_function_t fn);
int dk__event_add(int fd, uint32_t events, uint64_t key);
int dk__event_mod(int fd, uint32_t events, uint64_t key);
void dk__event_del(int fd);
/* Push `it` to q, or, from an event thread's batch when q is idle, keep
 * it to run on that thread at the batch's end (see event.c). queue_ref:
 * the caller passes its reference to q along, dropped once the item is
 * pushed or has run. */
void dk__event_submit(dk_queue_t *q, struct dk__item *it, bool queue_ref);
/* On an event thread running an item itself: the item's user code has
 * returned (lets another event thread run handlers again). */
void dk__event_user_code_done(void);
int dk__event_signal_fd(void);
void dk__timer_fork_child(void);
/* Ask the event thread to watch the pool for starvation. */
void dk__timer_watch_pool(void);

/* source.c */
void dk__source_signals_pending(void);
/* An event for a source.c registration key (from an event thread). */
void dk__source_on_event(uint64_t key, uint32_t events);
void dk__source_fork_child(void);

/* group.c */
/* fork(): hold every group's lock across it; the child makes them anew. */
void dk__group_fork_prepare(void);
void dk__group_fork_parent(void);
void dk__group_fork_child(void);
void dk__group_leave_item(dk_group_t *g);

/* Internal waiting on a 32-bit word with the pool told we block. */
int dk__wait_word(uint32_t *word, uint32_t expected, uint64_t deadline);

#endif /* DK_SRC_INTERNAL_H */
