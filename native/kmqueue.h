/*
 * Bounded, coalescing candidate queue (one per CPU; see kmigratedd/queues.py).
 *
 * Entries are kept in arrival order in a ring of `capacity` slots; a hash
 * index on (pid, page) folds a page seen again into its entry (count += 1,
 * last_ns updated) instead of adding one.  When the ring is full the oldest
 * entry is dropped and counted.  Memory is allocated once, at creation.
 */
#ifndef KMQUEUE_H
#define KMQUEUE_H

#include <stdint.h>
#include <stddef.h>

typedef struct km_queue km_queue;

struct km_queue_stats {
	uint64_t pushed;	/* samples offered */
	uint64_t coalesced;	/* samples folded into an existing entry */
	uint64_t dropped;	/* entries evicted because the queue was full */
	uint64_t drained;	/* entries handed to a consumer */
};

/*
 * capacity: 1 .. 1<<26 entries; page_shift: log2 of the page size that
 * addresses are rounded to (12 for 4 KiB).  NULL if out of memory or range.
 */
km_queue *km_queue_new(uint32_t capacity, unsigned int page_shift);
void km_queue_free(km_queue *q);
size_t km_queue_len(const km_queue *q);
size_t km_queue_capacity(const km_queue *q);
void km_queue_get_stats(const km_queue *q, struct km_queue_stats *out);

/*
 * Offer n samples.  addrs are virtual addresses (rounded down to the page),
 * nodes the node a page was seen on (-1 unknown), times in ns, weights the
 * sampler's weight per sample (1 for plain samples).  Returns entries added.
 */
long km_queue_push(km_queue *q, size_t n, const int32_t *pids, const uint64_t *addrs,
                   const int32_t *nodes, const uint64_t *times, const uint32_t *weights);

/*
 * Take up to max oldest entries out of the queue into flat arrays (addrs are
 * page-aligned addresses); any out array may be NULL.  Returns the number taken.
 */
long km_queue_drain(km_queue *q, size_t max, int32_t *pids, uint64_t *addrs, int32_t *nodes,
                    uint32_t *counts, uint64_t *first_ns, uint64_t *last_ns);

#endif
