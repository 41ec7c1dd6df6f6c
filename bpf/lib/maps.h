/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Every map of the kernel side, with what it holds, who writes it and who
 * reads it. The control plane reaches them through the skeleton (one object,
 * one set of maps); sk_state is also shared with helper objects.
 */
#ifndef CONNREDIR_LIB_MAPS_H
#define CONNREDIR_LIB_MAPS_H

#include "common.h"

/* Callers (uid, cgroup pairs) whose principal flags are cached. */
#define CONNREDIR_PRINCIPAL_CACHE_MAX 4096

/* Redirectors, indexed by callout id. Written by `connredir callout`; read by
 * connect4/6 (proxy address, proxy principal). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONNREDIR_MAX_CALLOUTS);
	__type(key, __u32);
	__type(value, struct connredir_callout);
} callouts SEC(".maps");

/* Filter conditions by filter id. Written by `connredir filter`; read by
 * connect4/6 for the candidates the index returned. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNREDIR_MAX_FILTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct connredir_filter);
} filters SEC(".maps");

/* The classifier: destination prefix -> every filter containing it, in WFP
 * order. Compiled by the control plane; one LPM lookup per connect instead of
 * a scan over all filters. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CONNREDIR_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct connredir_lpm_key);
	__type(value, struct connredir_candidates);
} filter_index SEC(".maps");

/* Who may query and set records besides root: proxy principals of callouts
 * and `connredir authorize` entries. Written by the control plane; read by
 * the sockopt hooks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNREDIR_PRINCIPALS_MAX);
	__type(key, struct connredir_principal_key);
	__type(value, __u32);
} principals SEC(".maps");

/* The generation of `principals` (ABI: bumped by the control plane after
 * every change to it). Read by caller_flags() before it trusts or fills
 * `principal_cache`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} principals_gen SEC(".maps");

/* A `principal_cache` entry: the principals flags a (uid, cgroup) has, by
 * uid or by the cgroup or any of its ancestors, computed under generation
 * `gen` of `principals`. */
struct principal_cache_key {
	__u64 cgroup_id;
	__u32 uid;
	__u32 pad;
};
struct principal_cache_val {
	__u64 gen;
	__u32 flags; /* CONNREDIR_PRINCIPAL_F_* */
	__u32 pad;
};

/* Who the caller is, per (uid, cgroup): without it, every record-less
 * classified connect paid one `principals` lookup per cgroup level (about
 * 245 ns at depth 4, bench/RESULTS.md) to learn whether it is a proxy's
 * onward connect. Written and read only by the hooks (caller_flags()); an
 * entry of an older generation is computed again, so the control plane
 * never touches it. LRU: an evicted entry costs one walk up the cgroups. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNREDIR_PRINCIPAL_CACHE_MAX);
	__type(key, struct principal_cache_key);
	__type(value, struct principal_cache_val);
} principal_cache SEC(".maps");

/* Who bound each TCP socket (explicit bind() to a port) in the attached
 * cgroups: uid, root/authorized flags, cgroup ancestry. Written by bind4/6,
 * where the binding task is current; read by connect4/6 on the listener found
 * at a proxy address, so a flow goes only to a listener its callout's own
 * principal owns (WFP's localRedirectTargetPID). Sockets outside the attached
 * cgroups never get a value (no hook of ours runs for them), so they can
 * never be a redirect target, whoever runs them. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct connredir_sk_owner);
} sk_owner SEC(".maps");

/* Flows between the client's TCP_CONNECT_CB and the proxy's accept. Written
 * by sockops (publish), deleted by sockops (adopt) or sock_release. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNREDIR_HANDOFF_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct connredir_flow_key);
	__type(value, struct connredir_sk_state);
} handoff SEC(".maps");

/* An `implicit` value. Entries are never deleted (an offer resets a stale
 * or drained one in place; LRU evicts the rest): deleting the last pending
 * flow's entry raced with an offer on another CPU, which was lost. No lock
 * either (bpf_spin_lock is not allowed in LRU maps), so a take may read
 * records an offer is rewriting: it verifies their MAC before attaching
 * them, and a torn copy is never attached. What a race can still cause is
 * a lost offer, whose flow then starts a new chain: an extra inspection,
 * never a skipped vendor. */
struct implicit_offers {
	__u32 pending; /* accepted flows not yet matched by an onward connect */
	__u32 pad0;
	__u64 updated_ns; /* bpf_ktime_get_boot_ns() of the newest accepted flow */
	__u8 mixed;	  /* 1: the pending flows' chains differ (by callout, in order) */
	__u8 depth;	  /* the largest carried_hops + hop_count among them */
	__u8 pad[6];
	__u64 sig; /* chain_sig() of the records: compared atomically, never torn */
	struct connredir_records records; /* a pending flow's (all have one chain unless mixed) */
};

/* Flows a callout's principal accepted, per (netns, callout, destination):
 * the records a record-less onward connect of that principal to that
 * destination continues with (implicit records), and the hops it passed for
 * the loop breaker. Written by sockops when a proxy's socket adopts a flow
 * (implicit_offer) and by connect4/6 when a principal's onward connect takes
 * one (implicit_take). LRU: an entry evicted under pressure costs at most one
 * extra inspection (the onward connect starts a new chain), never a skipped
 * vendor. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNREDIR_IMPLICIT_MAX);
	__type(key, struct connredir_implicit_key);
	__type(value, struct implicit_offers);
} implicit SEC(".maps");

/* A new `implicit` value is built here (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct implicit_offers);
} implicit_scratch SEC(".maps");

/* sk_state: per-socket state, shared with the helper objects. */
#include "sk_state.h"

/* What an established client or onward TCP socket keeps of its sk_state
 * (struct connredir_sk_brief): flow id, chain length, application, original
 * destination, hand-off key. Written by sockops at ACTIVE_ESTABLISHED_CB,
 * which then deletes the socket's sk_state (lib/brief.h); read by
 * getpeername, sock_release and `connredir flows`. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct connredir_sk_brief);
} sk_brief SEC(".maps");

/* MAC key for the records blob, drawn by `connredir up` from getrandom().
 * Pinned root-only; never readable by the processes we police. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct connredir_secret);
} secret SEC(".maps");

/* Flow id counter (atomic add from connect4/6; `up` may seed it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flowseq SEC(".maps");

/* Counters, per CPU so the hot path never contends; summed by `status`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CONNREDIR_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The classifier's decisions per callout (enum connredir_callout_stat, one
 * row of CONNREDIR_CSTAT_MAX per callout id): what `stats` counts host-wide,
 * told apart by vendor. Written here only, always through callout_stat_inc()
 * next to the host-wide stat_inc() it refines; the control plane zeroes a row
 * when it (re)uses the callout id. Per CPU like `stats`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CONNREDIR_CALLOUT_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} callout_stats SEC(".maps");

/* `connredir trace`'s lease: the bpf_ktime_get_boot_ns() deadline until
 * which connect4/6 emit events, 0 when nobody traces. Written only by
 * `connredir trace` (renewed while it runs, so a tracer that dies cannot
 * leave tracing on past the deadline); read by connect4/6 once per
 * classified connect, before anything of an event is built. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} trace_on SEC(".maps");

/* `connredir trace`'s events: one struct connredir_trace_event per
 * classified connect while the lease holds. Written by connect4/6 (through
 * trace_emit), read by `connredir trace`; a full ring drops the event and
 * counts it in CONNREDIR_STAT_TRACE_LOST. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CONNREDIR_TRACE_RING_BYTES);
} trace_events SEC(".maps");

/* A classified connect's verdicts, gathered during the walk only while a
 * `connredir trace` lease holds and turned into one ring buffer event at the
 * end (trace_emit). */
struct trace_summary {
	struct connredir_addr dst;
	struct connredir_addr final_dst; /* family 0 if refused */
	__u32 hops;
	__u32 outcome; /* CONNREDIR_TRACE_OUT_* */
	__u32 count;   /* v[] in use */
	__u32 truncated;
	__u8 implicit; /* CONNREDIR_TRACE_IMPLICIT_* */
	__u8 carried;  /* records.carried_hops */
	__u8 proto;    /* CONNREDIR_PROTO_* */
	__u8 pad[5];
	struct connredir_trace_verdict v[CONNREDIR_TRACE_VERDICTS_MAX];
};

/* The trace summary of the connect being classified on this CPU, filled by
 * connect4/6 only while a trace lease holds. Not on the stack: next to the
 * classifier's frame and its bpf_loop step's it went past the 512-byte
 * combined stack limit on Linux 6.1 ("combined stack size of 3 calls is
 * 544"). A connect preempted by another on the same CPU could only
 * mislabel a trace event, never a verdict (tracing reads no decision). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_summary);
} trace_scratch SEC(".maps");

/* Scratch for an incoming records blob: verified here before it may touch a
 * socket's state (too big for the 512-byte BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct connredir_records);
} scratch SEC(".maps");

/* ---- Unconnected UDP sends (pool.h, datagram.h; docs/UDP-DESIGN.md) ---- */

/* A destination in a namespace, and a pool slot in one (the slot's address
 * is local to the namespace: 127.77.x.y or fdcc:7264::x). */
struct udp_pool_key {
	__u64 netns;
	struct connredir_addr dst;
	__u32 pad;
};
struct udp_pool_slot_key {
	__u64 netns;
	__u32 slot;
	__u32 family; /* CONNREDIR_AF_*: the v4 and v6 pools are separate */
};

/* Original destination -> its pool slot. Written and read by sendmsg4/6
 * (pool_slot). LRU: a destination nobody sent to for long loses its slot
 * and gets a new one at its next send (a new flow for the proxy). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNREDIR_UDP_POOL_MAX);
	__type(key, struct udp_pool_key);
	__type(value, __u32);
} udp_pool SEC(".maps");

/* Pool slot -> the destination it stands for: read by recvmsg4/6 to show a
 * reply from the pool address as from the destination, and by pool_slot to
 * check a slot is still the destination's (a slot is reused once the
 * counter wraps). Written by sendmsg4/6 only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNREDIR_UDP_POOL_MAX);
	__type(key, struct udp_pool_slot_key);
	__type(value, struct connredir_addr);
} udp_pool_rev SEC(".maps");

/* The next pool slot to give out (atomic add by sendmsg4/6). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} udp_pool_next SEC(".maps");

/* A flow of unconnected sends, as the proxy selects it: the state a
 * connected socket would hold in sk_state, and when it last sent. */
struct udp_send_flow {
	struct connredir_sk_state st;
	__u64 last_ns; /* bpf_ktime_get_boot_ns() of its newest send */
};

/* Flows of unconnected sends by the key of their two ends (client ip:port,
 * pool address:proxy port, UDP): written by sendmsg4/6 at a flow's first
 * send (and its stamp at each later one), read by the proxy's
 * setsockopt(CONNREDIR_UDP_FLOW). One socket may have many (one per
 * destination), so sock_release cannot find them: a flow is over after
 * CONNREDIR_UDP_SEND_IDLE_NS without a send, and LRU bounds the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNREDIR_UDP_SENDS_MAX);
	__type(key, struct connredir_flow_key);
	__type(value, struct udp_send_flow);
} udp_sends SEC(".maps");

/* A new udp_sends value is built here (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct udp_send_flow);
} udp_send_scratch SEC(".maps");

#endif /* CONNREDIR_LIB_MAPS_H */
