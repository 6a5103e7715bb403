/*
 * The syscalls of the shared-memory sync primitives (dk/mutex.h) that are
 * not futexes: asking whether a process still exists. Kept apart from
 * os.h, which belongs to the dispatch runtime.
 */
#ifndef DK_SRC_OS_LINUX_SYNC_OS_H
#define DK_SRC_OS_LINUX_SYNC_OS_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Is there no process with this pid any more? kill(pid, 0): ESRCH means
 * gone; success or EPERM (it exists, owned by someone else) means alive.
 * pid 0 and pids above the kernel's range are never "gone" (0 would
 * signal our own process group). One syscall: only for slow paths.
 */
bool dk__os_process_gone(uint32_t pid);

#endif /* DK_SRC_OS_LINUX_SYNC_OS_H */
