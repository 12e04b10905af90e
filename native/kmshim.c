/*
 * kmigratedd native shim.  See kmshim.h for the contract.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kmshim.h"

/* move_pages(2) takes `const void **pages`; we hand it our uint64_t array
 * as is, which is only right where a pointer is 64 bits wide. */
_Static_assert(sizeof(void *) == sizeof(uint64_t), "kmigratedd needs a 64-bit ABI");
_Static_assert(sizeof(int) == sizeof(int32_t), "kmigratedd needs 32-bit int");

long km_move_pages(int pid, size_t count, const uint64_t *pages,
                   const int32_t *nodes, int32_t *status, int flags)
{
	long rc;

	if (count == 0)
		return 0;
	if (pages == NULL || status == NULL)
		return -EINVAL;
	/* glibc has no wrapper without libnuma: call the syscall directly. */
	rc = syscall(SYS_move_pages, pid, (unsigned long)count,
		     (const void **)pages, (const int *)nodes, (int *)status, flags);
	if (rc < 0)
		return -errno;
	return rc;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

long km_move_pages_batched(int pid, size_t count, const uint64_t *pages, int32_t node,
                           int32_t *status, int flags, size_t batch,
                           uint64_t *chunk_ns, size_t *done)
{
	int32_t *nodes;
	size_t off = 0, k = 0, i, n;
	long rc, not_migrated = 0;

	*done = 0;
	if (count == 0)
		return 0;
	if (batch == 0 || pages == NULL || status == NULL)
		return -EINVAL;
	n = count < batch ? count : batch;
	nodes = malloc(n * sizeof(*nodes));	/* one target array, reused per call */
	if (!nodes)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		nodes[i] = node;
	while (off < count) {
		uint64_t t0 = now_ns();

		n = count - off < batch ? count - off : batch;
		rc = km_move_pages(pid, n, pages + off, nodes, status + off, flags);
		if (chunk_ns)
			chunk_ns[k] = now_ns() - t0;
		if (rc < 0) {
			free(nodes);
			return rc;
		}
		not_migrated += rc;
		off += n;
		*done = off;
		k++;
	}
	free(nodes);
	return not_migrated;
}

long km_status_tally(const int32_t *status, size_t count,
                     int32_t *keys, uint64_t *counts, size_t max_out,
                     uint64_t *overflow)
{
	size_t used = 0, i, k;
	size_t last = 0;	/* runs of equal statuses are the common case */

	for (i = 0; i < count; i++) {
		int32_t s = status[i];

		if (used && keys[last] == s) {
			counts[last]++;
			continue;
		}
		for (k = 0; k < used && keys[k] != s; k++)
			;
		if (k == used) {
			if (used == max_out) {
				(*overflow)++;
				continue;
			}
			keys[used] = s;
			counts[used] = 0;
			used++;
		}
		counts[k]++;
		last = k;
	}
	return (long)used;
}

void km_fill_i32(int32_t *out, size_t count, int32_t value)
{
	size_t i;

	for (i = 0; i < count; i++)
		out[i] = value;
}
