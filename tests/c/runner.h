/*
 * The in-tree C test runner. Each test is a function registered with
 * DK_TEST(name); the runner forks a child per test with an alarm, so a
 * crash or a hang fails that test only. Output is TAP, ending with the
 * line "N passed, N failed" after the slowest tests' times (each "ok" line
 * carries its own as a comment). `dk-tests NAME...` runs the named tests
 * in-process (for gdb and valgrind); `dk-tests -l` lists them.
 */
#ifndef DK_TESTS_RUNNER_H
#define DK_TESTS_RUNNER_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*dk_test_fn)(void);

void dk_test_register(const char *name, dk_test_fn fn, unsigned timeout_s);

#define DK_TEST_T(name, timeout_s)                                            \
    static void dk_test_##name(void);                                         \
    __attribute__((constructor)) static void dk_test_reg_##name(void)         \
    {                                                                         \
        dk_test_register(#name, dk_test_##name, (timeout_s));                 \
    }                                                                         \
    static void dk_test_##name(void)

#define DK_TEST(name) DK_TEST_T(name, 60)

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)

#define CHECK_EQ(a, b)                                                        \
    do {                                                                      \
        long long dk_a_ = (long long)(a), dk_b_ = (long long)(b);             \
        if (dk_a_ != dk_b_) {                                                 \
            fprintf(stderr,                                                   \
                    "%s:%d: CHECK_EQ failed: %s == %s (%lld vs "              \
                    "%lld)\n",                                                \
                    __FILE__, __LINE__, #a, #b, dk_a_, dk_b_);                \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* Run fn(arg) on n threads at once (at most 16), then join them all. */
static inline void
t_run_threads(int n, void *(*fn)(void *), void *arg)
{
    pthread_t t[16];
    CHECK(n <= 16);
    for (int i = 0; i < n; i++) {
        CHECK_EQ(pthread_create(&t[i], NULL, fn, arg), 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
    }
}

#endif /* DK_TESTS_RUNNER_H */
