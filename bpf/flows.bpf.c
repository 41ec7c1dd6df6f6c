// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * `connredir flows`: walks every socket that carries connredir state (the
 * pinned sk_state map of the hooks, reused by the loader) and writes its
 * 4-tuple and state to the iterator's seq file. Loaded on demand by the CLI,
 * never attached to a cgroup: listing flows costs nothing on the data path.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "connredir_abi.h"

#define AF_INET 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* sk_state: the per-socket state map (see sk_state.bpf.h). Not created
 * here: the loader points it at the pinned map before load. */
#include "sk_state.bpf.h"

static __always_inline void endpoint(struct connredir_addr *a, const void *ip6, __u32 ip4,
				     __u16 port_be, __u16 family)
{
	if (family == AF_INET) {
		__builtin_memset(a->addr, 0, 10);
		a->addr[10] = 0xff;
		a->addr[11] = 0xff;
		__builtin_memcpy(&a->addr[12], &ip4, 4);
		a->family = CONNREDIR_AF_INET;
	} else {
		bpf_probe_read_kernel(a->addr, 16, ip6);
		a->family = CONNREDIR_AF_INET6;
	}
	a->port = port_be;
}

SEC("iter/bpf_sk_storage_map")
int connredir_dump_flows(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct connredir_sk_state *st = ctx->value;
	struct connredir_flow_dump d = {};
	struct sock *sk = ctx->sk;
	__u16 family, lport;

	if (!sk || !st)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	d.cookie = bpf_get_socket_cookie(sk);
	endpoint(&d.local, &sk->__sk_common.skc_v6_rcv_saddr,
		 BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr), __builtin_bswap16(lport), family);
	endpoint(&d.remote, &sk->__sk_common.skc_v6_daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr),
		 BPF_CORE_READ(sk, __sk_common.skc_dport), family);
	bpf_seq_write(seq, &d, sizeof(d));
	bpf_seq_write(seq, st, sizeof(*st));
	return 0;
}
