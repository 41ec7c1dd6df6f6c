/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Implicit records.
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
#ifndef CONNREDIR_LIB_IMPLICIT_H
#define CONNREDIR_LIB_IMPLICIT_H

#include "classify.h"
#include "records.h"

/* A chain's signature: its callouts in order, its length and its carried
 * hops, exactly (callout ids are below 64: 6 bits per hop, 8 hops in 48
 * bits; then 4 bits of hop count and 8 of carried hops). Two offers whose
 * signatures are equal meet the same redirect state at every callout, so
 * whichever of them an onward connect gets, it continues its own chain. */
_Static_assert(CONNREDIR_MAX_CALLOUTS <= 64 && CONNREDIR_MAX_HOPS <= 8, "a chain fits in 64 bits");
static __always_inline __u64 chain_sig(const struct connredir_records *r)
{
	__u32 n = records_hops_in_use(r), h;
	__u64 sig = (__u64)(n & 15) << 48 | (__u64)(r->carried_hops & 255) << 52;

	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h < n)
			sig |= (__u64)(r->hops[h].callout_id & 63) << (6 * h);
	}
	return sig;
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
	__u64 now = bpf_ktime_get_boot_ns(), sig;

	if (n == 0)
		return;
	h = &st->records.hops[(n - 1) & (CONNREDIR_MAX_HOPS - 1)];
	key.netns = bpf_get_netns_cookie(skops);
	__builtin_memcpy(key.dst, h->dst.addr, 16);
	key.dst_port = h->dst.port;
	key.proto = IPPROTO_TCP;
	key.callout_id = h->callout_id;
	depth = n + st->records.carried_hops;
	sig = chain_sig(&st->records);
	e = bpf_map_lookup_elem(&implicit, &key);
	if (!e) {
		fresh = bpf_map_lookup_elem(&implicit_scratch, &zero);
		if (!fresh)
			return;
		fresh->pending = 1;
		fresh->updated_ns = now;
		fresh->mixed = 0;
		fresh->depth = depth;
		fresh->sig = sig;
		__builtin_memcpy(&fresh->records, &st->records, sizeof(fresh->records));
		if (!bpf_map_update_elem(&implicit, &key, fresh, BPF_NOEXIST))
			return;
		e = bpf_map_lookup_elem(&implicit, &key); /* another CPU created it */
		if (!e)
			return;
	}
	if (!implicit_live(e, now)) {
		/* Stale or drained: this flow starts it again. Records, flag and
		 * signature first, the count last, so a take that sees the count
		 * sees them. Another offer doing the same at once may have had
		 * another chain, and one of the two records was overwritten: the
		 * signatures tell (below), and differing chains make the entry
		 * ambiguous rather than a guess. A stale count left by flows
		 * never matched is dropped (the compare-and-swap); losing that
		 * race only adds. */
		__u32 p = e->pending, before;
		__u64 prev;

		__builtin_memcpy(&e->records, &st->records, sizeof(e->records));
		e->mixed = 0;
		e->depth = depth;
		e->updated_ns = now;
		prev = __sync_lock_test_and_set(&e->sig, sig);
		if (p && __sync_val_compare_and_swap(&e->pending, p, 1) == p)
			return;
		before = __sync_fetch_and_add(&e->pending, 1);
		/* Of two offers restarting the entry at once, the later to count
		 * sees the other's signature (returned by its exchange, or in the
		 * entry after its count): only chains that differ make it
		 * ambiguous. Marking every concurrent restart ambiguous, as
		 * before, sent bursts of same-chain flows to every vendor again. */
		if ((before && prev != sig) || *(volatile __u64 *)&e->sig != sig)
			e->mixed = 1;
		return;
	}
	__sync_fetch_and_add(&e->pending, 1);
	if (*(volatile __u64 *)&e->sig != sig)
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

#endif /* CONNREDIR_LIB_IMPLICIT_H */
