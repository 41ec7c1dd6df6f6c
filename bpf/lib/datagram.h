/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Connected UDP: the hand-off and the way back (docs/UDP-DESIGN.md).
 *
 * A UDP connect is classified and redirected by the same steps as a TCP
 * connect (redirect.h), but there is no SYN to publish the flow at: the
 * source port does not exist at connect time (autobind comes after the
 * hook), and a connected socket's sends run no hook at all. So the flow is
 * published from the other end, when the proxy's socket receives a datagram
 * (recvmsg4/6): the datagram's source and the proxy socket's own address
 * name exactly one connected client socket, which the kernel's own UDP
 * lookup finds. Its records and context go into `handoff` keyed by that
 * pair, once; the proxy selects the flow by its client address
 * (CONNREDIR_UDP_FLOW) and reads it with the TCP options.
 *
 * The client's recvmsg4/6 rewrites a reply's source from the proxy to the
 * original destination, so recvfrom()/recvmsg() never show the proxy.
 */
#ifndef CONNREDIR_LIB_DATAGRAM_H
#define CONNREDIR_LIB_DATAGRAM_H

#include "principals.h"
#include "records.h"
#include "sockopt.h"

#define EADDRNOTAVAIL 99

/* A socket's own bound address, IPv4 as v4-mapped (a v6 socket's
 * v4-mapped address reads as IPv4). */
static __always_inline void sock_local(struct bpf_sock *sk, struct connredir_addr *a)
{
	/* Every field is read before the branch: the verifier refuses the
	 * pointer arithmetic clang makes of `family ? &src_ip4 : &src_ip6`. */
	__u32 family = sk->family;
	__u16 port = bpf_htons((__u16)sk->src_port);
	__u32 ip4 = sk->src_ip4;
	__u32 w0 = sk->src_ip6[0], w1 = sk->src_ip6[1];
	__u32 w2 = sk->src_ip6[2], w3 = sk->src_ip6[3];

	barrier_var(ip4);
	if (family == AF_INET)
		addr_set_v4(a, ip4, port);
	else
		addr_set_v6(a, w0, w1, w2, w3, port);
}

/*
 * A socket some principal bound received a datagram from `client`: if the
 * sender is a redirected client socket connected to this socket's address,
 * publish its flow (the first datagram only; later ones find it published).
 * The lookup is the reply's: a datagram from this socket's address to the
 * client reaches exactly the socket that sent this one. A proxy bound to a
 * wildcard address is not told apart from its peers here; it gets ENOENT
 * from CONNREDIR_UDP_FLOW (docs/ABI.md says to bind the callout's address).
 */
static __always_inline void udp_received_by_proxy(struct bpf_sock_addr *ctx, struct bpf_sock *sk,
						  const struct connredir_addr *client)
{
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct bpf_sock_tuple t = {};
	struct connredir_sk_state *st;
	struct bpf_sock *csk;

	sock_local(sk, &local);
	if (addr_is_wildcard(&local) || local.family != client->family)
		return;
	if (local.family == CONNREDIR_AF_INET) {
		t.ipv4.saddr = addr_word(&local, 3);
		t.ipv4.sport = local.port;
		t.ipv4.daddr = addr_word(client, 3);
		t.ipv4.dport = client->port;
		csk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(t.ipv6.saddr, local.addr, 16);
		t.ipv6.sport = local.port;
		__builtin_memcpy(t.ipv6.daddr, client->addr, 16);
		t.ipv6.dport = client->port;
		csk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!csk)
		return;
	st = bpf_sk_storage_get(&sk_state, csk, NULL, 0);
	if (st && (st->flags & CONNREDIR_SK_REDIRECTED) && !(st->flags & CONNREDIR_SK_PUBLISHED) &&
	    same_ip(st->handoff.proxy_ip, local.addr) && st->handoff.proxy_port == local.port)
		handoff_publish(st, bpf_get_netns_cookie(ctx), client, &local, CONNREDIR_PROTO_UDP);
	bpf_sk_release(csk);
}

/*
 * recvmsg4/6 (`v6` the hook's family): on a redirected client socket, a
 * datagram from its proxy shows the original destination as its source; on
 * a socket a principal bound, the sender's flow is published for the proxy.
 * Runs only when the caller asks for the source address (a plain recv()
 * needs none).
 */
static __always_inline int datagram_received(struct bpf_sock_addr *ctx, int v6)
{
	struct connredir_addr src __attribute__((aligned(8))) = {};
	struct connredir_sk_state *st;
	struct bpf_sock *sk = ctx->sk;
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;

	if (!sk || type != SOCK_DGRAM || protocol != IPPROTO_UDP)
		return ALLOW;
	if (v6)
		sock_addr_read6(ctx, &src);
	else
		sock_addr_read4(ctx, &src);
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (st && (st->flags & CONNREDIR_SK_REDIRECTED)) {
		const struct connredir_addr *d = &st->context.orig_dst;

		if (!same_ip(src.addr, st->handoff.proxy_ip) || src.port != st->handoff.proxy_port)
			return ALLOW;
		if (v6)
			sock_addr_write6(ctx, d);
		else if (d->family == CONNREDIR_AF_INET)
			sock_addr_write4(ctx, d);
		return ALLOW;
	}
	/* Only sockets bound while connredir was up can be proxies. */
	if (bpf_sk_storage_get(&sk_owner, sk, NULL, 0))
		udp_received_by_proxy(ctx, sk, &src);
	return ALLOW;
}

/*
 * setsockopt(SOL_CONNREDIR, CONNREDIR_UDP_FLOW): the proxy names a flow by its
 * client address; the flow published for that client and this socket's own
 * address becomes the socket's, for CONNREDIR_RECORDS / _CONTEXT and
 * SO_ORIGINAL_DST. The same rules as an accepted TCP socket: authorised
 * principals only, and only the principal of the callout that redirected
 * the flow (or root) may have it.
 */
static __always_inline int select_udp_flow(struct bpf_sockopt *ctx)
{
	struct connredir_addr client __attribute__((aligned(8))) = {};
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct connredir_flow_key key = {};
	struct connredir_sk_state *pending, *st;
	struct bpf_sock *sk = ctx->sk;
	int optlen = ctx->optlen;
	void *optval = ctx->optval;
	void *end = ctx->optval_end;

	if (!caller_authorized()) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return set_fail(EACCES);
	}
	if (!sk)
		return set_fail(EINVAL);
	if (sk->type != SOCK_DGRAM || sk->protocol != IPPROTO_UDP)
		return set_fail(EOPNOTSUPP);
	if (optlen != (int)sizeof(struct connredir_udp_flow) ||
	    optval + sizeof(struct connredir_udp_flow) > end)
		return set_fail(EINVAL);
	__builtin_memcpy(&client, optval, sizeof(client));
	if (client.family == CONNREDIR_AF_INET6)
		addr_set_v6(&client, addr_word(&client, 0), addr_word(&client, 1),
			    addr_word(&client, 2), addr_word(&client, 3), client.port);
	else if (client.family == CONNREDIR_AF_INET)
		addr_set_v4(&client, addr_word(&client, 3), client.port);
	else
		return set_fail(EINVAL);
	sock_local(sk, &local);
	if (addr_is_wildcard(&local))
		return set_fail(EADDRNOTAVAIL);
	handoff_key(&key, bpf_get_netns_cookie(ctx), &client, &local, CONNREDIR_PROTO_UDP);
	pending = bpf_map_lookup_elem(&handoff, &key);
	if (!pending)
		return set_fail(ENOENT);
	if (!caller_serves_flow(pending)) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return set_fail(EACCES);
	}
	st = bpf_sk_storage_get(&sk_state, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		stat_inc(CONNREDIR_STAT_STORAGE_FAIL);
		return set_fail(ENOBUFS);
	}
	__builtin_memcpy(st, pending, sizeof(*st));
	st->flags = CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_UDP_FLOW;
	stat_inc(CONNREDIR_STAT_ACCEPTED);
	ctx->optlen = -1;
	return 1;
}

#endif /* CONNREDIR_LIB_DATAGRAM_H */
