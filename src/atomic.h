/*
 * Atomic operations for the whole core, with the memory order in the name
 * (as mimalloc does). They work on plain fixed-width integers and pointers,
 * so the same code serves heap objects and structures placed in shared
 * memory, whose layout is ABI. This is the only file that spells out
 * memory orders; every non-relaxed use elsewhere names its partner in a
 * comment.
 */
#ifndef DK_SRC_ATOMIC_H
#define DK_SRC_ATOMIC_H

#include <stdbool.h>
#include <stdint.h>

#define dk__atomic_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define dk__atomic_load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define dk__atomic_load_seq_cst(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)

#define dk__atomic_store_relaxed(p, v)                                        \
    __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define dk__atomic_store_release(p, v)                                        \
    __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define dk__atomic_store_seq_cst(p, v)                                        \
    __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

#define dk__atomic_xchg_relaxed(p, v)                                         \
    __atomic_exchange_n((p), (v), __ATOMIC_RELAXED)
#define dk__atomic_xchg_acquire(p, v)                                         \
    __atomic_exchange_n((p), (v), __ATOMIC_ACQUIRE)
#define dk__atomic_xchg_release(p, v)                                         \
    __atomic_exchange_n((p), (v), __ATOMIC_RELEASE)
#define dk__atomic_xchg_acq_rel(p, v)                                         \
    __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define dk__atomic_xchg_seq_cst(p, v)                                         \
    __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)

#define dk__atomic_add_relaxed(p, v)                                          \
    __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define dk__atomic_add_release(p, v)                                          \
    __atomic_fetch_add((p), (v), __ATOMIC_RELEASE)
#define dk__atomic_add_acq_rel(p, v)                                          \
    __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#define dk__atomic_add_seq_cst(p, v)                                          \
    __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define dk__atomic_sub_relaxed(p, v)                                          \
    __atomic_fetch_sub((p), (v), __ATOMIC_RELAXED)
#define dk__atomic_sub_acquire(p, v)                                          \
    __atomic_fetch_sub((p), (v), __ATOMIC_ACQUIRE)
#define dk__atomic_sub_release(p, v)                                          \
    __atomic_fetch_sub((p), (v), __ATOMIC_RELEASE)
#define dk__atomic_sub_acq_rel(p, v)                                          \
    __atomic_fetch_sub((p), (v), __ATOMIC_ACQ_REL)
#define dk__atomic_sub_seq_cst(p, v)                                          \
    __atomic_fetch_sub((p), (v), __ATOMIC_SEQ_CST)
#define dk__atomic_or_acq_rel(p, v)                                           \
    __atomic_fetch_or((p), (v), __ATOMIC_ACQ_REL)
#define dk__atomic_or_seq_cst(p, v)                                           \
    __atomic_fetch_or((p), (v), __ATOMIC_SEQ_CST)
#define dk__atomic_and_seq_cst(p, v)                                          \
    __atomic_fetch_and((p), (v), __ATOMIC_SEQ_CST)
#define dk__atomic_and_acq_rel(p, v)                                          \
    __atomic_fetch_and((p), (v), __ATOMIC_ACQ_REL)

/* Compare-and-swap: *expected is updated with the observed value on
 * failure. The failure order is the strongest one allowed. */
#define dk__atomic_cas_relaxed(p, expected, desired)                          \
    __atomic_compare_exchange_n((p), (expected), (desired), false,            \
                                __ATOMIC_RELAXED, __ATOMIC_RELAXED)
#define dk__atomic_cas_acquire(p, expected, desired)                          \
    __atomic_compare_exchange_n((p), (expected), (desired), false,            \
                                __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE)
#define dk__atomic_cas_release(p, expected, desired)                          \
    __atomic_compare_exchange_n((p), (expected), (desired), false,            \
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED)
#define dk__atomic_cas_acq_rel(p, expected, desired)                          \
    __atomic_compare_exchange_n((p), (expected), (desired), false,            \
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define dk__atomic_cas_seq_cst(p, expected, desired)                          \
    __atomic_compare_exchange_n((p), (expected), (desired), false,            \
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define dk__atomic_cas_weak_acq_rel(p, expected, desired)                     \
    __atomic_compare_exchange_n((p), (expected), (desired), true,             \
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

#define dk__atomic_fence_seq_cst() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define dk__atomic_fence_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define dk__atomic_fence_release() __atomic_thread_fence(__ATOMIC_RELEASE)

/* A hint to the CPU that we are spinning. */
static inline void
dk_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#define DK_CACHELINE 64
#define DK_CACHE_ALIGNED __attribute__((aligned(DK_CACHELINE)))

#define dk_likely(x) __builtin_expect(!!(x), 1)
#define dk_unlikely(x) __builtin_expect(!!(x), 0)

#endif /* DK_SRC_ATOMIC_H */
