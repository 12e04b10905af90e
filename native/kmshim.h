/*
 * kmigratedd native shim: thin, mechanical wrappers around the kernel
 * interfaces kmigratedd uses per batch.  No policy lives here.
 *
 * Conventions:
 *   - every function returns >= 0 on success and -errno on failure;
 *   - nothing allocates per page: callers pass flat arrays;
 *   - the cffi wrapper releases the GIL around every call.
 *
 * This header is parsed by cffi (native/build_shim.py), so it only uses
 * declarations cffi's cdef understands.
 */
#ifndef KMSHIM_H
#define KMSHIM_H

#include <stdint.h>
#include <stddef.h>

/*
 * move_pages(2) on `count` pages of process `pid` (0 = the caller).
 * `pages` holds virtual addresses (64-bit, as the kernel reads them).
 * `nodes` == NULL is the query form: `status` receives each page's node.
 * Otherwise `status` receives the node the page ended on or -errno.
 * Returns 0, the number of pages the kernel did not migrate (> 0), or -errno
 * for a whole-call failure (ESRCH, EPERM, EACCES, ENODEV, EINVAL, E2BIG...).
 */
long km_move_pages(int pid, size_t count, const uint64_t *pages,
                   const int32_t *nodes, int32_t *status, int flags);

/*
 * move_pages(2) in calls of at most `batch` pages, back to back, all to `node`
 * (the GIL stays released for the whole run: no Python between the calls).
 * `chunk_ns[k]` (may be NULL; ceil(count / batch) slots) receives call k's
 * duration in nanoseconds.  `*done` receives how many pages the calls that
 * completed covered.  Returns the sum of the kernel's not-migrated counts, or
 * -errno of the first whole-call failure (the calls before it stand; its
 * statuses and those after are not written).
 */
long km_move_pages_batched(int pid, size_t count, const uint64_t *pages, int32_t node,
                           int32_t *status, int flags, size_t batch,
                           uint64_t *chunk_ns, size_t *done);

/*
 * Tallies a status array into (value, count) pairs: keys[i] is a status value
 * (node id or -errno) and counts[i] how many pages had it, for the first
 * `max_out` distinct values in order of first appearance.  Returns the number
 * of pairs written; pages whose value did not fit are added to *overflow.
 * A batch has a handful of distinct values, so the search is linear.
 */
long km_status_tally(const int32_t *status, size_t count,
                     int32_t *keys, uint64_t *counts, size_t max_out,
                     uint64_t *overflow);

/*
 * Fills `out` with `value` (count entries): the target-node array of a batch
 * that goes to a single node.
 */
void km_fill_i32(int32_t *out, size_t count, int32_t value);

#endif
