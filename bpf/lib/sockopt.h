/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The proxy's contract, as socket options: SOL_CONNREDIR queries and the
 * records set (MAC-verified), and SO_ORIGINAL_DST emulation for proxies
 * written for iptables REDIRECT.
 */
#ifndef CONNREDIR_LIB_SOCKOPT_H
#define CONNREDIR_LIB_SOCKOPT_H

#include "principals.h"
#include "records.h"

/* A socket option's buffer, for copies of whole structures. The kernel
 * hands a program a copy of the caller's buffer: kmalloc'd when it exceeds
 * 32 bytes, so 8-byte aligned. The compiler cannot know that, and a
 * __builtin_memcpy through ctx->optval compiled to one byte load and one
 * byte store per byte: 1408 instructions for a flow view, 944 for a records
 * blob, the larger part of these hooks' run time. Said aligned, it copies
 * whole words (88 pairs for a view).
 *
 * Only where the kernel allows it, though. On an architecture without
 * efficient unaligned access (Debian's mips ports, riscv64 builds without
 * it) the verifier checks alignment and assumes packet-like buffers start 2
 * bytes past an aligned address, so it would refuse word accesses and the
 * whole object. The loader probes for word access (features.cpp,
 * "sockopt_word_access") and sets cfg_optval_words before loading. The
 * variable is read-only to programs and frozen at load, so the verifier
 * knows its value and walks only the branch it selects: on a strict kernel
 * the word copies are never verified. Default 0: byte copies, which load
 * everywhere. */
const volatile __u8 cfg_optval_words = 0;

static __always_inline void *optval_words(void *optval)
{
	return __builtin_assume_aligned(optval, 8);
}

/* n is a constant size: both branches inline as fixed copies. */
#define optval_copy_to(optval, src, n)                                                             \
	do {                                                                                       \
		if (cfg_optval_words)                                                              \
			__builtin_memcpy(optval_words(optval), (src), (n));                        \
		else                                                                               \
			__builtin_memcpy((optval), (src), (n));                                    \
	} while (0)
#define optval_copy_from(dst, optval, n)                                                           \
	do {                                                                                       \
		if (cfg_optval_words)                                                              \
			__builtin_memcpy((dst), optval_words(optval), (n));                        \
		else                                                                               \
			__builtin_memcpy((dst), (optval), (n));                                    \
	} while (0)

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

	if (optname != CONNREDIR_RECORDS && optname != CONNREDIR_CONTEXT &&
	    optname != CONNREDIR_FLOW)
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

	/* records and context are adjacent in sk_state, as in the view. */
	_Static_assert(__builtin_offsetof(struct connredir_sk_state, context) ==
			       __builtin_offsetof(struct connredir_sk_state, records) +
				       __builtin_offsetof(struct connredir_flow_view, context),
		       "sk_state holds a flow view");
	if (optname == CONNREDIR_FLOW) {
		if (optlen < (int)sizeof(struct connredir_flow_view) ||
		    optval + sizeof(struct connredir_flow_view) > end)
			return get_fail(ctx, ENOBUFS);
		optval_copy_to(optval, &st->records, sizeof(struct connredir_flow_view));
		ctx->optlen = sizeof(struct connredir_flow_view);
	} else if (optname == CONNREDIR_RECORDS) {
		if (optlen < (int)sizeof(st->records) || optval + sizeof(st->records) > end)
			return get_fail(ctx, ENOBUFS);
		optval_copy_to(optval, &st->records, sizeof(st->records));
		ctx->optlen = sizeof(st->records);
	} else {
		if (optlen < (int)sizeof(st->context) || optval + sizeof(st->context) > end)
			return get_fail(ctx, ENOBUFS);
		optval_copy_to(optval, &st->context, sizeof(st->context));
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
	if (!((sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) ||
	      (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)))
		return set_fail(EOPNOTSUPP);
	/* An unconnected UDP socket is in TCP_CLOSE too; a connected one has
	 * been classified already. */
	if (sk->state != BPF_TCP_CLOSE)
		return set_fail(EISCONN);
	if (optlen != (int)sizeof(*r) || optval + sizeof(*r) > end)
		goto reject;
	r = bpf_map_lookup_elem(&scratch, &zero);
	k = mac_key();
	if (!r || !k)
		goto reject;
	optval_copy_from(r, optval, sizeof(*r));
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

#endif /* CONNREDIR_LIB_SOCKOPT_H */
