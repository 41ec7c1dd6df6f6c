/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The proxy address pool of unconnected UDP sends (docs/UDP-DESIGN.md).
 *
 * One unconnected socket may send to many destinations through one proxy.
 * Had they all gone to the callout's proxy address, a reply could not say
 * which destination it answers (recvfrom() must show that destination). So
 * each destination a namespace sends to gets a pool address of its own, at
 * the callout's proxy port: 127.77.x.y for IPv4 (inside 127.0.0.0/8, local
 * with no setup), fdcc:7264::x for IPv6 (a local route `connredir up` adds).
 * The proxy listens on the wildcard address at its port and learns the pool
 * address of each datagram from IP_PKTINFO / IPV6_PKTINFO.
 */
#ifndef CONNREDIR_LIB_POOL_H
#define CONNREDIR_LIB_POOL_H

#include "addr.h"
#include "maps.h"

/* Slot `slot`'s address in the pool of `family`, at `port_be`. Slot 0 is
 * the pool's base, never given out. */
static __always_inline void pool_addr(struct connredir_addr *a, __u8 family, __u32 slot,
				      __u16 port_be)
{
	if (family == CONNREDIR_AF_INET)
		addr_set_v4(a, bpf_htonl(CONNREDIR_UDP_POOL4 | (slot & 0xffff)), port_be);
	else
		addr_set_v6(a, bpf_htonl(CONNREDIR_UDP_POOL6_W0), 0, 0, bpf_htonl(slot & 0xffff),
			    port_be);
}

/* Is `a` in a pool (its base included)? Then *slot is its slot. */
static __always_inline int pool_slot_of(const struct connredir_addr *a, __u32 *slot)
{
	__u32 w3 = bpf_ntohl(addr_word(a, 3));

	if (a->family == CONNREDIR_AF_INET) {
		if ((w3 & 0xffff0000) != CONNREDIR_UDP_POOL4)
			return 0;
	} else if (addr_word(a, 0) != bpf_htonl(CONNREDIR_UDP_POOL6_W0) || addr_word(a, 1) != 0 ||
		   addr_word(a, 2) != 0 || (w3 & 0xffff0000) != 0) {
		return 0;
	}
	*slot = w3 & 0xffff;
	return 1;
}

/* Pool addresses are local to a namespace, as loopback is: flows to them
 * are keyed by namespace. */
static __always_inline int addr_is_local_only(const struct connredir_addr *a)
{
	__u32 slot;

	return addr_is_loopback(a) || pool_slot_of(a, &slot);
}

/* The pool slot of destination `dst` in namespace `netns`: its current one,
 * or a new one (the next of a counter; the slot's previous destination, if
 * the counter wrapped onto a slot still in use, loses it). 0 if the maps
 * refuse (the send then goes on unredirected, counted by the caller). */
static __noinline __u32 pool_slot(__u64 netns, const struct connredir_addr *dst)
{
	struct udp_pool_key key = {};
	struct udp_pool_slot_key rkey = {};
	struct connredir_addr *back;
	__u32 zero = 0, *slot;
	__u64 *next, n;

	key.netns = netns;
	key.dst = *dst;
	rkey.netns = netns;
	rkey.family = dst->family;
	slot = bpf_map_lookup_elem(&udp_pool, &key);
	if (slot) {
		rkey.slot = *slot;
		back = bpf_map_lookup_elem(&udp_pool_rev, &rkey);
		if (back && same_endpoint(back, dst) && back->family == dst->family)
			return rkey.slot;
	}
	next = bpf_map_lookup_elem(&udp_pool_next, &zero);
	if (!next)
		return 0;
	n = __sync_fetch_and_add(next, 1);
	rkey.slot = 1 + (__u32)(n % (CONNREDIR_UDP_POOL_SLOTS - 1));
	back = bpf_map_lookup_elem(&udp_pool_rev, &rkey);
	if (back) {
		struct udp_pool_key old = {};

		old.netns = netns;
		old.dst = *back;
		bpf_map_delete_elem(&udp_pool, &old);
	}
	if (bpf_map_update_elem(&udp_pool_rev, &rkey, dst, BPF_ANY) ||
	    bpf_map_update_elem(&udp_pool, &key, &rkey.slot, BPF_ANY))
		return 0;
	return rkey.slot;
}

/* The destination a pool address stands for in the namespace of `ctx`,
 * or NULL. Any other source (every datagram a non-redirected socket
 * receives) costs two compares: no helper call, no lookup. */
static __always_inline const struct connredir_addr *pool_destination(struct bpf_sock_addr *ctx,
								     const struct connredir_addr *a)
{
	struct udp_pool_slot_key rkey = {};

	if (!pool_slot_of(a, &rkey.slot))
		return NULL;
	rkey.netns = bpf_get_netns_cookie(ctx);
	rkey.family = a->family;
	return bpf_map_lookup_elem(&udp_pool_rev, &rkey);
}

#endif /* CONNREDIR_LIB_POOL_H */
