/*
 * Other processes: whether a pid read from shared memory or a file still
 * names a live process (kill(pid, 0) and /proc/<pid>/stat), and which
 * process it names (its start time). The table of answers is in os.h;
 * every liveness question of the core and of the binding is answered
 * here, so that they cannot disagree about pid 0, EPERM or zombies.
 */
#include "os/linux/os.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Pids are positive ints; anything else read from a segment or a file is
 * junk, and must not become kill(0, 0) (our process group) or kill(-1, 0)
 * (every process we may signal). */
static bool
pid_valid(uint64_t pid)
{
    return pid != 0 && pid <= (uint64_t)INT32_MAX;
}

/* What /proc/<pid>/stat says: the state letter and the start time. */
struct proc_stat {
    char state;
    uint64_t start_ticks;
};

/* Read /proc/<pid>/stat. 0, or -ESRCH when it cannot be read (the process
 * is gone, or /proc is not mounted or hides other users' processes) or
 * does not parse. */
static int
proc_stat_read(uint64_t pid, struct proc_stat *out)
{
    char path[40], buf[1024];
    snprintf(path, sizeof path, "/proc/%llu/stat", (unsigned long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -ESRCH;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return -ESRCH;
    }
    buf[n] = '\0';
    /* "pid (comm) S ppid ...": comm may hold spaces and parentheses, so
     * the fields start after the last ')'. The state is field 3, the
     * start time field 22; p then stands on the space before field 4 and
     * each step moves it to the space before the next field. */
    const char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == '\0') {
        return -ESRCH;
    }
    out->state = p[2];
    p += 3;
    for (int field = 4; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (p == NULL) {
            return -ESRCH;
        }
    }
    char *end = NULL;
    errno = 0;
    unsigned long long ticks = strtoull(p + 1, &end, 10);
    if (end == p + 1 || errno != 0) {
        return -ESRCH;
    }
    out->start_ticks = (uint64_t)ticks;
    return 0;
}

/* The liveness of os.h's table; `start` is the start time the process
 * must have, or NULL for any. */
static bool
pid_alive(uint64_t pid, const uint64_t *start)
{
    if (!pid_valid(pid)) {
        return false;
    }
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
        return false;
    }
    /* It exists (EPERM: another user's; any other error: we cannot tell,
     * and alive is the safe answer). Dead but unreaped, or a new process
     * under a reused pid, it is gone all the same. */
    struct proc_stat st;
    if (proc_stat_read(pid, &st) < 0) {
        return true; /* exited meanwhile, or /proc hidden: kill() decides */
    }
    if (st.state == 'Z' || st.state == 'X') {
        return false;
    }
    return start == NULL || st.start_ticks == *start;
}

bool
dk__os_pid_alive(uint64_t pid)
{
    return pid_alive(pid, NULL);
}

bool
dk__os_pid_alive_since(uint64_t pid, uint64_t start_ticks)
{
    return pid_alive(pid, &start_ticks);
}

int
dk__os_pid_start_ticks(uint64_t pid, uint64_t *ticks)
{
    if (!pid_valid(pid)) {
        return -ESRCH;
    }
    struct proc_stat st;
    int rc = proc_stat_read(pid, &st);
    if (rc == 0) {
        *ticks = st.start_ticks;
    }
    return rc;
}

uint64_t
dk__pid_self(void)
{
    return (uint64_t)getpid();
}
