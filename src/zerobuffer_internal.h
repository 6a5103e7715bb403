/*
 * ZeroBuffer entry points for the Python binding (not public API): a read
 * and a reservation that can stop after trying, or after a bounded watch,
 * without sleeping, so the binding tries and watches with the GIL held
 * (no GIL hand-off when a frame or space comes within microseconds) and
 * releases it only to sleep.
 */
#ifndef DK_SRC_ZEROBUFFER_INTERNAL_H
#define DK_SRC_ZEROBUFFER_INTERNAL_H

#include "dk/zerobuffer.h"

/* How a wait may go on when nothing is there at once. */
#define DK__ZB_SPIN 1u  /* watch for a bounded time (not with deadline 0) */
#define DK__ZB_SLEEP 2u /* sleep until the deadline */

/* dk_zb_reader_read with `how`: without DK__ZB_SLEEP, -EAGAIN (and no
 * liveness check) when no frame came; the other returns are read's. */
int dk__zb_reader_read_ex(dk_zb_reader_t *r, uint64_t deadline, unsigned how,
                          dk_zb_frame_t *frame);

/* dk_zb_writer_acquire with `how`: without DK__ZB_SLEEP, -EAGAIN (and no
 * liveness check) when there is no space; the other returns are
 * acquire's. */
int dk__zb_writer_acquire_ex(dk_zb_writer_t *w, uint64_t size,
                             uint64_t deadline, unsigned how, void **buf,
                             uint64_t *sequence);

/* dk_zb_writer_commit, publishing the frame now (publish) or holding it
 * until the next publish (a wait for space or dk__zb_writer_publish
 * publishes every held frame at once). */
int dk__zb_writer_commit_ex(dk_zb_writer_t *w, bool publish);
/* Publish the held frames (nothing once closed). */
void dk__zb_writer_publish(dk_zb_writer_t *w);

/* The watch budgets of src/zerobuffer.c's waits (its comment on
 * watching), exposed for the tests: the next budget after a watch that
 * saw its event (paid) or not, and after a wait that slept and ended
 * waited_ns after it began. */
uint32_t dk__zb_spin_after_watch(uint32_t budget_ns, bool paid);
uint32_t dk__zb_spin_after_sleep(uint32_t budget_ns, uint64_t waited_ns);

/* Copy n bytes of a frame into w's ring at dst, as dk_zb_writer_write
 * does: streamed past the caches (dk__zb_copy_streamed) when
 * dk__zb_writer_streams(w, n), else memcpy. w NULL: memcpy. Either way
 * the bytes are ordered before the commit that publishes them. */
void dk__zb_writer_copy(const dk_zb_writer_t *w, void *dst, const void *src,
                        size_t n);
/* Whether w streams a copy of `size` bytes in (a large frame into a ring
 * far larger than the caches keep: src/zerobuffer.c says why). */
bool dk__zb_writer_streams(const dk_zb_writer_t *w, uint64_t size);
/* memcpy with non-temporal stores (x86-64; elsewhere memcpy), then a
 * store fence: any alignment and length. _as: with AVX-512's stores
 * (only where the CPU has them) or SSE2's, for the tests. */
void dk__zb_copy_streamed(void *dst, const void *src, size_t n);
void dk__zb_copy_streamed_as(void *dst, const void *src, size_t n,
                             bool avx512);

#endif /* DK_SRC_ZEROBUFFER_INTERNAL_H */
