/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Redirect a classified connect: the named steps from the destination's
 * candidate filters to the rewritten destination and the socket's state
 * (records with the new hop, the context the proxy will read); and what
 * the redirected socket's owner sees afterwards (getpeername).
 */
#ifndef CONNREDIR_LIB_REDIRECT_H
#define CONNREDIR_LIB_REDIRECT_H

#include "implicit.h"

/* Step 1, candidates: the filters whose prefix contains the destination, in
 * WFP order, compiled by the control plane into one LPM entry per prefix.
 * NULL: no filter can match, and the connect is left alone with no state. */
static __always_inline struct connredir_candidates *lookup_candidates(
	const struct connredir_addr *dst)
{
	struct connredir_lpm_key key = {};

	if (dst->family == CONNREDIR_AF_INET) {
		key.prefixlen = 8 + 32;
		key.family = CONNREDIR_LPM_FAM_V4;
		__builtin_memcpy(key.addr, &dst->addr[12], 4);
	} else {
		key.prefixlen = 8 + 128;
		key.family = CONNREDIR_LPM_FAM_V6;
		__builtin_memcpy(key.addr, dst->addr, 16);
	}
	return bpf_map_lookup_elem(&filter_index, &key);
}

/* Step 2, chain: the hops the flow already passed, from the records its
 * proxy attached (explicitly, or implicitly through an offer), or from an
 * earlier connect attempt of this socket. Fills w->hops, last, seen and
 * carried; returns the socket's state, which implicit_take may have
 * created. */
static __always_inline struct connredir_sk_state *read_chain(struct classify_walk *w,
							     const struct connredir_addr *dst,
							     struct connredir_sk_state *st,
							     struct bpf_sock *sk, int send)
{
	__u32 hops = 0, last = 0, i;
	__u64 seen = 0;

	/* Implicit offers come from accepted TCP connections: a UDP socket
	 * has records only if its proxy set them. */
	if (!st || !(st->flags & (CONNREDIR_SK_RECORDS_SET | CONNREDIR_SK_REDIRECTED))) {
		if (!send && w->proto == CONNREDIR_PROTO_TCP) /* `send` a constant: */
			st = implicit_take(w, dst, st, sk);   /* no stack for it there */
	} else if (!(st->flags & CONNREDIR_SK_RECORDS_SET))
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
	return st;
}

/* Step 3, pick: the first candidate whose callout takes the flow, or one
 * that refuses it (classify_one). */
static __always_inline void pick_callout(struct classify_walk *w)
{
	/* A flow the chosen callout cannot take anyway (full chain, no key)
	 * meets its --on-failure policy below; looking for its listener first
	 * would only cost a lookup and answer the wrong question. */
	w->can_take = w->hops + w->carried < CONNREDIR_MAX_HOPS && mac_key() != NULL;
	bpf_loop(CONNREDIR_CANDIDATES_MAX, classify_one, w, 0);
}

/* Step 4, can the chosen callout take it? Its chain cap, the loop breaker,
 * the MAC key. Returns the trace verdict that stops it (after counting it
 * and applying --on-failure), or CONNREDIR_TV_REDIRECTED. */
static __always_inline __u8 chosen_can_take(struct classify_walk *w,
					    const struct connredir_callout *chosen)
{
	__u32 cid = w->chosen_id;

	if (w->hops >= CONNREDIR_MAX_HOPS) {
		stat_inc(CONNREDIR_STAT_HOP_CAP);
		callout_stat_inc(cid, CONNREDIR_CSTAT_HOP_CAP);
		return CONNREDIR_TV_HOP_CAP;
	}
	if (w->hops + w->carried >= CONNREDIR_MAX_HOPS) {
		/* The loop breaker: this flow already passed proxies that did not
		 * carry its records; with them it is past the chain cap. */
		stat_inc(CONNREDIR_STAT_LOOP_BROKEN);
		callout_stat_inc(cid, CONNREDIR_CSTAT_LOOP_BROKEN);
		return CONNREDIR_TV_LOOP_BROKEN;
	}
	if (!mac_key()) /* not initialised: no records */
		return CONNREDIR_TV_NO_KEY;
	return CONNREDIR_TV_REDIRECTED;
}

/* Step 5, record the hop: the flow's records gain the chosen callout (a
 * flow without records starts here). */
static __always_inline void record_hop(struct classify_walk *w, struct connredir_sk_state *st,
				       const struct connredir_callout *chosen,
				       const struct connredir_filter *chosen_f,
				       const struct connredir_addr *dst)
{
	__u32 hops = w->hops;

	if (!(st->flags & CONNREDIR_SK_RECORDS_SET)) {
		new_flow(&st->records, w->uid);
		st->records.carried_hops = w->carried;
	}
	st->in_hops = hops;
	if (hops < CONNREDIR_MAX_HOPS) {
		struct connredir_hop *h = &st->records.hops[hops];

		h->callout_id = w->chosen_id;
		h->filter_id = chosen_f->id;
		h->time_ns = bpf_ktime_get_boot_ns();
		h->dst = *dst;
		h->proxy_uid = chosen->proxy_uid;
		h->proxy_cgroup = chosen->proxy_cgroup;
	}
	st->records.hop_count = hops + 1;
}

/* Step 6, fill the context the proxy will read (WFP's redirect context:
 * the original destination, the application, the filter's user bytes), and
 * remember where the connect goes: the hand-off is published only if the
 * socket really connects there (a later re-connect of this socket elsewhere
 * must not inherit the flow). */
static __always_inline void fill_context(struct classify_walk *w, struct connredir_sk_state *st,
					 const struct connredir_filter *chosen_f,
					 const struct connredir_addr *dst,
					 const struct connredir_addr *proxy)
{
	st->context.magic = CONNREDIR_CONTEXT_MAGIC;
	st->context.version = CONNREDIR_ABI_VERSION;
	st->context.flow_id = st->records.flow_id;
	st->context.callout_id = w->chosen_id;
	st->context.filter_id = chosen_f->id;
	st->context.orig_dst = *dst;
	st->context.pid = st->records.origin.pid;
	st->context.uid = st->records.origin.uid;
	st->context.cgroup_id = st->records.origin.cgroup_id;
	__builtin_memcpy(st->context.comm, st->records.origin.comm, sizeof(st->context.comm));
	st->context.hop = w->hops + 1;
	st->context.user_len = chosen_f->user_len > CONNREDIR_USER_CONTEXT_MAX
				       ? CONNREDIR_USER_CONTEXT_MAX
				       : chosen_f->user_len;
	st->context.size = CONNREDIR_CONTEXT_HDR_SIZE + st->context.user_len;
	__builtin_memcpy(st->context.user, chosen_f->user, CONNREDIR_USER_CONTEXT_MAX);
	__builtin_memcpy(st->handoff.proxy_ip, proxy->addr, 16);
	st->handoff.proxy_port = proxy->port;
	st->flags |= CONNREDIR_SK_REDIRECTED;
}

/*
 * Steps 2 to 4, for a connect and an unconnected UDP send alike: which
 * callout takes the flow. Returns that callout's proxy (for the
 * destination's family), with *cp and *fp the callout and the filter that
 * chose it; NULL leaves the flow alone (w->refuse or w->blocked say whether
 * it must fail instead). *stp is the socket's state, which read_chain may
 * have created. `send` (a constant) for an unconnected send, which takes no
 * implicit records.
 */
static __always_inline const struct connredir_addr *choose_callout(
	struct classify_walk *w, const struct connredir_addr *dst, struct bpf_sock *sk,
	struct connredir_sk_state **stp, const struct connredir_callout **cp,
	const struct connredir_filter **fp, int send)
{
	const struct connredir_callout *chosen;
	const struct connredir_filter *chosen_f;
	const struct connredir_addr *proxy;
	__u32 chosen_id;
	__u8 verdict;

	/* A flow no candidate's conditions apply to goes on untouched,
	 * whatever its chain: skip the chain (and the question whether the
	 * caller is a proxy taking implicit records, which costs a lookup). */
	bpf_loop(CONNREDIR_CANDIDATES_MAX, filter_applies, w, 0);
	if (!w->applies)
		return NULL;
	*stp = read_chain(w, dst, *stp, sk, send);
	pick_callout(w);
	if (w->refuse || w->blocked || !w->found)
		return NULL;

	/* The step hands back ids, not pointers: look the two up again. A
	 * callout or filter deleted in between leaves the flow alone. */
	chosen_id = w->chosen_id;
	chosen = bpf_map_lookup_elem(&callouts, &chosen_id);
	chosen_f = bpf_map_lookup_elem(&filters, &w->chosen_fid);
	if (!chosen || !chosen_f || !(chosen->flags & CONNREDIR_CALLOUT_F_USED))
		return NULL;
	proxy = callout_proxy(chosen, w->family);
	if (!proxy)
		return NULL;
	verdict = chosen_can_take(w, chosen);
	if (verdict != CONNREDIR_TV_REDIRECTED) {
		trace_note(w, chosen_id, w->chosen_fid, verdict,
			   cannot_redirect(chosen, chosen_id, w));
		return NULL;
	}
	*cp = chosen;
	*fp = chosen_f;
	return proxy;
}

/* The chosen callout has no memory for the flow's state: counted, and its
 * --on-failure policy applies. */
static __always_inline void no_room(struct classify_walk *w, const struct connredir_callout *chosen)
{
	__u32 cid = w->chosen_id;

	stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
	callout_stat_inc(cid, CONNREDIR_CSTAT_STORAGE_FAIL);
	trace_note(w, cid, w->chosen_fid, CONNREDIR_TV_STORAGE_FAIL,
		   cannot_redirect(chosen, cid, w));
}

/* A flow redirected: counted host-wide and for its callout, and traced. */
static __always_inline void note_redirected(struct classify_walk *w)
{
	stat_inc(CONNREDIR_STAT_REDIRECTED);
	callout_stat_inc(w->chosen_id, CONNREDIR_CSTAT_REDIRECTED);
	trace_note(w, w->chosen_id, w->chosen_fid, CONNREDIR_TV_REDIRECTED, 0);
}

/*
 * Decide a classified connect (steps 2 to 6). Returns the proxy to connect
 * to instead, or NULL to leave the connect alone; w->refuse is set when the
 * chosen callout's proxy has no listener its principal owns and its
 * --on-proxy-down policy is refuse (the default), or --on-failure refuse
 * applies.
 */
static __always_inline const struct connredir_addr *classify_candidates(
	struct classify_walk *w, const struct connredir_addr *dst)
{
	const struct connredir_callout *chosen = NULL;
	const struct connredir_filter *chosen_f = NULL;
	const struct connredir_addr *proxy;
	struct connredir_sk_state *st;
	struct bpf_sock *sk;

	sk = w->ctx->sk;
	if (!sk)
		return NULL;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (st)
		handoff_retire(st); /* an earlier attempt's hand-off, never adopted */
	proxy = choose_callout(w, dst, sk, &st, &chosen, &chosen_f, 0);
	if (!proxy || !chosen || !chosen_f)
		return NULL;
	if (!st)
		st = bpf_sk_storage_get(&sk_state, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		no_room(w, chosen);
		return NULL;
	}
	record_hop(w, st, chosen, chosen_f, dst);
	fill_context(w, st, chosen_f, dst, proxy);
	note_redirected(w);
	return proxy;
}

/* What a classified connect or send does (besides a rewrite). */
#define CLASSIFY_GO	0 /* proceeds, to its destination or a proxy */
#define CLASSIFY_REFUSE 1 /* fails with ECONNREFUSED: the inspection cannot happen */
#define CLASSIFY_BLOCK	2 /* fails with EPERM: a block filter */

/* Sets a walk up for the candidates of `dst`; while a `connredir trace`
 * lease holds, clears this CPU's trace summary for it. */
static __always_inline void classify_begin(struct classify_walk *w, struct bpf_sock_addr *ctx,
					   const struct connredir_candidates *cands,
					   const struct connredir_addr *dst, __u8 proto)
{
	struct trace_summary *ts;

	stat_inc(CONNREDIR_STAT_CLASSIFIED);
	w->ctx = ctx;
	w->cands = cands;
	w->family = dst->family;
	w->proto = proto;
	w->port_host = bpf_ntohs(dst->port);
	w->uid = (__u32)bpf_get_current_uid_gid();
	w->n = cands->count;
	if (tracing()) {
		ts = trace_summary();
		if (ts) {
			__builtin_memset(ts, 0, sizeof(*ts));
			w->trace = 1;
		}
	}
}

/* The walk's verdict (CLASSIFY_*), and the event for `connredir trace` if
 * a lease is in force. Tracing only reads the decision: it cannot change
 * it. */
static __always_inline int classify_end(struct classify_walk *w, const struct connredir_addr *dst,
					const struct connredir_addr *proxy)
{
	int verdict = w->blocked ? CLASSIFY_BLOCK : w->refuse ? CLASSIFY_REFUSE : CLASSIFY_GO;
	struct trace_summary *ts;

	if (!w->trace)
		return verdict;
	ts = trace_summary();
	if (!ts)
		return verdict;
	ts->dst = *dst;
	ts->proto = w->proto;
	ts->hops = w->hops;
	ts->implicit = w->implicit;
	ts->carried = w->carried;
	if (verdict == CLASSIFY_BLOCK) {
		ts->outcome = CONNREDIR_TRACE_OUT_BLOCKED;
	} else if (verdict == CLASSIFY_REFUSE) {
		ts->outcome = CONNREDIR_TRACE_OUT_REFUSED;
	} else if (proxy) {
		ts->outcome = CONNREDIR_TRACE_OUT_REDIRECTED;
		ts->final_dst = *proxy;
	} else {
		ts->outcome = CONNREDIR_TRACE_OUT_DIRECT;
		ts->final_dst = *dst;
	}
	trace_emit();
	return verdict;
}

/*
 * Classify one TCP or UDP connect and redirect it if a filter says so (step
 * 1, then classify_candidates). Returns the proxy to connect to instead, or
 * NULL to leave the connect alone; *verdict says whether it must fail
 * instead.
 */
static __always_inline const struct connredir_addr *classify_connect(
	struct bpf_sock_addr *ctx, const struct connredir_addr *dst, __u8 proto, int *verdict)
{
	struct classify_walk w __attribute__((aligned(8))) = {};
	struct connredir_candidates *cands;
	const struct connredir_addr *proxy;

	cands = lookup_candidates(dst);
	if (!cands)
		return NULL; /* matches no filter: untouched, no state */
	classify_begin(&w, ctx, cands, dst, proto);
	proxy = classify_candidates(&w, dst);
	*verdict = classify_end(&w, dst, proxy);
	return proxy;
}

/* The inspection this flow requires cannot happen: fail the connect at once
 * with ECONNREFUSED, as if the destination had refused it. */
static __always_inline int refuse_connect(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/* A UDP socket may connect again, elsewhere: a redirect of an earlier
 * connect no longer holds (its replies and getpeername are its own), and
 * its hand-off is withdrawn. TCP cannot connect twice. */
static __always_inline void forget_redirect(struct bpf_sock_addr *ctx)
{
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_REDIRECTED))
		return;
	handoff_retire(st);
	st->flags &= ~CONNREDIR_SK_REDIRECTED;
}

/* A connect hook's work: classify the connect to `dst` (read from ctx) and
 * rewrite its destination to the proxy if a callout takes the flow. `v6`
 * is the hook's family (a constant after inlining). Returns the verdict. */
static __always_inline int redirect_connect(struct bpf_sock_addr *ctx,
					    const struct connredir_addr *dst, int v6, __u8 proto)
{
	const struct connredir_addr *proxy;
	int verdict = CLASSIFY_GO;

	proxy = classify_connect(ctx, dst, proto, &verdict);
	if (verdict == CLASSIFY_BLOCK)
		return 0; /* EPERM, the cgroup hooks' "not permitted" */
	if (verdict == CLASSIFY_REFUSE)
		return refuse_connect();
	if (!proxy) {
		if (proto == CONNREDIR_PROTO_UDP)
			forget_redirect(ctx);
		return ALLOW;
	}
	/* A v4-mapped destination of a v6 socket got an IPv4 proxy: written
	 * back v4-mapped. */
	if (v6)
		sock_addr_write6(ctx, proxy);
	else
		sock_addr_write4(ctx, proxy);
	return ALLOW;
}

/* Transparency: a redirected socket reports its original destination as its
 * peer, so the application never sees the proxy. */
static __always_inline const struct connredir_addr *redirected_peer(struct bpf_sock_addr *ctx)
{
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return NULL;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st)
		return brief_peer(sk); /* established: lib/brief.h */
	if (!(st->flags & CONNREDIR_SK_REDIRECTED))
		return NULL;
	return &st->context.orig_dst;
}

#endif /* CONNREDIR_LIB_REDIRECT_H */
