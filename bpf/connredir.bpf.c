// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * connredir kernel side: WFP-style connection redirection with proxy-chain
 * tracking, as cgroup BPF hooks.
 *
 *   connect4/6      classify the connect against the filter index, pick the
 *                   first callout whose redirect state allows it, append a
 *                   hop to the flow's records, rewrite the destination (TCP
 *                   and UDP);
 *                   or stop at a permit filter (direct) or a block filter
 *                   (EPERM); while `connredir trace` holds its lease, queue
 *                   an event saying why (trace_events).
 *   sendmsg4/6      unconnected UDP sends: classified per datagram like a
 *                   connect; a redirected one goes to its destination's
 *                   pool address at the proxy's port, its flow stored for
 *                   the proxy (`udp_sends`).
 *   recvmsg4/6      connected UDP: a proxy socket's first datagram from a
 *                   redirected client publishes the client's flow (the
 *                   hand-off TCP does in sockops); a client sees replies
 *                   come from its original destination (connected or not).
 *   sockops         TCP_CONNECT_CB: the client's 4-tuple is known and no SYN
 *                   has left yet, so publish the flow (records + context) in
 *                   `handoff`; PASSIVE_ESTABLISHED_CB: the proxy's accepted
 *                   socket adopts it into its sk_storage and offers its
 *                   records for the proxy's onward connect (`implicit`), in
 *                   case the proxy never sets records itself;
 *                   ACTIVE_ESTABLISHED_CB: a client or onward socket trades
 *                   its sk_state for a brief (`sk_brief`).
 *   getsockopt      SOL_CONNREDIR queries and SO_ORIGINAL_DST emulation.
 *   setsockopt      SOL_CONNREDIR records set (MAC-verified); a UDP
 *                   proxy's flow selection.
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
 *
 * One object; this file holds only the hooks, each a few lines over the
 * workers in lib/, a header per concern:
 *   common.h      kernel types, the ABI, constants
 *   maps.h        every map: what it holds, who writes and reads it
 *   stats.h       counters, host-wide and per callout
 *   addr.h        endpoints; reading and writing a sock_addr context
 *   pool.h        the proxy address pool of unconnected UDP sends
 *   principals.h  who the caller (or a socket's binder) is
 *   records.h     records, their MAC, the hand-off entry
 *   brief.h       what an established client or onward socket keeps
 *   trace.h       `connredir trace` events
 *   classify.h    the walk over a connect's candidate filters
 *   implicit.h    records carried over for proxies that never set them
 *   redirect.h    a connect's named steps, candidates to rewritten
 *                 destination; getpeername
 *   handoff.h     sockops: publish and adopt a flow
 *   sockopt.h     the proxy's socket options
 *   bind.h        the proxy listener guard
 *   datagram.h    UDP: the connected hand-off, unconnected sends, the flow
 *                 selection, replies
 */
#include "lib/common.h"

#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/addr.h"
#include "lib/principals.h"
#include "lib/records.h"
#include "lib/brief.h"
#include "lib/trace.h"
#include "lib/classify.h"
#include "lib/implicit.h"
#include "lib/redirect.h"
#include "lib/handoff.h"
#include "lib/sockopt.h"
#include "lib/bind.h"
#include "lib/datagram.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- Connect: classify and redirect (lib/redirect.h) ---------------------- */

/* Which classifier a socket's connect or send goes through: TCP and UDP
 * connects and unconnected UDP sends may be redirected; anything else (ping
 * sockets, UDP-Lite, raw) is not ours. */
static __always_inline __u8 socket_proto(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;

	if (type == SOCK_STREAM && protocol == IPPROTO_TCP)
		return CONNREDIR_PROTO_TCP;
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP)
		return CONNREDIR_PROTO_UDP;
	return CONNREDIR_PROTO_ANY;
}

/* connect4/6 and sendmsg4/6 (`v6` the hook's family, `send` for sendmsg,
 * constants after inlining): a connect or an unconnected send is classified
 * and maybe redirected. */
static __always_inline int sock_addr_hook(struct bpf_sock_addr *ctx, int v6, int send)
{
	struct connredir_addr dst __attribute__((aligned(8))) = {};
	__u8 proto = socket_proto(ctx);

	if (proto == CONNREDIR_PROTO_ANY || (send && proto != CONNREDIR_PROTO_UDP))
		return ALLOW;
	if (v6)
		sock_addr_read6(ctx, &dst);
	else
		sock_addr_read4(ctx, &dst);
	if (send)
		return datagram_sent(ctx, &dst, v6);
	return redirect_connect(ctx, &dst, v6, proto);
}

SEC("cgroup/connect4")
int connredir_connect4(struct bpf_sock_addr *ctx)
{
	return sock_addr_hook(ctx, 0, 0);
}

SEC("cgroup/connect6")
int connredir_connect6(struct bpf_sock_addr *ctx)
{
	return sock_addr_hook(ctx, 1, 0);
}

/* ---- Unconnected UDP sends (sendto, sendmsg with an address) -------------- */

/* The kernel runs these only for a send that names its destination; a
 * connected socket's sends were classified at its connect. A block filter
 * fails the send with EPERM; a redirect filter for UDP sends it to a pool
 * address of its destination (lib/pool.h). */
SEC("cgroup/sendmsg4")
int connredir_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_addr_hook(ctx, 0, 1);
}

SEC("cgroup/sendmsg6")
int connredir_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_addr_hook(ctx, 1, 1);
}

/* ---- Hand-off (lib/handoff.h) --------------------------------------------- */

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
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		brief_keep(skops);
		break;
	default:
		break;
	}
	return ALLOW;
}

/* An unconsumed hand-off dies with the socket that published it. */
SEC("cgroup/sock_release")
int connredir_sock_release(struct bpf_sock *sk)
{
	struct connredir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);

	if (st)
		handoff_retire(st);
	else
		brief_release(sk);
	return ALLOW;
}

/* ---- The proxy's socket options (lib/sockopt.h) --------------------------- */

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

SEC("cgroup/setsockopt")
int connredir_setsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_CONNREDIR)
		return 1;
	if (ctx->optname == CONNREDIR_RECORDS)
		return set_records(ctx);
	if (ctx->optname == CONNREDIR_UDP_FLOW)
		return select_udp_flow(ctx);
	return set_fail(ENOPROTOOPT);
}

/* ---- Proxy sockets (lib/bind.h) ------------------------------------------- */

/* A callout's proxy address is guarded for TCP and UDP sockets alike. */
static __always_inline int bind_guarded(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;

	return (type == SOCK_STREAM && protocol == IPPROTO_TCP) ||
	       (type == SOCK_DGRAM && protocol == IPPROTO_UDP);
}

SEC("cgroup/bind4")
int connredir_bind4(struct bpf_sock_addr *ctx)
{
	struct bind_scan scan __attribute__((aligned(8))) = {};

	if (!bind_guarded(ctx))
		return ALLOW;
	sock_addr_read4(ctx, &scan.addr);
	return guard_proxy_bind(ctx, &scan);
}

SEC("cgroup/bind6")
int connredir_bind6(struct bpf_sock_addr *ctx)
{
	struct bind_scan scan __attribute__((aligned(8))) = {};

	if (!bind_guarded(ctx))
		return ALLOW;
	sock_addr_read6(ctx, &scan.addr);
	return guard_proxy_bind(ctx, &scan);
}

/* ---- Connected UDP: hand-off and replies (lib/datagram.h) ----------------- */

SEC("cgroup/recvmsg4")
int connredir_recvmsg4(struct bpf_sock_addr *ctx)
{
	return datagram_received(ctx, 0);
}

SEC("cgroup/recvmsg6")
int connredir_recvmsg6(struct bpf_sock_addr *ctx)
{
	return datagram_received(ctx, 1);
}

/* ---- Transparency (lib/redirect.h) ---------------------------------------- */

SEC("cgroup/getpeername4")
int connredir_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct connredir_addr *d = redirected_peer(ctx);

	if (d && d->family == CONNREDIR_AF_INET)
		sock_addr_write4(ctx, d);
	return ALLOW;
}

SEC("cgroup/getpeername6")
int connredir_getpeername6(struct bpf_sock_addr *ctx)
{
	const struct connredir_addr *d = redirected_peer(ctx);

	if (d)
		sock_addr_write6(ctx, d);
	return ALLOW;
}
