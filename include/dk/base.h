/*
 * Definitions shared by every public dispatchkit header: visibility, the
 * callback type and the time type.
 */
#ifndef DK_BASE_H
#define DK_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DK_EXPORT __attribute__((visibility("default")))
#define DK_WARN_UNUSED __attribute__((warn_unused_result))

#ifdef __cplusplus
#define DK_BEGIN_DECLS extern "C" {
#define DK_END_DECLS }
#else
#define DK_BEGIN_DECLS
#define DK_END_DECLS
#endif

/* A work item: called with the context pointer given at submission. */
typedef void (*dk_function_t)(void *ctx);

#endif /* DK_BASE_H */
