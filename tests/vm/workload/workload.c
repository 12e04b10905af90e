/*
 * Tiered-memory test workload: a hot set and a cold set placed on one NUMA node.
 *
 *   workload --hot-mib H --cold-mib C [--node N] [--sparse K] [--flush-ms F]
 *            [--info FILE] [--thp] [--idle] [--zipf THETA] [--report-ms MS]
 *            [--fast-node N]
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
 * --zipf THETA: instead of sweeping the hot set, each access picks a page of the
 * hot region by a Zipf distribution of exponent THETA over its pages (alias
 * method, fixed seed), spread over the region by a fixed random permutation, as
 * hashed keys are.  SIGHUP rotates the hot pages: rank r then maps to the page of
 * rank r + N/2, so the hottest pages become lukewarm ones and the other way round.
 *
 * --report-ms MS: the main thread counts its accesses per page; a reporter thread
 * prints, every MS, "STAT <ns> <accesses> <fast accesses> <pages on fast>
 * <oracle accesses> <utime ticks> <stime ticks> <rotations>": the interval's
 * accesses, those to pages on --fast-node (asked with move_pages(nodes=NULL)),
 * how many of the accessed region's pages are there, the accesses the same number
 * of pages would have served had they been the interval's most accessed ones (the
 * oracle), and the main thread's CPU ticks so far.  A stalled main thread shows
 * as an interval with few accesses: the reporter does not wait for it.
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
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
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
static volatile sig_atomic_t want_verify, want_unmap, want_exit, want_rotate;

/* Per-interval access counting (--report-ms): two count arrays, the main thread
 * adds to counts[cur], the reporter flips cur and reads the other one. */
static uint32_t *counts[2];
static _Atomic int cur;
static _Atomic uint64_t rotations;
static size_t region_pages;	/* pages of the accessed region (counts' length) */
static size_t region_step;	/* bytes between two consecutive region pages */
static pid_t main_tid;
static int fast_node;
static long report_ms;

/* --zipf: alias tables over the region's ranks, and the rank -> page permutation. */
static double zipf_theta;
static uint32_t *alias_prob, *alias_idx, *perm;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static inline uint64_t next_rand(void)
{
	/* xorshift64* */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ull;
}

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
	else if (sig == SIGHUP)
		want_rotate = 1;
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

static void *xmalloc(size_t n)
{
	void *p = calloc(1, n);

	if (!p) {
		perror("calloc");
		exit(2);
	}
	return p;
}

/* Walker's alias method over ranks 0..n-1 with weight 1/(r+1)^theta: one random
 * number and one comparison per access. */
static void zipf_setup(size_t n, double theta)
{
	double *w = xmalloc(n * sizeof(*w)), sum = 0;
	size_t *small = xmalloc(n * sizeof(*small)), *large = xmalloc(n * sizeof(*large));
	size_t ns = 0, nl = 0;
	uint64_t seed = 0x243F6A8885A308D3ull;

	alias_prob = xmalloc(n * sizeof(*alias_prob));
	alias_idx = xmalloc(n * sizeof(*alias_idx));
	perm = xmalloc(n * sizeof(*perm));
	for (size_t r = 0; r < n; r++) {
		w[r] = 1.0 / pow((double)(r + 1), theta);
		sum += w[r];
	}
	for (size_t r = 0; r < n; r++) {
		w[r] = w[r] * (double)n / sum;
		if (w[r] < 1.0)
			small[ns++] = r;
		else
			large[nl++] = r;
	}
	while (ns && nl) {
		size_t s_ = small[--ns], l = large[nl - 1];

		alias_prob[s_] = (uint32_t)(w[s_] * 4294967295.0);
		alias_idx[s_] = (uint32_t)l;
		w[l] -= 1.0 - w[s_];
		if (w[l] < 1.0) {
			nl--;
			small[ns++] = l;
		}
	}
	while (nl) {
		size_t l = large[--nl];
		alias_prob[l] = UINT32_MAX;
		alias_idx[l] = (uint32_t)l;
	}
	while (ns) {
		size_t s_ = small[--ns];
		alias_prob[s_] = UINT32_MAX;
		alias_idx[s_] = (uint32_t)s_;
	}
	/* A fixed random permutation (Fisher-Yates, fixed seed): rank -> page. */
	for (size_t i = 0; i < n; i++)
		perm[i] = (uint32_t)i;
	for (size_t i = n - 1; i > 0; i--) {
		seed ^= seed >> 12; seed ^= seed << 25; seed ^= seed >> 27;
		size_t j = (size_t)((seed * 2685821657736338717ull) % (i + 1));
		uint32_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	free(w);
	free(small);
	free(large);
}

static inline size_t zipf_rank(void)
{
	uint64_t r = next_rand();
	size_t i = (size_t)((r >> 32) % region_pages);

	return (uint32_t)r <= alias_prob[i] ? i : alias_idx[i];
}

static int cmp_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? 1 : x > y ? -1 : 0;
}

static void thread_ticks(pid_t tid, unsigned long *ut, unsigned long *st)
{
	char path[64], buf[1024], *p;
	FILE *f;

	*ut = *st = 0;
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	f = fopen(path, "r");
	if (!f)
		return;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')'))) {
		/* after ") ": state(3) ... utime is field 14, stime 15 */
		int field = 2;
		for (p = p + 1; *p && field < 14; p++)
			if (*p == ' ')
				field++;
		sscanf(p, "%lu %lu", ut, st);
	}
	fclose(f);
}

static uint64_t now_ns(void);

static void *reporter(void *arg)
{
	void **pages = xmalloc(region_pages * sizeof(*pages));
	int *status = xmalloc(region_pages * sizeof(*status));
	uint32_t *sorted = xmalloc(region_pages * sizeof(*sorted));
	struct timespec next;

	(void)arg;
	for (size_t i = 0; i < region_pages; i++)
		pages[i] = hot + i * region_step;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		uint64_t acc = 0, fast = 0, oracle = 0;
		size_t on_fast = 0, nz = 0;
		unsigned long ut, st;
		int was;

		next.tv_nsec += (report_ms % 1000) * 1000000L;
		next.tv_sec += report_ms / 1000 + next.tv_nsec / 1000000000L;
		next.tv_nsec %= 1000000000L;
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		was = atomic_load(&cur);
		atomic_store(&cur, 1 - was);
		uint64_t t = now_ns();
		thread_ticks(main_tid, &ut, &st);
		uint32_t *c = counts[was];
		if (syscall(SYS_move_pages, 0, region_pages, pages, NULL, status, 0) != 0)
			memset(status, 0xff, region_pages * sizeof(*status));
		for (size_t i = 0; i < region_pages; i++) {
			acc += c[i];
			if (status[i] == fast_node) {
				fast += c[i];
				on_fast++;
			}
			if (c[i])
				sorted[nz++] = c[i];
		}
		if (on_fast >= nz) {
			oracle = acc;
		} else {
			qsort(sorted, nz, sizeof(*sorted), cmp_desc);
			for (size_t i = 0; i < on_fast; i++)
				oracle += sorted[i];
		}
		memset(c, 0, region_pages * sizeof(*c));
		printf("STAT %lu %lu %lu %zu %lu %lu %lu %lu\n", (unsigned long)t,
		       (unsigned long)acc, (unsigned long)fast, on_fast, (unsigned long)oracle, ut, st,
		       (unsigned long)atomic_load(&rotations));
		fflush(stdout);
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
		else if (!strcmp(a, "--zipf") && v) zipf_theta = atof(v), i++;
		else if (!strcmp(a, "--report-ms") && v) report_ms = atol(v), i++;
		else if (!strcmp(a, "--fast-node") && v) fast_node = atoi(v), i++;
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
	signal(SIGHUP, on_signal);
	main_tid = (pid_t)syscall(SYS_gettid);
	if (zipf_theta > 0) {
		region_pages = hot_pages;
		region_step = page;
		zipf_setup(region_pages, zipf_theta);
	} else {
		region_pages = (hot_pages + sparse - 1) / sparse;
		region_step = page * sparse;
	}
	if (report_ms > 0 && region_pages) {
		pthread_t t;

		counts[0] = xmalloc(region_pages * sizeof(uint32_t));
		counts[1] = xmalloc(region_pages * sizeof(uint32_t));
		pthread_create(&t, NULL, reporter, NULL);
	}
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
		if (want_rotate) {
			want_rotate = 0;
			atomic_fetch_add(&rotations, 1);
			printf("ROTATED %lu\n", (unsigned long)atomic_load(&rotations));
			fflush(stdout);
		}
		if (zipf_theta > 0) {
			/* One "pass": as many accesses as the region has pages. */
			size_t shift = (size_t)(atomic_load(&rotations) % 2) * (region_pages / 2);
			uint32_t *c = counts[0] ? counts[atomic_load_explicit(&cur,
						memory_order_relaxed)] : NULL;
			for (size_t k = 0; k < region_pages && !want_exit; k++) {
				size_t r = zipf_rank() + shift;
				size_t p = perm[r >= region_pages ? r - region_pages : r];
				if (p >= hot_mapped_pages)
					continue;
				volatile uint64_t *w = (volatile uint64_t *)(hot + p * page);
				*w = *w;
				if (c)
					c[p]++;
				if (!(k & 1023) && counts[0])
					c = counts[atomic_load_explicit(&cur, memory_order_relaxed)];
			}
		} else {
			uint32_t *c = counts[0] ? counts[atomic_load_explicit(&cur,
						memory_order_relaxed)] : NULL;
			for (size_t p = 0, i = 0; p < hot_mapped_pages; p += sparse, i++) {
				volatile uint64_t *w = (volatile uint64_t *)(hot + p * page);
				*w = *w;	/* read and write back the same value */
				if (c) {
					c[i]++;
					if (!(i & 1023))
						c = counts[atomic_load_explicit(&cur,
								memory_order_relaxed)];
				}
			}
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
