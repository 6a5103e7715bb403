/*
 * The public atomics of dk/atomic.h. A run-time memory order is mapped to
 * the compiler's constant by a switch, so each case is one instruction;
 * orders that are invalid for an operation are strengthened to the nearest
 * valid one (callers validate first, so this only guards against UB).
 */
#include "dk/atomic.h"

bool
dk_memory_order_valid_load(int mo)
{
    return mo == DK_MO_RELAXED || mo == DK_MO_CONSUME || mo == DK_MO_ACQUIRE ||
           mo == DK_MO_SEQ_CST;
}

bool
dk_memory_order_valid_store(int mo)
{
    return mo == DK_MO_RELAXED || mo == DK_MO_RELEASE || mo == DK_MO_SEQ_CST;
}

bool
dk_memory_order_valid_fail(int fail, int succ)
{
    return dk_memory_order_valid_load(fail) && fail <= succ &&
           !(succ == DK_MO_RELEASE && fail > DK_MO_RELAXED) &&
           !(succ == DK_MO_ACQ_REL && fail > DK_MO_ACQUIRE);
}

/* Dispatch one operation over the six orders with constant arguments. */
#define DK_MO_SWITCH(mo, EXPR)                                                \
    switch (mo) {                                                             \
    case DK_MO_RELAXED: {                                                     \
        const int o_ = __ATOMIC_RELAXED;                                      \
        EXPR;                                                                 \
    }                                                                         \
    case DK_MO_CONSUME:                                                       \
    case DK_MO_ACQUIRE: {                                                     \
        const int o_ = __ATOMIC_ACQUIRE;                                      \
        EXPR;                                                                 \
    }                                                                         \
    case DK_MO_RELEASE: {                                                     \
        const int o_ = __ATOMIC_RELEASE;                                      \
        EXPR;                                                                 \
    }                                                                         \
    case DK_MO_ACQ_REL: {                                                     \
        const int o_ = __ATOMIC_ACQ_REL;                                      \
        EXPR;                                                                 \
    }                                                                         \
    default: {                                                                \
        const int o_ = __ATOMIC_SEQ_CST;                                      \
        EXPR;                                                                 \
    }                                                                         \
    }

static inline dk_memory_order
load_order(dk_memory_order mo)
{
    return (mo == DK_MO_RELEASE || mo == DK_MO_ACQ_REL) ? DK_MO_SEQ_CST : mo;
}

static inline dk_memory_order
store_order(dk_memory_order mo)
{
    return (mo == DK_MO_RELAXED || mo == DK_MO_RELEASE) ? mo : DK_MO_SEQ_CST;
}

#define DK_DEFINE_ATOMICS(W, T)                                               \
    T dk_atomic_u##W##_load(const T *p, dk_memory_order mo)                   \
    {                                                                         \
        switch (load_order(mo)) {                                             \
        case DK_MO_RELAXED:                                                   \
            return __atomic_load_n(p, __ATOMIC_RELAXED);                      \
        case DK_MO_CONSUME:                                                   \
        case DK_MO_ACQUIRE:                                                   \
            return __atomic_load_n(p, __ATOMIC_ACQUIRE);                      \
        default:                                                              \
            return __atomic_load_n(p, __ATOMIC_SEQ_CST);                      \
        }                                                                     \
    }                                                                         \
    void dk_atomic_u##W##_store(T *p, T v, dk_memory_order mo)                \
    {                                                                         \
        switch (store_order(mo)) {                                            \
        case DK_MO_RELAXED:                                                   \
            __atomic_store_n(p, v, __ATOMIC_RELAXED);                         \
            return;                                                           \
        case DK_MO_RELEASE:                                                   \
            __atomic_store_n(p, v, __ATOMIC_RELEASE);                         \
            return;                                                           \
        default:                                                              \
            __atomic_store_n(p, v, __ATOMIC_SEQ_CST);                         \
            return;                                                           \
        }                                                                     \
    }                                                                         \
    T dk_atomic_u##W##_exchange(T *p, T v, dk_memory_order mo){DK_MO_SWITCH(  \
        mo, return __atomic_exchange_n(                                       \
                p, v, o_))} T dk_atomic_u##W##_fetch_add(T *p, T v,           \
                                                         dk_memory_order mo)  \
    {                                                                         \
        DK_MO_SWITCH(mo, return __atomic_fetch_add(p, v, o_))                 \
    }                                                                         \
    bool dk_atomic_u##W##_cas(T *p, T *expected, T desired, bool weak,        \
                              dk_memory_order succ, dk_memory_order fail)     \
    {                                                                         \
        (void)fail; /* the success order bounds the failure order */          \
        if (weak) {                                                           \
            DK_MO_SWITCH(succ,                                                \
                         return __atomic_compare_exchange_n(                  \
                             p, expected, desired, true, o_,                  \
                             o_ == __ATOMIC_RELEASE   ? __ATOMIC_RELAXED      \
                             : o_ == __ATOMIC_ACQ_REL ? __ATOMIC_ACQUIRE      \
                                                      : o_))                  \
        }                                                                     \
        DK_MO_SWITCH(succ, return __atomic_compare_exchange_n(                \
                               p, expected, desired, false, o_,               \
                               o_ == __ATOMIC_RELEASE   ? __ATOMIC_RELAXED    \
                               : o_ == __ATOMIC_ACQ_REL ? __ATOMIC_ACQUIRE    \
                                                        : o_))                \
    }

DK_DEFINE_ATOMICS(32, uint32_t)
DK_DEFINE_ATOMICS(64, uint64_t)
