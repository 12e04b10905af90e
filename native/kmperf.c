/*
 * perf ring-buffer decoding.  See kmperf.h and perf_event_open(2), "MMAP layout".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kmperf.h"

#define SUPPORTED (PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_IP | PERF_SAMPLE_TID | \
		   PERF_SAMPLE_TIME | PERF_SAMPLE_ADDR | PERF_SAMPLE_ID | \
		   PERF_SAMPLE_STREAM_ID | PERF_SAMPLE_CPU | PERF_SAMPLE_PERIOD | \
		   PERF_SAMPLE_WEIGHT | PERF_SAMPLE_WEIGHT_STRUCT | PERF_SAMPLE_DATA_SRC | \
		   PERF_SAMPLE_TRANSACTION | PERF_SAMPLE_PHYS_ADDR | PERF_SAMPLE_CGROUP | \
		   PERF_SAMPLE_DATA_PAGE_SIZE | PERF_SAMPLE_CODE_PAGE_SIZE)

/* The largest record we decode: header + every supported u64 field. */
#define MAX_RECORD 256

uint64_t km_perf_supported_sample_type(void)
{
	return SUPPORTED;
}

long km_perf_open(uint32_t type, uint64_t config, uint64_t config1, uint64_t sample_period,
                  uint64_t sample_type, uint32_t precise_ip, int exclude_kernel, int pid,
                  int cpu, uint32_t wakeup_bytes)
{
	struct perf_event_attr attr;
	long fd;

	if (sample_type & ~(uint64_t)SUPPORTED)
		return -EINVAL;
	if ((sample_type & PERF_SAMPLE_WEIGHT) && (sample_type & PERF_SAMPLE_WEIGHT_STRUCT))
		return -EINVAL;
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = type;
	attr.config = config;
	attr.config1 = config1;
	attr.sample_period = sample_period;
	attr.sample_type = sample_type;
	attr.precise_ip = precise_ip & 3;
	attr.exclude_kernel = exclude_kernel ? 1 : 0;
	attr.exclude_hv = 1;
	if (wakeup_bytes) {
		attr.watermark = 1;
		attr.wakeup_watermark = wakeup_bytes;
	} else {
		attr.wakeup_events = 1;
	}
	fd = syscall(SYS_perf_event_open, &attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Parse one PERF_RECORD_SAMPLE body (after the header) of `len` bytes. */
static int decode_sample(const uint8_t *p, size_t len, uint64_t st, struct km_samples *out)
{
	const uint8_t *end = p + len;
	size_t i = out->n;
	uint64_t v;

#define TAKE(dst) do { if (p + 8 > end) return -1; memcpy(&v, p, 8); p += 8; dst; } while (0)
	if (st & PERF_SAMPLE_IDENTIFIER) TAKE((void)v);
	if (st & PERF_SAMPLE_IP) TAKE(if (out->ip) out->ip[i] = v);
	if (st & PERF_SAMPLE_TID) TAKE(if (out->pid) out->pid[i] = (int32_t)(uint32_t)v;
				       if (out->tid) out->tid[i] = (int32_t)(uint32_t)(v >> 32));
	if (st & PERF_SAMPLE_TIME) TAKE(if (out->time) out->time[i] = v);
	if (st & PERF_SAMPLE_ADDR) TAKE(if (out->addr) out->addr[i] = v);
	if (st & PERF_SAMPLE_ID) TAKE((void)v);
	if (st & PERF_SAMPLE_STREAM_ID) TAKE((void)v);
	if (st & PERF_SAMPLE_CPU) TAKE(if (out->cpu) out->cpu[i] = (int32_t)(uint32_t)v);
	if (st & PERF_SAMPLE_PERIOD) TAKE((void)v);
	/* WEIGHT_STRUCT: var1_dw (u32) is the latency, as WEIGHT's low bits are. */
	if (st & (PERF_SAMPLE_WEIGHT | PERF_SAMPLE_WEIGHT_STRUCT))
		TAKE(if (out->weight) out->weight[i] =
		     (st & PERF_SAMPLE_WEIGHT_STRUCT) ? (v & 0xffffffffu) : v);
	if (st & PERF_SAMPLE_DATA_SRC) TAKE(if (out->data_src) out->data_src[i] = v);
	if (st & PERF_SAMPLE_TRANSACTION) TAKE((void)v);
	if (st & PERF_SAMPLE_PHYS_ADDR) TAKE(if (out->phys_addr) out->phys_addr[i] = v);
	if (st & PERF_SAMPLE_CGROUP) TAKE((void)v);
	if (st & PERF_SAMPLE_DATA_PAGE_SIZE) TAKE((void)v);
	if (st & PERF_SAMPLE_CODE_PAGE_SIZE) TAKE((void)v);
#undef TAKE
	/* Fields the kernel may add past ours are ignored; fewer bytes are an error. */
	out->n = i + 1;
	return 0;
}

long km_perf_drain(void *base, size_t map_size, uint64_t sample_type, struct km_samples *out,
                   struct km_perf_stats *stats)
{
	struct perf_event_mmap_page *meta = base;
	const uint8_t *data;
	uint64_t size, head, tail, off;
	uint8_t rec[MAX_RECORD];
	long taken = 0;

	if (sample_type & ~(uint64_t)SUPPORTED)
		return -EINVAL;
	if (map_size < sizeof(*meta))	/* not even the control page */
		return -EINVAL;
	off = meta->data_offset;
	size = meta->data_size;
	if (size == 0) {	/* kernels before 4.1: data follows the first page */
		off = (uint64_t)sysconf(_SC_PAGESIZE);
		size = map_size - off;
	}
	/* Written so that a data_offset or data_size near 2^64 cannot wrap around. */
	if (off > map_size || size > map_size - off || size == 0 || (size & (size - 1)))
		return -EINVAL;
	data = (const uint8_t *)base + off;
	head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
	tail = meta->data_tail;

	while (tail < head && out->n < out->cap) {
		struct perf_event_header hdr;
		uint64_t avail = head - tail, pos = tail & (size - 1);
		const uint8_t *r;

		if (avail < sizeof(hdr))
			goto corrupt;
		/* The header itself may wrap. */
		if (pos + sizeof(hdr) <= size) {
			memcpy(&hdr, data + pos, sizeof(hdr));
		} else {
			size_t first = size - pos;

			memcpy(&hdr, data + pos, first);
			memcpy((uint8_t *)&hdr + first, data, sizeof(hdr) - first);
		}
		/* A record larger than the ring cannot be real, and copying it would read
		 * past the data area. */
		if (hdr.size < sizeof(hdr) || hdr.size > avail || hdr.size > size || (hdr.size & 7))
			goto corrupt;
		if (hdr.type == PERF_RECORD_SAMPLE || hdr.type == PERF_RECORD_LOST) {
			if (hdr.size > MAX_RECORD) {
				if (hdr.type == PERF_RECORD_SAMPLE)
					goto corrupt;
				stats->unknown++;	/* a LOST record with trailing ids */
				goto next;
			}
			if (pos + hdr.size <= size) {
				r = data + pos;
			} else {
				size_t first = size - pos;

				memcpy(rec, data + pos, first);
				memcpy(rec + first, data, hdr.size - first);
				r = rec;
			}
			if (hdr.type == PERF_RECORD_SAMPLE) {
				if (decode_sample(r + sizeof(hdr), hdr.size - sizeof(hdr), sample_type,
						  out) < 0)
					goto corrupt;
				stats->samples++;
				taken++;
			} else {
				uint64_t lost;

				if (hdr.size < sizeof(hdr) + 16)
					goto corrupt;
				memcpy(&lost, r + sizeof(hdr) + 8, 8);
				stats->lost += lost;
				stats->lost_records++;
			}
		} else if (hdr.type == PERF_RECORD_THROTTLE) {
			stats->throttled++;
		} else if (hdr.type == PERF_RECORD_UNTHROTTLE) {
			stats->unthrottled++;
		} else {
			stats->unknown++;
		}
next:
		tail += hdr.size;
		stats->bytes += hdr.size;
	}
	__atomic_store_n(&meta->data_tail, tail, __ATOMIC_RELEASE);
	return taken;

corrupt:
	/* Nothing after a malformed record can be trusted: skip to the head. */
	stats->truncated++;
	stats->bytes += head - tail;
	__atomic_store_n(&meta->data_tail, head, __ATOMIC_RELEASE);
	return taken;
}

static int has_pid(const int32_t *pids, size_t n, int32_t pid)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (pids[mid] < pid)
			lo = mid + 1;
		else if (pids[mid] > pid)
			hi = mid;
		else
			return 1;
	}
	return 0;
}

long km_samples_filter(struct km_samples *s, const int32_t *pids, size_t npids, int allow)
{
	size_t i, j = 0;

	for (i = 0; i < s->n; i++) {
		int keep = (!s->addr || s->addr[i]) &&
			   (!s->pid || has_pid(pids, npids, s->pid[i]) == !!allow);

		if (!keep)
			continue;
		if (i != j) {
#define MOVE(f) do { if (s->f) s->f[j] = s->f[i]; } while (0)
			MOVE(pid); MOVE(tid); MOVE(cpu); MOVE(time); MOVE(addr);
			MOVE(phys_addr); MOVE(weight); MOVE(data_src); MOVE(ip);
#undef MOVE
		}
		j++;
	}
	i = s->n - j;
	s->n = j;
	return (long)i;
}

long km_samples_by_node(struct km_samples *s, unsigned int block_shift,
                        const int32_t *block_node, size_t nblocks,
                        const uint8_t *node_ok, size_t nnodes, int32_t *nodes_out)
{
	size_t i, j = 0;

	if (!s->phys_addr)
		return -EINVAL;
	for (i = 0; i < s->n; i++) {
		uint64_t b = s->phys_addr[i] >> block_shift;
		int32_t node = (s->phys_addr[i] && b < nblocks) ? block_node[b] : -1;

		if (node < 0 || (size_t)node >= nnodes || !node_ok[node])
			continue;
		if (i != j) {
#define MOVE(f) do { if (s->f) s->f[j] = s->f[i]; } while (0)
			MOVE(pid); MOVE(tid); MOVE(cpu); MOVE(time); MOVE(addr);
			MOVE(phys_addr); MOVE(weight); MOVE(data_src); MOVE(ip);
#undef MOVE
		}
		nodes_out[j] = node;
		j++;
	}
	i = s->n - j;
	s->n = j;
	return (long)i;
}
