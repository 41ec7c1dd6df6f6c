/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Proxy listeners (bind4/6): only a callout's principal (or root) may bind
 * its proxy address, and every bind records its owner for connect4/6.
 */
#ifndef CONNREDIR_LIB_BIND_H
#define CONNREDIR_LIB_BIND_H

#include "addr.h"
#include "pool.h"
#include "principals.h"
#include "stats.h"

/* Would a listener bound at `a` receive flows redirected to callout c? A
 * pool address at the callout's port would take the unconnected UDP sends
 * of one destination (pool.h). */
static __always_inline int bind_takes_proxy(const struct connredir_addr *a,
					    const struct connredir_callout *c)
{
	__u32 slot;
	/* The v6 wildcard also receives IPv4; a pool address at the port is
	 * as good as the wildcard for the sends it stands for. */
	int any =
		(a->family == CONNREDIR_AF_INET6 && addr_is_wildcard(a)) || pool_slot_of(a, &slot);

	if (c->flags & CONNREDIR_CALLOUT_F_PROXY4 && a->port == c->proxy4.port &&
	    (same_endpoint(a, &c->proxy4) || any ||
	     (a->family == CONNREDIR_AF_INET && addr_is_wildcard(a))))
		return 1;
	if (c->flags & CONNREDIR_CALLOUT_F_PROXY6 && a->port == c->proxy6.port &&
	    (same_endpoint(a, &c->proxy6) || any))
		return 1;
	return 0;
}

/*
 * A redirected flow carries the application's bytes and its original
 * destination to whoever listens at the proxy address. So only root and the
 * callout's own principal may bind a callout's proxy address (or the wildcard
 * on its port); anyone else, including another callout's principal, gets
 * EACCES. Every bind that is allowed records its owner in sk_owner: the
 * connect side redirects only to a listener whose owner serves the callout,
 * which also covers listeners bound before the callout existed. Runs only on
 * explicit bind(), never on the connect path.
 */
struct bind_scan {
	struct connredir_addr addr;
	struct connredir_sk_owner who; /* the binding task */
	int denied;
};

/* bpf_loop callback: does the bind take callout `id`'s proxy address while
 * the caller is not that callout's principal? */
static long bind_scan_one(__u32 id, void *data)
{
	struct bind_scan *scan = data;
	const struct connredir_callout *c;

	if (id == 0)
		return 0;
	c = bpf_map_lookup_elem(&callouts, &id);
	if (c && (c->flags & CONNREDIR_CALLOUT_F_USED) && bind_takes_proxy(&scan->addr, c) &&
	    !owner_serves(&scan->who, c)) {
		scan->denied = 1;
		return 1; /* stop */
	}
	return 0;
}

static __always_inline int guard_proxy_bind(struct bpf_sock_addr *ctx, struct bind_scan *scan)
{
	struct connredir_sk_owner *o;
	struct bpf_sock *sk = ctx->sk;

	if (scan->addr.port == 0)
		return ALLOW; /* an ephemeral port is nobody's proxy address */
	current_owner(&scan->who);
	if (!(scan->who.flags & CONNREDIR_OWNER_F_ROOT))
		bpf_loop(CONNREDIR_MAX_CALLOUTS, bind_scan_one, scan, 0);
	if (scan->denied) {
		stat_inc(CONNREDIR_STAT_DENIED);
		bpf_set_retval(-EACCES);
		return 0;
	}
	if (!sk)
		return ALLOW;
	o = bpf_sk_storage_get(&sk_owner, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (o)
		__builtin_memcpy(o, &scan->who, sizeof(*o));
	/* No memory for the mark: the socket is simply never a redirect
	 * target (fail closed), so the bind itself may proceed. */
	return ALLOW;
}

#endif /* CONNREDIR_LIB_BIND_H */
