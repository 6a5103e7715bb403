/*
 * Lock-free atomic operations on caller memory (heap or shared memory),
 * with a run-time memory order. These are what dispatchkit.atomics and
 * dispatchkit.sync.AtomicU32/AtomicU64 call; they compile to single
 * instructions. Every function requires `p` to be naturally aligned for
 * its width; callers check alignment before calling.
 *
 * Memory orders follow C11: an order that is invalid for the operation
 * (e.g. a release load) is the caller's error; use
 * dk_memory_order_valid_{load,store,fail} to check first.
 */
#ifndef DK_ATOMIC_H
#define DK_ATOMIC_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef enum dk_memory_order {
    DK_MO_RELAXED = 0,
    DK_MO_CONSUME = 1,
    DK_MO_ACQUIRE = 2,
    DK_MO_RELEASE = 3,
    DK_MO_ACQ_REL = 4,
    DK_MO_SEQ_CST = 5,
} dk_memory_order;

DK_EXPORT bool dk_memory_order_valid_load(int mo);
DK_EXPORT bool dk_memory_order_valid_store(int mo);
/* Valid as the failure order of a CAS whose success order is `succ`. */
DK_EXPORT bool dk_memory_order_valid_fail(int fail, int succ);

DK_EXPORT uint32_t dk_atomic_u32_load(const uint32_t *p, dk_memory_order mo);
DK_EXPORT void dk_atomic_u32_store(uint32_t *p, uint32_t v,
                                   dk_memory_order mo);
DK_EXPORT uint32_t dk_atomic_u32_exchange(uint32_t *p, uint32_t v,
                                          dk_memory_order mo);
/* Returns true on success; on failure *expected receives the value seen. */
DK_EXPORT bool dk_atomic_u32_cas(uint32_t *p, uint32_t *expected,
                                 uint32_t desired, bool weak,
                                 dk_memory_order succ, dk_memory_order fail);
DK_EXPORT uint32_t dk_atomic_u32_fetch_add(uint32_t *p, uint32_t v,
                                           dk_memory_order mo);

DK_EXPORT uint64_t dk_atomic_u64_load(const uint64_t *p, dk_memory_order mo);
DK_EXPORT void dk_atomic_u64_store(uint64_t *p, uint64_t v,
                                   dk_memory_order mo);
DK_EXPORT uint64_t dk_atomic_u64_exchange(uint64_t *p, uint64_t v,
                                          dk_memory_order mo);
DK_EXPORT bool dk_atomic_u64_cas(uint64_t *p, uint64_t *expected,
                                 uint64_t desired, bool weak,
                                 dk_memory_order succ, dk_memory_order fail);
DK_EXPORT uint64_t dk_atomic_u64_fetch_add(uint64_t *p, uint64_t v,
                                           dk_memory_order mo);

DK_END_DECLS

#endif /* DK_ATOMIC_H */
