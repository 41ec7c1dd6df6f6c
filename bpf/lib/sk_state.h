/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The per-socket state map, kept in its own header so that any other BPF
 * object that needs it declares the same map and the loader points it at
 * the pinned one (bpf_map__reuse_fd) before load: all of them see one map.
 * The hooks (connredir.bpf.c) create and fill it.
 *
 * Value: struct connredir_sk_state — records set by a proxy, the redirect of
 * a client socket, or the flow adopted by an accepted socket. Freed with the
 * socket.
 */
#ifndef CONNREDIR_LIB_SK_STATE_H
#define CONNREDIR_LIB_SK_STATE_H

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct connredir_sk_state);
} sk_state SEC(".maps");

#endif /* CONNREDIR_LIB_SK_STATE_H */
