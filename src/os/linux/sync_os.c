/*
 * Process liveness for the shared-memory mutex's owner-death detection,
 * and second mappings of shared pages (see sync_os.h).
 */
#include "os/linux/sync_os.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

bool
dk__os_pid_is_zombie(uint32_t pid)
{
    char path[32], buf[512];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false; /* gone meanwhile, or /proc hidden: kill() decides */
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return false;
    }
    buf[n] = '\0';
    /* "pid (comm) S ...": comm may hold spaces and parentheses, so the
     * state is the first field after the last ')'. */
    const char *close_paren = strrchr(buf, ')');
    return close_paren != NULL && close_paren[1] == ' ' &&
           (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

bool
dk__os_process_gone(uint32_t pid)
{
    /* Pids are positive ints; anything else in a shared segment is junk
     * and must not become kill(-1, 0) or kill(0, 0). */
    if (pid == 0 || pid > (uint32_t)INT32_MAX) {
        return false;
    }
    if (kill((pid_t)pid, 0) < 0) {
        return errno == ESRCH;
    }
    return dk__os_pid_is_zombie(pid);
}

static uintptr_t
page_size(void)
{
    static long size; /* racy first call: both threads store the same */
    long n = __atomic_load_n(&size, __ATOMIC_RELAXED);
    if (n == 0) {
        n = sysconf(_SC_PAGESIZE);
        __atomic_store_n(&size, n, __ATOMIC_RELAXED);
    }
    return (uintptr_t)n;
}

void *
dk__os_map_again(void *addr, size_t len)
{
    uintptr_t page = page_size();
    uintptr_t start = (uintptr_t)addr & ~(page - 1);
    uintptr_t end = ((uintptr_t)addr + len + page - 1) & ~(page - 1);
    /* Old size 0 asks for a second mapping of the same pages; the kernel
     * refuses it for private mappings (EINVAL) since Linux 4.14. */
    void *p = mremap((void *)start, 0, end - start, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) {
        return NULL;
    }
    return (char *)p + ((uintptr_t)addr - start);
}

void
dk__os_unmap_again(void *alias, size_t len)
{
    uintptr_t page = page_size();
    uintptr_t start = (uintptr_t)alias & ~(page - 1);
    uintptr_t end = ((uintptr_t)alias + len + page - 1) & ~(page - 1);
    munmap((void *)start, end - start);
}
