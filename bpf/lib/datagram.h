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
 * An unconnected send (sendmsg4/6) is classified by the same steps, per
 * datagram; a redirected one goes to its destination's pool address at the
 * proxy's port (pool.h). Its source port is bound by then, so the flow is
 * stored at its first send in `udp_sends`, keyed by its two ends, and
 * stamped by each later send; the proxy selects it by client and pool
 * address.
 *
 * The client's recvmsg4/6 rewrites a reply's source from the proxy (or the
 * pool address) to the original destination, so recvfrom()/recvmsg() never
 * show the proxy.
 */
#ifndef CONNREDIR_LIB_DATAGRAM_H
#define CONNREDIR_LIB_DATAGRAM_H

#include "pool.h"
#include "principals.h"
#include "records.h"
#include "redirect.h"
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
 * An unconnected send the walk redirects: the flow of (client, pool address
 * of `dst`) is the one stored at its first send if that is still alive
 * (sent on within CONNREDIR_UDP_SEND_IDLE_NS, by the same callout), else a
 * new one: the socket's records (if its proxy set any) gain the hop, the
 * context names the destination, and the flow is sealed and stored for the
 * proxy. Returns 1 with *to the pool address to send to; 0 leaves the send
 * alone (w->refuse or w->blocked say whether it must fail).
 */
static __always_inline int send_redirect(struct classify_walk *w, struct bpf_sock *sk,
					 const struct connredir_addr *dst,
					 const struct connredir_addr *client,
					 struct connredir_addr *to)
{
	const struct connredir_callout *chosen = NULL;
	const struct connredir_filter *chosen_f = NULL;
	const struct connredir_addr *proxy;
	struct connredir_sk_state *st;
	struct udp_send_flow *e;
	struct connredir_flow_key key = {};
	__u64 netns, now;
	__u32 zero = 0, slot;

	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	proxy = choose_callout(w, dst, sk, &st, &chosen, &chosen_f, 1);
	if (!proxy || !chosen || !chosen_f)
		return 0;
	netns = bpf_get_netns_cookie(w->ctx);
	slot = pool_slot(netns, dst);
	if (!slot) {
		no_room(w, chosen);
		return 0;
	}
	pool_addr(to, dst->family, slot, proxy->port);
	handoff_key(&key, netns, client, to, CONNREDIR_PROTO_UDP);
	now = bpf_ktime_get_boot_ns();
	e = bpf_map_lookup_elem(&udp_sends, &key);
	if (e && now - e->last_ns < CONNREDIR_UDP_SEND_IDLE_NS &&
	    e->st.context.callout_id == w->chosen_id &&
	    same_endpoint(&e->st.context.orig_dst, dst)) {
		e->last_ns = now; /* the same flow: nothing to build */
		trace_note(w, w->chosen_id, w->chosen_fid, CONNREDIR_TV_REDIRECTED, 0);
		return 1;
	}
	e = bpf_map_lookup_elem(&udp_send_scratch, &zero);
	if (!e) {
		no_room(w, chosen);
		return 0;
	}
	/* Nothing of the previous flow built here may reach this one's proxy. */
	__builtin_memset(&e->st, 0, sizeof(e->st));
	if (st && (st->flags & CONNREDIR_SK_RECORDS_SET)) {
		__builtin_memcpy(&e->st.records, &st->records, sizeof(e->st.records));
		e->st.flags = CONNREDIR_SK_RECORDS_SET;
	}
	record_hop(w, &e->st, chosen, chosen_f, dst);
	fill_context(w, &e->st, chosen_f, dst, to);
	e->last_ns = now;
	if (flow_seal(&e->st, netns, client, to, CONNREDIR_PROTO_UDP) ||
	    bpf_map_update_elem(&udp_sends, &key, e, BPF_ANY)) {
		no_room(w, chosen);
		return 0;
	}
	stat_inc(CONNREDIR_STAT_PUBLISHED); /* handed to the proxy, as a hand-off is */
	note_redirected(w);
	return 1;
}

/* The source an unconnected send will have: the socket's address, or, for
 * a socket bound to the wildcard, loopback (datagram_sent pins it, so the
 * flow's key is known before routing picks one). *pin says to write it. */
static __always_inline void send_source(struct bpf_sock_addr *ctx, struct bpf_sock *sk, int v6,
					struct connredir_addr *src, int *pin)
{
	__u16 port = bpf_htons((__u16)sk->src_port);

	if (v6) {
		__u32 w0 = ctx->msg_src_ip6[0], w1 = ctx->msg_src_ip6[1];
		__u32 w2 = ctx->msg_src_ip6[2], w3 = ctx->msg_src_ip6[3];

		addr_set_v6(src, w0, w1, w2, w3, port);
		*pin = addr_is_wildcard(src);
		if (*pin)
			addr_set_v6(src, 0, 0, 0, bpf_htonl(1), port);
	} else {
		__u32 ip = ctx->msg_src_ip4;

		addr_set_v4(src, ip, port);
		*pin = addr_is_wildcard(src);
		if (*pin)
			addr_set_v4(src, bpf_htonl(0x7f000001), port);
	}
}

/*
 * sendmsg4/6 (`v6` the hook's family): an unconnected UDP send to `dst`
 * meets permit and block filters, and a redirect filter for UDP sends it to
 * its callout's proxy (send_redirect). A socket that bound its port
 * explicitly (a server replying, a proxy; sk_owner marks it) starts no
 * outbound flow: its sends are never redirected (WFP classifies such
 * replies as inbound traffic, not as connects). Returns the hook's verdict.
 */
static __always_inline int datagram_sent(struct bpf_sock_addr *ctx,
					 const struct connredir_addr *dst, int v6)
{
	struct classify_walk w __attribute__((aligned(8))) = {};
	struct connredir_addr client __attribute__((aligned(8))) = {};
	struct connredir_addr to __attribute__((aligned(8))) = {};
	struct connredir_candidates *cands;
	struct bpf_sock *sk = ctx->sk;
	int verdict, redirected = 0, pin = 0;

	cands = lookup_candidates(dst);
	if (!cands || !sk)
		return ALLOW;
	classify_begin(&w, ctx, cands, dst, CONNREDIR_PROTO_UDP);
	w.send = 1;
	if (bpf_sk_storage_get(&sk_owner, sk, NULL, 0)) {
		w.no_redirect = 1;
		bpf_loop(CONNREDIR_CANDIDATES_MAX, classify_one, &w, 0);
	} else {
		send_source(ctx, sk, v6, &client, &pin);
		redirected = send_redirect(&w, sk, dst, &client, &to);
	}
	verdict = classify_end(&w, dst, redirected ? &to : NULL);
	if (verdict == CLASSIFY_BLOCK)
		return 0; /* EPERM */
	if (verdict == CLASSIFY_REFUSE)
		return refuse_connect();
	if (!redirected)
		return ALLOW;
	if (v6) {
		sock_addr_write6(ctx, &to);
		if (pin)
			ctx->msg_src_ip6[3] = bpf_htonl(1);
	} else {
		sock_addr_write4(ctx, &to);
		if (pin)
			ctx->msg_src_ip4 = bpf_htonl(0x7f000001);
	}
	return ALLOW;
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
	const struct connredir_addr *d;
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
	if (st && (st->flags & CONNREDIR_SK_REDIRECTED) &&
	    same_ip(src.addr, st->handoff.proxy_ip) && src.port == st->handoff.proxy_port) {
		d = &st->context.orig_dst;
	} else {
		/* A reply to an unconnected send: from its destination's pool
		 * address (the check is two compares for any other source). */
		d = pool_destination(ctx, &src);
	}
	if (d) {
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

/* An address the caller passed, in our form (IPv4 v4-mapped, a v6
 * v4-mapped one as IPv4); -1 for an unknown family. */
static __always_inline int addr_normalize(struct connredir_addr *a)
{
	if (a->family == CONNREDIR_AF_INET6)
		addr_set_v6(a, addr_word(a, 0), addr_word(a, 1), addr_word(a, 2), addr_word(a, 3),
			    a->port);
	else if (a->family == CONNREDIR_AF_INET)
		addr_set_v4(a, addr_word(a, 3), a->port);
	else
		return -1;
	return 0;
}

/*
 * setsockopt(SOL_CONNREDIR, CONNREDIR_UDP_FLOW): the proxy names a flow by its
 * client address and the address the datagram came to (this socket's own,
 * if it passes none); the flow published for those two ends (a connected
 * client's hand-off, or an unconnected send's flow) becomes the socket's, for CONNREDIR_RECORDS /
 * _CONTEXT and SO_ORIGINAL_DST. The same rules as an accepted TCP socket: authorised principals
 * only, and only the principal of the callout that redirected the flow (or root) may have it.
 */
static __always_inline int select_udp_flow(struct bpf_sockopt *ctx)
{
	struct connredir_addr client __attribute__((aligned(8))) = {};
	struct connredir_addr local __attribute__((aligned(8))) = {};
	struct connredir_flow_key key = {};
	struct connredir_sk_state *pending, *st;
	struct bpf_sock *sk = ctx->sk;
	__u64 check = 0; /* a flow id to check, not select */
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
	if (optlen == (int)sizeof(struct connredir_udp_flow)) {
		if (optval + sizeof(struct connredir_udp_flow) > end)
			return set_fail(EINVAL);
		__builtin_memcpy(&local, optval + sizeof(client), sizeof(local));
		__builtin_memcpy(&check, optval + 2 * sizeof(client), sizeof(check));
	} else if (optlen == (int)(2 * sizeof(client))) {
		if (optval + 2 * sizeof(client) > end)
			return set_fail(EINVAL);
		__builtin_memcpy(&local, optval + sizeof(client), sizeof(local));
	} else if (optlen != (int)sizeof(client) || optval + sizeof(client) > end) {
		return set_fail(EINVAL);
	}
	__builtin_memcpy(&client, optval, sizeof(client));
	if (addr_normalize(&client))
		return set_fail(EINVAL);
	if (local.family == 0)
		sock_local(sk, &local); /* only the client given: the socket's own address */
	else if (addr_normalize(&local) || local.port != bpf_htons((__u16)sk->src_port))
		return set_fail(EINVAL); /* the local end is this socket's port */
	if (addr_is_wildcard(&local))
		return set_fail(EADDRNOTAVAIL);
	handoff_key(&key, bpf_get_netns_cookie(ctx), &client, &local, CONNREDIR_PROTO_UDP);
	pending = bpf_map_lookup_elem(&handoff, &key);
	if (!pending) {
		/* An unconnected send's flow, while it is alive. */
		struct udp_send_flow *e = bpf_map_lookup_elem(&udp_sends, &key);

		if (!e || bpf_ktime_get_boot_ns() - e->last_ns >= CONNREDIR_UDP_SEND_IDLE_NS)
			return set_fail(ENOENT);
		pending = &e->st;
	}
	if (!caller_serves_flow(pending)) {
		stat_inc(CONNREDIR_STAT_DENIED);
		return set_fail(EACCES);
	}
	if (check) {
		/* Only the check: is it still that flow? */
		if (pending->context.flow_id != check)
			return set_fail(ESTALE);
		ctx->optlen = -1;
		return 1;
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
