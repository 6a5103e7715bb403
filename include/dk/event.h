/*
 * The older name of dk/shm_event.h (the shared-memory event), kept so
 * that C programs written against it still compile. The event thread of
 * the runtime is src/event.c, which has no public header.
 */
#ifndef DK_EVENT_H
#define DK_EVENT_H

#include "dk/shm_event.h"

#endif /* DK_EVENT_H */
