/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The classifier's walk: one bpf_loop step per candidate filter of a
 * connect, in WFP order, deciding which callout takes the flow
 * (filter conditions, redirect state, the proxy listener's owner).
 */
#ifndef CONNREDIR_LIB_CLASSIFY_H
#define CONNREDIR_LIB_CLASSIFY_H

#include "addr.h"
#include "pool.h"
#include "principals.h"
#include "stats.h"
#include "trace.h"

#define PROXY_OWNED	0 /* the callout's principal owns the listener: redirect */
#define PROXY_ABSENT	1 /* nothing listens at a loopback proxy address */
#define PROXY_NOT_OWNER 2 /* someone else's listener (or an unmarked one) is there */

/*
 * Who would receive a connect (or datagram) to the proxy's address in the
 * connecting socket's namespace? The lookup is the kernel's own (a socket
 * bound to the address wins over a wildcard one, as for the SYN or the
 * datagram), so the socket found is the one the flow will reach, except for
 * what docs/SECURITY.md lists (a socket that binds in the microseconds between
 * this check and the SYN; a SO_REUSEPORT group, whose members all share a
 * uid). It owns the flow only if its sk_owner says the callout's principal
 * bound it; an unmarked socket was bound outside the attached cgroups, or
 * before connredir was up. A routable proxy address with nothing bound here
 * is in another namespace (reached over veth): not visible from here, so it
 * is redirected to (PROXY_OWNED) and guarded where it listens.
 */
static __always_inline int proxy_verdict(struct bpf_sock_addr *ctx, const struct connredir_addr *p,
					 const struct connredir_callout *c, __u8 proto, __u8 pool)
{
	struct bpf_sock_tuple t = {};
	struct connredir_sk_owner *o;
	struct bpf_sock *sk;
	__u32 len = sizeof(t.ipv6);
	int v = PROXY_NOT_OWNER;

	if (p->family == CONNREDIR_AF_INET) {
		t.ipv4.daddr = pool ? bpf_htonl(CONNREDIR_UDP_POOL4) : addr_word(p, 3);
		t.ipv4.dport = p->port;
		len = sizeof(t.ipv4);
	} else {
		if (pool)
			t.ipv6.daddr[0] = bpf_htonl(CONNREDIR_UDP_POOL6_W0);
		else
			__builtin_memcpy(t.ipv6.daddr, p->addr, 16);
		t.ipv6.dport = p->port;
	}
	if (proto == CONNREDIR_PROTO_UDP) {
		/* A UDP proxy's socket is unconnected: the lookup of a datagram
		 * from nowhere in particular finds it, and only it. An
		 * unconnected send goes to a pool address at the proxy's port
		 * (pool.h), which only the proxy's wildcard socket receives:
		 * the pool's base address, never given out, finds that socket
		 * (the bind guard keeps everyone else off pool addresses). */
		sk = bpf_sk_lookup_udp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return pool || addr_is_loopback(p) ? PROXY_ABSENT : PROXY_OWNED;
		o = bpf_sk_storage_get(&sk_owner, sk, NULL, 0);
		if (o && owner_serves(o, c))
			v = PROXY_OWNED;
		bpf_sk_release(sk);
		return v;
	}
	sk = bpf_skc_lookup_tcp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
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

/* Does filter f's condition hold for this connect or send (protocol, port,
 * application)? Its destination prefix matched already: the index named it. */
static __always_inline int filter_matches(const struct connredir_filter *f, __u8 proto,
					  __u16 port_host, __u32 uid)
{
	if (f->proto && f->proto != proto)
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
	__u8 family;	  /* CONNREDIR_AF_* of the destination */
	__u8 can_take;	  /* chain not full and MAC key set: worth a listener lookup */
	__u8 trace;	  /* a trace lease holds: note the verdicts in trace_scratch */
	__u8 refuse;	  /* out: fail the connect */
	__u8 found;	  /* out: chosen_* name the callout that takes the flow */
	__u8 implicit;	  /* CONNREDIR_TRACE_IMPLICIT_*: what implicit_take did */
	__u8 proto;	  /* CONNREDIR_PROTO_TCP or _UDP */
	__u8 blocked;	  /* out: a block filter matched: fail with EPERM */
	__u8 applies;	  /* out of filter_applies: some candidate's conditions hold */
	__u8 send;	  /* an unconnected UDP send: redirected to a pool address */
	__u8 no_redirect; /* an unconnected send from a bound port: permit and block only */
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

/* Candidate `i` (below w->n)'s filter if its conditions hold for this
 * connect or send, else NULL; *fid is its id. */
static __always_inline const struct connredir_filter *candidate_filter(struct classify_walk *w,
								       __u32 i, __u32 *fid)
{
	const struct connredir_filter *f;

	*fid = w->cands->ids[i & (CONNREDIR_CANDIDATES_MAX - 1)];
	f = bpf_map_lookup_elem(&filters, fid);
	if (!f || !filter_matches(f, w->proto, w->port_host, w->uid))
		return NULL;
	return f;
}

/* bpf_loop step: does candidate `i`'s filter apply to this connect at all
 * (protocol, port, application)? Stops at the first that does. Reads
 * nothing but the filter: no redirect state, no listener, no counter. */
static long filter_applies(__u32 i, void *data)
{
	struct classify_walk *w = data;
	__u32 fid;

	if (i >= w->n || i >= CONNREDIR_CANDIDATES_MAX)
		return 1;
	if (!candidate_filter(w, i, &fid))
		return 0;
	w->applies = 1;
	return 1;
}

/* A permit or block filter matched: it decides, whatever lower-weight
 * filters would say (returns 1: the walk stops). An action this object does
 * not know (a newer control plane) is skipped: fail open. */
static __always_inline long filter_decides(struct classify_walk *w, __u32 fid, __u8 action)
{
	if (action == CONNREDIR_ACTION_BLOCK) {
		stat_inc(CONNREDIR_STAT_BLOCKED);
		trace_note(w, 0, fid, CONNREDIR_TV_BLOCKED, 0);
		w->blocked = 1;
		return 1;
	}
	if (action == CONNREDIR_ACTION_PERMIT) {
		stat_inc(CONNREDIR_STAT_PERMITTED);
		trace_note(w, 0, fid, CONNREDIR_TV_PERMITTED, 0);
		return 1;
	}
	return 0;
}

/* bpf_loop step: candidate `i`. Skips what does not apply (returns 0: next
 * candidate); stops (returns 1) at the first callout that takes the flow or
 * refuses it, or at a permit or block filter. */
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
	f = candidate_filter(w, i, &fid);
	if (!f)
		return 0;
	if (f->action != CONNREDIR_ACTION_REDIRECT)
		return filter_decides(w, fid, f->action);
	/* UDP is redirected only by a filter that names it (proto udp): a
	 * proxy that relays no UDP would otherwise refuse every UDP flow that
	 * a `proto any` filter written for TCP covers. An unconnected send
	 * from a port its socket bound (a server's reply, a proxy's) is not a
	 * new outbound flow (datagram.h). */
	if (w->proto == CONNREDIR_PROTO_UDP && (f->proto != CONNREDIR_PROTO_UDP || w->no_redirect))
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
	verdict = w->can_take ? proxy_verdict(w->ctx, proxy, c, w->proto, w->send) : PROXY_OWNED;
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

#endif /* CONNREDIR_LIB_CLASSIFY_H */
