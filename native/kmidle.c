/*
 * Bulk pagemap / page_idle operations.  See kmidle.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "kmidle.h"

#define PM_PFN_MASK ((1ull << 55) - 1)
#define PM_SWAP (1ull << 62)
#define PM_PRESENT (1ull << 63)
#define WINDOW 512	/* bitmap words read at once: 32768 pages */

/* include/uapi/linux/kernel-page-flags.h */
#define KPF_COMPOUND_HEAD (1ull << 15)
#define KPF_HUGE (1ull << 17)
#define KPF_THP (1ull << 22)

/* km_idle_test_batch: test in PFN order beyond this many descents among every 16th PFN */
#define DIRECT_DESCENTS 16
#define ORDER_STRIDE 16
/* sort keys: pfn << POS_BITS | position in the batch */
#define POS_BITS 24
#define POS_MASK ((1ull << POS_BITS) - 1)

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

/* 0x80 | the five low bytes of the PFN XOR-folded, 8 bits into 7: never 0. */
static inline uint8_t pfn_tag(uint64_t p)
{
	uint8_t f = (uint8_t)(p ^ (p >> 8) ^ (p >> 16) ^ (p >> 24) ^ (p >> 32));

	return (uint8_t)(((f ^ (f >> 7)) & 0x7F) | 0x80);
}

long km_idle_track(const uint64_t *entries, size_t n, uint64_t first_vpn,
                   unsigned int pfn_block_shift, const int32_t *block_node, size_t nblocks,
                   const uint8_t *slow, size_t nslow, unsigned int huge_pages,
                   int kpageflags_fd, uint64_t *tracked, uint8_t *tags, int32_t *nodes,
                   uint64_t *counts)
{
	size_t i, hp = huge_pages;
	long count = 0;

	for (i = 0; i < n; i++) {
		uint64_t e = entries[i];
		uint64_t pfn = ((e & PM_PRESENT) && !(e & PM_SWAP)) ? (e & PM_PFN_MASK) : 0;
		uint64_t b = pfn >> pfn_block_shift;
		int32_t node = (pfn && b < nblocks) ? block_node[b] : -1;

		nodes[i] = node;
		tracked[i] = (node >= 0 && (size_t)node < nslow && slow[node]) ? pfn : 0;
	}
	if (hp > 1 && n >= hp) {
		for (i = (size_t)((hp - first_vpn % hp) % hp); i + hp <= n; i += hp) {
			uint64_t head = tracked[i];

			if (!head || head % hp || tracked[i + hp - 1] != head + hp - 1)
				continue;
			if (kpageflags_fd >= 0) {
				uint64_t f;

				if (km_pread_words(kpageflags_fd, head, 1, &f) != 1)
					continue;
				if (f & KPF_HUGE) {	/* hugetlbfs: never on an LRU */
					memset(&tracked[i], 0, hp * sizeof(*tracked));
					counts[1]++;
					continue;
				}
				if (!((f & KPF_THP) && (f & KPF_COMPOUND_HEAD)))
					continue;
			}
			memset(&tracked[i + 1], 0, (hp - 1) * sizeof(*tracked));
			counts[0]++;
		}
	}
	for (i = 0; i < n; i++) {
		tags[i] = tracked[i] ? pfn_tag(tracked[i]) : 0;
		count += tracked[i] != 0;
	}
	return count;
}

static size_t descents(const uint64_t *pfns, size_t n)
{
	uint64_t last = 0;
	size_t i, d = 0;

	for (i = 0; i < n; i += ORDER_STRIDE) {
		if (!pfns[i])
			continue;
		d += pfns[i] < last;
		last = pfns[i];
	}
	return d;
}

/* Stable LSD radix sort of keys by their PFN bits (8 a pass, up to max_pfn's top bit). */
static void sort_by_pfn(uint64_t *keys, uint64_t *tmp, size_t n, uint64_t max_pfn)
{
	uint64_t *src = keys, *dst = tmp, *t;
	unsigned int shift;

	for (shift = POS_BITS; max_pfn >> (shift - POS_BITS); shift += 8) {
		size_t count[256] = { 0 }, i, sum = 0;

		for (i = 0; i < n; i++)
			count[(src[i] >> shift) & 255]++;
		for (i = 0; i < 256; i++) {
			size_t c = count[i];

			count[i] = sum;
			sum += c;
		}
		for (i = 0; i < n; i++)
			dst[count[(src[i] >> shift) & 255]++] = src[i];
		t = src;
		src = dst;
		dst = t;
	}
	if (src != keys)
		memcpy(keys, src, n * sizeof(*keys));
}

long km_idle_test_batch(int fd, const uint64_t *pfns, size_t n, uint8_t *idle,
                        uint64_t *again, uint64_t *scratch, int *sorted)
{
	uint64_t max_pfn = 0, *keys = scratch;
	uint8_t *sidle = (uint8_t *)(scratch + n);
	size_t i, m = 0;
	long accessed;

	*sorted = 0;
	if (descents(pfns, n) > DIRECT_DESCENTS && n <= POS_MASK + 1) {
		for (i = 0; i < n; i++)
			if (pfns[i] > max_pfn)
				max_pfn = pfns[i];
		*sorted = max_pfn >> (64 - POS_BITS) == 0;
	}
	if (!*sorted) {
		accessed = km_idle_test(fd, pfns, n, idle);
		if (accessed < 0)
			return accessed;
		for (i = 0; i < n; i++)
			again[i] = idle[i] == 0 ? pfns[i] : 0;
		return accessed;
	}
	for (i = 0; i < n; i++) {
		if (pfns[i])
			keys[m++] = pfns[i] << POS_BITS | i;
		else
			idle[i] = 2;
	}
	/* the second half of scratch is the sort's other buffer, then the results */
	sort_by_pfn(keys, scratch + n, m, max_pfn);
	for (i = 0; i < m; i++)
		again[i] = keys[i] >> POS_BITS;
	accessed = km_idle_test(fd, again, m, sidle);
	if (accessed < 0)
		return accessed;
	for (i = 0; i < m; i++) {
		idle[keys[i] & POS_MASK] = sidle[i];
		if (sidle[i])
			again[i] = 0;
	}
	memset(again + m, 0, (n - m) * sizeof(*again));
	return accessed;
}

long km_idle_age(const uint8_t *idle, const uint8_t *tags, const int32_t *nodes, size_t n,
                 const uint8_t *mask, size_t nmask, uint8_t *hist, uint8_t *chunk_tags,
                 unsigned int history_rounds, unsigned int hot_rounds, uint64_t addr,
                 uint64_t page_size, uint64_t *hot_addrs, int32_t *hot_nodes,
                 uint32_t *hot_weights, uint64_t *counts)
{
	unsigned int window = (1u << history_rounds) - 1;
	long hot = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint8_t t = tags[i];
		int32_t node = nodes[i];
		unsigned int access, h, w;

		if (!t || (mask && (node < 0 || (size_t)node >= nmask || !mask[node]))) {
			hist[i] = 0;	/* not tracked: forget */
			chunk_tags[i] = 0;
			continue;
		}
		access = idle[i] == 0 && chunk_tags[i] == t;
		h = ((unsigned int)hist[i] << 1 & window) | access;
		hist[i] = (uint8_t)h;
		chunk_tags[i] = t;
		counts[0]++;
		counts[1] += access;
		w = (unsigned int)__builtin_popcount(h);
		if (w >= hot_rounds) {
			hot_addrs[hot] = addr + i * page_size;
			hot_nodes[hot] = node;
			hot_weights[hot] = w;
			hot++;
		}
	}
	return hot;
}

long km_idle_cold(const uint8_t *idle, const uint8_t *tags, const int32_t *nodes, size_t n,
                  const uint8_t *fast, size_t nfast, uint8_t *since, uint8_t *chunk_tags,
                  unsigned int test_tick, unsigned int mark_tick, unsigned int cold_ticks,
                  unsigned int max_age, uint64_t addr, uint64_t page_size,
                  uint64_t *cold_addrs, int32_t *cold_nodes, uint32_t *cold_ages,
                  uint64_t *age_counts, uint64_t *counts)
{
	uint8_t tested = (uint8_t)test_tick, marked = (uint8_t)mark_tick;
	long cold = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint8_t t = tags[i];
		int32_t node = nodes[i];
		unsigned int age;

		if (!t || node < 0 || (size_t)node >= nfast || !fast[node]) {
			since[i] = 0;	/* not aged: forget */
			chunk_tags[i] = 0;
			continue;
		}
		counts[0]++;
		if (chunk_tags[i] != t || idle[i] == 0) {
			counts[1] += chunk_tags[i] == t;
			since[i] = marked;
			chunk_tags[i] = t;
			continue;
		}
		age = (uint8_t)(tested - since[i]);
		if (age > max_age) {
			age = max_age;
			since[i] = (uint8_t)(tested - max_age);
		}
		if (age >= cold_ticks) {
			cold_addrs[cold] = addr + i * page_size;
			cold_nodes[cold] = node;
			cold_ages[cold] = age;
			age_counts[age]++;
			cold++;
		}
	}
	return cold;
}

long km_idle_pick(uint64_t *addrs, int32_t *nodes, uint32_t *weights, size_t n,
                  uint32_t min_weight, uint64_t *quota)
{
	size_t i, k = 0;

	for (i = 0; i < n; i++) {
		if (weights[i] < min_weight)
			continue;
		if (weights[i] == min_weight) {
			if (!*quota)
				continue;
			(*quota)--;
		}
		addrs[k] = addrs[i];
		nodes[k] = nodes[i];
		weights[k] = weights[i];
		k++;
	}
	return (long)k;
}
