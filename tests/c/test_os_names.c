/*
 * Tests of os.h's process liveness, name rule and exact-mode shared
 * memory: every row of the liveness table (pid 0, pids no process can
 * have, EPERM, zombies, reaped children, reused pids), every name rule,
 * and the create/open edge cases (umask, O_EXCL, owner, failed create).
 */
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "os/linux/os.h"

/* ---- liveness ----------------------------------------------------- */

DK_TEST(os_pid_alive_refuses_values_that_are_not_pids)
{
    /* Never kill(0, 0) (our group, which exists) nor kill(-1, 0). */
    CHECK(!dk__os_pid_alive(0));
    CHECK(!dk__os_pid_alive((uint64_t)INT32_MAX + 1));
    CHECK(!dk__os_pid_alive(UINT32_MAX)); /* -1 as a pid_t */
    CHECK(!dk__os_pid_alive(UINT64_MAX));
    CHECK(!dk__os_pid_alive((uint64_t)-2));
    uint64_t ticks = 42;
    CHECK_EQ(dk__os_pid_start_ticks(0, &ticks), -ESRCH);
    CHECK_EQ(dk__os_pid_start_ticks(UINT32_MAX, &ticks), -ESRCH);
    CHECK_EQ(ticks, 42);
    CHECK(!dk__os_pid_alive_since(0, 0));
}

DK_TEST(os_pid_alive_self_and_start_time)
{
    uint64_t me = dk__pid_self();
    CHECK_EQ(me, (uint64_t)getpid());
    CHECK(dk__os_pid_alive(me));
    uint64_t ticks = 0, again = 0;
    CHECK_EQ(dk__os_pid_start_ticks(me, &ticks), 0);
    CHECK_EQ(dk__os_pid_start_ticks(me, &again), 0);
    CHECK_EQ(ticks, again);
    CHECK(dk__os_pid_alive_since(me, ticks));
    /* Another start time: the pid was reused by a new process. */
    CHECK(!dk__os_pid_alive_since(me, ticks + 1));
    /* pid 1 exists in every namespace, and started before us. */
    uint64_t init_ticks = 0;
    CHECK(dk__os_pid_alive(1));
    CHECK_EQ(dk__os_pid_start_ticks(1, &init_ticks), 0);
    CHECK(init_ticks <= ticks);
}

static pid_t
fork_exiting_child(void)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        _exit(0);
    }
    return pid;
}

DK_TEST(os_pid_alive_zombie_is_dead)
{
    pid_t pid = fork_exiting_child();
    /* waitid with WNOWAIT waits for the exit and leaves a zombie. */
    siginfo_t info;
    CHECK_EQ(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT), 0);
    CHECK_EQ(kill(pid, 0), 0); /* kill() still finds it */
    CHECK(!dk__os_pid_alive((uint64_t)pid));
    uint64_t ticks = 0;
    CHECK_EQ(dk__os_pid_start_ticks((uint64_t)pid, &ticks), 0);
    CHECK(!dk__os_pid_alive_since((uint64_t)pid, ticks));
    CHECK_EQ(waitpid(pid, NULL, 0), pid);
}

DK_TEST(os_pid_alive_reaped_child_is_dead)
{
    pid_t pid = fork_exiting_child();
    CHECK_EQ(waitpid(pid, NULL, 0), pid);
    CHECK(!dk__os_pid_alive((uint64_t)pid)); /* ESRCH */
    uint64_t ticks = 0;
    CHECK_EQ(dk__os_pid_start_ticks((uint64_t)pid, &ticks), -ESRCH);
}

DK_TEST(os_pid_alive_another_users_process_is_alive)
{
    /* kill(pid, 0) fails with EPERM for a process of another user: it
     * exists. As root, a child that became nobody asks about its root
     * parent; otherwise we ask about root's pid 1. */
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        pid_t target = 1;
        if (geteuid() == 0) {
            target = getppid();
            if (setgid(65534) != 0 || setuid(65534) != 0) {
                _exit(3);
            }
        }
        if (kill(target, 0) == 0 || errno != EPERM) {
            _exit(2); /* not the case under test (root's pid 1?) */
        }
        _exit(dk__os_pid_alive((uint64_t)target) ? 0 : 1);
    }
    int status = 0;
    CHECK_EQ(waitpid(child, &status, 0), child);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}

/* ---- names -------------------------------------------------------- */

static int
check(const char *name, size_t max, unsigned flags, int *rule)
{
    return dk__os_name_check(name, strlen(name), max, flags, rule);
}

DK_TEST(os_name_check_rules)
{
    int rule = -1;
    CHECK_EQ(check("abc-DEF_1.2", 20, 0, &rule), 0);
    CHECK_EQ(rule, 0);
    CHECK_EQ(check("a b\tc", 20, 0, &rule), 0); /* fastipc allows these */
    CHECK_EQ(check("", 20, 0, &rule), -EINVAL);
    CHECK_EQ(rule, DK__OS_NAME_EMPTY);
    CHECK_EQ(check("abcde", 4, 0, &rule), -ENAMETOOLONG);
    CHECK_EQ(rule, DK__OS_NAME_LONG);
    CHECK_EQ(check("abcd", 4, 0, &rule), 0);
    CHECK_EQ(dk__os_name_check("a\0b", 3, 20, 0, &rule), -EINVAL);
    CHECK_EQ(rule, DK__OS_NAME_NUL);
    CHECK_EQ(check("a/b", 20, 0, &rule), -EINVAL);
    CHECK_EQ(rule, DK__OS_NAME_SLASH);
    CHECK_EQ(check("/", 20, 0, &rule), -EINVAL);
    const char *dots[] = {".", "..", "a..b", "...", "x.."};
    for (size_t i = 0; i < sizeof dots / sizeof dots[0]; i++) {
        rule = 0;
        CHECK_EQ(check(dots[i], 20, 0, &rule), -EINVAL);
        CHECK_EQ(rule, DK__OS_NAME_DOTS);
    }
    CHECK_EQ(check(".a", 20, 0, &rule), 0);
    CHECK_EQ(check("a.", 20, 0, &rule), 0);
    const char *unprintable[] = {"a b", "a\tb", "\x01", "a\x7f"};
    for (size_t i = 0; i < sizeof unprintable / sizeof unprintable[0]; i++) {
        rule = 0;
        CHECK_EQ(check(unprintable[i], 20, DK__OS_NAME_PRINTABLE, &rule),
                 -EINVAL);
        CHECK_EQ(rule, DK__OS_NAME_UNPRINTABLE);
    }
    /* UTF-8 is fine in either mode. */
    CHECK_EQ(check("caf\xc3\xa9", 20, DK__OS_NAME_PRINTABLE, NULL), 0);
}

/* ---- shared memory with an exact mode ------------------------------ */

static void
shm_name(char *out, size_t cap, const char *what)
{
    snprintf(out, cap, "dk-test-os-%s-%d", what, (int)getpid());
}

static bool
shm_exists(const char *name)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    return access(path, F_OK) == 0;
}

DK_TEST(os_shm_create_sets_the_exact_mode_whatever_the_umask)
{
    char name[64];
    shm_name(name, sizeof name, "mode");
    mode_t old = umask(077);
    int fd = dk__os_shm_create(name, 0666, 4096, 0);
    umask(old);
    CHECK(fd >= 0);
    struct stat st;
    CHECK_EQ(fstat(fd, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0666);
    CHECK_EQ(st.st_size, 4096);
    CHECK_EQ(st.st_uid, geteuid());
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    /* O_EXCL: a second create fails and leaves the first alone. */
    CHECK_EQ(dk__os_shm_create(name, 0600, 4096, 0), -EEXIST);
    int again = dk__os_shm_open(name, DK__OS_SHM_OURS, NULL);
    CHECK(again >= 0);
    CHECK_EQ(fstat(again, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0666);
    close(again);
    close(fd);
    CHECK_EQ(dk__shm_unlink(name), 0);
    CHECK_EQ(dk__shm_unlink(name), -ENOENT);
    CHECK_EQ(dk__os_shm_open(name, 0, NULL), -ENOENT);
}

DK_TEST(os_shm_open_refuses_another_users_object_when_asked)
{
    if (geteuid() != 0) {
        return; /* needs chown */
    }
    char name[64];
    shm_name(name, sizeof name, "owner");
    int fd = dk__os_shm_create(name, 0666, 64, DK__OS_SHM_ALLOCATE);
    CHECK(fd >= 0);
    CHECK_EQ(fchown(fd, 65534, 65534), 0);
    uint32_t owner = 0;
    CHECK_EQ(dk__os_shm_open(name, DK__OS_SHM_OURS, &owner), -EPERM);
    CHECK_EQ(owner, 65534);
    int any = dk__os_shm_open(name, 0, NULL); /* a shared 0666 segment */
    CHECK(any >= 0);
    close(any);
    close(fd);
    CHECK_EQ(dk__shm_unlink(name), 0);
}

DK_TEST(os_shm_create_that_fails_leaves_nothing)
{
    char name[64];
    shm_name(name, sizeof name, "fail");
    CHECK_EQ(dk__os_shm_create(name, 0600, UINT64_MAX, 0), -EFBIG);
    CHECK(!shm_exists(name));
    /* More pages than /dev/shm can hold: the allocation fails and the
     * object it made is removed. */
    int rc =
        dk__os_shm_create(name, 0600, (uint64_t)1 << 62, DK__OS_SHM_ALLOCATE);
    CHECK(rc == -ENOSPC || rc == -EFBIG || rc == -ENOMEM);
    CHECK(!shm_exists(name));
    rc = dk__os_shm_create(name, 0600, (uint64_t)1 << 62, 0);
    if (rc >= 0) { /* a sparse object that large may be allowed */
        close(rc);
        CHECK_EQ(dk__shm_unlink(name), 0);
    }
    CHECK(!shm_exists(name));
}

DK_TEST(os_shm_names_are_checked)
{
    CHECK_EQ(dk__os_shm_create("", 0600, 64, 0), -EINVAL);
    CHECK_EQ(dk__os_shm_create("a/b", 0600, 64, 0), -EINVAL);
    CHECK_EQ(dk__os_shm_create(".", 0600, 64, 0), -EINVAL);
    CHECK_EQ(dk__os_shm_create("..", 0600, 64, 0), -EINVAL);
    CHECK_EQ(dk__os_shm_open("a/../b", 0, NULL), -EINVAL);
    CHECK_EQ(dk__shm_unlink("."), -EINVAL);
    char longname[DK__OS_SHM_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_EQ(dk__os_shm_create(longname, 0600, 64, 0), -ENAMETOOLONG);
    longname[DK__OS_SHM_NAME_MAX] = '\0'; /* the longest glibc takes */
    /* This process's own name at that length: two dk-tests at once (or
     * one killed before its unlink) would otherwise meet on the same
     * object and the create below would fail with EEXIST. */
    char prefix[64];
    shm_name(prefix, sizeof prefix, "long");
    memcpy(longname, prefix, strlen(prefix));
    int fd = dk__os_shm_create(longname, 0600, 64, 0);
    CHECK(fd >= 0);
    close(fd);
    CHECK_EQ(dk__shm_unlink(longname), 0);
}
