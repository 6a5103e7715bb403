/*
 * What the libFuzzer targets in tests/fuzz/ share: the entry point's
 * prototype, a cursor that hands out the fuzzer's bytes as the values a
 * target asks for (zeros once the input runs out, so every input is a
 * complete program), and a check that aborts with a message, which
 * libFuzzer reports as a crash and saves the input of.
 */
#ifndef DK_TESTS_FUZZ_H
#define DK_TESTS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                         \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* A failure that names the return code that was not expected. */
#define FUZZ_BAD_RC(what, rc)                                                 \
    do {                                                                      \
        fprintf(stderr, "%s:%d: %s returned %lld, not a documented code\n",   \
                __FILE__, __LINE__, (what), (long long)(rc));                 \
        abort();                                                              \
    } while (0)

typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in_t;

static inline bool
fuzz_more(const fuzz_in_t *in)
{
    return in->n > 0;
}

static inline uint8_t
fuzz_u8(fuzz_in_t *in)
{
    if (in->n == 0) {
        return 0;
    }
    in->n--;
    return *in->p++;
}

static inline uint16_t
fuzz_u16(fuzz_in_t *in)
{
    uint16_t lo = fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)(fuzz_u8(in) << 8));
}

static inline uint32_t
fuzz_u32(fuzz_in_t *in)
{
    uint32_t lo = fuzz_u16(in);
    return lo | ((uint32_t)fuzz_u16(in) << 16);
}

static inline uint64_t
fuzz_u64(fuzz_in_t *in)
{
    uint64_t lo = fuzz_u32(in);
    return lo | ((uint64_t)fuzz_u32(in) << 32);
}

/* Up to n bytes into out (zeros past the end of the input). */
static inline void
fuzz_bytes(fuzz_in_t *in, void *out, size_t n)
{
    size_t k = n < in->n ? n : in->n;
    memcpy(out, in->p, k);
    memset((uint8_t *)out + k, 0, n - k);
    in->p += k;
    in->n -= k;
}

#endif /* DK_TESTS_FUZZ_H */
