/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * `connredir trace`: while its lease holds, each classified connect's
 * verdicts are gathered in trace_scratch and queued as one event.
 */
#ifndef CONNREDIR_LIB_TRACE_H
#define CONNREDIR_LIB_TRACE_H

#include "stats.h"

_Static_assert((CONNREDIR_TRACE_VERDICTS_MAX & (CONNREDIR_TRACE_VERDICTS_MAX - 1)) == 0,
	       "verdict slots index with a mask");

static __always_inline struct trace_summary *trace_summary(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&trace_scratch, &zero);
}

/* Is a `connredir trace` lease in force? This is the whole cost of trace
 * support while nobody traces: one inlined array load and a compare per
 * classified connect (the clock is read only while a lease is set). */
static __always_inline int tracing(void)
{
	__u32 zero = 0;
	__u64 *until = bpf_map_lookup_elem(&trace_on, &zero);

	if (!until || *until == 0)
		return 0;
	return bpf_ktime_get_boot_ns() < *until; /* a dead tracer's lease lapses */
}

/* Builds and queues the event of one classified connect. A global function,
 * so the verifier checks it once on its own rather than on every path of
 * the classifier. A full ring drops the event and counts it (the tracer
 * reports the count); it never touches the connect. */
__noinline int trace_emit(void)
{
	const struct trace_summary *s = trace_summary();
	struct connredir_trace_event *ev;
	__u64 wake;
	__u32 n;

	if (!s)
		return 0;
	ev = bpf_ringbuf_reserve(&trace_events, sizeof(*ev), 0);
	if (!ev) {
		stat_inc(CONNREDIR_STAT_TRACE_LOST);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->time_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	ev->dst = s->dst;
	ev->final_dst = s->final_dst;
	ev->proto = s->proto;
	ev->hops = s->hops;
	ev->outcome = s->outcome;
	n = s->count;
	ev->count = n > CONNREDIR_TRACE_VERDICTS_MAX ? CONNREDIR_TRACE_VERDICTS_MAX : n;
	ev->truncated = s->truncated ? 1 : 0;
	ev->implicit = s->implicit;
	ev->carried = s->carried;
	__builtin_memcpy(ev->verdicts, s->v, sizeof(ev->verdicts));
	/* Wake the tracer only once a quarter of the ring waits (it also polls
	 * on its own every 100 ms): a wake-up per event, a self-IPI, cost
	 * ~10 us per traced connect here. */
	wake = bpf_ringbuf_query(&trace_events, BPF_RB_AVAIL_DATA) >= CONNREDIR_TRACE_RING_BYTES / 4
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(ev, wake);
	return 0;
}

/* Notes one candidate's verdict in a trace summary; past
 * CONNREDIR_TRACE_VERDICTS_MAX the event says it is truncated. A global
 * function: the verifier checks it once, and to the classifier the summary
 * it writes is opaque, so the slot count does not multiply the classifier's
 * states (inlined, it pushed connect4 past the 1M-instruction budget). */
__noinline int trace_verdict(__u32 cid, __u32 fid, __u32 verdict, __u32 flags)
{
	struct trace_summary *ts = trace_summary();
	struct connredir_trace_verdict *v;
	__u32 k;

	if (!ts)
		return 0;
	k = ts->count;
	if (k >= CONNREDIR_TRACE_VERDICTS_MAX) {
		ts->truncated = 1;
		return 0;
	}
	v = &ts->v[k & (CONNREDIR_TRACE_VERDICTS_MAX - 1)];
	v->callout_id = cid;
	v->filter_id = fid;
	v->verdict = verdict;
	v->flags = flags;
	ts->count = k + 1;
	return 0;
}

#endif /* CONNREDIR_LIB_TRACE_H */
