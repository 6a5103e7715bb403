/*
 * Run a function exactly once per predicate. Concurrent callers wait until
 * the first call has returned. A predicate must start as 0 (DK_ONCE_INIT)
 * and may live anywhere (static storage is usual).
 */
#ifndef DK_ONCE_H
#define DK_ONCE_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef intptr_t dk_once_t;
#define DK_ONCE_INIT 0

DK_EXPORT void dk_once_f(dk_once_t *predicate, void *ctx, dk_function_t fn);
/* True once the function has returned (acquire: its effects are visible). */
DK_EXPORT bool dk_once_done(const dk_once_t *predicate);

DK_END_DECLS

#endif /* DK_ONCE_H */
