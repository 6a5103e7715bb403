/*
 * Process liveness for the shared-memory mutex's owner-death detection
 * (see sync_os.h).
 */
#include "os/linux/sync_os.h"

#include <errno.h>
#include <signal.h>
#include <sys/types.h>

bool
dk__os_process_gone(uint32_t pid)
{
    /* Pids are positive ints; anything else in a shared segment is junk
     * and must not become kill(-1, 0) or kill(0, 0). */
    if (pid == 0 || pid > (uint32_t)INT32_MAX) {
        return false;
    }
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}
