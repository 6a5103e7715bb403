/*
 * Time values of the dispatch runtime, with libdispatch's encoding:
 * DK_TIME_NOW (0), DK_TIME_FOREVER (all ones), CLOCK_MONOTONIC nanoseconds
 * for monotonic times, and the two's complement negation of nanoseconds
 * since the Unix epoch for wall-clock times (so they stay below FOREVER
 * and decrease as time advances).
 */
#ifndef DK_TIME_H
#define DK_TIME_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef uint64_t dk_time_t;

#define DK_TIME_NOW ((dk_time_t)0)
/* DK_TIME_FOREVER (all ones) is defined in dk/base.h. */
/* As `when` for dk_time: the wall clock now (libdispatch's
 * DISPATCH_WALLTIME_NOW; dk_time(DK_WALLTIME_NOW, d) == dk_walltime(0, d)). */
#define DK_WALLTIME_NOW (~(dk_time_t)1)
#define DK_NSEC_PER_SEC 1000000000ull
#define DK_NSEC_PER_MSEC 1000000ull
#define DK_NSEC_PER_USEC 1000ull

/* `when` plus `delta` ns, in the same clock as `when` (NOW means the
 * monotonic clock, WALLTIME_NOW the wall clock). Saturates: never wraps
 * into FOREVER or below NOW. */
DK_EXPORT dk_time_t dk_time(dk_time_t when, int64_t delta);

/* A wall-clock time: `unix_ns` nanoseconds since the epoch (0 = now) plus
 * `delta` ns. */
DK_EXPORT dk_time_t dk_walltime(uint64_t unix_ns, int64_t delta);

/* The absolute CLOCK_MONOTONIC deadline in ns that `t` denotes now
 * (DK_TIME_FOREVER for FOREVER). Wall-clock times are converted using the
 * current offset between the two clocks. */
DK_EXPORT uint64_t dk_time_deadline(dk_time_t t);

/* CLOCK_MONOTONIC now, in ns (no syscall). */
DK_EXPORT uint64_t dk_now(void);

DK_END_DECLS

#endif /* DK_TIME_H */
