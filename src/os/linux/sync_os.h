/*
 * The syscalls of the shared-memory sync primitives (dk/mutex.h) that are
 * not futexes: asking whether a process still exists, and mapping shared
 * pages a second time. Kept apart from os.h, which belongs to the
 * dispatch runtime.
 */
#ifndef DK_SRC_OS_LINUX_SYNC_OS_H
#define DK_SRC_OS_LINUX_SYNC_OS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Is there no process with this pid any more? kill(pid, 0): ESRCH means
 * gone; success or EPERM (it exists, owned by someone else) means alive,
 * unless /proc says it is a zombie: a child that died and that its parent
 * has not reaped yet still answers kill(), and its parent is often the
 * very process waiting on it (a reader that forked its writer). pid 0 and
 * pids above the kernel's range are never "gone" (0 would signal our own
 * process group). A few syscalls: only for slow paths.
 */
bool dk__os_process_gone(uint32_t pid);
/* /proc/<pid>/stat shows state Z or X (dead, not yet reaped). */
bool dk__os_pid_is_zombie(uint32_t pid);

/*
 * Map the pages under [addr, addr + len) again, at a new address, when
 * they belong to a shared mapping (mremap with old size 0). Returns the
 * new address of addr's byte, or NULL with errno: EINVAL for private
 * memory, EFAULT or ENOMEM when the mapping cannot be duplicated.
 */
void *dk__os_map_again(void *addr, size_t len);

/* Unmap what dk__os_map_again returned for the same len. */
void dk__os_unmap_again(void *alias, size_t len);

#endif /* DK_SRC_OS_LINUX_SYNC_OS_H */
