/*
 * perf_event_open(2) samplers: open one event per CPU and decode its mmap'd
 * ring buffer into flat arrays (see kmigratedd/perf.py).
 */
#ifndef KMPERF_H
#define KMPERF_H

#include <stdint.h>
#include <stddef.h>

/* Flat sample arrays filled by km_perf_drain; a NULL array is skipped. */
struct km_samples {
	size_t cap;		/* entries each non-NULL array holds */
	size_t n;		/* entries filled (reset by the caller) */
	int32_t *pid;
	int32_t *tid;
	int32_t *cpu;
	uint64_t *time;
	uint64_t *addr;
	uint64_t *phys_addr;
	uint64_t *weight;	/* PERF_SAMPLE_WEIGHT(_STRUCT): load latency for PEBS/IBS */
	uint64_t *data_src;
	uint64_t *ip;
};

struct km_perf_stats {
	uint64_t samples;	/* PERF_RECORD_SAMPLE decoded */
	uint64_t lost;		/* samples the kernel reported lost (PERF_RECORD_LOST) */
	uint64_t lost_records;
	uint64_t throttled;	/* PERF_RECORD_THROTTLE */
	uint64_t unthrottled;
	uint64_t unknown;	/* records of other types, skipped */
	uint64_t truncated;	/* malformed records: the ring was reset to its head */
	uint64_t bytes;		/* ring bytes consumed */
};

/* PERF_SAMPLE_* bits the decoder understands (others make km_perf_open fail). */
uint64_t km_perf_supported_sample_type(void);

/*
 * perf_event_open with the attributes kmigratedd uses; returns the fd or -errno.
 * precise_ip 0-3; wakeup_bytes > 0 sets a byte watermark for poll().
 */
long km_perf_open(uint32_t type, uint64_t config, uint64_t config1, uint64_t sample_period,
                  uint64_t sample_type, uint32_t precise_ip, int exclude_kernel, int pid,
                  int cpu, uint32_t wakeup_bytes);

/*
 * Decode the records between data_tail and data_head of the ring at `base`
 * (the mmap of 1 + 2^n pages), append samples to `out` until it is full, and
 * advance data_tail past what was consumed.  Returns the samples appended, or
 * -EINVAL for a sample_type the decoder does not support.
 */
long km_perf_drain(void *base, size_t map_size, uint64_t sample_type, struct km_samples *out,
                   struct km_perf_stats *st);


/*
 * Keep only samples whose pid is (allow=1) or is not (allow=0) in the sorted
 * array `pids` and whose addr is non-zero; compacts `s` in place.  Returns the
 * samples removed.
 */
long km_samples_filter(struct km_samples *s, const int32_t *pids, size_t npids, int allow);

/*
 * PMU samples: map phys_addr to a node through the memory-block table and keep
 * only samples whose node has node_ok[node] != 0 (the slower tiers); the kept
 * samples' nodes go to nodes_out (compacted like `s`).  Returns samples removed.
 */
long km_samples_by_node(struct km_samples *s, unsigned int block_shift,
                        const int32_t *block_node, size_t nblocks,
                        const uint8_t *node_ok, size_t nnodes, int32_t *nodes_out);

#endif
