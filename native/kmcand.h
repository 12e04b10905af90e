/*
 * Candidate batch helpers for the node workers (kmigratedd/worker.py): sort and
 * fold, route by the node each page is on now, select one target's pages.
 */
#ifndef KMCAND_H
#define KMCAND_H

#include <stdint.h>
#include <stddef.h>

/*
 * Sort candidates by (pid, addr), fold duplicates (the same page drained from
 * several CPUs' queues: counts add up), and drop those whose folded count is
 * below min_count (adding them to *below).  In place; returns the new length.
 */
long km_cand_prepare(size_t n, int32_t *pids, uint64_t *addrs, uint32_t *counts,
                     uint32_t min_count, uint64_t *below);

/*
 * From a query's statuses, the promotion target of each page:
 * tgt[i] = target_of_node[status[i]] (>= 0: promote to it; -1: the node has
 * no target, i.e. the page already sits on the fast tier), or -2 when the
 * status is an error (page gone) or the node is out of the table.
 * Returns the number of pages with a target.
 */
long km_cand_targets(size_t n, const int32_t *status, const int32_t *target_of_node,
                     size_t nnodes, int32_t *tgt);

/* out[j++] = in[i] for every i with key[i] == want; returns j. */
long km_select_u64(size_t n, const uint64_t *in, const int32_t *key, int32_t want,
                   uint64_t *out);

/* Index of the first element of each run of equal pids in a sorted array;
 * starts[] gets the run starts, returns the number of runs. */
long km_runs_i32(size_t n, const int32_t *v, uint32_t *starts);

/*
 * The worker's inbox keys for one target: out[j++] = addrs[i] | status[i] (the
 * source node rides in the page address's low bits) for every i with
 * tgt[i] == dst.  Returns j.
 */
long km_keys_for(size_t n, const uint64_t *addrs, const int32_t *status,
                 const int32_t *tgt, int32_t dst, uint64_t *out);

/* Sort in place and drop repeated values; returns the new length (-ENOMEM). */
long km_sort_unique_u64(size_t n, uint64_t *v);

/*
 * Remove from the sorted array v (n values) every value that is in the sorted
 * array r (m values), in place; returns the new length.
 */
long km_remove_sorted_u64(size_t n, uint64_t *v, size_t m, const uint64_t *r);

/*
 * Split keys: addrs[i] = keys[i] & addr_mask and low[i] = keys[i] & ~addr_mask
 * (either output may be NULL).
 */
void km_split_keys(size_t n, const uint64_t *keys, uint64_t addr_mask,
                   uint64_t *addrs, int32_t *low);

#endif
