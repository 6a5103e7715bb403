/*
 * dispatch_time arithmetic: monotonic times are CLOCK_MONOTONIC ns, wall
 * times are the negation of ns since the epoch (see dk/time.h). Every
 * operation saturates instead of wrapping.
 */
#include "internal.h"

#define WALL_MIN_NS 2ull /* -1 would be FOREVER */
#define TIME_MAX_NS ((uint64_t)INT64_MAX)

static uint64_t
add_sat(uint64_t base, int64_t delta)
{
    if (delta >= 0) {
        uint64_t d = (uint64_t)delta;
        return base > TIME_MAX_NS - d ? TIME_MAX_NS : base + d;
    }
    uint64_t d = (uint64_t)(-(delta + 1)) + 1;
    return base > d ? base - d : 1;
}

static bool
is_wall(dk_time_t t)
{
    return t != DK_TIME_FOREVER && (int64_t)t < 0;
}

uint64_t
dk_now(void)
{
    return dk__os_monotonic_ns();
}

dk_time_t
dk_time(dk_time_t when, int64_t delta)
{
    if (when == DK_TIME_FOREVER) {
        return DK_TIME_FOREVER;
    }
    if (when == DK_WALLTIME_NOW) {
        return dk_walltime(0, delta);
    }
    if (is_wall(when)) {
        uint64_t ns = add_sat((uint64_t)(-(int64_t)when), delta);
        if (ns < WALL_MIN_NS) {
            ns = WALL_MIN_NS;
        }
        return (dk_time_t)(-(int64_t)ns);
    }
    uint64_t base = when == DK_TIME_NOW ? dk__os_monotonic_ns() : when;
    return add_sat(base, delta);
}

dk_time_t
dk_walltime(uint64_t unix_ns, int64_t delta)
{
    uint64_t base = unix_ns == 0 ? dk__os_realtime_ns() : unix_ns;
    if (base > TIME_MAX_NS) {
        base = TIME_MAX_NS;
    }
    uint64_t ns = add_sat(base, delta);
    if (ns < WALL_MIN_NS) {
        ns = WALL_MIN_NS;
    }
    return (dk_time_t)(-(int64_t)ns);
}

uint64_t
dk_time_deadline(dk_time_t t)
{
    if (t == DK_TIME_FOREVER) {
        return DK_TIME_FOREVER;
    }
    uint64_t now = dk__os_monotonic_ns();
    if (t == DK_TIME_NOW) {
        return now;
    }
    if (is_wall(t)) {
        uint64_t wall = (uint64_t)(-(int64_t)t);
        uint64_t real = dk__os_realtime_ns();
        if (wall <= real) {
            return now;
        }
        return add_sat(now, (int64_t)(wall - real));
    }
    return t;
}
