/*
 * Bulk /proc/PID/pagemap and /sys/kernel/mm/page_idle/bitmap operations for the
 * idle-page sampler (Documentation/admin-guide/mm/{pagemap,idle_page_tracking}.rst).
 * Both files are arrays of 8-byte words; page_idle/bitmap must be accessed in
 * whole, 8-byte aligned words.
 */
#ifndef KMIDLE_H
#define KMIDLE_H

#include <stdint.h>
#include <stddef.h>

/* pread n 8-byte words at word index `first`; returns words read (short at EOF) or -errno. */
long km_pread_words(int fd, uint64_t first, size_t n, uint64_t *out);

/* pwrite n 8-byte words at word index `first`; returns words written or -errno. */
long km_pwrite_words(int fd, uint64_t first, size_t n, const uint64_t *in);

/*
 * Pagemap entries to PFNs: pfns[i] = bits 0-54 of entries[i] when the page is
 * present (bit 63) and not swapped (bit 62), else 0.  PFNs read as 0 without
 * CAP_SYS_ADMIN.  Returns the number of present pages with a PFN.
 */
long km_pagemap_pfns(const uint64_t *entries, size_t n, uint64_t *pfns);

/*
 * Mark the pages idle: set the bits of every non-zero pfn in the bitmap,
 * merging pfns that share a word into one write.  Returns words written or -errno.
 */
long km_idle_mark(int fd, const uint64_t *pfns, size_t n);

/*
 * Read back: idle[i] = 1 if pfns[i]'s bit is still set (not accessed since
 * marked), 0 if the kernel cleared it (accessed), 2 if pfns[i] is 0.
 * Returns the number of accessed pages or -errno.
 */
long km_idle_test(int fd, const uint64_t *pfns, size_t n, uint8_t *idle);

/*
 * One piece of a mapping, from pagemap entries to the pages the idle sampler
 * tracks (kmigratedd/samplers/idle.py): a page is tracked when it is present
 * with a PFN whose memory block (pfn >> pfn_block_shift, block_node[]) is on a
 * node with slow[node] != 0.  A transparent huge page (huge_pages > 1) is
 * tracked through its head only: a huge-aligned slot (first_vpn is the virtual
 * page number of entries[0]) whose first PFN is huge-aligned and whose last is
 * first + huge_pages - 1, confirmed by one word of /proc/kpageflags at the
 * head when kpageflags_fd >= 0 (KPF_THP and KPF_COMPOUND_HEAD; KPF_HUGE, i.e.
 * hugetlbfs, untracks the whole slot).
 * Out, per page: tracked[i] = the PFN or 0, tags[i] = 0x80 | a 7-bit hash of
 * the PFN or 0, nodes[i] = the node or -1.  counts[0] += THP heads found,
 * counts[1] += hugetlbfs slots skipped.  Returns the number of tracked pages.
 */
long km_idle_track(const uint64_t *entries, size_t n, uint64_t first_vpn,
                   unsigned int pfn_block_shift, const int32_t *block_node, size_t nblocks,
                   const uint8_t *slow, size_t nslow, unsigned int huge_pages,
                   int kpageflags_fd, uint64_t *tracked, uint8_t *tags, int32_t *nodes,
                   uint64_t *counts);

/*
 * Test a batch of tracked PFNs (0 = not tracked) and prepare their re-marking.
 * idle[i] as km_idle_test.  A batch whose PFNs descend more than 16 times
 * (sampled every 16th page) is tested in PFN order (km_idle_test re-reads a
 * bitmap window whenever a PFN falls below the last one) and the results put
 * back in batch order; *sorted says which.  again[i] = the PFN of each page
 * found accessed, 0 elsewhere, in the order tested: km_idle_mark(again) marks
 * them idle again.  scratch holds 2 * n words.  Returns the number of pages
 * found accessed, or -errno.
 */
long km_idle_test_batch(int fd, const uint64_t *pfns, size_t n, uint8_t *idle,
                        uint64_t *again, uint64_t *scratch, int *sorted);

/*
 * Fold one segment's test results into its aging history.  Per page i: a page
 * is tracked when tags[i] != 0 and, with a mask (mask != NULL), its node is in
 * it (nodes[i] < nmask and mask[nodes[i]] != 0); a page not tracked is
 * forgotten (hist and chunk_tags cleared).  A tracked page's result counts as
 * an access when idle[i] == 0 and the page was marked last time as the same PFN
 * (chunk_tags[i] == tags[i]); hist[i] = (hist[i] << 1 | access) within
 * history_rounds bits; chunk_tags[i] = tags[i].  A page accessed in at least
 * hot_rounds of its history is hot: its address (addr + i * page_size), node
 * and weight (accessed rounds) are appended to hot_addrs, hot_nodes and
 * hot_weights (room for n each).  counts[0] += tracked pages, counts[1] +=
 * accesses counted.  Returns the number of hot pages.
 */
long km_idle_age(const uint8_t *idle, const uint8_t *tags, const int32_t *nodes, size_t n,
                 const uint8_t *mask, size_t nmask, uint8_t *hist, uint8_t *chunk_tags,
                 unsigned int history_rounds, unsigned int hot_rounds, uint64_t addr,
                 uint64_t page_size, uint64_t *hot_addrs, int32_t *hot_nodes,
                 uint32_t *hot_weights, uint64_t *counts);

/*
 * Fold one segment's test results into the idle ages of its fast-tier pages
 * (the idle sampler's demotion candidates).  Ages are in ticks, kept modulo
 * 256: since[i] is the tick from which page i is known to be idle.  The ticks
 * are taken before the test (test_tick) and after the pages found accessed
 * were marked again (mark_tick), so that an age never exceeds the time the page
 * has been seen idle.  Per page i: a page is aged when tags[i] != 0 and
 * fast[nodes[i]] != 0 (nodes[i] < nfast); any other page is forgotten (since
 * and chunk_tags cleared).  An aged page found accessed (idle[i] == 0), or seen
 * for the first time as this PFN (chunk_tags[i] != tags[i]: it was not marked
 * as this PFN), gets since[i] = mark_tick; a page found idle again keeps
 * since[i], its age being (test_tick - since[i]) mod 256, held at max_age
 * (since[i] moved up) so that it does not wrap while the page is seen.
 * chunk_tags[i] = tags[i].  A page of age >= cold_ticks is cold: its address
 * (addr + i * page_size), node and age are appended to cold_addrs, cold_nodes
 * and cold_ages (room for n each), and age_counts[age] += 1 (256 entries).
 * counts[0] += pages aged, counts[1] += accesses found (same PFN, idle[i] ==
 * 0).  Returns the number of cold pages.
 */
long km_idle_cold(const uint8_t *idle, const uint8_t *tags, const int32_t *nodes, size_t n,
                  const uint8_t *fast, size_t nfast, uint8_t *since, uint8_t *chunk_tags,
                  unsigned int test_tick, unsigned int mark_tick, unsigned int cold_ticks,
                  unsigned int max_age, uint64_t addr, uint64_t page_size,
                  uint64_t *cold_addrs, int32_t *cold_nodes, uint32_t *cold_ages,
                  uint64_t *age_counts, uint64_t *counts);

/*
 * Keep, in order, the entries with weights[i] > min_weight and the first
 * *quota of those with weights[i] == min_weight (*quota decremented by the
 * number kept), moving them to the front of addrs, nodes and weights.
 * Returns the number of entries kept.
 */
long km_idle_pick(uint64_t *addrs, int32_t *nodes, uint32_t *weights, size_t n,
                  uint32_t min_weight, uint64_t *quota);

#endif
