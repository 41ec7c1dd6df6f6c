/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Endpoints: struct connredir_addr (IPv4 stored v4-mapped, so v4, v6 and
 * v4-mapped connects compare equal where they are the same endpoint), and
 * reading and rewriting the address in a sock_addr hook's context for both
 * families.
 */
#ifndef CONNREDIR_LIB_ADDR_H
#define CONNREDIR_LIB_ADDR_H

#include "common.h"

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

/*
 * The address a sock_addr hook (connect, bind, getpeername) was given, and
 * rewriting it. Each context field is read into a local exactly once: the
 * verifier rejects a context field passed to an inlined helper and a re-read
 * after a conditional write. A v6 socket's v4-mapped address reads as IPv4
 * (addr_set_v6) and is written back v4-mapped.
 */
static __always_inline void sock_addr_read4(struct bpf_sock_addr *ctx, struct connredir_addr *a)
{
	__u32 ip = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;

	addr_set_v4(a, ip, port);
}

static __always_inline void sock_addr_read6(struct bpf_sock_addr *ctx, struct connredir_addr *a)
{
	__u32 w0 = ctx->user_ip6[0];
	__u32 w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	__u16 port = (__u16)ctx->user_port;

	addr_set_v6(a, w0, w1, w2, w3, port);
}

/* IPv4 only: the caller checks a->family. */
static __always_inline void sock_addr_write4(struct bpf_sock_addr *ctx,
					     const struct connredir_addr *a)
{
	__u32 ip = addr_word(a, 3);

	/* One 4-byte store: the context refuses narrower writes, which clang
	 * makes of an address whose bytes it can see (a pool address). */
	barrier_var(ip);
	ctx->user_ip4 = ip;
	ctx->user_port = a->port;
}

/* An IPv4 address is written v4-mapped, as a v6 socket addresses it. */
static __always_inline void sock_addr_write6(struct bpf_sock_addr *ctx,
					     const struct connredir_addr *a)
{
	__u32 w0 = addr_word(a, 0), w1 = addr_word(a, 1);
	__u32 w2 = addr_word(a, 2), w3 = addr_word(a, 3);

	barrier_var(w0);
	barrier_var(w1);
	barrier_var(w2);
	barrier_var(w3);
	ctx->user_ip6[0] = w0;
	ctx->user_ip6[1] = w1;
	ctx->user_ip6[2] = w2;
	ctx->user_ip6[3] = w3;
	ctx->user_port = a->port;
}

#endif /* CONNREDIR_LIB_ADDR_H */
