/*
 * Candidate batch helpers.  See kmcand.h.
 */
#include <stdlib.h>

#include "kmcand.h"

struct cand {
	uint64_t addr;
	int32_t pid;
	uint32_t count;
};

static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	return 0;
}

long km_cand_prepare(size_t n, int32_t *pids, uint64_t *addrs, uint32_t *counts,
                     uint32_t min_count, uint64_t *below)
{
	struct cand *c;
	size_t i, j;

	if (n == 0)
		return 0;
	c = malloc(n * sizeof(*c));	/* one allocation per batch, not per page */
	if (!c)
		return -12;	/* -ENOMEM */
	for (i = 0; i < n; i++) {
		c[i].addr = addrs[i];
		c[i].pid = pids[i];
		c[i].count = counts ? counts[i] : 1;
	}
	qsort(c, n, sizeof(*c), cmp_cand);
	for (i = 0, j = 0; i < n; i++) {
		if (j && c[j - 1].pid == c[i].pid && c[j - 1].addr == c[i].addr) {
			uint32_t s = c[j - 1].count + c[i].count;

			c[j - 1].count = s < c[i].count ? UINT32_MAX : s;
			continue;
		}
		c[j++] = c[i];
	}
	n = j;
	for (i = 0, j = 0; i < n; i++) {
		if (c[i].count < min_count) {
			(*below)++;
			continue;
		}
		pids[j] = c[i].pid;
		addrs[j] = c[i].addr;
		if (counts)
			counts[j] = c[i].count;
		j++;
	}
	free(c);
	return (long)j;
}

long km_cand_targets(size_t n, const int32_t *status, const int32_t *target_of_node,
                     size_t nnodes, int32_t *tgt)
{
	long with = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		int32_t s = status[i];

		if (s < 0 || (size_t)s >= nnodes) {
			tgt[i] = -2;
			continue;
		}
		tgt[i] = target_of_node[s];
		with += tgt[i] >= 0;
	}
	return with;
}

long km_select_u64(size_t n, const uint64_t *in, const int32_t *key, int32_t want,
                   uint64_t *out)
{
	size_t i, j = 0;

	for (i = 0; i < n; i++)
		if (key[i] == want)
			out[j++] = in[i];
	return (long)j;
}

long km_runs_i32(size_t n, const int32_t *v, uint32_t *starts)
{
	size_t i, k = 0;

	for (i = 0; i < n; i++)
		if (i == 0 || v[i] != v[i - 1])
			starts[k++] = (uint32_t)i;
	return (long)k;
}

long km_keys_for(size_t n, const uint64_t *addrs, const int32_t *status,
                 const int32_t *tgt, int32_t dst, uint64_t *out)
{
	size_t i, j = 0;

	for (i = 0; i < n; i++)
		if (tgt[i] == dst)
			out[j++] = addrs[i] | (uint32_t)status[i];
	return (long)j;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

long km_sort_unique_u64(size_t n, uint64_t *v)
{
	size_t i, j;

	if (n < 2)
		return (long)n;
	/* Inboxes are runs of ascending keys: skip the sort when already ordered. */
	for (i = 1; i < n && v[i - 1] < v[i]; i++)
		;
	if (i < n)
		qsort(v, n, sizeof(*v), cmp_u64);
	for (i = 1, j = 1; i < n; i++)
		if (v[i] != v[j - 1])
			v[j++] = v[i];
	return (long)j;
}

long km_remove_sorted_u64(size_t n, uint64_t *v, size_t m, const uint64_t *r)
{
	size_t i, j = 0, k = 0;

	for (i = 0; i < n; i++) {
		while (k < m && r[k] < v[i])
			k++;
		if (k < m && r[k] == v[i])
			continue;
		v[j++] = v[i];
	}
	return (long)j;
}

void km_split_keys(size_t n, const uint64_t *keys, uint64_t addr_mask,
                   uint64_t *addrs, int32_t *low)
{
	size_t i;

	if (addrs)
		for (i = 0; i < n; i++)
			addrs[i] = keys[i] & addr_mask;
	if (low)
		for (i = 0; i < n; i++)
			low[i] = (int32_t)(keys[i] & ~addr_mask);
}
