/*
 * Tiered-memory test workload: a hot set and a cold set placed on one NUMA node.
 *
 *   workload --hot-mib H --cold-mib C [--node N] [--sparse K] [--flush-ms F]
 *            [--info FILE] [--thp] [--idle]
 *
 * Both sets are mmap'd, bound to node N (mbind MPOL_BIND), filled with a
 * deterministic pattern, then unbound (MPOL_DEFAULT) so the pages may move.
 * --sparse K: only 1 page in K of the hot region is hot (the rest are cold
 * pages interleaved with it).  The main thread then reads and rewrites one word
 * of every hot page in a loop ("passes") and prints "PASSES <n> <ns>" every
 * second.  --flush-ms F: a helper thread maps, touches and unmaps 64 pages every
 * F ms, forcing full TLB flushes (needed under qemu's TCG, whose software TLB
 * otherwise hides accesses from access-bit samplers).  --idle: no hot loop
 * (used to fill a node).
 *
 * SIGUSR1: verify every word of both sets and print "VERIFY OK <words>" or
 *          "VERIFY BAD <mismatches>".
 * SIGUSR2: munmap the second half of the hot set (fault-injection tests).
 * SIGTERM: verify, print the result, exit 0 if intact, 3 if not.
 *
 * The info file (JSON) gives pid, page size and both sets' address ranges.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPOL_DEFAULT 0
#define MPOL_BIND 2

static size_t page;
static uint8_t *hot, *cold;
static size_t hot_pages, cold_pages, hot_mapped_pages;
static size_t sparse = 1;
static volatile sig_atomic_t want_verify, want_unmap, want_exit;

static uint64_t pattern(uint64_t tag, size_t pg, size_t word)
{
	return (pg * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^ tag;
}

static void fill(uint8_t *base, size_t pages, uint64_t tag)
{
	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = (uint64_t *)(base + p * page);
		for (size_t k = 0; k < page / 8; k++)
			w[k] = pattern(tag, p, k);
	}
}

static size_t verify(const uint8_t *base, size_t pages, uint64_t tag)
{
	size_t bad = 0;

	for (size_t p = 0; p < pages; p++) {
		const uint64_t *w = (const uint64_t *)(base + p * page);
		for (size_t k = 0; k < page / 8; k++)
			bad += w[k] != pattern(tag, p, k);
	}
	return bad;
}

static uint8_t *place(size_t pages, int node, int thp, uint64_t tag)
{
	size_t len = pages * page, align = 2u << 20;
	uint8_t *raw, *p;
	unsigned long mask[16] = {0};

	if (!pages)
		return NULL;
	/* 2 MiB aligned so THP runs are whole huge pages. */
	raw = mmap(NULL, len + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	p = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
	madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	mask[node / 64] = 1ul << (node % 64);
	if (syscall(SYS_mbind, p, len, MPOL_BIND, mask, 1024, 0)) {
		perror("mbind");
		exit(2);
	}
	fill(p, pages, tag);
	if (syscall(SYS_mbind, p, len, MPOL_DEFAULT, NULL, 0, 0)) {
		perror("mbind default");
		exit(2);
	}
	return p;
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_verify = 1;
	else if (sig == SIGUSR2)
		want_unmap = 1;
	else
		want_exit = 1;
}

static void *flusher(void *arg)
{
	long ms = (long)(intptr_t)arg;
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	for (;;) {
		uint8_t *m = mmap(NULL, 64 * page, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m != MAP_FAILED) {
			for (size_t i = 0; i < 64; i++)
				m[i * page] = 1;
			munmap(m, 64 * page);
		}
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int report(void)
{
	size_t bad = verify(hot, hot_mapped_pages, 0x1111) + verify(cold, cold_pages, 0x2222);

	if (bad)
		printf("VERIFY BAD %zu\n", bad);
	else
		printf("VERIFY OK %zu\n", (hot_mapped_pages + cold_pages) * (page / 8));
	fflush(stdout);
	return bad ? 3 : 0;
}

int main(int argc, char **argv)
{
	double hot_mib = 0, cold_mib = 0;
	int node = 1, thp = 0, idle = 0;
	long flush_ms = 0;
	const char *info = NULL;
	uint64_t passes = 0, last = 0;

	page = (size_t)sysconf(_SC_PAGESIZE);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--hot-mib") && v) hot_mib = atof(v), i++;
		else if (!strcmp(a, "--cold-mib") && v) cold_mib = atof(v), i++;
		else if (!strcmp(a, "--node") && v) node = atoi(v), i++;
		else if (!strcmp(a, "--sparse") && v) sparse = (size_t)atol(v), i++;
		else if (!strcmp(a, "--flush-ms") && v) flush_ms = atol(v), i++;
		else if (!strcmp(a, "--info") && v) info = v, i++;
		else if (!strcmp(a, "--thp")) thp = 1;
		else if (!strcmp(a, "--idle")) idle = 1;
		else {
			fprintf(stderr, "workload: unknown argument %s\n", a);
			return 2;
		}
	}
	if (sparse < 1)
		sparse = 1;
	hot_pages = (size_t)(hot_mib * (1 << 20)) / page;
	cold_pages = (size_t)(cold_mib * (1 << 20)) / page;
	hot = place(hot_pages, node, thp, 0x1111);
	cold = place(cold_pages, node, thp, 0x2222);
	hot_mapped_pages = hot_pages;

	signal(SIGUSR1, on_signal);
	signal(SIGUSR2, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	if (flush_ms > 0) {
		pthread_t t;

		pthread_create(&t, NULL, flusher, (void *)(intptr_t)flush_ms);
	}
	if (info) {
		FILE *f = fopen(info, "w");

		if (!f) {
			perror(info);
			return 2;
		}
		fprintf(f, "{\"pid\": %d, \"page_size\": %zu, \"sparse\": %zu, "
			"\"hot\": [%lu, %zu], \"cold\": [%lu, %zu]}\n", getpid(), page, sparse,
			(unsigned long)(uintptr_t)hot, hot_pages, (unsigned long)(uintptr_t)cold,
			cold_pages);
		fclose(f);
	}
	printf("READY %d\n", getpid());
	fflush(stdout);

	last = now_ns();
	while (!want_exit) {
		if (want_verify) {
			want_verify = 0;
			report();
		}
		if (want_unmap) {
			want_unmap = 0;
			size_t keep = hot_mapped_pages / 2;
			munmap(hot + keep * page, (hot_mapped_pages - keep) * page);
			hot_mapped_pages = keep;
			printf("UNMAPPED %zu\n", hot_pages - keep);
			fflush(stdout);
		}
		if (idle || !hot_mapped_pages) {
			usleep(10000);
			continue;
		}
		for (size_t p = 0; p < hot_mapped_pages; p += sparse) {
			volatile uint64_t *w = (volatile uint64_t *)(hot + p * page);
			*w = *w;	/* read and write back the same value */
		}
		passes++;
		uint64_t t = now_ns();
		if (t - last >= 1000000000ull) {
			printf("PASSES %lu %lu\n", (unsigned long)passes, (unsigned long)t);
			fflush(stdout);
			last = t;
		}
	}
	return report();
}
