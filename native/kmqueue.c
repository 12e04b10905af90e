/*
 * Bounded coalescing candidate queue.  See kmqueue.h.
 *
 * Layout: a ring of `cap` entries (head = oldest) and an open-addressing
 * hash index of 2^k >= 2*cap slots holding ring positions + 1 (0 = empty).
 * Deletion uses backward-shift, so there are no tombstones and a probe never
 * runs longer than the cluster it is in.
 */
#include <stdlib.h>
#include <string.h>

#include "kmqueue.h"

struct km_entry {
	uint64_t page;		/* addr >> page_shift */
	uint64_t first_ns;
	uint64_t last_ns;
	int32_t pid;
	int32_t node;
	uint32_t count;		/* sum of weights */
};

struct km_queue {
	struct km_entry *ring;
	uint32_t *index;	/* ring position + 1, or 0 */
	uint32_t cap;
	uint32_t mask;		/* index size - 1 */
	uint32_t head;		/* ring position of the oldest entry */
	uint32_t len;
	unsigned int shift;
	struct km_queue_stats st;
};

static inline uint32_t hash_key(int32_t pid, uint64_t page)
{
	uint64_t h = page * 0x9E3779B97F4A7C15ull ^ ((uint64_t)(uint32_t)pid * 0xC2B2AE3D27D4EB4Full);

	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	h ^= h >> 32;
	return (uint32_t)h;
}

km_queue *km_queue_new(uint32_t capacity, unsigned int page_shift)
{
	km_queue *q;
	uint32_t size = 2;

	if (capacity == 0 || capacity > (1u << 26) || page_shift > 30)
		return NULL;
	while (size < 2 * capacity)
		size <<= 1;
	q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->ring = calloc(capacity, sizeof(*q->ring));
	q->index = calloc(size, sizeof(*q->index));
	if (!q->ring || !q->index) {
		km_queue_free(q);
		return NULL;
	}
	q->cap = capacity;
	q->mask = size - 1;
	q->shift = page_shift;
	return q;
}

void km_queue_free(km_queue *q)
{
	if (!q)
		return;
	free(q->ring);
	free(q->index);
	free(q);
}

size_t km_queue_len(const km_queue *q) { return q->len; }
size_t km_queue_capacity(const km_queue *q) { return q->cap; }
void km_queue_get_stats(const km_queue *q, struct km_queue_stats *out) { *out = q->st; }

/* Index slot holding ring position `pos`, or the empty slot where the key would go. */
static uint32_t find_slot(const km_queue *q, int32_t pid, uint64_t page)
{
	uint32_t i = hash_key(pid, page) & q->mask;

	for (;;) {
		uint32_t v = q->index[i];

		if (v == 0)
			return i;
		if (q->ring[v - 1].page == page && q->ring[v - 1].pid == pid)
			return i;
		i = (i + 1) & q->mask;
	}
}

/* Remove index slot i, shifting later members of its cluster back. */
static void index_delete(km_queue *q, uint32_t i)
{
	uint32_t j = i;

	for (;;) {
		uint32_t v, home;

		j = (j + 1) & q->mask;
		v = q->index[j];
		if (v == 0)
			break;
		home = hash_key(q->ring[v - 1].pid, q->ring[v - 1].page) & q->mask;
		/* Move v into the hole at i unless its home lies cyclically in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
			q->index[i] = v;
			i = j;
		}
	}
	q->index[i] = 0;
}

static void pop_oldest(km_queue *q)
{
	struct km_entry *e = &q->ring[q->head];

	index_delete(q, find_slot(q, e->pid, e->page));
	q->head = (q->head + 1 == q->cap) ? 0 : q->head + 1;
	q->len--;
}

long km_queue_push(km_queue *q, size_t n, const int32_t *pids, const uint64_t *addrs,
                   const int32_t *nodes, const uint64_t *times, const uint32_t *weights)
{
	long added = 0;
	size_t k;

	for (k = 0; k < n; k++) {
		uint64_t page = addrs[k] >> q->shift;
		int32_t pid = pids[k];
		uint32_t w = weights ? weights[k] : 1;
		uint64_t t = times ? times[k] : 0;
		uint32_t slot = find_slot(q, pid, page);
		uint32_t pos;
		struct km_entry *e;

		q->st.pushed++;
		if (q->index[slot]) {
			e = &q->ring[q->index[slot] - 1];
			e->count = (e->count + w < e->count) ? UINT32_MAX : e->count + w;
			if (t > e->last_ns)
				e->last_ns = t;
			if (nodes && nodes[k] >= 0)
				e->node = nodes[k];
			q->st.coalesced++;
			continue;
		}
		if (q->len == q->cap) {
			pop_oldest(q);
			q->st.dropped++;
			slot = find_slot(q, pid, page);	/* the shift may have moved the hole */
		}
		pos = q->head + q->len;
		if (pos >= q->cap)
			pos -= q->cap;
		e = &q->ring[pos];
		e->page = page;
		e->pid = pid;
		e->node = nodes ? nodes[k] : -1;
		e->count = w;
		e->first_ns = e->last_ns = t;
		q->index[slot] = pos + 1;
		q->len++;
		added++;
	}
	return added;
}

long km_queue_drain(km_queue *q, size_t max, int32_t *pids, uint64_t *addrs, int32_t *nodes,
                    uint32_t *counts, uint64_t *first_ns, uint64_t *last_ns)
{
	size_t k;

	for (k = 0; k < max && q->len; k++) {
		struct km_entry *e = &q->ring[q->head];

		if (pids) pids[k] = e->pid;
		if (addrs) addrs[k] = e->page << q->shift;
		if (nodes) nodes[k] = e->node;
		if (counts) counts[k] = e->count;
		if (first_ns) first_ns[k] = e->first_ns;
		if (last_ns) last_ns[k] = e->last_ns;
		pop_oldest(q);
		q->st.drained++;
	}
	return (long)k;
}
