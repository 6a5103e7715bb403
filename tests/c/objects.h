/*
 * Test helpers: create an object through its dk constructor (0 or -errno,
 * the object in an out-parameter) and fail the test unless it returned 0.
 * Tests of the constructors' own errors call them directly.
 */
#ifndef DK_TESTS_OBJECTS_H
#define DK_TESTS_OBJECTS_H

#include "runner.h"

#include "dk/data.h"
#include "dk/group.h"
#include "dk/io.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"

/* Nanoseconds in a millisecond; the dk_now() deadline ms from now. */
#define T_MS (1000000ull)

static inline uint64_t
t_in_ms(uint64_t ms)
{
    return dk_now() + ms * T_MS;
}

static inline dk_queue_t *
t_queue(const char *label, unsigned attrs, int qos, int relpri,
        dk_queue_t *target)
{
    dk_queue_t *q;
    CHECK_EQ(dk_queue_create(label, attrs, qos, relpri, target, &q), 0);
    return q;
}

static inline dk_group_t *
t_group(void)
{
    dk_group_t *g;
    CHECK_EQ(dk_group_create(&g), 0);
    return g;
}

static inline dk_semaphore_t *
t_semaphore(long value)
{
    dk_semaphore_t *s;
    CHECK_EQ(dk_semaphore_create(value, &s), 0);
    return s;
}

static inline dk_source_t *
t_source(dk_source_type_t type, uintptr_t handle, unsigned long mask,
         dk_queue_t *q)
{
    dk_source_t *s;
    CHECK_EQ(dk_source_create(type, handle, mask, q, &s), 0);
    return s;
}

static inline dk_io_t *
t_io(int type, int fd, dk_queue_t *q, void *cleanup_ctx,
     void (*cleanup)(void *ctx, int error))
{
    dk_io_t *io;
    CHECK_EQ(dk_io_create(type, fd, q, cleanup_ctx, cleanup, &io), 0);
    return io;
}

static inline dk_data_t *
t_data(const void *bytes, size_t size)
{
    dk_data_t *d;
    CHECK_EQ(dk_data_create(bytes, size, &d), 0);
    return d;
}

#endif /* DK_TESTS_OBJECTS_H */
