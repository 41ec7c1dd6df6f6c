/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Records and their MAC: a flow's chain of hops, started by new_flow(),
 * sealed with records_mac() under the secret key when the flow is handed to
 * a proxy and verified the same way when a proxy attaches records to its
 * onward socket; and retiring the hand-off entry a socket published.
 */
#ifndef CONNREDIR_LIB_RECORDS_H
#define CONNREDIR_LIB_RECORDS_H

#include "maps.h"
#include "pool.h"
#include "stats.h"

#define RECORDS_MAC_WORDS ((sizeof(struct connredir_records) - sizeof(__u64)) / sizeof(__u64))
_Static_assert(sizeof(struct connredir_records) % 8 == 0, "records must be whole words");
_Static_assert(sizeof(struct connredir_records) <= CONNREDIR_RECORDS_MAX, "records too big");
_Static_assert(sizeof(struct connredir_context) == CONNREDIR_CONTEXT_SIZE, "context size");
_Static_assert(CONNREDIR_MAX_CALLOUTS <= 64, "callout mask is one u64");

static __always_inline const struct connredir_secret *mac_key(void)
{
	__u32 zero = 0;
	const struct connredir_secret *k = bpf_map_lookup_elem(&secret, &zero);

	if (!k || (k->k0 == 0 && k->k1 == 0))
		return NULL;
	return k;
}

/* Words of the blob the MAC covers: the header, the origin and the hop_count
 * hops in use. The unused hops are not hashed (a one-hop flow hashes 16
 * words instead of 58, on every publish and every set) but must be zero, so
 * every byte of a blob is still either authenticated or fixed. */
#define RECORDS_HOPS_WORD (__builtin_offsetof(struct connredir_records, hops) / 8)
#define RECORDS_HOP_WORDS (sizeof(struct connredir_hop) / 8)
_Static_assert(__builtin_offsetof(struct connredir_records, hops) % 8 == 0, "hops word-aligned");
_Static_assert(sizeof(struct connredir_hop) % 8 == 0, "hop is whole words");
_Static_assert(__builtin_offsetof(struct connredir_records, mac) == RECORDS_MAC_WORDS * 8,
	       "mac follows the hops");
_Static_assert(RECORDS_HOPS_WORD + CONNREDIR_MAX_HOPS * RECORDS_HOP_WORDS == RECORDS_MAC_WORDS,
	       "the hop slots are all the words between the origin and the mac");

/* The hops in use: hop_count, which an incoming blob has been checked to
 * keep within CONNREDIR_MAX_HOPS; clamped again for the verifier. */
static __always_inline __u32 records_hops_in_use(const struct connredir_records *r)
{
	__u32 n = r->hop_count;

	if (n > CONNREDIR_MAX_HOPS)
		n = CONNREDIR_MAX_HOPS;
	return n;
}

/* Both walks below visit every hop slot with a constant bound and test the
 * hop count inside the loop body, instead of looping over a variable number
 * of words. Linux 6.1's verifier (Debian 12) rejects a loop whose index is
 * bounded only by another register: on the exit test `i < nwords` it keeps
 * exploring a path where nwords' bounds contradict each other (umin > umax),
 * the index walks past the blob, and the load fails with "invalid access to
 * map value ... R7 min value is outside of the allowed memory range"
 * (EACCES). Newer verifiers see that path is dead; 6.1 does not. With a
 * constant loop bound every load is at a constant offset, which any
 * verifier accepts, and a guard rather than a `break` keeps the compiler
 * from folding the two bounds back into one register compare. */
static __always_inline __u64 records_mac(const struct connredir_secret *k,
					 const struct connredir_records *r)
{
	const __u64 *w = (const __u64 *)r;
	__u32 n = records_hops_in_use(r), h, j;
	struct connredir_siphash s;

	connredir_siphash_init(&s, k->k0, k->k1);
	for (j = 0; j < RECORDS_HOPS_WORD; j++)
		connredir_siphash_word(&s, w[j]);
	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h < n) {
			for (j = 0; j < RECORDS_HOP_WORDS; j++)
				connredir_siphash_word(
					&s, w[RECORDS_HOPS_WORD + h * RECORDS_HOP_WORDS + j]);
		}
	}
	return connredir_siphash_final(&s, RECORDS_HOPS_WORD + n * RECORDS_HOP_WORDS);
}

/* Are the hop slots past hop_count all zero (as connredir issues them)? */
static __always_inline int records_tail_zero(const struct connredir_records *r)
{
	const __u64 *w = (const __u64 *)r;
	__u32 n = records_hops_in_use(r), h, j;
	__u64 acc = 0;

	for (h = 0; h < CONNREDIR_MAX_HOPS; h++) {
		if (h >= n) {
			for (j = 0; j < RECORDS_HOP_WORDS; j++)
				acc |= w[RECORDS_HOPS_WORD + h * RECORDS_HOP_WORDS + j];
		}
	}
	return acc == 0;
}

/* The hand-off key of the flow from `client` to the proxy at `proxy` (the
 * proxy's view: its own address). Loopback addresses repeat across
 * namespaces: such a key is scoped by the netns cookie. A routable proxy
 * address may be in another namespace (veth): unscoped. `proto` is 0 for
 * TCP, CONNREDIR_PROTO_UDP for UDP, so the two never meet. */
static __always_inline void handoff_key(struct connredir_flow_key *key, __u64 netns,
					const struct connredir_addr *client,
					const struct connredir_addr *proxy, __u8 proto)
{
	key->netns = addr_is_local_only(proxy) ? netns : 0;
	__builtin_memcpy(key->client_ip, client->addr, 16);
	__builtin_memcpy(key->proxy_ip, proxy->addr, 16);
	key->client_port = client->port;
	key->proxy_port = proxy->port;
	key->proto = proto;
	key->reserved[0] = 0;
	key->reserved[1] = 0;
	key->reserved[2] = 0;
}

/* Complete a redirected flow's state for the proxy now that its source end
 * is known: a first hop's origin is that end, the records are MAC'd only
 * now, complete, and st->handoff becomes the key of its two ends. -1 if
 * there is no MAC key. */
/* records->mac under the secret key; -1 if there is none. A global
 * function, so the verifier checks it once, on its own: it is the largest
 * code of the object (the MAC over every hop in use), and inlined into
 * sendmsg6 it was reached in so many states that Linux 6.1's verifier ran
 * past its 1M-instruction budget. */
__noinline int records_seal(struct connredir_records *r)
{
	const struct connredir_secret *k = mac_key();

	if (!r || !k)
		return -1;
	r->mac = records_mac(k, r);
	return 0;
}

static __always_inline int flow_seal(struct connredir_sk_state *st, __u64 netns,
				     const struct connredir_addr *client,
				     const struct connredir_addr *proxy, __u8 proto)
{
	if (!mac_key())
		return -1;
	if (st->records.hop_count == 1)
		st->records.origin.src = *client;
	st->context.orig_src = st->records.origin.src;
	if (records_seal(&st->records))
		return -1;
	handoff_key(&st->handoff, netns, client, proxy, proto);
	return 0;
}

/* Publish a redirected client socket's flow under the key of its two ends:
 * TCP at TCP_CONNECT_CB (handoff.h), connected UDP when the proxy receives
 * its first datagram (datagram.h). */
static __always_inline void handoff_publish(struct connredir_sk_state *st, __u64 netns,
					    const struct connredir_addr *client,
					    const struct connredir_addr *proxy, __u8 proto)
{
	if (flow_seal(st, netns, client, proxy, proto))
		return;
	st->flags |= CONNREDIR_SK_PUBLISHED;
	if (bpf_map_update_elem(&handoff, &st->handoff, st, BPF_ANY)) {
		st->flags &= ~CONNREDIR_SK_PUBLISHED;
		stat_inc(CONNREDIR_STAT_PUBLISH_FAIL);
		return;
	}
	stat_inc(CONNREDIR_STAT_PUBLISHED);
}

/* Delete the hand-off a socket published (`*flags` has PUBLISHED, `key`
 * names the entry), if the entry is still its own. Called when the socket
 * connects again (a failed connect freed its source port, so the next
 * attempt publishes under a new 4-tuple: without this each retry would leave
 * an entry behind and one socket could fill the host-wide map) and when it
 * is released. The entry must be checked: once the port is free, another
 * socket may have published the same 4-tuple since. */
static __always_inline void handoff_withdraw(__u32 *flags, const struct connredir_flow_key *key,
					     __u64 flow_id, __u32 hop_count)
{
	struct connredir_sk_state *e;

	if (!(*flags & CONNREDIR_SK_PUBLISHED))
		return;
	*flags &= ~CONNREDIR_SK_PUBLISHED;
	e = bpf_map_lookup_elem(&handoff, key);
	if (e && e->records.flow_id == flow_id && e->records.hop_count == hop_count)
		bpf_map_delete_elem(&handoff, key);
}

static __always_inline void handoff_retire(struct connredir_sk_state *st)
{
	handoff_withdraw(&st->flags, &st->handoff, st->records.flow_id, st->records.hop_count);
}

static __always_inline void new_flow(struct connredir_records *r, __u32 uid)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&flowseq, &zero);

	r->magic = CONNREDIR_RECORDS_MAGIC;
	r->version = CONNREDIR_ABI_VERSION;
	r->size = sizeof(*r);
	r->flow_id = seq ? __sync_fetch_and_add(seq, 1) + 1 : bpf_get_prandom_u32();
	r->hop_count = 0;
	r->origin.cgroup_id = bpf_get_current_cgroup_id();
	r->origin.pid = bpf_get_current_pid_tgid() >> 32;
	r->origin.uid = uid;
	bpf_get_current_comm(r->origin.comm, sizeof(r->origin.comm));
	__builtin_memset(&r->origin.src, 0, sizeof(r->origin.src));
}

#endif /* CONNREDIR_LIB_RECORDS_H */
