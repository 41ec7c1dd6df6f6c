// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Another vendor's programs, for the coexistence tests: they share
 * connredir's cgroup hooks the way a security agent or a CNI would. Each
 * counts its runs (so a test can tell it still runs), and the connect4
 * program can rewrite one destination port to another, as a foreign
 * load balancer or NAT program would.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Runs per program: 0 connect4, 1 sockops, 2 getsockopt. Read by the test. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 3);
  __type(key, __u32);
  __type(value, __u64);
} runs SEC(".maps");

/* Set by the test before load: rewrite connects to from_port (host order)
 * into to_port. 0: rewrite nothing. */
const volatile __u16 from_port = 0;
const volatile __u16 to_port = 0;

static __always_inline void count(__u32 i) {
  __u64* v = bpf_map_lookup_elem(&runs, &i);

  if (v) __sync_fetch_and_add(v, 1);
}

SEC("cgroup/connect4")
int foreign_connect4(struct bpf_sock_addr* ctx) {
  count(0);
  if (from_port && ctx->user_port == bpf_htons(from_port)) ctx->user_port = bpf_htons(to_port);
  return 1;
}

SEC("sockops")
int foreign_sockops(struct bpf_sock_ops* skops) {
  count(1);
  return 1;
}

SEC("cgroup/getsockopt")
int foreign_getsockopt(struct bpf_sockopt* ctx) {
  count(2);
  return 1;
}
