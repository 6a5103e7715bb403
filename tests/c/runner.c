/*
 * Runner for the C tests: forks each registered test with an alarm and
 * reports TAP. See runner.h.
 */
#include "runner.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 1024

struct test {
    const char *name;
    dk_test_fn fn;
    unsigned timeout_s;
    double seconds; /* wall time of its forked run */
};

static struct test tests[MAX_TESTS];
static int ntests;

void
dk_test_register(const char *name, dk_test_fn fn, unsigned timeout_s)
{
    if (ntests == MAX_TESTS) {
        fprintf(stderr, "too many tests\n");
        abort();
    }
    tests[ntests++] = (struct test){name, fn, timeout_s, 0};
}

static int
cmp_test(const void *a, const void *b)
{
    return strcmp(((const struct test *)a)->name,
                  ((const struct test *)b)->name);
}

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
cmp_seconds_desc(const void *a, const void *b)
{
    double x = (*(const struct test *const *)a)->seconds;
    double y = (*(const struct test *const *)b)->seconds;
    return (x < y) - (x > y);
}

/* The slowest tests, as TAP comments, so CI logs show where the time goes. */
static void
print_slowest(int n)
{
    static const struct test *by_time[MAX_TESTS];
    double total = 0;
    for (int i = 0; i < ntests; i++) {
        by_time[i] = &tests[i];
        total += tests[i].seconds;
    }
    qsort(by_time, (size_t)ntests, sizeof by_time[0], cmp_seconds_desc);
    printf("# slowest tests (of %.2f s in all):\n", total);
    for (int i = 0; i < n && i < ntests; i++) {
        printf("#   %7.3f s  %s\n", by_time[i]->seconds, by_time[i]->name);
    }
}

static int
run_forked(struct test *t)
{
    fflush(stdout);
    fflush(stderr);
    double start = now_s();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        alarm(t->timeout_s);
        t->fn();
        fflush(stdout);
        _exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
    }
    t->seconds = now_s() - start;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return 1;
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "# %s: killed by signal %d%s\n", t->name,
                WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
    } else {
        fprintf(stderr, "# %s: exit status %d\n", t->name,
                WEXITSTATUS(status));
    }
    return 0;
}

int
main(int argc, char **argv)
{
    qsort(tests, (size_t)ntests, sizeof tests[0], cmp_test);
    if (argc > 1 && strcmp(argv[1], "-l") == 0) {
        for (int i = 0; i < ntests; i++) {
            printf("%s\n", tests[i].name);
        }
        return 0;
    }
    if (argc > 1) {
        /* Run the named tests in-process, for debuggers. */
        for (int a = 1; a < argc; a++) {
            int found = 0;
            for (int i = 0; i < ntests; i++) {
                if (strcmp(tests[i].name, argv[a]) == 0) {
                    tests[i].fn();
                    printf("ok - %s\n", tests[i].name);
                    found = 1;
                }
            }
            if (!found) {
                fprintf(stderr, "no test named %s\n", argv[a]);
                return 2;
            }
        }
        return 0;
    }
    int passed = 0, failed = 0;
    printf("1..%d\n", ntests);
    for (int i = 0; i < ntests; i++) {
        if (run_forked(&tests[i])) {
            passed++;
            printf("ok %d - %s # %.3f s\n", i + 1, tests[i].name,
                   tests[i].seconds);
        } else {
            failed++;
            printf("not ok %d - %s # %.3f s\n", i + 1, tests[i].name,
                   tests[i].seconds);
        }
        fflush(stdout);
    }
    print_slowest(15);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
