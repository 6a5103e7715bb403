/*
 * `head` is written only by the consumer, but other threads read it to
 * test emptiness, so its stores are relaxed atomics.
 *
 * Vyukov's intrusive multi-producer single-consumer list: a push is one
 * atomic exchange plus one store, with no lock and no CAS loop; the single
 * consumer pops without atomics read-modify-writes except when the list
 * runs dry.
 *
 * The only window is a producer between its two steps:
 *
 *   producer                          consumer
 *   prev = xchg(&tail, it)   (A)
 *                                     head->next == NULL but tail != head:
 *                                     the list is not empty, just not yet
 *                                     linked; spin until (B) lands
 *   store_release(&prev->next, it) (B)
 *
 * (A) is sequentially consistent: queues pair it with a load of their
 * state word so a wake-up is never lost (see queue.c). (B) pairs with the
 * consumer's acquire load of `next`, publishing the item's fields.
 */
#include "internal.h"

void
dk__mpsc_init(struct dk__mpsc *l)
{
    l->stub.next = NULL;
    l->head = &l->stub;
    l->tail = &l->stub;
}

void
dk__mpsc_push(struct dk__mpsc *l, struct dk__item *it)
{
    dk__atomic_store_relaxed(&it->next, NULL);
    struct dk__item *prev = dk__atomic_xchg_seq_cst(&l->tail, it); /* (A) */
    dk__atomic_store_release(&prev->next, it);                     /* (B) */
}

static struct dk__item *
load_next(struct dk__item *it)
{
    return dk__atomic_load_acquire(&it->next); /* pairs with (B) */
}

struct dk__item *
dk__mpsc_pop(struct dk__mpsc *l)
{
    for (;;) {
        struct dk__item *head = l->head;
        struct dk__item *next = load_next(head);
        if (head == &l->stub) {
            if (next == NULL) {
                if (dk__atomic_load_seq_cst(&l->tail) == &l->stub) {
                    return NULL;
                }
                dk_cpu_relax(); /* a producer is between (A) and (B) */
                continue;
            }
            dk__atomic_store_relaxed(&l->head, next);
            head = next;
            next = load_next(next);
        }
        if (next != NULL) {
            dk__atomic_store_relaxed(&l->head, next);
            return head;
        }
        if (dk__atomic_load_seq_cst(&l->tail) != head) {
            dk_cpu_relax(); /* a producer is between (A) and (B) */
            continue;
        }
        /* head is the last item: put the stub behind it so head can go. */
        dk__mpsc_push(l, &l->stub);
        next = load_next(head);
        if (next != NULL) {
            dk__atomic_store_relaxed(&l->head, next);
            return head;
        }
        dk_cpu_relax();
    }
}

bool
dk__mpsc_empty(struct dk__mpsc *l)
{
    /* Sequentially consistent: pairs with (A) in queue wake-up logic. */
    struct dk__item *tail = dk__atomic_load_seq_cst(&l->tail);
    return tail == &l->stub && dk__atomic_load_relaxed(&l->head) == &l->stub &&
           dk__atomic_load_acquire(&l->stub.next) == NULL;
}
