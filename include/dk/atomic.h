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

/*
 * Width-generic operations for widths 1, 2, 4 and 8 on naturally aligned
 * memory, on values held in a uint64_t (the low `width` bytes, native
 * byte order). Every read-modify-write returns the previous value.
 */
typedef enum dk_atomic_op {
    DK_AOP_EXCHANGE,
    DK_AOP_ADD,
    DK_AOP_SUB,
    DK_AOP_AND,
    DK_AOP_OR,
    DK_AOP_XOR,
    DK_AOP_NOT, /* arg ignored */
    DK_AOP_NEG, /* arg ignored; two's complement, wraps */
} dk_atomic_op_t;

DK_EXPORT bool dk_atomic_width_supported(unsigned width);
DK_EXPORT uint64_t dk_atomic_load_w(const void *p, unsigned width,
                                    dk_memory_order mo);
DK_EXPORT void dk_atomic_store_w(void *p, unsigned width, uint64_t v,
                                 dk_memory_order mo);
DK_EXPORT uint64_t dk_atomic_rmw_w(void *p, unsigned width, dk_atomic_op_t op,
                                   uint64_t arg, dk_memory_order mo);
DK_EXPORT bool dk_atomic_cas_w(void *p, unsigned width, uint64_t *expected,
                               uint64_t desired, bool weak,
                               dk_memory_order succ, dk_memory_order fail);

/*
 * 16-byte operations through the CPU's 16-byte compare-and-swap
 * (cmpxchg16b on x86_64, ldaxp/stlxp on aarch64), always sequentially
 * consistent. Values are 16 bytes in native byte order. The memory must be
 * 16-byte aligned and writable: even a load is a compare-and-swap.
 * dk_atomic16_supported says whether this CPU has the instruction.
 */
DK_EXPORT bool dk_atomic16_supported(void);
DK_EXPORT void dk_atomic16_load(void *p, void *out);
DK_EXPORT void dk_atomic16_store(void *p, const void *v);
DK_EXPORT void dk_atomic16_rmw(void *p, dk_atomic_op_t op, const void *arg,
                               void *old);
DK_EXPORT bool dk_atomic16_cas(void *p, void *expected, const void *desired);

DK_END_DECLS

#endif /* DK_ATOMIC_H */
