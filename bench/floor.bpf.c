// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The floor of issue 14's goal 1, for bench/floor.sh: programs that do
 * nothing, at the three hooks that run for every TCP connection of a cgroup
 * connredir is attached to (connect4 once, sockops at each base callback,
 * sock_release once). No program at these hooks can cost less; what
 * connredir's own programs cost above this is what its code adds.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int floor_connect4(struct bpf_sock_addr* ctx) { return 1; }

SEC("sockops")
int floor_sockops(struct bpf_sock_ops* skops) { return 1; }

SEC("cgroup/sock_release")
int floor_release(struct bpf_sock* sk) { return 1; }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
