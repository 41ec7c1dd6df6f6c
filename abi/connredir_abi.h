/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * connredir ABI: the one header shared by the BPF programs (bpf/) and the
 * C++ side (libconnredir, CLI, proxy, tests).
 *
 * Everything here is plain C with fixed-width __u* types so both compilers
 * lay it out identically; the C++ side static-asserts the layout
 * (src/lib/abi_layout.cpp). Every structure that crosses the user/kernel
 * boundary has explicit padding: no implicit holes, no bitfields.
 *
 * The public, language-neutral socket-option contract (what a proxy written
 * in any language sees) is documented in docs/ABI.md; keep both in sync and
 * bump CONNREDIR_ABI_VERSION on any incompatible change.
 */
#ifndef CONNREDIR_ABI_H
#define CONNREDIR_ABI_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define CONNREDIR_ABI_VERSION 1

/* ---- Public socket-option contract -------------------------------------- */

/* Private option level: "CR". Unknown to the kernel, so when connredir is not
 * loaded callers get the kernel's own EOPNOTSUPP (get) / ENOPROTOOPT (set). */
#define SOL_CONNREDIR 0x4352
/* get: records blob of an accepted, redirected socket.
 * set: attach a records blob to a not-yet-connected TCP or UDP socket. */
#define CONNREDIR_RECORDS 1
/* get: struct connredir_context of an accepted, redirected socket. */
#define CONNREDIR_CONTEXT 2
/* set, on a UDP proxy's socket: select the flow whose datagrams come from
 * `struct connredir_udp_flow.client` to `.local` (the address the datagram
 * was sent to, from IP_PKTINFO / IPV6_PKTINFO; optional on a socket bound to
 * its callout's proxy address, which may pass only `client`, 20 bytes); the
 * socket's CONNREDIR_RECORDS / CONNREDIR_CONTEXT / SO_ORIGINAL_DST then
 * answer for that flow until the next selection (docs/ABI.md, "UDP"). */
#define CONNREDIR_UDP_FLOW 3
/* get: CONNREDIR_RECORDS and CONNREDIR_CONTEXT together (struct
 * connredir_flow_view), the same errors: a proxy reads an accepted flow with
 * one system call instead of two. Objects older than this option answer
 * ENOPROTOOPT; ask for the two separately then. */
#define CONNREDIR_FLOW 4

/* The iptables-compatible original-destination options (same numbers as
 * <linux/netfilter_ipv4.h> SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST). */
#define CONNREDIR_SOL_IP	       0
#define CONNREDIR_SOL_IPV6	       41
#define CONNREDIR_SO_ORIGINAL_DST      80
#define CONNREDIR_IP6T_SO_ORIGINAL_DST 80

/* ---- Limits ------------------------------------------------------------- */

/* Longest proxy chain. A connect that would need a 9th redirect goes to its
 * destination directly and is counted (CONNREDIR_STAT_HOP_CAP). */
#define CONNREDIR_MAX_HOPS 8
/* Callout ids are 1..CONNREDIR_MAX_CALLOUTS-1 (0 means "none"). 64 lets the
 * classifier keep "callouts already in this chain" in one 64-bit mask. */
#define CONNREDIR_MAX_CALLOUTS 64
#define CONNREDIR_MAX_FILTERS  131072
/* Distinct destination prefixes in the classifier index. */
#define CONNREDIR_MAX_PREFIXES 131072
/* Filters that may overlap one destination prefix (the classifier walks at
 * most this many candidates per connect; adding a filter that would exceed it
 * is refused by the control plane with a clear message). */
#define CONNREDIR_CANDIDATES_MAX   32
#define CONNREDIR_USER_CONTEXT_MAX 128
#define CONNREDIR_NAME_MAX	   32
#define CONNREDIR_PRINCIPALS_MAX   1024
/* In-flight hand-offs (connects published, not yet accepted). Entries are
 * deleted when the proxy's socket is accepted, or when the client socket is
 * released before that; the bound only limits concurrent half-open flows. */
#define CONNREDIR_HANDOFF_MAX 65536
/* A buffer of this size always holds a records blob / a context. */
#define CONNREDIR_RECORDS_MAX 512
#define CONNREDIR_CONTEXT_MAX 256
/* Deepest cgroup level checked for cgroup principals. */
#define CONNREDIR_CGROUP_LEVELS_MAX 16

#define CONNREDIR_RECORDS_MAGIC 0x31525243u /* "CRR1" little endian */
#define CONNREDIR_CONTEXT_MAGIC 0x31435243u /* "CRC1" little endian */
#define CONNREDIR_UID_NONE	0xffffffffu

/* Address families as stored in struct connredir_addr.family (Linux values). */
#define CONNREDIR_AF_INET  2
#define CONNREDIR_AF_INET6 10

/* An endpoint. addr is always 16 bytes: IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) and family says AF_INET; so v4, v6 and v4-mapped connects
 * compare equal where they are the same endpoint. */
struct connredir_addr {
	__u8 addr[16];
	__u16 port;   /* network byte order */
	__u16 family; /* CONNREDIR_AF_INET or CONNREDIR_AF_INET6; 0 = unset */
};

/* One redirection in the chain. */
struct connredir_hop {
	__u32 callout_id;
	__u32 filter_id;
	__u64 time_ns;		   /* bpf_ktime_get_boot_ns() at the redirect */
	struct connredir_addr dst; /* destination this connect asked for */
	__u32 proxy_uid;	   /* callout's proxy principal uid, or CONNREDIR_UID_NONE */
	__u64 proxy_cgroup;	   /* callout's proxy principal cgroup id, or 0 */
};

/* The application that opened the flow (first hop). */
struct connredir_origin {
	__u64 cgroup_id;
	__u32 pid; /* tgid */
	__u32 uid;
	char comm[16];
	struct connredir_addr src; /* its source address, known at TCP_CONNECT_CB */
	__u32 reserved;
};

/*
 * The records blob. Opaque to proxies: they copy it from the accepted socket
 * to their outgoing socket. Fixed size (no variable-length copies in BPF).
 * mac is SipHash-2-4 over the bytes in use (header, origin and the hop_count
 * hops; the hop slots past them must be zero), keyed with a random 128-bit
 * key that `connredir up` draws from getrandom() into the root-only `secret`
 * map. The kernel rejects (EINVAL) any blob whose MAC does not verify, so a
 * blob cannot be forged or altered by anyone who cannot read that map.
 */
struct connredir_records {
	__u32 magic;	/* CONNREDIR_RECORDS_MAGIC */
	__u16 version;	/* CONNREDIR_ABI_VERSION */
	__u16 size;	/* sizeof(struct connredir_records) */
	__u64 flow_id;	/* unique per flow, kept along the chain */
	__u8 hop_count; /* valid entries in hops[] */
	/* Hops this flow passed in earlier chains that a proxy ended by
	 * connecting onward without records, where connredir knew the flow it
	 * had accepted but did not carry its records over (implicit records
	 * off for that callout, or ambiguous). Counts against
	 * CONNREDIR_MAX_HOPS with hop_count: the loop breaker. 0 in blobs of
	 * older versions (the byte was reserved and zero). */
	__u8 carried_hops;
	__u16 reserved1;
	__u32 reserved2;
	struct connredir_origin origin;
	struct connredir_hop hops[CONNREDIR_MAX_HOPS];
	__u64 mac;
};

/*
 * The redirect context a proxy reads from the socket it accepted. Always
 * returned whole (sizeof = CONNREDIR_CONTEXT_SIZE); user_len says how many
 * bytes of user[] are the filter's context, size = header + user_len.
 */
struct connredir_context {
	__u32 magic; /* CONNREDIR_CONTEXT_MAGIC */
	__u16 version;
	__u16 size; /* CONNREDIR_CONTEXT_HDR_SIZE + user_len */
	__u64 flow_id;
	__u32 callout_id; /* the callout that redirected to this proxy */
	__u32 filter_id;
	struct connredir_addr orig_dst; /* where the connecting socket wanted to go */
	struct connredir_addr orig_src; /* the original application's source */
	__u32 pid;			/* original application */
	__u32 uid;
	__u64 cgroup_id;
	char comm[16];
	__u8 hop; /* 1-based position of this redirect in the chain */
	__u8 reserved0;
	__u16 user_len;
	__u32 reserved1;
	__u8 user[CONNREDIR_USER_CONTEXT_MAX];
};
#define CONNREDIR_CONTEXT_HDR_SIZE 104
#define CONNREDIR_CONTEXT_SIZE	   (CONNREDIR_CONTEXT_HDR_SIZE + CONNREDIR_USER_CONTEXT_MAX)

/* ---- Maps (written by the control plane, read by BPF) ------------------- */

#define CONNREDIR_CALLOUT_F_USED   0x1u
#define CONNREDIR_CALLOUT_F_PROXY4 0x2u /* proxy4 is set */
#define CONNREDIR_CALLOUT_F_PROXY6 0x4u /* proxy6 is set */
/* --on-proxy-down: what a connect meets when the proxy's address has no
 * listener the callout's principal owns (nothing listens there, or someone
 * else's listener does). Every redirect looks the listener up in the
 * connecting socket's namespace; a callout with neither flag (maps written
 * by older versions) is treated as DOWN_REFUSE, never as "deliver to
 * whatever listens". */
#define CONNREDIR_CALLOUT_F_DOWN_REFUSE 0x8u  /* fail the connect (ECONNREFUSED) */
#define CONNREDIR_CALLOUT_F_DOWN_BYPASS 0x10u /* skip this callout */
/* --on-failure refuse: a connect that one of this callout's filters selects
 * but that cannot be redirected to it (chain already CONNREDIR_MAX_HOPS long,
 * no proxy for the family, no MAC key, sk_storage allocation failed) fails
 * with ECONNREFUSED instead of going on uninspected (the default, bypass). */
#define CONNREDIR_CALLOUT_F_FAIL_CLOSED 0x20u
/* --shared-principal: this callout's principal (uid or cgroup) is, or
 * overlaps, another callout's on purpose. Informational for the kernel side
 * (a process that is the principal of two callouts serves both); the control
 * plane refuses an overlap without it. */
#define CONNREDIR_CALLOUT_F_SHARED_PRINCIPAL 0x40u
/* --implicit-records off: when this callout's principal connects onward
 * without records, do not attach the records of a flow it accepted for that
 * destination (docs/ABI.md, "Implicit records"). The loop breaker still
 * counts the hops of such a flow (records.carried_hops). */
#define CONNREDIR_CALLOUT_F_NO_IMPLICIT 0x80u

/* map `callouts` (ARRAY, index = callout id). */
struct connredir_callout {
	__u32 id;
	__u32 flags;		      /* CONNREDIR_CALLOUT_F_* */
	struct connredir_addr proxy4; /* IPv4 listener (v4-mapped) */
	struct connredir_addr proxy6; /* IPv6 listener */
	__u32 proxy_uid;	      /* CONNREDIR_UID_NONE if unset */
	__u32 proxy_cgroup_level;     /* depth of proxy_cgroup below the root */
	__u64 proxy_cgroup;	      /* cgroup id (inode), 0 if unset */
	char name[CONNREDIR_NAME_MAX];
};

#define CONNREDIR_FILTER_F_APP_UID    0x1u
#define CONNREDIR_FILTER_F_APP_CGROUP 0x2u

/* What a matching filter does (struct connredir_filter.action), as WFP's
 * filter actions. The classifier stops at the first matching filter, in
 * weight order, that redirects the flow, permits it or blocks it. */
#define CONNREDIR_ACTION_REDIRECT 0 /* to callout_id's proxy (its redirect state permitting) */
#define CONNREDIR_ACTION_PERMIT	  1 /* exempt from every lower-weight filter: goes direct */
#define CONNREDIR_ACTION_BLOCK	  2 /* the connect or send fails with EPERM */

/* Transport protocols of filters and trace events (IPPROTO_* values). */
#define CONNREDIR_PROTO_ANY 0
#define CONNREDIR_PROTO_TCP 6
#define CONNREDIR_PROTO_UDP 17

/* map `filters` (HASH, key = __u32 filter id). */
struct connredir_filter {
	__u32 id;
	__u32 callout_id; /* ACTION_REDIRECT only; 0 for permit and block */
	__u32 weight;	  /* higher first */
	__u32 flags;	  /* CONNREDIR_FILTER_F_* */
	__u64 seq;	  /* creation order: on equal weight the older filter first */
	__u8 family;	  /* 0 = any, CONNREDIR_AF_INET, CONNREDIR_AF_INET6 */
	__u8 prefixlen;	  /* of addr, in bits of the family's address */
	__u8 proto;	  /* CONNREDIR_PROTO_* (0 = any) */
	__u8 action;	  /* CONNREDIR_ACTION_* */
	__u16 port_lo;	  /* host order, inclusive */
	__u16 port_hi;
	__u8 addr[16]; /* IPv4 v4-mapped */
	__u32 app_uid;
	__u32 app_cgroup_level;
	__u64 app_cgroup;
	__u16 user_len;
	__u16 reserved1;
	__u32 reserved2;
	__u8 user[CONNREDIR_USER_CONTEXT_MAX];
};

#define CONNREDIR_LPM_FAM_V4 4
#define CONNREDIR_LPM_FAM_V6 6

/* map `filter_index` (LPM_TRIE) key: family byte then the address (IPv4 in
 * addr[0..3]); prefixlen = 8 + CIDR length. The unused tail must be zero. */
struct connredir_lpm_key {
	__u32 prefixlen;
	__u8 family; /* CONNREDIR_LPM_FAM_V4 / _V6 */
	__u8 addr[16];
	__u8 reserved[3];
};

/* map `filter_index` value: every filter whose destination contains this
 * prefix, sorted: weight descending, then seq ascending. The longest-prefix
 * match of a destination therefore lists exactly the filters whose CIDR
 * contains it, in WFP order, without a linear scan of all filters. */
struct connredir_candidates {
	__u32 count;
	__u32 ids[CONNREDIR_CANDIDATES_MAX];
};

#define CONNREDIR_PRINCIPAL_UID	   1
#define CONNREDIR_PRINCIPAL_CGROUP 2
/* map `principals` (HASH) key: who may query and set records. */
struct connredir_principal_key {
	__u32 kind; /* CONNREDIR_PRINCIPAL_* */
	__u32 reserved;
	__u64 id; /* uid or cgroup id */
};
#define CONNREDIR_PRINCIPAL_F_AUTHORIZED 0x1u /* `connredir authorize` */
#define CONNREDIR_PRINCIPAL_F_CALLOUT	 0x2u /* a callout's proxy principal */
/* map `principals_gen` (ARRAY, 1 entry, __u64): bumped by the control plane
 * after every change to `principals`. The BPF side caches each caller's
 * principal flags per (uid, cgroup) and trusts an entry only while the
 * generation it was computed under is current. */

#define CONNREDIR_OWNER_F_ROOT	     0x1u /* bound by uid 0 */
#define CONNREDIR_OWNER_F_AUTHORIZED 0x2u /* bound by a `connredir authorize`d principal */
/* map `sk_owner` (SK_STORAGE) value: who bound a TCP socket (explicit bind()
 * to a non-zero port) in a cgroup where connredir is attached. A redirect
 * goes only to a listener whose owner is the callout's principal (or root;
 * for a callout without a principal, an authorized principal). */
struct connredir_sk_owner {
	__u32 uid;   /* the binding task's uid (init namespace) */
	__u32 flags; /* CONNREDIR_OWNER_F_* */
	/* the binding task's cgroup ancestors: [i] is the id at level i + 1,
	 * 0 past its own level */
	__u64 cgroup[CONNREDIR_CGROUP_LEVELS_MAX];
};

/* map `handoff` (HASH, no prealloc) key: the client's connection to the proxy.
 * netns is the client's netns cookie when the proxy address is loopback (so
 * namespaces reusing the same loopback 4-tuple never cross-talk) and 0 when
 * it is not (the proxy may sit in another namespace, reached over veth). */
struct connredir_flow_key {
	__u64 netns;
	__u8 client_ip[16]; /* v4-mapped for IPv4 */
	__u8 proxy_ip[16];
	__u16 client_port; /* network order */
	__u16 proxy_port;  /* network order */
	/* 0 for TCP (the byte was reserved and zero before UDP, so pinned
	 * entries stay valid across an upgrade), CONNREDIR_PROTO_UDP for UDP */
	__u8 proto;
	__u8 reserved[3];
};

/* setsockopt(SOL_CONNREDIR, CONNREDIR_UDP_FLOW) argument: the client end of
 * a UDP flow, as recvfrom()/recvmsg() reported it to the proxy, and the local
 * end the datagram was sent to (IP_PKTINFO's ipi_addr / IPV6_PKTINFO's
 * ipi6_addr, with the socket's port). A caller may pass only `client`
 * (optlen 20): the local end is then the socket's own bound address; or
 * both ends (optlen 40); or all (48). */
struct connredir_udp_flow {
	struct connredir_addr client;
	struct connredir_addr local; /* family 0: the socket's bound address */
	/* 0 (or optlen 40): select the flow. Otherwise only check that the
	 * flow between the two ends is still this one (a proxy's per-datagram
	 * check that a reused client address did not start a new flow, in one
	 * call and no copy): success if it is, nothing selected; ESTALE if
	 * another flow now has these ends, ENOENT if none. */
	__u64 flow_id;
};

/*
 * Unconnected UDP sends (sendto(), sendmsg() with an address) are redirected
 * to a proxy address of their own per original destination, so a reply's
 * source says which destination it answers: the pool below, one address
 * per (network namespace, destination) in use, at the callout's proxy port.
 * The IPv4 pool is inside 127.0.0.0/8 (always local); the IPv6 pool needs a
 * local route in each namespace whose sockets are redirected (`connredir up`
 * adds it: `ip -6 route add local fdcc:7264::/64 dev lo`). Slot 0, the
 * pool's base address, is never given out: the classifier looks a callout's
 * wildcard proxy socket up there. A proxy receives these flows on a socket
 * bound to the wildcard address at its callout's port, with IP_PKTINFO /
 * IPV6_RECVPKTINFO to learn the pool address (docs/ABI.md, "UDP").
 */
#define CONNREDIR_UDP_POOL4	 0x7f4d0000u /* 127.77.0.0/16, host order */
#define CONNREDIR_UDP_POOL6_W0	 0xfdcc7264u /* fdcc:7264::/64: its first word, host order */
#define CONNREDIR_UDP_POOL_SLOTS 65536u
/* Flows of unconnected sends the proxy may select (map `udp_sends`, LRU): a
 * flow not sent on for CONNREDIR_UDP_SEND_IDLE_NS is over; the next send to
 * that destination starts a new one. */
#define CONNREDIR_UDP_SENDS_MAX 8192
/* Destinations with a pool address at once (maps `udp_pool`, `udp_pool_rev`, LRU). */
#define CONNREDIR_UDP_POOL_MAX	   16384
#define CONNREDIR_UDP_SEND_IDLE_NS (60ULL * 1000 * 1000 * 1000)

/*
 * map `implicit` (LRU_HASH) key: flows a callout's principal accepted, by
 * destination, so the records of one can ride on the principal's onward
 * connect when it sets none (docs/ABI.md, "Implicit records"). One entry per
 * (netns, callout, destination, protocol), not per flow; its value (private
 * to the BPF side, bpf/connredir.bpf.c) counts the pending flows. An entry
 * whose newest flow is older than CONNREDIR_IMPLICIT_TTL_NS is stale.
 */
#define CONNREDIR_IMPLICIT_MAX	  4096
#define CONNREDIR_IMPLICIT_TTL_NS (30ULL * 1000 * 1000 * 1000)
struct connredir_implicit_key {
	__u64 netns;	/* netns cookie of the proxy's accepted socket */
	__u8 dst[16];	/* the flow's destination as the redirected connect asked, v4-mapped */
	__u16 dst_port; /* network order */
	__u8 proto;	/* IPPROTO_TCP */
	__u8 reserved0;
	__u32 callout_id; /* the callout that redirected the flow to the proxy */
};

#define CONNREDIR_SK_RECORDS_SET 0x1u  /* setsockopt(CONNREDIR_RECORDS) accepted */
#define CONNREDIR_SK_REDIRECTED	 0x2u  /* connect was redirected (client side) */
#define CONNREDIR_SK_PUBLISHED	 0x4u  /* hand-off entry published */
#define CONNREDIR_SK_ACCEPTED	 0x8u  /* socket accepted by a proxy, state handed off */
#define CONNREDIR_SK_IMPLICIT	 0x10u /* records attached implicitly at connect */
#define CONNREDIR_SK_UDP_FLOW	 0x20u /* a UDP proxy socket: the flow it selected */

/* CONNREDIR_FLOW's answer: records and context as sk_state holds them
 * (adjacent; bpf/lib/sockopt.h asserts it and copies them as one). */
struct connredir_flow_view {
	struct connredir_records records;
	struct connredir_context context;
};

/* map `sk_state` (SK_STORAGE) value, also the `handoff` value. */
struct connredir_sk_state {
	__u32 flags;   /* CONNREDIR_SK_* */
	__u32 in_hops; /* hop_count before this socket's redirect (re-connect rollback) */
	struct connredir_flow_key handoff; /* to delete an unconsumed hand-off */
	struct connredir_records records;
	struct connredir_context context;
};

/* map `sk_brief` (SK_STORAGE) value: what a client or onward TCP socket
 * keeps once established, when its `sk_state` is deleted (bpf/lib/brief.h):
 * its records and context went on in the hand-off, and nothing reads them on
 * this socket again. A 1 KiB slab object becomes a 192-byte one. */
struct connredir_sk_brief {
	__u32 flags;	 /* CONNREDIR_SK_* as sk_state had them */
	__u32 hop_count; /* records.hop_count: the chain's first hops are the flow's */
	__u64 flow_id;
	__u32 pid; /* the application (records.origin) */
	__u32 uid;
	char comm[16];
	struct connredir_addr orig_dst; /* getpeername's answer (REDIRECTED) */
	__u32 reserved;
	struct connredir_flow_key handoff; /* to delete an unconsumed hand-off */
};

/* map `secret` (ARRAY, 1 entry): the MAC key. Zero means "not initialised":
 * the BPF side then refuses every set (EINVAL) and redirects nothing. */
struct connredir_secret {
	__u64 k0;
	__u64 k1;
};

/* map `stats` (PERCPU_ARRAY, index = CONNREDIR_STAT_*). */
enum connredir_stat {
	CONNREDIR_STAT_CLASSIFIED = 0,	/* connects (and unconnected UDP sends) whose */
					/* destination hit the index */
	CONNREDIR_STAT_REDIRECTED,	/* connects rewritten to a proxy */
	CONNREDIR_STAT_HOP_CAP,		/* chain full: connected directly */
	CONNREDIR_STAT_NO_PROXY_FAMILY, /* callout had no proxy for the family */
	CONNREDIR_STAT_STORAGE_FAIL,	/* sk_storage allocation failed: not redirected */
	CONNREDIR_STAT_PUBLISHED,    /* flows handed to a proxy: TCP at TCP_CONNECT_CB, UDP at the
					first datagram or send */
	CONNREDIR_STAT_PUBLISH_FAIL, /* hand-off map update failed */
	CONNREDIR_STAT_ACCEPTED,     /* hand-offs consumed by an accepted socket */
	CONNREDIR_STAT_RECORDS_SET,  /* records attached by setsockopt */
	CONNREDIR_STAT_RECORDS_REJECTED,   /* forged / altered / malformed blobs */
	CONNREDIR_STAT_DENIED,		   /* queries and sets refused with EACCES */
	CONNREDIR_STAT_SELF_SKIP,	   /* a callout skipped: REDIRECTED_BY_SELF */
	CONNREDIR_STAT_PREV_SKIP,	   /* a callout skipped: PREVIOUSLY_REDIRECTED_BY_SELF */
	CONNREDIR_STAT_DOWN_BYPASS,	   /* proxy not listening: callout skipped */
	CONNREDIR_STAT_DOWN_REFUSED,	   /* proxy not listening: connect refused */
	CONNREDIR_STAT_FAILURE_REFUSED,	   /* --on-failure refuse: connect refused */
	CONNREDIR_STAT_NOT_OWNER,	   /* a listener not owned by the callout's principal */
					   /* was at the proxy address: not redirected to it */
	CONNREDIR_STAT_TRACE_LOST,	   /* trace events dropped: ring buffer full */
	CONNREDIR_STAT_IMPLICIT,	   /* records of an accepted flow attached to a */
					   /* principal's record-less onward connect */
	CONNREDIR_STAT_IMPLICIT_AMBIGUOUS, /* accepted flows to that destination had */
					   /* different chains: none attached */
	CONNREDIR_STAT_LOOP_BROKEN,	   /* chain over CONNREDIR_MAX_HOPS counting */
					   /* carried hops: failure policy applied */
	CONNREDIR_STAT_PERMITTED,	   /* a permit filter matched: went direct */
	CONNREDIR_STAT_BLOCKED,		   /* a block filter matched: connect or send failed */
	CONNREDIR_STAT_MAX,
};

/* map `callout_stats` (PERCPU_ARRAY, index = callout id * CONNREDIR_CSTAT_MAX
 * + CONNREDIR_CSTAT_*): the same decisions as `stats`, per callout. Written
 * only by the BPF programs (the classifier in connect4/6, the records check
 * in setsockopt), each next to the host-wide counter it refines; the control
 * plane zeroes a callout's row when `callout add` (re)uses its id, and
 * `status`, `callout list` and `metrics` sum it over CPUs. Slot 0 (id 0,
 * "no callout") is never written. */
enum connredir_callout_stat {
	CONNREDIR_CSTAT_REDIRECTED = 0,	  /* connects rewritten to this callout's proxy */
	CONNREDIR_CSTAT_SELF_SKIP,	  /* skipped: REDIRECTED_BY_SELF */
	CONNREDIR_CSTAT_PREV_SKIP,	  /* skipped: PREVIOUSLY_REDIRECTED_BY_SELF */
	CONNREDIR_CSTAT_HOP_CAP,	  /* chosen, but the chain was full */
	CONNREDIR_CSTAT_NO_PROXY_FAMILY,  /* selected, no proxy for the family */
	CONNREDIR_CSTAT_STORAGE_FAIL,	  /* chosen, no memory for the socket's state */
	CONNREDIR_CSTAT_DOWN_BYPASS,	  /* proxy not listening: skipped */
	CONNREDIR_CSTAT_NOT_OWNER,	  /* a listener its principal does not own was there */
					  /* (also counted as down_bypass or down_refused) */
	CONNREDIR_CSTAT_DOWN_REFUSED,	  /* proxy not listening: connect refused */
	CONNREDIR_CSTAT_FAILURE_REFUSED,  /* --on-failure refuse: connect refused */
	CONNREDIR_CSTAT_RECORDS_REJECTED, /* a blob refused from this callout's principal */
	CONNREDIR_CSTAT_IMPLICIT,	  /* its principal's onward connect got implicit records */
	CONNREDIR_CSTAT_IMPLICIT_AMBIGUOUS, /* ... could not: candidates' chains differed */
	CONNREDIR_CSTAT_LOOP_BROKEN, /* chosen, but the flow re-entered past the loop budget */
	CONNREDIR_CSTAT_MAX,
};
#define CONNREDIR_CALLOUT_STATS_ENTRIES (CONNREDIR_MAX_CALLOUTS * CONNREDIR_CSTAT_MAX)

/* ---- Tracing (`connredir trace`) -------------------------------------------- */

/* map `trace_on` (ARRAY, 1 entry, __u64): a lease, the bpf_ktime_get_boot_ns()
 * deadline until which the classifier emits events; 0 = nobody traces.
 * Written by `connredir trace` only (renewed while it runs, so a tracer that
 * dies cannot leave tracing on past the deadline); read by connect4/6 before
 * anything of an event is built. */
/* map `trace_events` (RINGBUF): one struct connredir_trace_event per
 * classified connect while the lease holds; full ring = the event is dropped
 * and counted (CONNREDIR_STAT_TRACE_LOST). */
#define CONNREDIR_TRACE_RING_BYTES (1u << 20)
/* Candidates recorded per event: more than CONNREDIR_MAX_HOPS, so a full
 * chain's skips and the callout that meets its cap all fit. */
#define CONNREDIR_TRACE_VERDICTS_MAX 16

/* A candidate callout's verdict (struct connredir_trace_verdict.verdict). */
enum connredir_trace_verdict_kind {
	CONNREDIR_TV_REDIRECTED = 1,  /* redirected to its proxy */
	CONNREDIR_TV_SELF_SKIP,	      /* skipped: REDIRECTED_BY_SELF */
	CONNREDIR_TV_PREV_SKIP,	      /* skipped: PREVIOUSLY_REDIRECTED_BY_SELF */
	CONNREDIR_TV_HOP_CAP,	      /* chosen, chain at CONNREDIR_MAX_HOPS */
	CONNREDIR_TV_NO_PROXY_FAMILY, /* no proxy for the family */
	CONNREDIR_TV_STORAGE_FAIL,    /* chosen, no memory for the socket's state */
	CONNREDIR_TV_NO_KEY,	      /* chosen, MAC key not initialised */
	CONNREDIR_TV_DOWN_BYPASS,     /* proxy down (or not owned): skipped */
	CONNREDIR_TV_DOWN_REFUSED,    /* proxy down (or not owned): connect refused */
	CONNREDIR_TV_LOOP_BROKEN,     /* chosen, carried + chain hops at CONNREDIR_MAX_HOPS */
	CONNREDIR_TV_PERMITTED,	      /* a permit filter matched (callout_id 0): goes direct */
	CONNREDIR_TV_BLOCKED,	      /* a block filter matched (callout_id 0): fails, EPERM */
};
#define CONNREDIR_TV_F_NOT_OWNER       0x1u /* a listener its principal does not own was there */
#define CONNREDIR_TV_F_FAILURE_REFUSED 0x2u /* --on-failure refuse failed the connect */

struct connredir_trace_verdict {
	__u32 callout_id;
	__u32 filter_id; /* the filter that selected it */
	__u8 verdict;	 /* enum connredir_trace_verdict_kind */
	__u8 flags;	 /* CONNREDIR_TV_F_* */
	__u16 reserved;
};

#define CONNREDIR_TRACE_OUT_DIRECT     0 /* went on to its destination */
#define CONNREDIR_TRACE_OUT_REDIRECTED 1 /* rewritten to final_dst (a proxy) */
#define CONNREDIR_TRACE_OUT_REFUSED    2 /* failed with ECONNREFUSED */
#define CONNREDIR_TRACE_OUT_BLOCKED    3 /* failed with EPERM: a block filter */

/* Implicit records at this connect (struct connredir_trace_event.implicit). */
#define CONNREDIR_TRACE_IMPLICIT_NONE	   0 /* not a principal's record-less onward connect */
#define CONNREDIR_TRACE_IMPLICIT_ATTACHED  1 /* an accepted flow's records were attached */
#define CONNREDIR_TRACE_IMPLICIT_AMBIGUOUS 2 /* the accepted flows' chains differed: none */
#define CONNREDIR_TRACE_IMPLICIT_OFF	   3 /* the callout has implicit records off */

struct connredir_trace_event {
	__u64 time_ns; /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	__u32 pid; /* tgid */
	__u32 uid;
	char comm[16];
	struct connredir_addr dst;	 /* what the connect asked for */
	struct connredir_addr final_dst; /* where it goes; unset (family 0) if refused */
	__u8 proto;			 /* CONNREDIR_PROTO_TCP or _UDP */
	__u8 hops;			 /* chain length before this connect */
	__u8 outcome;			 /* CONNREDIR_TRACE_OUT_* */
	__u8 count;			 /* verdicts[] in use */
	__u8 truncated;			 /* more candidates than verdicts[] holds */
	__u8 implicit;			 /* CONNREDIR_TRACE_IMPLICIT_* */
	__u8 carried;			 /* records.carried_hops of the flow */
	__u8 reserved;
	struct connredir_trace_verdict verdicts[CONNREDIR_TRACE_VERDICTS_MAX];
};

/* Redirect state of a flow relative to one callout (WFP's four states). */
enum connredir_redirect_state {
	CONNREDIR_NOT_REDIRECTED = 0,
	CONNREDIR_REDIRECTED_BY_SELF = 1,
	CONNREDIR_REDIRECTED_BY_OTHER = 2,
	CONNREDIR_PREVIOUSLY_REDIRECTED_BY_SELF = 3,
};

#endif /* CONNREDIR_ABI_H */
