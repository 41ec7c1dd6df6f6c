/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The hand-off (sockops): the client publishes its redirected flow once its
 * 4-tuple is known (TCP_CONNECT_CB, before the SYN leaves); the proxy's
 * accepted socket adopts it (PASSIVE_ESTABLISHED_CB) and offers it for the
 * proxy's onward connect (implicit records).
 */
#ifndef CONNREDIR_LIB_HANDOFF_H
#define CONNREDIR_LIB_HANDOFF_H

#include "implicit.h"

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
	handoff_key(key, bpf_get_netns_cookie(skops), client, proxy, 0 /* TCP */);
}

static __always_inline void publish_flow(struct bpf_sock_ops *skops)
{
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct connredir_addr remote __attribute__((aligned(8))) = {};
	struct connredir_sk_state *st;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || !(st->flags & CONNREDIR_SK_REDIRECTED))
		return;
	skops_ends(skops, &local, &remote);
	if (!same_ip(remote.addr, st->handoff.proxy_ip) || remote.port != st->handoff.proxy_port) {
		/* Redirected by an earlier connect attempt, now connecting to a
		 * destination no filter covers: not a proxied flow any more. */
		handoff_retire(st);
		st->flags &= ~CONNREDIR_SK_REDIRECTED;
		return;
	}
	handoff_publish(st, bpf_get_netns_cookie(skops), &local, &remote, 0 /* TCP */);
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

#endif /* CONNREDIR_LIB_HANDOFF_H */
