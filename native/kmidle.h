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

#endif
