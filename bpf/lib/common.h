/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every part of the kernel side needs: kernel types (CO-RE), the
 * shared ABI, and the few libc constants the BPF target lacks.
 */
#ifndef CONNREDIR_LIB_COMMON_H
#define CONNREDIR_LIB_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "connredir_abi.h"
#include "connredir_siphash.h"

#define AF_INET	    2
#define AF_INET6    10
#define SOCK_STREAM 1
#define SOCK_DGRAM  2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define EPERM	     1
#define ENOENT	     2
#define EACCES	     13
#define EINVAL	     22
#define ENOPROTOOPT  92
#define EOPNOTSUPP   95
#define ENOBUFS	     105
#define EISCONN	     106
#define ECONNREFUSED 111
#define ESTALE	     116

/* Verdicts of cgroup hooks: 1 = proceed. We never return 0 from connect or
 * sockops: connredir fails open for everything it does not own. */
#define ALLOW 1

#endif /* CONNREDIR_LIB_COMMON_H */
