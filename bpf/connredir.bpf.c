// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * connredir kernel side: WFP-style connection redirection with proxy-chain
 * tracking, as cgroup BPF hooks.
 *
 *   connect4/6      classify the connect against the filter index, pick the
 *                   first callout whose redirect state allows it, append a
 *                   hop to the flow's records, rewrite the destination;
 *                   while `connredir trace` holds its lease, queue an event
 *                   saying why (trace_events).
 *   sockops         TCP_CONNECT_CB: the client's 4-tuple is known and no SYN
 *                   has left yet, so publish the flow (records + context) in
 *                   `handoff`; PASSIVE_ESTABLISHED_CB: the proxy's accepted
 *                   socket adopts it into its sk_storage and offers its
 *                   records for the proxy's onward connect (`implicit`), in
 *                   case the proxy never sets records itself.
 *   getsockopt      SOL_CONNREDIR queries and SO_ORIGINAL_DST emulation.
 *   setsockopt      SOL_CONNREDIR records set (MAC-verified).
 *   getpeername4/6  the client sees its original destination.
 *   sock_release    drop an unconsumed hand-off.
 *   bind4/6         only a callout's principal (or root) may bind its proxy
 *                   address; every bind records its owner (`sk_owner`), and
 *                   connect4/6 redirect only to a listener whose owner is
 *                   the callout's principal.
 *
 * Principles: entry points are thin; they never fail a connection they were
 * not asked to touch (every hook returns "allow", errors only on our own
 * option level); per-socket state lives in sk_storage and dies with the
 * socket; nothing is created for connects that match no filter.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "connredir_abi.h"
#include "connredir_siphash.h"

#define AF_INET	    2
#define AF_INET6    10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6

#define EPERM	     1
#define ENOENT	     2
#define EACCES	     13
#define EINVAL	     22
#define ENOPROTOOPT  92
#define EOPNOTSUPP   95
#define ENOBUFS	     105
#define EISCONN	     106
#define ECONNREFUSED 111

/* Verdicts of cgroup hooks: 1 = proceed. We never return 0 from connect or
 * sockops: connredir fails open for everything it does not own. */
#define ALLOW 1

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- Maps ---------------------------------------------------------------- */

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
	struct connredir_records records; /* the oldest pending flow's */
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
#include "sk_state.bpf.h"

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
	__u8 pad[6];
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

/* ---- Small workers --------------------------------------------------------- */

#define RECORDS_MAC_WORDS ((sizeof(struct connredir_records) - sizeof(__u64)) / sizeof(__u64))
_Static_assert(sizeof(struct connredir_records) % 8 == 0, "records must be whole words");
_Static_assert(sizeof(struct connredir_records) <= CONNREDIR_RECORDS_MAX, "records too big");
_Static_assert(sizeof(struct connredir_context) == CONNREDIR_CONTEXT_SIZE, "context size");
_Static_assert(CONNREDIR_MAX_CALLOUTS <= 64, "callout mask is one u64");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/* A global (not inlined, not static) function: the verifier checks it once,
 * on its own, instead of once per path through the classifier's candidate
 * loop, where it is called; inlined there it pushed connect4/6 past the
 * verifier's 1M-instruction budget. Callout ids come from map values: bound
 * them so a bad id cannot count in another callout's row. */
__noinline int callout_stat_inc(__u32 cid, __u32 idx)
{
	__u32 key;
	__u64 *v;

	if (cid >= CONNREDIR_MAX_CALLOUTS || idx >= CONNREDIR_CSTAT_MAX)
		return 0;
	key = cid * CONNREDIR_CSTAT_MAX + idx;
	v = bpf_map_lookup_elem(&callout_stats, &key);
	if (v)
		*v += 1;
	return 0;
}

static __always_inline void addr_set_v4(struct connredir_addr *a, __u32 ip_be, __u16 port_be)
{
	__builtin_memset(a->addr, 0, 10);
	a->addr[10] = 0xff;
	a->addr[11] = 0xff;
	__builtin_memcpy(&a->addr[12], &ip_be, 4);
	a->port = port_be;
	a->family = CONNREDIR_AF_INET;
}

static __always_inline void addr_set_v6(struct connredir_addr *a, __u32 w0, __u32 w1, __u32 w2,
					__u32 w3, __u16 port_be)
{
	/* IPv4-mapped (::ffff:a.b.c.d) is IPv4: the same endpoint, and a dual-stack
	 * socket's later traffic is IPv4. */
	int mapped = w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);

	__builtin_memcpy(&a->addr[0], &w0, 4);
	__builtin_memcpy(&a->addr[4], &w1, 4);
	__builtin_memcpy(&a->addr[8], &w2, 4);
	__builtin_memcpy(&a->addr[12], &w3, 4);
	a->port = port_be;
	a->family = mapped ? CONNREDIR_AF_INET : CONNREDIR_AF_INET6;
}

static __always_inline __u32 addr_word(const struct connredir_addr *a, int i)
{
	__u32 w;

	__builtin_memcpy(&w, &a->addr[i * 4], 4);
	return w;
}

static __always_inline int same_ip(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

static __always_inline int addr_is_loopback(const struct connredir_addr *a)
{
	if (a->family == CONNREDIR_AF_INET)
		return a->addr[12] == 127;
	/* ::1 */
	return addr_word(a, 0) == 0 && addr_word(a, 1) == 0 && addr_word(a, 2) == 0 &&
	       addr_word(a, 3) == bpf_htonl(1);
}

/* Does the caller have a principals entry with any of `mask`'s flags (by
 * uid, or a cgroup that is the caller's cgroup or one of its ancestors)? */
static __always_inline int caller_principal(__u32 mask)
{
	struct connredir_principal_key key = {};
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 *flags;
	int level;

	key.kind = CONNREDIR_PRINCIPAL_UID;
	key.id = uid;
	flags = bpf_map_lookup_elem(&principals, &key);
	if (flags && (*flags & mask))
		return 1;
	key.kind = CONNREDIR_PRINCIPAL_CGROUP;
	for (level = 1; level <= CONNREDIR_CGROUP_LEVELS_MAX; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		key.id = id;
		flags = bpf_map_lookup_elem(&principals, &key);
		if (flags && (*flags & mask))
			return 1;
	}
	return 0;
}

/* Root, or any registered principal: the first gate of the option hooks. */
static __always_inline int caller_authorized(void)
{
	if ((__u32)bpf_get_current_uid_gid() == 0)
		return 1;
	return caller_principal(CONNREDIR_PRINCIPAL_F_AUTHORIZED | CONNREDIR_PRINCIPAL_F_CALLOUT);
}

static __always_inline int cgroup_is_or_below(__u64 cgroup, __u32 level)
{
	return cgroup && bpf_get_current_ancestor_cgroup_id(level) == cgroup;
}

static __always_inline int callout_has_principal(const struct connredir_callout *c)
{
	return c->proxy_uid != CONNREDIR_UID_NONE || c->proxy_cgroup != 0;
}

/* Is the current task callout c's principal? Principals are per callout: the
 * proxy uid or cgroup the callout names. A callout that names none is served
 * by `connredir authorize`d principals (and root), as before principals were
 * per callout. */
static __always_inline int caller_serves(const struct connredir_callout *c)
{
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	if (uid == 0)
		return 1;
	if (!callout_has_principal(c))
		return caller_principal(CONNREDIR_PRINCIPAL_F_AUTHORIZED);
	if (c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == uid)
		return 1;
	return cgroup_is_or_below(c->proxy_cgroup, c->proxy_cgroup_level);
}

_Static_assert((CONNREDIR_CGROUP_LEVELS_MAX & (CONNREDIR_CGROUP_LEVELS_MAX - 1)) == 0,
	       "cgroup levels index with a mask");

/* The same question about whoever bound a socket, from its sk_owner value
 * (the binder's identity then, checked against the callout as it is now, so
 * a proxy started before its callout was added is still recognised). */
static __always_inline int owner_serves(const struct connredir_sk_owner *o,
					const struct connredir_callout *c)
{
	__u32 lvl = c->proxy_cgroup_level;

	if (o->flags & CONNREDIR_OWNER_F_ROOT)
		return 1;
	if (!callout_has_principal(c))
		return (o->flags & CONNREDIR_OWNER_F_AUTHORIZED) != 0;
	if (c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == o->uid)
		return 1;
	if (c->proxy_cgroup && lvl >= 1 && lvl <= CONNREDIR_CGROUP_LEVELS_MAX)
		return o->cgroup[(lvl - 1) & (CONNREDIR_CGROUP_LEVELS_MAX - 1)] == c->proxy_cgroup;
	return 0;
}

/* The current task as an sk_owner value (for the bind guard and the mark). */
static __always_inline void current_owner(struct connredir_sk_owner *o)
{
	struct connredir_principal_key key = {};
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 *flags;
	int level;

	o->uid = uid;
	o->flags = uid == 0 ? CONNREDIR_OWNER_F_ROOT : 0;
	key.kind = CONNREDIR_PRINCIPAL_UID;
	key.id = uid;
	flags = bpf_map_lookup_elem(&principals, &key);
	if (flags && (*flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED))
		o->flags |= CONNREDIR_OWNER_F_AUTHORIZED;
	key.kind = CONNREDIR_PRINCIPAL_CGROUP;
	for (level = 1; level <= CONNREDIR_CGROUP_LEVELS_MAX; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		o->cgroup[level - 1] = id;
		key.id = id;
		flags = bpf_map_lookup_elem(&principals, &key);
		if (flags && (*flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED))
			o->flags |= CONNREDIR_OWNER_F_AUTHORIZED;
	}
}

static __always_inline const struct connredir_secret *mac_key(void)
{
	__u32 zero = 0;
	const struct connredir_secret *k = bpf_map_lookup_elem(&secret, &zero);

	if (!k || (k->k0 == 0 && k->k1 == 0))
		return NULL;
	return k;
}

/* Words of the blob the MAC covers: the header, the origin and the hop_count
 * hops in use. The unused hops are not hashed (a one-hop flow hashes 16
 * words instead of 58, on every publish and every set) but must be zero, so
 * every byte of a blob is still either authenticated or fixed. */
#define RECORDS_HOPS_WORD (__builtin_offsetof(struct connredir_records, hops) / 8)
#define RECORDS_HOP_WORDS (sizeof(struct connredir_hop) / 8)
_Static_assert(__builtin_offsetof(struct connredir_records, hops) % 8 == 0, "hops word-aligned");
_Static_assert(sizeof(struct connredir_hop) % 8 == 0, "hop is whole words");
_Static_assert(__builtin_offsetof(struct connredir_records, mac) == RECORDS_MAC_WORDS * 8,
	       "mac follows the hops");
_Static_assert(RECORDS_HOPS_WORD + CONNREDIR_MAX_HOPS * RECORDS_HOP_WORDS == RECORDS_MAC_WORDS,
	       "the hop slots are all the words between the origin and the mac");

/* The hops in use: hop_count, which an incoming blob has been checked to
 * keep within CONNREDIR_MAX_HOPS; clamped again for the verifier. */
static __always_inline __u32 records_hops_in_use(const struct connredir_records *r)
{
	__u32 n = r->hop_count;

	if (n > CONNREDIR_MAX_HOPS)
		n = CONNREDIR_MAX_HOPS;
	return n;
}

/* Both walks below visit every hop slot with a constant bound and test the
 * hop count inside the loop body, instead of looping over a variable number
 * of words. Linux 6.1's verifier (Debian 12) rejects a loop whose index is
 * bounded only by another register: on the exit test `i < nwords` it keeps
 * exploring a path where nwords' bounds contradict each other (umin > umax),
 * the index walks past the blob, and the load fails with "invalid access to
 * map value ... R7 min value is outside of the allowed memory range"
 * (EACCES). Newer verifiers see that path is dead; 6.1 does not. With a
 * constant loop bound every load is at a constant offset, which any
 * verifier accepts, and a guard rather than a `break` keeps the compiler
 * from folding the two bounds back into one register compare. */
static __always_inline __u64 records_mac(const struct connredir_secret *k,
					 const struct connredir_records *r)
{
	const __u64 *w = (const __u64 *)r;
	__u32 n = records_hops_in_use(r), h, j;
	struct connredir_siphash s;

	connredir_siphash_init(&s, k->k0, k->k1);
	for (j = 0; j < RECORDS_HOPS_WORD; j++)
		connredir_siphash_word(&s, w[j]);
	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h < n) {
			for (j = 0; j < RECORDS_HOP_WORDS; j++)
				connredir_siphash_word(
					&s, w[RECORDS_HOPS_WORD + h * RECORDS_HOP_WORDS + j]);
		}
	}
	return connredir_siphash_final(&s, RECORDS_HOPS_WORD + n * RECORDS_HOP_WORDS);
}

/* Are the hop slots past hop_count all zero (as connredir issues them)? */
static __always_inline int records_tail_zero(const struct connredir_records *r)
{
	const __u64 *w = (const __u64 *)r;
	__u32 n = records_hops_in_use(r), h, j;
	__u64 acc = 0;

	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h >= n) {
			for (j = 0; j < RECORDS_HOP_WORDS; j++)
				acc |= w[RECORDS_HOPS_WORD + h * RECORDS_HOP_WORDS + j];
		}
	}
	return acc == 0;
}

/* Delete the hand-off this socket published, if the entry is still its own.
 * Called when the socket connects again (a failed connect freed its source
 * port, so the next attempt publishes under a new 4-tuple: without this each
 * retry would leave an entry behind and one socket could fill the host-wide
 * map) and when it is released. The entry must be checked: once the port is
 * free, another socket may have published the same 4-tuple since. */
static __always_inline void handoff_retire(struct connredir_sk_state *st)
{
	struct connredir_sk_state *e;

	if (!(st->flags & CONNREDIR_SK_PUBLISHED))
		return;
	st->flags &= ~CONNREDIR_SK_PUBLISHED;
	e = bpf_map_lookup_elem(&handoff, &st->handoff);
	if (e && e->records.flow_id == st->records.flow_id &&
	    e->records.hop_count == st->records.hop_count)
		bpf_map_delete_elem(&handoff, &st->handoff);
}

/* ---- Tracing ------------------------------------------------------------ */

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
	ev->proto = IPPROTO_TCP;
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

/* ---- Classification (connect4/6) --------------------------------------- */

#define PROXY_OWNED	0 /* the callout's principal owns the listener: redirect */
#define PROXY_ABSENT	1 /* nothing listens at a loopback proxy address */
#define PROXY_NOT_OWNER 2 /* someone else's listener (or an unmarked one) is there */

/*
 * Who would receive a connect to the proxy's address in the connecting
 * socket's namespace? The lookup is the kernel's own listener lookup (a
 * listener bound to the address wins over a wildcard one, as for the SYN), so
 * the listener found is the one the SYN will reach, except for what
 * docs/SECURITY.md lists (a socket that binds in the microseconds between
 * this check and the SYN; a SO_REUSEPORT group, whose members all share a
 * uid). A listener owns the flow only if its sk_owner says the callout's
 * principal bound it; an unmarked listener was bound outside the attached
 * cgroups, or before connredir was up. A routable proxy address with no
 * listener here is in another namespace (reached over veth): not visible from
 * here, so it is redirected to (PROXY_OWNED) and guarded where it listens.
 */
static __always_inline int proxy_verdict(struct bpf_sock_addr *ctx, const struct connredir_addr *p,
					 const struct connredir_callout *c)
{
	struct bpf_sock_tuple t = {};
	struct connredir_sk_owner *o;
	struct bpf_sock *sk;
	int v = PROXY_NOT_OWNER;

	if (p->family == CONNREDIR_AF_INET) {
		t.ipv4.daddr = addr_word(p, 3);
		t.ipv4.dport = p->port;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(t.ipv6.daddr, p->addr, 16);
		t.ipv6.dport = p->port;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return addr_is_loopback(p) ? PROXY_ABSENT : PROXY_OWNED;
	/* bpf_sk_fullsock is not offered to sock_addr programs; a listener is
	 * a full socket, and sk_storage_get returns NULL for anything else. */
	if (sk->state == BPF_TCP_LISTEN) {
		o = bpf_sk_storage_get(&sk_owner, sk, NULL, 0);
		if (o && owner_serves(o, c))
			v = PROXY_OWNED;
	}
	bpf_sk_release(sk);
	return v;
}

static __always_inline int filter_matches(const struct connredir_filter *f, __u16 port_host,
					  __u32 uid)
{
	if (f->proto && f->proto != IPPROTO_TCP)
		return 0;
	if (port_host < f->port_lo || port_host > f->port_hi)
		return 0;
	if ((f->flags & CONNREDIR_FILTER_F_APP_UID) && f->app_uid != uid)
		return 0;
	if ((f->flags & CONNREDIR_FILTER_F_APP_CGROUP) &&
	    !cgroup_is_or_below(f->app_cgroup, f->app_cgroup_level))
		return 0;
	return 1;
}

/* WFP's FwpsQueryConnectionRedirectState for one callout. `seen` has a bit
 * per callout already in the chain, `last` is the newest hop's callout. A
 * connect without records from the callout's own proxy principal counts as
 * REDIRECTED_BY_SELF (Windows' localRedirectTargetPID), so a proxy that does
 * not propagate records still cannot loop onto itself. */
static __always_inline int redirect_state(const struct connredir_callout *c, __u32 cid, __u32 hops,
					  __u64 seen, __u32 last, __u32 uid)
{
	if (hops == 0) {
		if ((c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == uid) ||
		    cgroup_is_or_below(c->proxy_cgroup, c->proxy_cgroup_level))
			return CONNREDIR_REDIRECTED_BY_SELF;
		return CONNREDIR_NOT_REDIRECTED;
	}
	if (last == cid)
		return CONNREDIR_REDIRECTED_BY_SELF;
	if (seen & (1ULL << (cid & 63)))
		return CONNREDIR_PREVIOUSLY_REDIRECTED_BY_SELF;
	return CONNREDIR_REDIRECTED_BY_OTHER;
}

static __always_inline void new_flow(struct connredir_records *r, __u32 uid)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&flowseq, &zero);

	r->magic = CONNREDIR_RECORDS_MAGIC;
	r->version = CONNREDIR_ABI_VERSION;
	r->size = sizeof(*r);
	r->flow_id = seq ? __sync_fetch_and_add(seq, 1) + 1 : bpf_get_prandom_u32();
	r->hop_count = 0;
	r->origin.cgroup_id = bpf_get_current_cgroup_id();
	r->origin.pid = bpf_get_current_pid_tgid() >> 32;
	r->origin.uid = uid;
	bpf_get_current_comm(r->origin.comm, sizeof(r->origin.comm));
	__builtin_memset(&r->origin.src, 0, sizeof(r->origin.src));
}

/*
 * The walk over a classified connect's candidate filters, one bpf_loop()
 * step per candidate: the verifier checks the step once instead of once per
 * candidate position (unrolled, connect6 used 720k of its 1M-instruction
 * budget, and nothing could be added to it). The step reads the inputs and
 * writes the outputs here, in the caller's frame.
 */
struct classify_walk {
	struct bpf_sock_addr *ctx;
	const struct connredir_candidates *cands;
	__u64 seen; /* a bit per callout already in the chain */
	__u32 n;    /* candidates in use */
	__u32 hops; /* chain length before this connect */
	__u32 last; /* the newest hop's callout */
	__u32 uid;
	__u16 port_host;
	__u8 family;   /* CONNREDIR_AF_* of the destination */
	__u8 can_take; /* chain not full and MAC key set: worth a listener lookup */
	__u8 trace;    /* a trace lease holds: note the verdicts in trace_scratch */
	__u8 refuse;   /* out: fail the connect */
	__u8 found;    /* out: chosen_* name the callout that takes the flow */
	__u8 implicit; /* CONNREDIR_TRACE_IMPLICIT_*: what implicit_take did */
	__u32 chosen_id;
	__u32 chosen_fid;
	__u32 carried; /* hops carried over record-less proxies (loop budget) */
	__u32 imp_cid; /* out of implicit_find_one: the caller's callout with an offer */
	struct connredir_implicit_key imp_key; /* its offer's key (callout_id set per step) */
};

/* Callout c's proxy for a destination of `family` (CONNREDIR_AF_*), or NULL
 * if it has none for that family. */
static __always_inline const struct connredir_addr *callout_proxy(const struct connredir_callout *c,
								  __u8 family)
{
	if (family == CONNREDIR_AF_INET)
		return (c->flags & CONNREDIR_CALLOUT_F_PROXY4) ? &c->proxy4 : NULL;
	return (c->flags & CONNREDIR_CALLOUT_F_PROXY6) ? &c->proxy6 : NULL;
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

/* The same, only while a trace lease holds: the branch is all it costs
 * otherwise. */
static __always_inline void trace_note(struct classify_walk *w, __u32 cid, __u32 fid, __u8 verdict,
				       __u8 flags)
{
	if (w->trace)
		trace_verdict(cid, fid, verdict, flags);
}

/* A connect that callout `c` selected but cannot take (chain full, no proxy
 * for the family, no MAC key, no memory for the socket's state; the cause is
 * counted by the caller). By default it goes on uninspected by `c`; a
 * callout added with --on-failure refuse fails it instead, so no flow its
 * filters select ever passes without it. Returns the trace flag to note. */
static __always_inline __u8 cannot_redirect(const struct connredir_callout *c, __u32 cid,
					    struct classify_walk *w)
{
	if (c->flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED) {
		stat_inc(CONNREDIR_STAT_FAILURE_REFUSED);
		callout_stat_inc(cid, CONNREDIR_CSTAT_FAILURE_REFUSED);
		w->refuse = 1;
		return CONNREDIR_TV_F_FAILURE_REFUSED;
	}
	return 0;
}

/* bpf_loop step: candidate `i`. Skips what does not apply (returns 0: next
 * candidate); stops (returns 1) at the first callout that takes the flow or
 * refuses it. */
static long classify_one(__u32 i, void *data)
{
	struct classify_walk *w = data;
	const struct connredir_filter *f;
	const struct connredir_callout *c;
	const struct connredir_addr *proxy;
	__u32 fid, cid;
	int state, verdict;
	__u8 flags;

	if (i >= w->n || i >= CONNREDIR_CANDIDATES_MAX)
		return 1;
	fid = w->cands->ids[i & (CONNREDIR_CANDIDATES_MAX - 1)];
	f = bpf_map_lookup_elem(&filters, &fid);
	if (!f || !filter_matches(f, w->port_host, w->uid))
		return 0;
	cid = f->callout_id;
	c = bpf_map_lookup_elem(&callouts, &cid);
	if (!c || !(c->flags & CONNREDIR_CALLOUT_F_USED))
		return 0;
	state = redirect_state(c, cid, w->hops, w->seen, w->last, w->uid);
	if (state == CONNREDIR_REDIRECTED_BY_SELF) {
		stat_inc(CONNREDIR_STAT_SELF_SKIP);
		callout_stat_inc(cid, CONNREDIR_CSTAT_SELF_SKIP);
		trace_note(w, cid, fid, CONNREDIR_TV_SELF_SKIP, 0);
		return 0;
	}
	if (state == CONNREDIR_PREVIOUSLY_REDIRECTED_BY_SELF) {
		stat_inc(CONNREDIR_STAT_PREV_SKIP);
		callout_stat_inc(cid, CONNREDIR_CSTAT_PREV_SKIP);
		trace_note(w, cid, fid, CONNREDIR_TV_PREV_SKIP, 0);
		return 0;
	}
	proxy = callout_proxy(c, w->family);
	if (!proxy) {
		stat_inc(CONNREDIR_STAT_NO_PROXY_FAMILY);
		callout_stat_inc(cid, CONNREDIR_CSTAT_NO_PROXY_FAMILY);
		flags = cannot_redirect(c, cid, w);
		trace_note(w, cid, fid, CONNREDIR_TV_NO_PROXY_FAMILY, flags);
		return w->refuse ? 1 : 0;
	}
	verdict = w->can_take ? proxy_verdict(w->ctx, proxy, c) : PROXY_OWNED;
	if (verdict != PROXY_OWNED) {
		/* Never "deliver to whatever listens": bypass if the callout
		 * asked for it, else refuse. */
		flags = 0;
		if (verdict == PROXY_NOT_OWNER) {
			stat_inc(CONNREDIR_STAT_NOT_OWNER);
			callout_stat_inc(cid, CONNREDIR_CSTAT_NOT_OWNER);
			flags = CONNREDIR_TV_F_NOT_OWNER;
		}
		if (c->flags & CONNREDIR_CALLOUT_F_DOWN_BYPASS) {
			stat_inc(CONNREDIR_STAT_DOWN_BYPASS);
			callout_stat_inc(cid, CONNREDIR_CSTAT_DOWN_BYPASS);
			trace_note(w, cid, fid, CONNREDIR_TV_DOWN_BYPASS, flags);
			return 0;
		}
		stat_inc(CONNREDIR_STAT_DOWN_REFUSED);
		callout_stat_inc(cid, CONNREDIR_CSTAT_DOWN_REFUSED);
		trace_note(w, cid, fid, CONNREDIR_TV_DOWN_REFUSED, flags);
		w->refuse = 1;
		return 1;
	}
	w->chosen_id = cid;
	w->chosen_fid = fid;
	w->found = 1;
	return 1;
}

/* ---- Implicit records ------------------------------------------------------
 *
 * An off-the-shelf transparent proxy (squid, mitmproxy) never sets records,
 * so its onward connect would start a new chain that the next vendor's proxy
 * restarts again: two such proxies loop. connredir carries the records over
 * for it. When a proxy's socket adopts a flow, the flow is offered under
 * (netns, the callout that redirected it, the destination it asked for);
 * when a principal of that callout connects without records to that
 * destination, it takes an offer: the records are attached as if the proxy
 * had set them. Offers for one key whose chains differ (per-app filters) are
 * ambiguous: none is attached, because any choice could drop a hop the flow
 * passed or skip a vendor that has not inspected it; the connect starts a new
 * chain carrying the largest hop count among them (records.carried_hops), so
 * no vendor is skipped and the loop breaker (carried + chain hops at most
 * CONNREDIR_MAX_HOPS) bounds the repeats. The same happens for a callout
 * with implicit records off. Explicit records (setsockopt) always win: a
 * socket that has them never takes an offer. docs/ABI.md has the rules.
 */

/* Same callouts in the same order, same carried hops: whichever offer an
 * onward connect belongs to, it meets the same redirect state at every
 * callout. */
static __always_inline int same_chain(const struct connredir_records *a,
				      const struct connredir_records *b)
{
	__u32 n = records_hops_in_use(a), h;

	if (a->hop_count != b->hop_count || a->carried_hops != b->carried_hops)
		return 0;
	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h < n && a->hops[h].callout_id != b->hops[h].callout_id)
			return 0;
	}
	return 1;
}

/* Has the entry flows pending, the newest accepted less than the TTL ago?
 * Signed: an offer on another CPU may have stamped the entry after `now`
 * was read; unsigned, that difference wrapped to "stale" and the restart
 * below dropped every pending flow (takes then found none, and those flows
 * started new chains: re-inspected). */
static __always_inline int implicit_live(const struct implicit_offers *e, __u64 now)
{
	return e->pending && (__s64)(now - e->updated_ns) < (__s64)CONNREDIR_IMPLICIT_TTL_NS;
}

/* A proxy's socket adopted flow `st`: offer its records to the onward
 * connect of the proxy that received it (the newest hop's callout's
 * principal), keyed by the destination that hop's connect asked for. */
static __always_inline void implicit_offer(struct bpf_sock_ops *skops,
					   const struct connredir_sk_state *st)
{
	struct connredir_implicit_key key = {};
	struct implicit_offers *e, *fresh;
	const struct connredir_hop *h;
	__u32 n = records_hops_in_use(&st->records), zero = 0, depth;
	__u64 now = bpf_ktime_get_boot_ns();

	if (n == 0)
		return;
	h = &st->records.hops[(n - 1) & (CONNREDIR_MAX_HOPS - 1)];
	key.netns = bpf_get_netns_cookie(skops);
	__builtin_memcpy(key.dst, h->dst.addr, 16);
	key.dst_port = h->dst.port;
	key.proto = IPPROTO_TCP;
	key.callout_id = h->callout_id;
	depth = n + st->records.carried_hops;
	e = bpf_map_lookup_elem(&implicit, &key);
	if (!e) {
		fresh = bpf_map_lookup_elem(&implicit_scratch, &zero);
		if (!fresh)
			return;
		fresh->pending = 1;
		fresh->updated_ns = now;
		fresh->mixed = 0;
		fresh->depth = depth;
		__builtin_memcpy(&fresh->records, &st->records, sizeof(fresh->records));
		if (!bpf_map_update_elem(&implicit, &key, fresh, BPF_NOEXIST))
			return;
		e = bpf_map_lookup_elem(&implicit, &key); /* another CPU created it */
		if (!e)
			return;
	}
	if (!implicit_live(e, now)) {
		/* Stale or drained: this flow starts it again. Records and flag
		 * first, the count last, so a take that sees the count sees
		 * them. Another offer doing the same at once (the count was not
		 * 0 when ours landed) may have had another chain, and one of the
		 * two records was overwritten: mark the entry ambiguous rather
		 * than guess. A stale count left by flows never matched is
		 * dropped (the compare-and-swap); losing that race only adds. */
		__u32 p = e->pending, before;

		__builtin_memcpy(&e->records, &st->records, sizeof(e->records));
		e->mixed = 0;
		e->depth = depth;
		e->updated_ns = now;
		if (p && __sync_val_compare_and_swap(&e->pending, p, 1) == p)
			return;
		before = __sync_fetch_and_add(&e->pending, 1);
		if (before)
			e->mixed = 1;
		return;
	}
	__sync_fetch_and_add(&e->pending, 1);
	if (!same_chain(&e->records, &st->records))
		e->mixed = 1;
	if (depth > e->depth)
		e->depth = depth;
	e->updated_ns = now;
}

/* bpf_loop step: candidate `i`'s callout, if the caller is its principal
 * and it has a live offer for this destination (stops the walk). Filter
 * conditions are not checked: the offer exists because one of this
 * callout's filters redirected a flow to this destination, and the caller's
 * own uid need not match a per-app filter. */
static long implicit_find_one(__u32 i, void *data)
{
	struct classify_walk *w = data;
	const struct connredir_filter *f;
	const struct connredir_callout *c;
	struct implicit_offers *e;
	__u32 fid, cid;

	if (i >= w->n || i >= CONNREDIR_CANDIDATES_MAX)
		return 1;
	fid = w->cands->ids[i & (CONNREDIR_CANDIDATES_MAX - 1)];
	f = bpf_map_lookup_elem(&filters, &fid);
	if (!f)
		return 0;
	cid = f->callout_id;
	c = bpf_map_lookup_elem(&callouts, &cid);
	if (!c || !(c->flags & CONNREDIR_CALLOUT_F_USED) ||
	    redirect_state(c, cid, 0, 0, 0, w->uid) != CONNREDIR_REDIRECTED_BY_SELF)
		return 0;
	w->imp_key.callout_id = cid;
	e = bpf_map_lookup_elem(&implicit, &w->imp_key);
	if (!e || !implicit_live(e, bpf_ktime_get_boot_ns()))
		return 0;
	w->imp_cid = cid;
	return 1;
}

/*
 * A record-less connect by a callout principal: take an offer for its
 * destination if there is one. Attaches the offer's records to the socket
 * (creating its state) unless the offer is ambiguous or the callout has
 * implicit records off; then only the hop budget is carried (w->carried).
 * Returns the socket's state, which may now exist.
 */
static __always_inline struct connredir_sk_state *implicit_take(struct classify_walk *w,
								const struct connredir_addr *dst,
								struct connredir_sk_state *st,
								struct bpf_sock *sk)
{
	const struct connredir_secret *k;
	const struct connredir_callout *c;
	struct implicit_offers *e;
	__u32 cid, old;
	__u8 copied = 0, attach;

	if (!caller_principal(CONNREDIR_PRINCIPAL_F_CALLOUT))
		return st; /* applications pay one lookup per cgroup level, no more */
	w->imp_key.netns = bpf_get_netns_cookie(w->ctx);
	__builtin_memcpy(w->imp_key.dst, dst->addr, 16);
	w->imp_key.dst_port = dst->port;
	w->imp_key.proto = IPPROTO_TCP;
	bpf_loop(CONNREDIR_CANDIDATES_MAX, implicit_find_one, w, 0);
	cid = w->imp_cid;
	if (!cid)
		return st;
	w->imp_key.callout_id = cid;
	e = bpf_map_lookup_elem(&implicit, &w->imp_key);
	c = bpf_map_lookup_elem(&callouts, &cid);
	if (!e || !c)
		return st;
	attach = !(c->flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT) && !e->mixed;
	k = mac_key();
	if (attach && !st) {
		st = bpf_sk_storage_get(&sk_state, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
	}
	if (attach && st && k) {
		/* Tentatively: kept only if the MAC verifies and the flow is
		 * still the entry's after the count is taken (not torn or
		 * replaced by an offer rewriting the entry meanwhile). */
		__builtin_memcpy(&st->records, &e->records, sizeof(st->records));
		if (records_mac(k, &st->records) == st->records.mac)
			copied = 1;
		else /* a new chain must start from zeroed hop slots */
			__builtin_memset(&st->records, 0, sizeof(st->records));
	}
	old = __sync_fetch_and_sub(&e->pending, 1);
	if (old == 0) { /* drained by another connect meanwhile */
		__sync_fetch_and_add(&e->pending, 1);
		if (copied)
			__builtin_memset(&st->records, 0, sizeof(st->records));
		return st;
	}
	/* A new chain carries the offered flows' hops; attached records carry
	 * their own (the caller reads them from the records). */
	w->carried = e->depth;
	if (copied && !e->mixed && e->records.flow_id == st->records.flow_id) {
		st->flags = CONNREDIR_SK_RECORDS_SET | CONNREDIR_SK_IMPLICIT;
		st->in_hops = 0;
		w->implicit = CONNREDIR_TRACE_IMPLICIT_ATTACHED;
		stat_inc(CONNREDIR_STAT_IMPLICIT);
		callout_stat_inc(cid, CONNREDIR_CSTAT_IMPLICIT);
		return st;
	}
	if (copied)
		__builtin_memset(&st->records, 0, sizeof(st->records));
	if (e->mixed || attach) {
		/* Chains differ, or the copy changed under us. */
		w->implicit = CONNREDIR_TRACE_IMPLICIT_AMBIGUOUS;
		stat_inc(CONNREDIR_STAT_IMPLICIT_AMBIGUOUS);
		callout_stat_inc(cid, CONNREDIR_CSTAT_IMPLICIT_AMBIGUOUS);
	} else {
		w->implicit = CONNREDIR_TRACE_IMPLICIT_OFF;
	}
	return st;
}

/*
 * Decide a classified connect: walk its candidates, then append a hop to the
 * flow's records for the callout that takes it. Returns the proxy to connect
 * to instead, or NULL to leave the connect alone; w->refuse is set when the
 * chosen callout's proxy has no listener its principal owns and its
 * --on-proxy-down policy is refuse (the default), or --on-failure refuse
 * applies.
 */
static __always_inline const struct connredir_addr *classify_candidates(
	struct classify_walk *w, const struct connredir_addr *dst)
{
	struct connredir_sk_state *st;
	const struct connredir_callout *chosen;
	const struct connredir_filter *chosen_f;
	const struct connredir_addr *proxy;
	struct bpf_sock *sk;
	__u32 hops = 0, last = 0, chosen_id, i;
	__u64 seen = 0;
	__u8 flags;

	sk = w->ctx->sk;
	if (!sk)
		return NULL;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (st)
		handoff_retire(st); /* an earlier attempt's hand-off, never adopted */
	w->uid = (__u32)bpf_get_current_uid_gid();
	w->n = w->cands->count;
	if (!st || !(st->flags & (CONNREDIR_SK_RECORDS_SET | CONNREDIR_SK_REDIRECTED)))
		st = implicit_take(w, dst, st, sk);
	else if (!(st->flags & CONNREDIR_SK_RECORDS_SET))
		w->carried = st->records.carried_hops; /* a re-connect keeps its budget */
	if (st && (st->flags & CONNREDIR_SK_RECORDS_SET)) {
		w->carried = st->records.carried_hops;
		/* A re-connect after a failed one must not count our earlier hop. */
		hops = (st->flags & CONNREDIR_SK_REDIRECTED) ? st->in_hops : st->records.hop_count;
		if (hops > CONNREDIR_MAX_HOPS)
			hops = CONNREDIR_MAX_HOPS;
		for (i = 0; i < CONNREDIR_MAX_HOPS; i++) {
			if (i >= hops)
				break;
			last = st->records.hops[i].callout_id;
			seen |= 1ULL << (last & 63);
		}
	}
	w->hops = hops;
	w->last = last;
	w->seen = seen;
	/* A flow the chosen callout cannot take anyway (full chain, no key)
	 * meets its --on-failure policy below; looking for its listener first
	 * would only cost a lookup and answer the wrong question. */
	w->can_take = hops + w->carried < CONNREDIR_MAX_HOPS && mac_key() != NULL;
	bpf_loop(CONNREDIR_CANDIDATES_MAX, classify_one, w, 0);
	if (w->refuse || !w->found)
		return NULL;

	/* The step hands back ids, not pointers: look the two up again. A
	 * callout or filter deleted in between leaves the connect alone. */
	chosen_id = w->chosen_id;
	chosen = bpf_map_lookup_elem(&callouts, &chosen_id);
	chosen_f = bpf_map_lookup_elem(&filters, &w->chosen_fid);
	if (!chosen || !chosen_f || !(chosen->flags & CONNREDIR_CALLOUT_F_USED))
		return NULL;
	proxy = callout_proxy(chosen, w->family);
	if (!proxy)
		return NULL;
	if (hops >= CONNREDIR_MAX_HOPS) {
		stat_inc(CONNREDIR_STAT_HOP_CAP);
		callout_stat_inc(chosen_id, CONNREDIR_CSTAT_HOP_CAP);
		flags = cannot_redirect(chosen, chosen_id, w);
		trace_note(w, chosen_id, w->chosen_fid, CONNREDIR_TV_HOP_CAP, flags);
		return NULL;
	}
	if (hops + w->carried >= CONNREDIR_MAX_HOPS) {
		/* The loop breaker: this flow already passed proxies that did not
		 * carry its records; with them it is past the chain cap. */
		stat_inc(CONNREDIR_STAT_LOOP_BROKEN);
		callout_stat_inc(chosen_id, CONNREDIR_CSTAT_LOOP_BROKEN);
		flags = cannot_redirect(chosen, chosen_id, w);
		trace_note(w, chosen_id, w->chosen_fid, CONNREDIR_TV_LOOP_BROKEN, flags);
		return NULL;
	}
	if (!mac_key()) { /* not initialised: no records */
		flags = cannot_redirect(chosen, chosen_id, w);
		trace_note(w, chosen_id, w->chosen_fid, CONNREDIR_TV_NO_KEY, flags);
		return NULL;
	}

	if (!st) {
		st = bpf_sk_storage_get(&sk_state, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
			callout_stat_inc(chosen_id, CONNREDIR_CSTAT_STORAGE_FAIL);
			flags = cannot_redirect(chosen, chosen_id, w);
			trace_note(w, chosen_id, w->chosen_fid, CONNREDIR_TV_STORAGE_FAIL, flags);
			return NULL;
		}
	}
	if (!(st->flags & CONNREDIR_SK_RECORDS_SET)) {
		new_flow(&st->records, w->uid);
		st->records.carried_hops = w->carried;
	}
	st->in_hops = hops;
	if (hops < CONNREDIR_MAX_HOPS) {
		struct connredir_hop *h = &st->records.hops[hops];

		h->callout_id = chosen_id;
		h->filter_id = chosen_f->id;
		h->time_ns = bpf_ktime_get_boot_ns();
		h->dst = *dst;
		h->proxy_uid = chosen->proxy_uid;
		h->proxy_cgroup = chosen->proxy_cgroup;
	}
	st->records.hop_count = hops + 1;

	st->context.magic = CONNREDIR_CONTEXT_MAGIC;
	st->context.version = CONNREDIR_ABI_VERSION;
	st->context.flow_id = st->records.flow_id;
	st->context.callout_id = chosen_id;
	st->context.filter_id = chosen_f->id;
	st->context.orig_dst = *dst;
	st->context.pid = st->records.origin.pid;
	st->context.uid = st->records.origin.uid;
	st->context.cgroup_id = st->records.origin.cgroup_id;
	__builtin_memcpy(st->context.comm, st->records.origin.comm, sizeof(st->context.comm));
	st->context.hop = hops + 1;
	st->context.user_len = chosen_f->user_len > CONNREDIR_USER_CONTEXT_MAX
				       ? CONNREDIR_USER_CONTEXT_MAX
				       : chosen_f->user_len;
	st->context.size = CONNREDIR_CONTEXT_HDR_SIZE + st->context.user_len;
	__builtin_memcpy(st->context.user, chosen_f->user, CONNREDIR_USER_CONTEXT_MAX);
	/* Remember where we sent it: TCP_CONNECT_CB publishes only if the socket
	 * really connects there (a later re-connect of this socket elsewhere must
	 * not inherit the flow). */
	__builtin_memcpy(st->handoff.proxy_ip, proxy->addr, 16);
	st->handoff.proxy_port = proxy->port;
	st->flags |= CONNREDIR_SK_REDIRECTED;
	stat_inc(CONNREDIR_STAT_REDIRECTED);
	callout_stat_inc(chosen_id, CONNREDIR_CSTAT_REDIRECTED);
	trace_note(w, chosen_id, w->chosen_fid, CONNREDIR_TV_REDIRECTED, 0);
	return proxy;
}

/*
 * Classify one TCP connect and redirect it if a filter says so: the
 * destination's candidate filters from the index (none: untouched, no state,
 * no event), the decision, and an event for `connredir trace` if a lease is
 * in force. Returns the proxy to connect to instead, or NULL to leave the
 * connect alone; *refuse is set when the connect must fail. Tracing only
 * reads the decision: it cannot change it.
 */
static __always_inline const struct connredir_addr *classify_connect(
	struct bpf_sock_addr *ctx, const struct connredir_addr *dst, int *refuse)
{
	struct classify_walk w __attribute__((aligned(8))) = {};
	struct connredir_lpm_key key = {};
	struct connredir_candidates *cands;
	const struct connredir_addr *proxy;
	struct trace_summary *ts;

	if (dst->family == CONNREDIR_AF_INET) {
		key.prefixlen = 8 + 32;
		key.family = CONNREDIR_LPM_FAM_V4;
		__builtin_memcpy(key.addr, &dst->addr[12], 4);
	} else {
		key.prefixlen = 8 + 128;
		key.family = CONNREDIR_LPM_FAM_V6;
		__builtin_memcpy(key.addr, dst->addr, 16);
	}
	cands = bpf_map_lookup_elem(&filter_index, &key);
	if (!cands)
		return NULL; /* matches no filter: untouched, no state */
	stat_inc(CONNREDIR_STAT_CLASSIFIED);

	w.ctx = ctx;
	w.cands = cands;
	w.family = dst->family;
	w.port_host = bpf_ntohs(dst->port);
	if (tracing()) {
		ts = trace_summary();
		if (ts) {
			__builtin_memset(ts, 0, sizeof(*ts));
			w.trace = 1;
		}
	}
	proxy = classify_candidates(&w, dst);
	*refuse = w.refuse;
	if (!w.trace)
		return proxy;
	ts = trace_summary();
	if (!ts)
		return proxy;
	ts->dst = *dst;
	ts->hops = w.hops;
	ts->implicit = w.implicit;
	ts->carried = w.carried;
	if (w.refuse) {
		ts->outcome = CONNREDIR_TRACE_OUT_REFUSED;
	} else if (proxy) {
		ts->outcome = CONNREDIR_TRACE_OUT_REDIRECTED;
		ts->final_dst = *proxy;
	} else {
		ts->outcome = CONNREDIR_TRACE_OUT_DIRECT;
		ts->final_dst = *dst;
	}
	trace_emit();
	return proxy;
}

/* The inspection this flow requires cannot happen: fail the connect at once
 * with ECONNREFUSED, as if the destination had refused it. */
static __always_inline int refuse_connect(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/connect4")
int connredir_connect4(struct bpf_sock_addr *ctx)
{
	struct connredir_addr dst __attribute__((aligned(8))) = {};
	const struct connredir_addr *proxy;
	__u32 ip, proxy_ip;
	int refuse = 0;

	if (ctx->type != SOCK_STREAM)
		return ALLOW; /* TCP only; UDP is its own design */
	ip = ctx->user_ip4;
	addr_set_v4(&dst, ip, (__u16)ctx->user_port);
	proxy = classify_connect(ctx, &dst, &refuse);
	if (refuse)
		return refuse_connect();
	if (!proxy)
		return ALLOW;
	proxy_ip = addr_word(proxy, 3);
	ctx->user_ip4 = proxy_ip;
	ctx->user_port = proxy->port;
	return ALLOW;
}

SEC("cgroup/connect6")
int connredir_connect6(struct bpf_sock_addr *ctx)
{
	struct connredir_addr dst __attribute__((aligned(8))) = {};
	const struct connredir_addr *proxy;
	__u32 w0, w1, w2, w3;
	int refuse = 0;

	if (ctx->type != SOCK_STREAM)
		return ALLOW;
	w0 = ctx->user_ip6[0];
	w1 = ctx->user_ip6[1];
	w2 = ctx->user_ip6[2];
	w3 = ctx->user_ip6[3];
	addr_set_v6(&dst, w0, w1, w2, w3, (__u16)ctx->user_port);
	proxy = classify_connect(ctx, &dst, &refuse);
	if (refuse)
		return refuse_connect();
	if (!proxy)
		return ALLOW;
	/* A v4-mapped destination got an IPv4 proxy: keep it v4-mapped. */
	ctx->user_ip6[0] = addr_word(proxy, 0);
	ctx->user_ip6[1] = addr_word(proxy, 1);
	ctx->user_ip6[2] = addr_word(proxy, 2);
	ctx->user_ip6[3] = addr_word(proxy, 3);
	ctx->user_port = proxy->port;
	return ALLOW;
}

/* ---- Hand-off (sockops) ------------------------------------------------- */

/* The connection's two ends from a sockops context, IPv4 as v4-mapped. */
static __always_inline void skops_ends(struct bpf_sock_ops *skops, struct connredir_addr *local,
				       struct connredir_addr *remote)
{
	__u32 family = skops->family;
	__u16 lport = bpf_htons((__u16)skops->local_port);
	__u16 rport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));

	if (family == AF_INET) {
		addr_set_v4(local, skops->local_ip4, lport);
		addr_set_v4(remote, skops->remote_ip4, rport);
	} else {
		__u32 l0 = skops->local_ip6[0], l1 = skops->local_ip6[1];
		__u32 l2 = skops->local_ip6[2], l3 = skops->local_ip6[3];
		__u32 r0 = skops->remote_ip6[0], r1 = skops->remote_ip6[1];
		__u32 r2 = skops->remote_ip6[2], r3 = skops->remote_ip6[3];

		addr_set_v6(local, l0, l1, l2, l3, lport);
		addr_set_v6(remote, r0, r1, r2, r3, rport);
	}
}

static __always_inline void flow_key(struct bpf_sock_ops *skops, struct connredir_flow_key *key,
				     const struct connredir_addr *client,
				     const struct connredir_addr *proxy)
{
	/* Loopback 4-tuples repeat across namespaces: scope them by netns. A
	 * routable proxy address may be in another namespace (veth): unscoped. */
	key->netns = addr_is_loopback(proxy) ? bpf_get_netns_cookie(skops) : 0;
	__builtin_memcpy(key->client_ip, client->addr, 16);
	__builtin_memcpy(key->proxy_ip, proxy->addr, 16);
	key->client_port = client->port;
	key->proxy_port = proxy->port;
	key->reserved = 0;
}

static __always_inline void publish_flow(struct bpf_sock_ops *skops)
{
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct connredir_addr remote __attribute__((aligned(8))) = {};
	const struct connredir_secret *k;
	struct connredir_sk_state *st;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_REDIRECTED))
		return;
	k = mac_key();
	if (!k)
		return;
	skops_ends(skops, &local, &remote);
	if (!same_ip(remote.addr, st->handoff.proxy_ip) || remote.port != st->handoff.proxy_port) {
		/* Redirected by an earlier connect attempt, now connecting to a
		 * destination no filter covers: not a proxied flow any more. */
		handoff_retire(st);
		st->flags &= ~CONNREDIR_SK_REDIRECTED;
		return;
	}
	if (st->records.hop_count == 1)
		st->records.origin.src = local;
	st->context.orig_src = st->records.origin.src;
	st->records.mac = records_mac(k, &st->records);
	flow_key(skops, &st->handoff, &local, &remote);
	st->flags |= CONNREDIR_SK_PUBLISHED;
	if (bpf_map_update_elem(&handoff, &st->handoff, st, BPF_ANY)) {
		st->flags &= ~CONNREDIR_SK_PUBLISHED;
		stat_inc(CONNREDIR_STAT_PUBLISH_FAIL);
		return;
	}
	stat_inc(CONNREDIR_STAT_PUBLISHED);
}

static __always_inline void adopt_flow(struct bpf_sock_ops *skops)
{
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct connredir_addr remote __attribute__((aligned(8))) = {};
	struct connredir_flow_key key = {};
	struct connredir_sk_state *pending, *st;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	skops_ends(skops, &local, &remote);
	flow_key(skops, &key, &remote, &local);
	pending = bpf_map_lookup_elem(&handoff, &key);
	if (!pending)
		return;
	st = bpf_sk_storage_get(&sk_state, sk, pending, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
		return;
	}
	st->flags = CONNREDIR_SK_ACCEPTED;
	bpf_map_delete_elem(&handoff, &key);
	stat_inc(CONNREDIR_STAT_ACCEPTED);
	implicit_offer(skops, st);
}

SEC("sockops")
int connredir_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		publish_flow(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		adopt_flow(skops);
		break;
	default:
		break;
	}
	return ALLOW;
}

SEC("cgroup/sock_release")
int connredir_sock_release(struct bpf_sock *sk)
{
	struct connredir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);

	if (st)
		handoff_retire(st);
	return ALLOW;
}

/* ---- Socket options ------------------------------------------------------ */

/* getsockopt: the kernel handler already ran; ctx->retval holds its verdict
 * and we override it only for what we own. */
static __always_inline int get_fail(struct bpf_sockopt *ctx, int err)
{
	ctx->retval = -err;
	return 1;
}

/* Principals are per callout: only the principal of the callout that
 * redirected this flow to the socket (or root) may read it. The hop must
 * still name the callout's principal as it is now, so a callout deleted and
 * re-added under the same id with another principal does not hand the new
 * principal the old one's flows. */
static __always_inline int caller_serves_flow(const struct connredir_sk_state *st)
{
	const struct connredir_callout *c;
	const struct connredir_hop *h;
	__u32 cid = st->context.callout_id;
	__u32 hop = st->context.hop;

	if ((__u32)bpf_get_current_uid_gid() == 0)
		return 1;
	if (hop < 1 || hop > CONNREDIR_MAX_HOPS)
		return 0;
	h = &st->records.hops[(hop - 1) & (CONNREDIR_MAX_HOPS - 1)];
	c = bpf_map_lookup_elem(&callouts, &cid);
	if (!c || !(c->flags & CONNREDIR_CALLOUT_F_USED) || h->callout_id != cid ||
	    h->proxy_uid != c->proxy_uid || h->proxy_cgroup != c->proxy_cgroup)
		return 0;
	return caller_serves(c);
}

static __always_inline int get_connredir(struct bpf_sockopt *ctx)
{
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;
	int optname = ctx->optname;
	int optlen = ctx->optlen;
	void *optval = ctx->optval;
	void *end = ctx->optval_end;

	if (optname != CONNREDIR_RECORDS && optname != CONNREDIR_CONTEXT)
		return get_fail(ctx, ENOPROTOOPT);
	if (!caller_authorized()) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return get_fail(ctx, EACCES);
	}
	if (!sk)
		return get_fail(ctx, ENOENT);
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_ACCEPTED))
		return get_fail(ctx, ENOENT);
	if (!caller_serves_flow(st)) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return get_fail(ctx, EACCES);
	}

	if (optname == CONNREDIR_RECORDS) {
		if (optlen < (int)sizeof(st->records) || optval + sizeof(st->records) > end)
			return get_fail(ctx, ENOBUFS);
		__builtin_memcpy(optval, &st->records, sizeof(st->records));
		ctx->optlen = sizeof(st->records);
	} else {
		if (optlen < (int)sizeof(st->context) || optval + sizeof(st->context) > end)
			return get_fail(ctx, ENOBUFS);
		__builtin_memcpy(optval, &st->context, sizeof(st->context));
		ctx->optlen = sizeof(st->context);
	}
	ctx->retval = 0;
	return 1;
}

/* SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, as iptables REDIRECT answers them,
 * so existing transparent proxies work unchanged. Sockets we did not hand a
 * flow to keep the kernel's own answer. */
static __always_inline int get_original_dst(struct bpf_sockopt *ctx, int level)
{
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;
	const struct connredir_addr *d;
	int optlen = ctx->optlen;
	void *optval = ctx->optval;
	void *end = ctx->optval_end;

	if (!sk)
		return 1;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_ACCEPTED))
		return 1;
	d = &st->context.orig_dst;
	if (level == CONNREDIR_SOL_IP) {
		struct sockaddr_in sin = {};

		if (d->family != CONNREDIR_AF_INET)
			return 1;
		if (optlen < (int)sizeof(sin) || optval + sizeof(sin) > end)
			return get_fail(ctx, EINVAL);
		sin.sin_family = AF_INET;
		sin.sin_port = d->port;
		sin.sin_addr.s_addr = addr_word(d, 3);
		__builtin_memcpy(optval, &sin, sizeof(sin));
		ctx->optlen = sizeof(sin);
	} else {
		struct sockaddr_in6 sin6 = {};

		if (optlen < (int)sizeof(sin6) || optval + sizeof(sin6) > end)
			return get_fail(ctx, EINVAL);
		sin6.sin6_family = AF_INET6;
		sin6.sin6_port = d->port;
		__builtin_memcpy(&sin6.sin6_addr, d->addr, 16);
		__builtin_memcpy(optval, &sin6, sizeof(sin6));
		ctx->optlen = sizeof(sin6);
	}
	ctx->retval = 0;
	return 1;
}

SEC("cgroup/getsockopt")
int connredir_getsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level;
	int optname = ctx->optname;

	if (level == SOL_CONNREDIR)
		return get_connredir(ctx);
	if ((level == CONNREDIR_SOL_IP && optname == CONNREDIR_SO_ORIGINAL_DST) ||
	    (level == CONNREDIR_SOL_IPV6 && optname == CONNREDIR_IP6T_SO_ORIGINAL_DST))
		return get_original_dst(ctx, level);
	return 1;
}

/* setsockopt runs before the kernel: an error is set with bpf_set_retval and
 * success bypasses the kernel (optlen = -1), which does not know our level. */
static __always_inline int set_fail(int err)
{
	bpf_set_retval(-err);
	return 1;
}

/* bpf_loop callback: count a refused blob against callout `id` if the
 * caller is that callout's own principal (its proxy uid or cgroup). */
static long blame_one(__u32 id, void *data)
{
	const struct connredir_callout *c;
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	if (id == 0)
		return 0;
	c = bpf_map_lookup_elem(&callouts, &id);
	if (!c || !(c->flags & CONNREDIR_CALLOUT_F_USED) || !callout_has_principal(c))
		return 0;
	if ((c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == uid) ||
	    cgroup_is_or_below(c->proxy_cgroup, c->proxy_cgroup_level))
		callout_stat_inc(id, CONNREDIR_CSTAT_RECORDS_REJECTED);
	return 0;
}

/* A refused blob names no callout we can believe (its MAC did not verify),
 * so it is attributed to the sender instead: to every callout whose proxy
 * principal the caller is. Root and `authorize`d principals serve no callout
 * in particular and are counted host-wide only. Rare path (a proxy bug or an
 * attack), so a scan of the callouts is affordable here. */
static __always_inline void blame_rejected_records(void)
{
	bpf_loop(CONNREDIR_MAX_CALLOUTS, blame_one, NULL, 0);
}

static __always_inline int set_records(struct bpf_sockopt *ctx)
{
	const struct connredir_secret *k;
	struct connredir_records *r;
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;
	int optlen = ctx->optlen;
	void *optval = ctx->optval;
	void *end = ctx->optval_end;
	__u32 zero = 0;

	if (!caller_authorized()) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return set_fail(EACCES);
	}
	if (!sk)
		return set_fail(EINVAL);
	if (sk->type != SOCK_STREAM || sk->protocol != IPPROTO_TCP)
		return set_fail(EOPNOTSUPP);
	if (sk->state != BPF_TCP_CLOSE)
		return set_fail(EISCONN);
	if (optlen != (int)sizeof(*r) || optval + sizeof(*r) > end)
		goto reject;
	r = bpf_map_lookup_elem(&scratch, &zero);
	k = mac_key();
	if (!r || !k)
		goto reject;
	__builtin_memcpy(r, optval, sizeof(*r));
	if (r->magic != CONNREDIR_RECORDS_MAGIC || r->version != CONNREDIR_ABI_VERSION ||
	    r->size != sizeof(*r) || r->hop_count == 0 || r->hop_count > CONNREDIR_MAX_HOPS)
		goto reject;
	if (!records_tail_zero(r) || records_mac(k, r) != r->mac)
		goto reject;

	st = bpf_sk_storage_get(&sk_state, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
		return set_fail(ENOBUFS);
	}
	__builtin_memcpy(&st->records, r, sizeof(*r));
	st->flags = CONNREDIR_SK_RECORDS_SET;
	st->in_hops = 0;
	ctx->optlen = -1;
	stat_inc(CONNREDIR_STAT_RECORDS_SET);
	return 1;
reject:
	stat_inc(CONNREDIR_STAT_RECORDS_REJECTED);
	blame_rejected_records();
	return set_fail(EINVAL);
}

SEC("cgroup/setsockopt")
int connredir_setsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_CONNREDIR)
		return 1;
	if (ctx->optname != CONNREDIR_RECORDS)
		return set_fail(ENOPROTOOPT);
	return set_records(ctx);
}

/* ---- Proxy listeners (bind4/6) ------------------------------------------ */

static __always_inline int addr_is_wildcard(const struct connredir_addr *a)
{
	if (a->family == CONNREDIR_AF_INET)
		return addr_word(a, 3) == 0;
	return addr_word(a, 0) == 0 && addr_word(a, 1) == 0 && addr_word(a, 2) == 0 &&
	       addr_word(a, 3) == 0;
}

static __always_inline int same_endpoint(const struct connredir_addr *a,
					 const struct connredir_addr *b)
{
	return a->port == b->port && same_ip(a->addr, b->addr);
}

/* Would a listener bound at `a` receive flows redirected to callout c? */
static __always_inline int bind_takes_proxy(const struct connredir_addr *a,
					    const struct connredir_callout *c)
{
	int v6_any = a->family == CONNREDIR_AF_INET6 && addr_is_wildcard(a);

	if (c->flags & CONNREDIR_CALLOUT_F_PROXY4 && a->port == c->proxy4.port &&
	    (same_endpoint(a, &c->proxy4) || v6_any ||
	     (a->family == CONNREDIR_AF_INET && addr_is_wildcard(a))))
		return 1;
	if (c->flags & CONNREDIR_CALLOUT_F_PROXY6 && a->port == c->proxy6.port &&
	    (same_endpoint(a, &c->proxy6) || v6_any))
		return 1;
	return 0;
}

/*
 * A redirected flow carries the application's bytes and its original
 * destination to whoever listens at the proxy address. So only root and the
 * callout's own principal may bind a callout's proxy address (or the wildcard
 * on its port); anyone else, including another callout's principal, gets
 * EACCES. Every bind that is allowed records its owner in sk_owner: the
 * connect side redirects only to a listener whose owner serves the callout,
 * which also covers listeners bound before the callout existed. Runs only on
 * explicit bind(), never on the connect path.
 */
struct bind_scan {
	struct connredir_addr addr;
	struct connredir_sk_owner who; /* the binding task */
	int denied;
};

/* bpf_loop callback: does the bind take callout `id`'s proxy address while
 * the caller is not that callout's principal? */
static long bind_scan_one(__u32 id, void *data)
{
	struct bind_scan *scan = data;
	const struct connredir_callout *c;

	if (id == 0)
		return 0;
	c = bpf_map_lookup_elem(&callouts, &id);
	if (c && (c->flags & CONNREDIR_CALLOUT_F_USED) && bind_takes_proxy(&scan->addr, c) &&
	    !owner_serves(&scan->who, c)) {
		scan->denied = 1;
		return 1; /* stop */
	}
	return 0;
}

static __always_inline int guard_proxy_bind(struct bpf_sock_addr *ctx, struct bind_scan *scan)
{
	struct connredir_sk_owner *o;
	struct bpf_sock *sk = ctx->sk;

	if (scan->addr.port == 0)
		return ALLOW; /* an ephemeral port is nobody's proxy address */
	current_owner(&scan->who);
	if (!(scan->who.flags & CONNREDIR_OWNER_F_ROOT))
		bpf_loop(CONNREDIR_MAX_CALLOUTS, bind_scan_one, scan, 0);
	if (scan->denied) {
		stat_inc(CONNREDIR_STAT_DENIED);
		bpf_set_retval(-EACCES);
		return 0;
	}
	if (!sk)
		return ALLOW;
	o = bpf_sk_storage_get(&sk_owner, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (o)
		__builtin_memcpy(o, &scan->who, sizeof(*o));
	/* No memory for the mark: the socket is simply never a redirect
	 * target (fail closed), so the bind itself may proceed. */
	return ALLOW;
}

SEC("cgroup/bind4")
int connredir_bind4(struct bpf_sock_addr *ctx)
{
	struct bind_scan scan __attribute__((aligned(8))) = {};
	__u32 ip = ctx->user_ip4;

	if (ctx->type != SOCK_STREAM)
		return ALLOW;
	addr_set_v4(&scan.addr, ip, (__u16)ctx->user_port);
	return guard_proxy_bind(ctx, &scan);
}

SEC("cgroup/bind6")
int connredir_bind6(struct bpf_sock_addr *ctx)
{
	struct bind_scan scan __attribute__((aligned(8))) = {};
	__u32 w0, w1, w2, w3;

	if (ctx->type != SOCK_STREAM)
		return ALLOW;
	w0 = ctx->user_ip6[0];
	w1 = ctx->user_ip6[1];
	w2 = ctx->user_ip6[2];
	w3 = ctx->user_ip6[3];
	addr_set_v6(&scan.addr, w0, w1, w2, w3, (__u16)ctx->user_port);
	return guard_proxy_bind(ctx, &scan);
}

/* ---- Transparency (getpeername) ----------------------------------------- */

static __always_inline const struct connredir_addr *redirected_peer(struct bpf_sock_addr *ctx)
{
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return NULL;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_REDIRECTED))
		return NULL;
	return &st->context.orig_dst;
}

SEC("cgroup/getpeername4")
int connredir_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct connredir_addr *d = redirected_peer(ctx);

	if (d && d->family == CONNREDIR_AF_INET) {
		ctx->user_ip4 = addr_word(d, 3);
		ctx->user_port = d->port;
	}
	return ALLOW;
}

SEC("cgroup/getpeername6")
int connredir_getpeername6(struct bpf_sock_addr *ctx)
{
	const struct connredir_addr *d = redirected_peer(ctx);

	if (d) {
		ctx->user_ip6[0] = addr_word(d, 0);
		ctx->user_ip6[1] = addr_word(d, 1);
		ctx->user_ip6[2] = addr_word(d, 2);
		ctx->user_ip6[3] = addr_word(d, 3);
		ctx->user_port = d->port;
	}
	return ALLOW;
}
