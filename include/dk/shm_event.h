/*
 * A manual-reset event on one 32-bit word in caller memory, the layout of
 * fastipc's NamedEvent (4 bytes, 0 = clear, anything else = set), so a
 * fastipc process and a dispatchkit process can share one event.
 *
 * dk_shm_event_set stores 1 and wakes every sleeper; dk_shm_event_clear
 * stores 0; dk_shm_event_wait returns as soon as it *sees* the event set,
 * and sleeps (futex) while it is clear, until the deadline. Unlike
 * fastipc's wait, an event that is already set returns at once with
 * success, and a spurious wake-up is never reported as the event. A set
 * immediately followed by a clear can be missed by a waiter that was not
 * scheduled in between (the word has no room for a generation count
 * without breaking fastipc's readers).
 *
 * flags: 0, or DK_SHARED (base.h) for memory shared between processes;
 * it must be the same for every user of one word. Deadlines are absolute
 * CLOCK_MONOTONIC ns (DK_TIME_FOREVER: none; 0: do not sleep).
 */
#ifndef DK_SHM_EVENT_H
#define DK_SHM_EVENT_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef struct dk_shm_event {
    uint32_t word;
} dk_shm_event_t;

/* Check that e can hold an event: 0, or -EINVAL when it is not 4-byte
 * aligned. Does not touch the word (attaching must not clear an event
 * another process has set). */
DK_EXPORT int dk_shm_event_check(const dk_shm_event_t *e) DK_WARN_UNUSED;
/* Set and wake every waiter (one futex wake syscall: fastipc's waiters do
 * not announce themselves, so we cannot know there are none). A flag
 * other than DK_SHARED is a client bug: it aborts. */
DK_EXPORT void dk_shm_event_set(dk_shm_event_t *e, unsigned flags);
DK_EXPORT void dk_shm_event_clear(dk_shm_event_t *e);
DK_EXPORT bool dk_shm_event_is_set(const dk_shm_event_t *e);
/* Wait until set. Returns 0 (seen set), -ETIMEDOUT, -EINTR (a signal
 * arrived while sleeping; the caller runs its handlers and calls again
 * with the same deadline), or -EINVAL (unknown flags). */
DK_EXPORT int dk_shm_event_wait(dk_shm_event_t *e, uint64_t deadline,
                                unsigned flags) DK_WARN_UNUSED;

DK_END_DECLS

#endif /* DK_SHM_EVENT_H */
