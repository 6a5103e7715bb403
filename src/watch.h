/*
 * The futex watcher: asynchronous waits on futex words with no thread
 * parked per waiter. A caller registers (word, busy value, deadline) and
 * a callback; one watcher thread sleeps on up to DK__OS_WAITV_MAX - 1
 * distinct words at once with futex_waitv and calls back, from its own
 * thread, once the word is woken or differs from `busy`, or the deadline
 * passes. More distinct words start more watcher threads; a kernel
 * without futex_waitv (before 5.16) gets one thread per distinct word.
 *
 * The callback means "look again", never "you have it": wake-ups may be
 * spurious, and the caller retries its primitive's protocol and registers
 * again if it must still wait.
 */
#ifndef DK_SRC_WATCH_H
#define DK_SRC_WATCH_H

#include <stdbool.h>
#include <stdint.h>

struct dk__watch_shard;

/* Caller-owned; fill word, busy, shared, deadline and fn, then add. */
typedef struct dk__watch {
    uint32_t *word;
    uint32_t busy;
    bool shared;
    uint64_t deadline; /* absolute CLOCK_MONOTONIC ns; DK_TIME_FOREVER: none */
    /* rc 0: woken or changed; -ETIMEDOUT: the deadline passed. Called on
     * the watcher thread with no lock held; the storage is the caller's
     * again from the moment fn starts. */
    void (*fn)(struct dk__watch *w, int rc);
    /* private */
    struct dk__watch *next, *prev;
    struct dk__watch_shard *shard;
    int slot;
    int state;
} dk__watch_t;

/* Register w. Returns 0, or -ENOMEM / -EAGAIN (no watcher thread). */
int dk__watch_add(dk__watch_t *w);
/* Unregister w: true if it was still registered (fn will never be
 * called), false if fn has been or is being called. */
bool dk__watch_cancel(dk__watch_t *w);
/* True when waits use futex_waitv (false: the one-word fallback). */
bool dk__watch_uses_waitv(void);

/*
 * Ring watches: the watcher's job done by the kernel. With io_uring's
 * futex wait (Linux 6.7+) a wait completes into a ring whose completions
 * signal an event loop's own eventfd, so a futex wake from any thread or
 * process reaches the loop with no watcher thread in between (see
 * src/os/linux/uring.h for the calls and python/futures.c for their use).
 * Opens a ring signalling `eventfd`; -ENOSYS when io_uring or its futex
 * wait is unavailable here (or DK_NO_IO_URING is set, the tests' way to
 * exercise the watcher), and then the caller uses dk__watch_add.
 */
struct dk__os_uring;
int dk__watch_ring_open(int eventfd, struct dk__os_uring **out);

/*
 * Non-blocking steps of the primitives' wait protocols, for a waiter that
 * sleeps through the watcher instead of in the kernel. Each returns 0 when
 * the wait is over (the unit, the lock or the event is the caller's),
 * -EAGAIN when the caller must watch *word while it equals *busy and step
 * again (it has announced itself as the protocol requires, so the
 * primitive's waker makes the futex wake that the watcher sleeps on).
 */
struct dk_shm_mutex;
struct dk_shm_semaphore;
struct dk_shm_event;
struct dk_semaphore_s;
struct dk_group_s;

/* Mutex (Drepper's protocol, as dk_shm_mutex_lock): 1 when taken over
 * from a dead owner (check_owner asks whether the owner lives: do it
 * after a quiet slice, as the blocking lock does). */
int dk__shm_mutex_lock_step(struct dk_shm_mutex *m, bool check_owner,
                            uint64_t *orphan_since, uint32_t **word,
                            uint32_t *busy);
/* The calling thread's current watch budget for m, in ns (src/mutex.c:
 * it adapts to whether watching has been paying off; SPIN_BUDGET_NS
 * before this thread has waited on m). For tests. */
uint32_t dk__shm_mutex_watch_budget(const struct dk_shm_mutex *m);
/* Times the calling thread has given way (yielded, perhaps slept) in
 * dk_shm_mutex_lock_after_try so far. For tests. */
uint32_t dk__shm_mutex_backoffs(void);
/* Races for a free word that the calling thread's watch in
 * dk_shm_mutex_lock_try_spin lost to another locker, so far. For tests. */
uint32_t dk__shm_mutex_races_lost(void);
/* Locks taken by dk_shm_mutex_lock_try_spin while it watched, in this
 * process so far. For tests. */
uint32_t dk__shm_mutex_try_spin_wins(void);
/* Semaphore: a step that returns -EAGAIN leaves the caller counted in
 * `waiters`; dk__shm_semaphore_unannounce ends that (after each wake-up,
 * and on giving up). */
int dk__shm_semaphore_wait_step(struct dk_shm_semaphore *s, uint32_t **word,
                                uint32_t *busy);
void dk__shm_semaphore_unannounce(struct dk_shm_semaphore *s);
/* Event: 0 once set. */
int dk__shm_event_wait_step(struct dk_shm_event *e, uint32_t **word,
                            uint32_t *busy);
/* Dispatch semaphore (GCD accounting): begin takes a unit or counts the
 * caller as a waiter (-EAGAIN); then take_token on each wake-up; a
 * waiter that gives up calls abandon, which leaves the semaphore as if it
 * had never waited (a unit already counted for it is passed on). */
int dk__semaphore_wait_begin(struct dk_semaphore_s *s, uint32_t **word,
                             uint32_t *busy);
int dk__semaphore_take_token(struct dk_semaphore_s *s, uint32_t **word,
                             uint32_t *busy);
void dk__semaphore_wait_abandon(struct dk_semaphore_s *s);
/* Group: 0 once empty; -EAGAIN leaves the caller counted in `waiters`
 * until dk__group_unannounce. */
int dk__group_wait_step(struct dk_group_s *g, uint32_t **word, uint32_t *busy);
void dk__group_unannounce(struct dk_group_s *g);

/* zerobuffer reader: 0 when a frame is ready to take (try_read), -EAGAIN
 * counted as a waiter on the frames semaphore until
 * dk__zb_reader_unannounce, -EBADF closed, -EPIPE the writer is gone and
 * nothing is left (check_writer: after a quiet slice), -ENOSYS where the
 * semaphore's layout is unknown. */
struct dk_zb_reader_s;
int dk__zb_reader_wait_step(struct dk_zb_reader_s *r, bool check_writer,
                            uint32_t **word, uint32_t *busy);
void dk__zb_reader_unannounce(struct dk_zb_reader_s *r);

/* zerobuffer writer: 0 when `size` bytes may be free now (look again:
 * a write will not wait long), -EAGAIN counted as a waiter on the space
 * semaphore until dk__zb_writer_unannounce, or acquire's errors (-EBADF,
 * -EBUSY, -EINVAL, -EMSGSIZE, -EPIPE), -ENOSYS (unknown sem_t). */
struct dk_zb_writer_s;
int dk__zb_writer_space_step(struct dk_zb_writer_s *w, uint64_t size,
                             bool check_reader, uint32_t **word,
                             uint32_t *busy);
void dk__zb_writer_unannounce(struct dk_zb_writer_s *w);

#endif /* DK_SRC_WATCH_H */
