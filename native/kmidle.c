/*
 * Bulk pagemap / page_idle operations.  See kmidle.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "kmidle.h"

#define PM_PFN_MASK ((1ull << 55) - 1)
#define PM_SWAP (1ull << 62)
#define PM_PRESENT (1ull << 63)
#define WINDOW 512	/* bitmap words read at once: 32768 pages */

long km_pread_words(int fd, uint64_t first, size_t n, uint64_t *out)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)out + done * 8, (n - done) * 8,
				  (off_t)((first + done) * 8));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return done ? (long)done : -errno;
		}
		if (r == 0)
			break;
		if (r % 8)
			return -EIO;
		done += (size_t)r / 8;
	}
	return (long)done;
}

long km_pwrite_words(int fd, uint64_t first, size_t n, const uint64_t *in)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)in + done * 8, (n - done) * 8,
				   (off_t)((first + done) * 8));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0 || r % 8)
			return -EIO;
		done += (size_t)r / 8;
	}
	return (long)done;
}

long km_pagemap_pfns(const uint64_t *entries, size_t n, uint64_t *pfns)
{
	long present = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t e = entries[i];
		uint64_t pfn = ((e & PM_PRESENT) && !(e & PM_SWAP)) ? (e & PM_PFN_MASK) : 0;

		pfns[i] = pfn;
		present += pfn != 0;
	}
	return present;
}

long km_idle_mark(int fd, const uint64_t *pfns, size_t n)
{
	uint64_t buf[WINDOW];
	uint64_t base = 0;	/* word index of buf[0] */
	size_t used = 0;	/* words of buf in use */
	long written = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t w;

		if (!pfns[i])
			continue;
		w = pfns[i] >> 6;
		if (used && w >= base && w < base + WINDOW) {
			while (used <= w - base)
				buf[used++] = 0;
		} else {
			if (used) {
				long r = km_pwrite_words(fd, base, used, buf);

				if (r < 0)
					return r;
				written += r;
			}
			base = w;
			buf[0] = 0;
			used = 1;
		}
		buf[w - base] |= 1ull << (pfns[i] & 63);
	}
	if (used) {
		long r = km_pwrite_words(fd, base, used, buf);

		if (r < 0)
			return r;
		written += r;
	}
	return written;
}

long km_idle_test(int fd, const uint64_t *pfns, size_t n, uint8_t *idle)
{
	uint64_t buf[WINDOW];
	uint64_t base = 0;
	long have = 0;		/* words valid in buf */
	long accessed = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t w;

		if (!pfns[i]) {
			idle[i] = 2;
			continue;
		}
		w = pfns[i] >> 6;
		if (!have || w < base || w >= base + (uint64_t)have) {
			have = km_pread_words(fd, w, WINDOW, buf);
			if (have < 0)
				return have;
			base = w;
			if (have == 0)
				return -ENXIO;	/* pfn past the end of memory */
		}
		idle[i] = (buf[w - base] >> (pfns[i] & 63)) & 1;
		accessed += !idle[i];
	}
	return accessed;
}
