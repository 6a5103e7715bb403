/*
 * Process-shared mutex and counting semaphore in caller memory, laid out
 * exactly as fastipc's 64-byte headers so the two libraries can share one
 * object, at once, across processes:
 *
 *   Mutex      +0x00 u32 magic 0x4D555458 ('MUTX')
 *              +0x08 u32 state: 0 free, 1 locked, 2 locked with waiters
 *              +0x0C u32 owner pid (0 when free)
 *              +0x10 u64 CLOCK_REALTIME ns of the last acquisition
 *              +0x18 u32 owner thread id (ours; fastipc ignores +0x18..)
 *   Semaphore  +0x00 u32 magic 0x53454D41 ('SEMA')
 *              +0x08 u32 count
 *              +0x0C u32 pid of the last successful waiter
 *              +0x10 u64 CLOCK_REALTIME ns of the last acquisition
 *              +0x18 u32 number of our sleeping waiters
 *
 * Uncontended operations are atomic instructions only (the pid is cached
 * and refreshed after fork; the clock is the vDSO). Waits take absolute
 * CLOCK_MONOTONIC deadlines (DK_TIME_FOREVER: none).
 */
#ifndef DK_MUTEX_H
#define DK_MUTEX_H

#include "dk/base.h"

DK_BEGIN_DECLS

#define DK_MUTEX_MAGIC 0x4D555458u
#define DK_SEMAPHORE_MAGIC 0x53454D41u
#define DK_SHM_HEADER_SIZE 64

/* Flags, with DK_SHARED (base.h: the memory is shared between
 * processes). Each function lists the ones it takes; any other bit is
 * -EINVAL. */
/* lock, wait: a signal arriving while asleep ends the wait with -EINTR. */
#define DK_SHM_INTERRUPTIBLE 0x2u
/* unlock: release whoever holds it (crash recovery). */
#define DK_SHM_FORCE 0x4u
/* post: also wake on every 0 -> n transition, for fastipc's waiters. */
#define DK_SHM_FASTIPC_COMPAT 0x8u
/* semaphore_init: store `count` (else an attached semaphore keeps its). */
#define DK_SHM_SET_COUNT 0x10u

/* Both objects need only 4-byte alignment (callers, fastipc's included,
 * place them at any 4-byte boundary), so the 64-bit stamp is declared
 * 4-byte aligned; read it with dk_shm_header_last_ns, not through a
 * uint64_t pointer. */
#define DK_SHM_ALIGN4 __attribute__((packed, aligned(4)))

typedef struct dk_shm_mutex {
    uint32_t magic;
    uint32_t flags;
    uint32_t state;
    uint32_t owner_pid;
    uint64_t last_ns DK_SHM_ALIGN4;
    uint32_t owner_tid;
    uint32_t reserved[9];
} dk_shm_mutex_t;

typedef struct dk_shm_semaphore {
    uint32_t magic;
    uint32_t flags;
    uint32_t count;
    uint32_t last_pid;
    uint64_t last_ns DK_SHM_ALIGN4;
    uint32_t waiters;
    uint32_t reserved[9];
} dk_shm_semaphore_t;

/*
 * Attach to (or initialise) the object at p: zeroed memory is initialised,
 * memory with the right magic is used as is. Returns 0, -EBADMSG (other
 * data there), -EINVAL (not 4-byte aligned; unknown flags). The
 * semaphore's count is set to `count` with DK_SHM_SET_COUNT only.
 */
DK_EXPORT int dk_shm_mutex_init(dk_shm_mutex_t *m) DK_WARN_UNUSED;
DK_EXPORT int dk_shm_semaphore_init(dk_shm_semaphore_t *s, uint32_t count,
                                    unsigned flags) DK_WARN_UNUSED;

/* The CLOCK_REALTIME ns of the last acquisition, at +0x10 of a Mutex or
 * Semaphore header. */
DK_EXPORT uint64_t dk_shm_header_last_ns(const void *header);

/*
 * Lock. flags: DK_SHARED, DK_SHM_INTERRUPTIBLE. Returns 0, 1 (acquired,
 * and the previous owner process had died holding it: the protected data
 * may be inconsistent), -ETIMEDOUT, -EINTR (a signal arrived while
 * waiting; DK_SHM_INTERRUPTIBLE only: the caller runs its handlers and
 * calls again with the same deadline), -EDEADLK (the calling thread
 * already holds it), -EINVAL (unknown flags). deadline 0 = try (spin times,
 * for at most 20 us, then give up; no liveness check, no syscall). With a
 * deadline, a holder whose process no longer exists is detected after
 * 50 ms without a wake-up, and once more at the deadline, so any positive
 * timeout recovers an abandoned lock. spin: CAS attempts before sleeping;
 * the spin stops at the deadline, however large the count.
 * Ownership is per thread: another thread of the holder's process blocks
 * like any other process.
 */
DK_EXPORT int dk_shm_mutex_lock(dk_shm_mutex_t *m, uint64_t deadline, int spin,
                                unsigned flags) DK_WARN_UNUSED;
/*
 * dk_shm_mutex_lock for a caller whose own try (deadline 0) failed just
 * before, as the Python binding's does (it tries with its interpreter
 * lock held and blocks only once it has let that go): the same arguments
 * and results. When the holder takes the lock straight back (two
 * processes looping around an empty critical section: the try of
 * dk_shm_mutex_lock_try_spin saw the word free and lost it before its
 * CAS; for a caller whose try does not watch, eight waits in a row that
 * found the lock free at once), the caller gives way before its next try
 * (yields its CPU, and sleeps 50 us without announcing itself if nothing
 * else wanted that CPU), so that the holder runs alone for a while:
 * handing the lock over on every acquisition then costs more CPU than the
 * lock itself, for no overlap. See src/mutex.c.
 */
DK_EXPORT int dk_shm_mutex_lock_after_try(dk_shm_mutex_t *m, uint64_t deadline,
                                          int spin,
                                          unsigned flags) DK_WARN_UNUSED;
/*
 * A try that watches, for a caller that may not block yet (the Python
 * binding, holding its interpreter lock; it calls
 * dk_shm_mutex_lock_after_try next, without it, when this fails): one
 * CAS and, while the holder keeps the word at 1 (no sleepers announced)
 * and another CPU can run it, a watch of at most 2 us that takes the lock
 * the moment it comes free. It skips the watch when it is due to give way
 * (see dk_shm_mutex_lock_after_try), and when this thread's blocking
 * waits have found holds too long to watch, except on every 64th try. No
 * syscall, no sleep, never announced as a waiter. flags: DK_SHARED.
 * Returns 0, -ETIMEDOUT (not taken), -EDEADLK (the calling thread holds
 * it), -EINVAL (unknown flags).
 */
DK_EXPORT int dk_shm_mutex_lock_try_spin(dk_shm_mutex_t *m,
                                         unsigned flags) DK_WARN_UNUSED;
/* Unlock and wake one sleeper if any announced itself. flags: DK_SHARED,
 * DK_SHM_FORCE. Returns 0, -EPERM when the calling thread does not hold
 * it (another thread of the holder's process included; a holder that
 * recorded no thread id, such as a fastipc process, is matched by pid,
 * fastipc's rule), or -EINVAL (unknown flags); DK_SHM_FORCE unlocks
 * whoever holds it (crash recovery). */
DK_EXPORT int dk_shm_mutex_unlock(dk_shm_mutex_t *m,
                                  unsigned flags) DK_WARN_UNUSED;

/* Take one unit. flags: DK_SHARED, DK_SHM_INTERRUPTIBLE. Returns 0,
 * -ETIMEDOUT, -EINTR (DK_SHM_INTERRUPTIBLE), -EINVAL (unknown flags). spin
 * as for dk_shm_mutex_lock: bounded by the deadline (a try: by 20 us). */
DK_EXPORT int dk_shm_semaphore_wait(dk_shm_semaphore_t *s, uint64_t deadline,
                                    int spin, unsigned flags) DK_WARN_UNUSED;
/* Add n units and wake that many waiters. flags: DK_SHARED,
 * DK_SHM_FASTIPC_COMPAT, which also wakes on every 0 -> n transition, for
 * fastipc's waiters (which do not announce themselves): a syscall on
 * every post from zero. Returns 0, -EOVERFLOW (nothing added) or -EINVAL
 * (unknown flags). */
DK_EXPORT int dk_shm_semaphore_post(dk_shm_semaphore_t *s, uint32_t n,
                                    unsigned flags) DK_WARN_UNUSED;

/*
 * Keep shared memory mapped for as long as an object uses it, whoever
 * owns the original mapping: map the pages under [addr, addr + len) a
 * second time. Works for shared memory (POSIX shm, MAP_SHARED files and
 * anonymous mappings); returns 0 with *alias pointing at addr's byte in
 * the new mapping, or -EINVAL for private memory (the heap, private
 * mappings) and -EFAULT/-ENOMEM when the mapping cannot be duplicated:
 * keep the original alive instead. Release with dk_shm_unalias(alias,
 * len). One syscall each.
 */
DK_EXPORT int dk_shm_alias(void *addr, size_t len,
                           void **alias) DK_WARN_UNUSED;
DK_EXPORT void dk_shm_unalias(void *alias, size_t len);

DK_END_DECLS

#endif /* DK_MUTEX_H */
