/*
 * Four processes add to one counter under a dk_shm_mutex in shared memory
 * (the same 64-byte layout fastipc uses), then one of them dies holding
 * the mutex and the parent takes it over. Build: see meson.build
 * (sync-demo). Exits 0 when every count arrived.
 */
#include <dk/mutex.h>
#include <dk/time.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

enum { PROCS = 4, ROUNDS = 100000 };

struct shared {
    dk_shm_mutex_t mutex; /* 64 bytes */
    long counter;         /* protected by mutex */
};

static void
add(struct shared *sh)
{
    for (int i = 0; i < ROUNDS; i++) {
        if (dk_shm_mutex_lock(&sh->mutex, UINT64_MAX, 16, DK_SHARED) < 0) {
            _exit(1);
        }
        sh->counter++;
        if (dk_shm_mutex_unlock(&sh->mutex, DK_SHARED) < 0) {
            _exit(1);
        }
    }
}

int
main(void)
{
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED || dk_shm_mutex_init(&sh->mutex) < 0) {
        return 1;
    }
    for (int p = 0; p < PROCS; p++) {
        if (fork() == 0) {
            add(sh);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {
    }
    printf("counter: %ld (expected %d)\n", sh->counter, PROCS * ROUNDS);

    /* A holder that dies: the next lock succeeds and says so. */
    pid_t holder = fork();
    if (holder == 0) {
        if (dk_shm_mutex_lock(&sh->mutex, UINT64_MAX, 16, DK_SHARED) < 0) {
            _exit(1);
        }
        pause(); /* killed while holding it */
    }
    while (dk_shm_mutex_lock(&sh->mutex, 0, 1, DK_SHARED) == 0) {
        /* Not taken yet: give it back. */
        if (dk_shm_mutex_unlock(&sh->mutex, DK_SHARED) < 0) {
            return 1;
        }
        usleep(1000);
    }
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    int rc =
        dk_shm_mutex_lock(&sh->mutex, dk_now() + 5000000000u, 16, DK_SHARED);
    printf("lock after the holder died: %s\n",
           rc == 1 ? "taken over (owner died)" : "unexpected");
    if (rc >= 0 && dk_shm_mutex_unlock(&sh->mutex, DK_SHARED) < 0) {
        return 1;
    }
    return sh->counter == PROCS * ROUNDS && rc == 1 ? 0 : 1;
}
