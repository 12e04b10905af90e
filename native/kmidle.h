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
 * with tags[i] == 0 is not tracked (hist and chunk_tags cleared); else the
 * result counts as an access when idle[i] == 0 and the page was marked last
 * time as the same PFN (chunk_tags[i] == tags[i]); hist[i] = (hist[i] << 1 |
 * access) within history_rounds bits; chunk_tags[i] = tags[i].  A page accessed
 * in at least hot_rounds of its history is hot: its address (addr + i *
 * page_size), node and weight (accessed rounds) are appended to hot_addrs,
 * hot_nodes and hot_weights (room for n each).  counts[0] += tracked pages,
 * counts[1] += accesses counted.  Returns the number of hot pages.
 */
long km_idle_age(const uint8_t *idle, const uint8_t *tags, const int32_t *nodes, size_t n,
                 uint8_t *hist, uint8_t *chunk_tags, unsigned int history_rounds,
                 unsigned int hot_rounds, uint64_t addr, uint64_t page_size,
                 uint64_t *hot_addrs, int32_t *hot_nodes, uint32_t *hot_weights,
                 uint64_t *counts);

#endif
