/*
 * The inline half of atomic_ops.c: dk/atomic.h's raw-bytes operations
 * without their argument checks, for callers that have made those checks
 * once and for all (the Python binding checks width and alignment when an
 * object is made, and each order before each call). Inlined into such a
 * caller, a 1-, 2-, 4- or 8-byte operation is a switch on the width, one
 * on the order and the instruction itself, with fixed-size copies of the
 * caller's value bytes; 16-byte operations call atomic16.c.
 *
 * Every function here requires what the checked function in dk/atomic.h
 * would otherwise return -EINVAL for: dk_atomic_width_supported(width),
 * `p` aligned to `width`, a known op and an order valid for the operation
 * (loads: dk_memory_order_valid_load, stores: dk_memory_order_valid_store,
 * read-modify-writes: any dk_memory_order). Breaking that is undefined.
 *
 * Like atomic_ops.c, and unlike the rest of the core (src/atomic.h), this
 * maps an order known only at run time to the compiler's constants, so
 * it uses the __atomic builtins itself. Memory orders are the caller's:
 * there is no protocol of our own here to pair them with.
 */
#ifndef DK_SRC_ATOMIC_RAW_H
#define DK_SRC_ATOMIC_RAW_H

#include <string.h>

#include "dk/atomic.h"

/* dk_memory_order_valid_load and _store, inline for callers that check
 * an order on every call. */
static inline bool
dk__memory_order_valid_load(int mo)
{
    return mo == DK_MO_RELAXED || mo == DK_MO_CONSUME || mo == DK_MO_ACQUIRE ||
           mo == DK_MO_SEQ_CST;
}

static inline bool
dk__memory_order_valid_store(int mo)
{
    return mo == DK_MO_RELAXED || mo == DK_MO_RELEASE || mo == DK_MO_SEQ_CST;
}

/* Whether objects of `width` bytes get the operations their memory
 * allows: every width dk_atomic_width_supported accepts, except a
 * read-only 16-byte object where the only 16-byte load is a
 * compare-and-swap, which writes (dk/atomic.h). */
static inline bool
dk__atomic_width_usable(unsigned width, bool readonly)
{
    return dk_atomic_width_supported(width) &&
           (!readonly || width != 16 || dk_atomic16_readonly_load_supported());
}

/* Loads and stores strengthen an order invalid for them to seq_cst (only
 * reachable through a broken precondition; it keeps that defined). */
#define DK__RAW_LOAD(T, p, mo)                                                \
    ((mo) == DK_MO_RELAXED                                                    \
         ? __atomic_load_n((const T *)(p), __ATOMIC_RELAXED)                  \
     : ((mo) == DK_MO_ACQUIRE || (mo) == DK_MO_CONSUME)                       \
         ? __atomic_load_n((const T *)(p), __ATOMIC_ACQUIRE)                  \
         : __atomic_load_n((const T *)(p), __ATOMIC_SEQ_CST))

#define DK__RAW_STORE(T, p, v, mo)                                            \
    do {                                                                      \
        if ((mo) == DK_MO_RELAXED) {                                          \
            __atomic_store_n((T *)(p), (T)(v), __ATOMIC_RELAXED);             \
        } else if ((mo) == DK_MO_RELEASE) {                                   \
            __atomic_store_n((T *)(p), (T)(v), __ATOMIC_RELEASE);             \
        } else {                                                              \
            __atomic_store_n((T *)(p), (T)(v), __ATOMIC_SEQ_CST);             \
        }                                                                     \
    } while (0)

/* One read-modify-write at type T with a constant order o_: returns the
 * previous value from the enclosing function. */
#define DK__RAW_RMW_AT(T, p, op, arg, o_)                                     \
    switch (op) {                                                             \
    case DK_AOP_EXCHANGE:                                                     \
        return __atomic_exchange_n((T *)(p), (T)(arg), o_);                   \
    case DK_AOP_ADD:                                                          \
        return __atomic_fetch_add((T *)(p), (T)(arg), o_);                    \
    case DK_AOP_SUB:                                                          \
        return __atomic_fetch_sub((T *)(p), (T)(arg), o_);                    \
    case DK_AOP_AND:                                                          \
        return __atomic_fetch_and((T *)(p), (T)(arg), o_);                    \
    case DK_AOP_OR:                                                           \
        return __atomic_fetch_or((T *)(p), (T)(arg), o_);                     \
    case DK_AOP_XOR:                                                          \
        return __atomic_fetch_xor((T *)(p), (T)(arg), o_);                    \
    case DK_AOP_NOT:                                                          \
        return __atomic_fetch_xor((T *)(p), (T) ~(T)0, o_);                   \
    case DK_AOP_INC:                                                          \
        return __atomic_fetch_add((T *)(p), (T)1, o_);                        \
    case DK_AOP_DEC:                                                          \
        return __atomic_fetch_sub((T *)(p), (T)1, o_);                        \
    case DK_AOP_NEG: {                                                        \
        T old_ = __atomic_load_n((T *)(p), __ATOMIC_RELAXED);                 \
        while (!__atomic_compare_exchange_n((T *)(p), &old_, (T)(0 - old_),   \
                                            true, o_, __ATOMIC_RELAXED)) {    \
        }                                                                     \
        return old_;                                                          \
    }                                                                         \
    }                                                                         \
    return 0

/* The typed operations at one width: dk__raw_{load,store,rmw,cas}_W. A
 * CAS is always sequentially consistent, which is valid for every order
 * pair and the same instruction on x86. */
#define DK__RAW_WIDTH(W, T)                                                   \
    static inline T dk__raw_load_##W(const void *p, dk_memory_order mo)       \
    {                                                                         \
        return DK__RAW_LOAD(T, p, mo);                                        \
    }                                                                         \
    static inline void dk__raw_store_##W(void *p, T v, dk_memory_order mo)    \
    {                                                                         \
        DK__RAW_STORE(T, p, v, mo);                                           \
    }                                                                         \
    static inline T dk__raw_rmw_##W(void *p, dk_atomic_op_t op, T arg,        \
                                    dk_memory_order mo)                       \
    {                                                                         \
        switch (mo) {                                                         \
        case DK_MO_RELAXED: {                                                 \
            DK__RAW_RMW_AT(T, p, op, arg, __ATOMIC_RELAXED);                  \
        }                                                                     \
        case DK_MO_CONSUME:                                                   \
        case DK_MO_ACQUIRE: {                                                 \
            DK__RAW_RMW_AT(T, p, op, arg, __ATOMIC_ACQUIRE);                  \
        }                                                                     \
        case DK_MO_RELEASE: {                                                 \
            DK__RAW_RMW_AT(T, p, op, arg, __ATOMIC_RELEASE);                  \
        }                                                                     \
        case DK_MO_ACQ_REL: {                                                 \
            DK__RAW_RMW_AT(T, p, op, arg, __ATOMIC_ACQ_REL);                  \
        }                                                                     \
        default: {                                                            \
            DK__RAW_RMW_AT(T, p, op, arg, __ATOMIC_SEQ_CST);                  \
        }                                                                     \
        }                                                                     \
    }                                                                         \
    static inline bool dk__raw_cas_##W(void *p, T *expected, T desired,       \
                                       bool weak)                             \
    {                                                                         \
        return __atomic_compare_exchange_n((T *)p, expected, desired, weak,   \
                                           __ATOMIC_SEQ_CST,                  \
                                           __ATOMIC_SEQ_CST);                 \
    }

DK__RAW_WIDTH(1, uint8_t)
DK__RAW_WIDTH(2, uint16_t)
DK__RAW_WIDTH(4, uint32_t)
DK__RAW_WIDTH(8, uint64_t)

/* STMT once per width, with W the width and T its type in scope; the
 * 16-byte case is the caller's. Each copy to or from the caller's bytes
 * is then a memcpy of a constant size, which compiles to one move. */
#define DK__RAW_BY_WIDTH(width, STMT, STMT16)                                 \
    switch (width) {                                                          \
    case 1: {                                                                 \
        typedef uint8_t T;                                                    \
        STMT(1);                                                              \
        break;                                                                \
    }                                                                         \
    case 2: {                                                                 \
        typedef uint16_t T;                                                   \
        STMT(2);                                                              \
        break;                                                                \
    }                                                                         \
    case 4: {                                                                 \
        typedef uint32_t T;                                                   \
        STMT(4);                                                              \
        break;                                                                \
    }                                                                         \
    case 8: {                                                                 \
        typedef uint64_t T;                                                   \
        STMT(8);                                                              \
        break;                                                                \
    }                                                                         \
    default:                                                                  \
        STMT16;                                                               \
        break;                                                                \
    }

/* dk_atomic_load without its checks. */
static inline void
dk__atomic_load_raw(const void *p, size_t width, void *out, dk_memory_order mo)
{
#define DK__LOAD_(W)                                                          \
    T x_ = dk__raw_load_##W(p, mo);                                           \
    memcpy(out, &x_, W)
    /* Writes only where no pure 16-byte load exists (dk/atomic.h). */
    DK__RAW_BY_WIDTH(width, DK__LOAD_,
                     dk_atomic16_load((void *)(uintptr_t)p, out))
#undef DK__LOAD_
}

/* dk_atomic_store without its checks. */
static inline void
dk__atomic_store_raw(void *p, size_t width, const void *desired,
                     dk_memory_order mo)
{
#define DK__STORE_(W)                                                         \
    T x_;                                                                     \
    memcpy(&x_, desired, W);                                                  \
    dk__raw_store_##W(p, x_, mo)
    DK__RAW_BY_WIDTH(width, DK__STORE_, dk_atomic16_store(p, desired))
#undef DK__STORE_
}

static inline bool
dk__atomic_op_needs_arg(dk_atomic_op_t op)
{
    return op != DK_AOP_NOT && op != DK_AOP_NEG && op != DK_AOP_INC &&
           op != DK_AOP_DEC;
}

/* dk_atomic_fetch_op without its checks: `arg` may be NULL when op takes
 * none, `old` when the previous value is not wanted. */
static inline void
dk__atomic_fetch_op_raw(void *p, size_t width, dk_atomic_op_t op,
                        const void *arg, void *old, dk_memory_order mo)
{
    bool needs_arg = dk__atomic_op_needs_arg(op);
#define DK__RMW_(W)                                                           \
    T a_ = 0;                                                                 \
    if (needs_arg) {                                                          \
        memcpy(&a_, arg, W);                                                  \
    }                                                                         \
    T prev_ = dk__raw_rmw_##W(p, op, a_, mo);                                 \
    if (old != NULL) {                                                        \
        memcpy(old, &prev_, W);                                               \
    }
#define DK__RMW16_                                                            \
    do {                                                                      \
        unsigned char prev16_[16];                                            \
        dk_atomic16_rmw(p, op, needs_arg ? arg : NULL, prev16_);              \
        if (old != NULL) {                                                    \
            memcpy(old, prev16_, 16);                                         \
        }                                                                     \
    } while (0)
    DK__RAW_BY_WIDTH(width, DK__RMW_, DK__RMW16_)
#undef DK__RMW_
#undef DK__RMW16_
}

/* dk_atomic_cmpxchg without its checks, always sequentially consistent:
 * true if *p held *expected and now holds *desired, else false with the
 * value seen in *expected. */
static inline bool
dk__atomic_cmpxchg_raw(void *p, size_t width, void *expected,
                       const void *desired, bool weak)
{
    bool ok = false;
#define DK__CAS_(W)                                                           \
    T e_, d_;                                                                 \
    memcpy(&e_, expected, W);                                                 \
    memcpy(&d_, desired, W);                                                  \
    ok = dk__raw_cas_##W(p, &e_, d_, weak);                                   \
    if (!ok) {                                                                \
        memcpy(expected, &e_, W);                                             \
    }
    /* cmpxchg16b never fails spuriously: weak is strong there. */
    DK__RAW_BY_WIDTH(width, DK__CAS_,
                     ok = dk_atomic16_cas(p, expected, desired))
#undef DK__CAS_
    return ok;
}

#endif /* DK_SRC_ATOMIC_RAW_H */
