/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * An established client or onward TCP socket trades its sk_state (760 bytes:
 * a 1 KiB slab object with the storage header) for a brief (112 bytes, a
 * 192-byte object). By then its records and context have gone on in the
 * hand-off entry, the proxy's accepted socket holds them, and TCP cannot
 * connect again without a disconnect, so nothing reads them on this socket
 * any more. What is still read is kept: the original destination
 * (getpeername), the hand-off key (sock_release deletes an entry no proxy
 * took) and what `connredir flows` shows (flow id, chain length, the
 * application; it takes the chain's hops from the flow's other sockets).
 *
 * A socket disconnected with connect(AF_UNSPEC) and connected again is a
 * new connect without records: classified like any other, with implicit
 * records for a proxy's socket.
 */
#ifndef CONNREDIR_LIB_BRIEF_H
#define CONNREDIR_LIB_BRIEF_H

#include "records.h"

static __always_inline void brief_fill(struct connredir_sk_brief *b,
				       const struct connredir_sk_state *st)
{
	b->flags = st->flags;
	b->hop_count = st->records.hop_count;
	b->flow_id = st->records.flow_id;
	b->pid = st->records.origin.pid;
	b->uid = st->records.origin.uid;
	__builtin_memcpy(b->comm, st->records.origin.comm, sizeof(b->comm));
	b->orig_dst = st->context.orig_dst;
	b->handoff = st->handoff;
}

/* ACTIVE_ESTABLISHED_CB. Accepted sockets never get here (theirs is
 * PASSIVE_ESTABLISHED_CB) and keep their state for the proxy's queries.
 * Where the brief cannot be allocated the socket keeps its full state:
 * the saving is lost, nothing else (so no counter: STORAGE_FAIL means a
 * flow went unredirected). */
static __always_inline void brief_keep(struct bpf_sock_ops *skops)
{
	struct connredir_sk_state *st;
	struct connredir_sk_brief *b;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sk_state, sk, NULL, 0);
	if (!st || (st->flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_UDP_FLOW)))
		return;
	b = bpf_sk_storage_get(&sk_brief, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!b)
		return;
	brief_fill(b, st);
	bpf_sk_storage_delete(&sk_state, sk);
}

/* getpeername of a redirected socket, once established. */
static __always_inline const struct connredir_addr *brief_peer(struct bpf_sock *sk)
{
	struct connredir_sk_brief *b = bpf_sk_storage_get(&sk_brief, sk, NULL, 0);

	if (!b || !(b->flags & CONNREDIR_SK_REDIRECTED))
		return NULL;
	return &b->orig_dst;
}

/* sock_release of a socket that kept only its brief. */
static __always_inline void brief_release(struct bpf_sock *sk)
{
	struct connredir_sk_brief *b = bpf_sk_storage_get(&sk_brief, sk, NULL, 0);

	if (b)
		handoff_withdraw(&b->flags, &b->handoff, b->flow_id, b->hop_count);
}

#endif /* CONNREDIR_LIB_BRIEF_H */
