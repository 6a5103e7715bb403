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
                                 dk_memory_order succ,
                                 dk_memory_order fail) DK_WARN_UNUSED;
DK_EXPORT uint32_t dk_atomic_u32_fetch_add(uint32_t *p, uint32_t v,
                                           dk_memory_order mo);

DK_EXPORT uint64_t dk_atomic_u64_load(const uint64_t *p, dk_memory_order mo);
DK_EXPORT void dk_atomic_u64_store(uint64_t *p, uint64_t v,
                                   dk_memory_order mo);
DK_EXPORT uint64_t dk_atomic_u64_exchange(uint64_t *p, uint64_t v,
                                          dk_memory_order mo);
DK_EXPORT bool dk_atomic_u64_cas(uint64_t *p, uint64_t *expected,
                                 uint64_t desired, bool weak,
                                 dk_memory_order succ,
                                 dk_memory_order fail) DK_WARN_UNUSED;
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
    DK_AOP_INC, /* arg ignored; add 1 */
    DK_AOP_DEC, /* arg ignored; subtract 1 */
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
                               dk_memory_order succ,
                               dk_memory_order fail) DK_WARN_UNUSED;

/*
 * 16-byte operations through the CPU's 16-byte compare-and-swap
 * (cmpxchg16b on x86_64, ldaxp/stlxp on aarch64), always sequentially
 * consistent. Values are 16 bytes in native byte order; the memory must be
 * 16-byte aligned. dk_atomic16_supported says whether this CPU has the
 * instruction.
 *
 * A load is a plain 16-byte load where the CPU guarantees that one is
 * atomic (x86_64 CPUs with AVX: aligned MOVDQA is single-copy atomic,
 * Intel SDM vol. 3A 9.1.1, AMD APM vol. 2 7.3.2); elsewhere it is a
 * compare-and-swap, which writes. dk_atomic16_readonly_load_supported
 * says which: only when it is true may dk_atomic16_load (and a 16-byte
 * dk_atomic_load or DK_ABIT_TEST) be used on read-only memory. Every other
 * operation writes, so its memory must be writable.
 */
DK_EXPORT bool dk_atomic16_supported(void);
DK_EXPORT bool dk_atomic16_readonly_load_supported(void);
DK_EXPORT void dk_atomic16_load(void *p, void *out);
DK_EXPORT void dk_atomic16_store(void *p, const void *v);
DK_EXPORT void dk_atomic16_rmw(void *p, dk_atomic_op_t op, const void *arg,
                               void *old);
DK_EXPORT bool dk_atomic16_cas(void *p, void *expected,
                               const void *desired) DK_WARN_UNUSED;

/*
 * The whole operation set on raw bytes, for every width
 * dk_atomic_width_supported accepts (1, 2, 4, 8, and 16 where the CPU has
 * a 16-byte CAS). Values are `width` bytes in native byte order, read from
 * and written to caller buffers that need no alignment; `p` itself must
 * be aligned to `width`. Arithmetic wraps modulo 2^(8*width), so one call
 * serves signed and unsigned integers alike (two's complement). 16-byte
 * operations are always sequentially consistent, which is valid for any
 * requested order.
 *
 * Each returns 0 (or the result stated below, never negative) or -EINVAL
 * for: a width that dk_atomic_width_supported refuses, `p` not aligned to
 * `width`, an order that is not a dk_memory_order or is invalid for the
 * operation (loads and DK_ABIT_TEST need dk_memory_order_valid_load,
 * stores dk_memory_order_valid_store, cmpxchg dk_memory_order_valid_fail;
 * read-modify-writes take any order), an unknown op, or a bit index
 * >= 8 * width. On -EINVAL nothing was read or written.
 */
typedef enum dk_atomic_bit_op {
    DK_ABIT_TEST,  /* read the bit */
    DK_ABIT_COMPL, /* flip it */
    DK_ABIT_SET,   /* set it to 1 */
    DK_ABIT_RESET, /* set it to 0 */
} dk_atomic_bit_op_t;

DK_EXPORT int dk_atomic_load(const void *p, size_t width, void *out,
                             dk_memory_order mo) DK_WARN_UNUSED;
DK_EXPORT int dk_atomic_store(void *p, size_t width, const void *desired,
                              dk_memory_order mo) DK_WARN_UNUSED;
/* p = p OP arg, atomically. `arg` is ignored (may be NULL) for DK_AOP_NOT,
 * NEG, INC and DEC; `old`, if not NULL, receives the previous value. */
DK_EXPORT int dk_atomic_fetch_op(void *p, size_t width, dk_atomic_op_t op,
                                 const void *arg, void *old,
                                 dk_memory_order mo) DK_WARN_UNUSED;
/* Returns 1 if *p held *expected and now holds *desired; 0 if not, and
 * then *expected receives the value seen. A weak cmpxchg may return 0
 * spuriously (with *expected unchanged); call it in a loop. */
DK_EXPORT int dk_atomic_cmpxchg(void *p, size_t width, void *expected,
                                const void *desired, bool weak,
                                dk_memory_order succ,
                                dk_memory_order fail) DK_WARN_UNUSED;
/* Returns the previous value (0 or 1) of bit `index` (bit 0 is the least
 * significant bit of the native integer) and applies `op` to it. */
DK_EXPORT int dk_atomic_bit(void *p, size_t width, dk_atomic_bit_op_t op,
                            unsigned index, dk_memory_order mo) DK_WARN_UNUSED;

DK_END_DECLS

#endif /* DK_ATOMIC_H */
