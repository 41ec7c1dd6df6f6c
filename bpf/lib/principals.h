/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Principals: who the current task (or a socket's binder) is to connredir:
 * root, `connredir authorize`d principals, and each callout's own proxy
 * principal (a uid, or a cgroup and everything below it).
 */
#ifndef CONNREDIR_LIB_PRINCIPALS_H
#define CONNREDIR_LIB_PRINCIPALS_H

#include "maps.h"

/* Every principals flag the caller has: by uid, or by a cgroup that is the
 * caller's cgroup or one of its ancestors. One lookup per cgroup level: the
 * walk caller_flags() caches. */
static __always_inline __u32 caller_flags_uncached(__u32 uid)
{
	struct connredir_principal_key key = {};
	__u32 *flags, all = 0;
	int level;

	key.kind = CONNREDIR_PRINCIPAL_UID;
	key.id = uid;
	flags = bpf_map_lookup_elem(&principals, &key);
	if (flags)
		all |= *flags;
	key.kind = CONNREDIR_PRINCIPAL_CGROUP;
	for (level = 1; level <= CONNREDIR_CGROUP_LEVELS_MAX; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		key.id = id;
		flags = bpf_map_lookup_elem(&principals, &key);
		if (flags)
			all |= *flags;
	}
	return all;
}

/* The same, from `principal_cache` while the generation it was computed
 * under is current. The generation is read before `principals` is: an
 * answer computed while the control plane changes `principals` is stored
 * under the old generation (or the new one, after the change landed), and
 * the control plane bumps the generation only after its change, so a stale
 * answer is never trusted after the bump. */
static __always_inline __u32 caller_flags(void)
{
	struct principal_cache_key key = {};
	struct principal_cache_val fresh = {};
	struct principal_cache_val *c;
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&principals_gen, &zero);

	fresh.gen = gen ? *gen : 0;
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.uid = (__u32)bpf_get_current_uid_gid();
	c = bpf_map_lookup_elem(&principal_cache, &key);
	if (c && c->gen == fresh.gen)
		return c->flags;
	fresh.flags = caller_flags_uncached(key.uid);
	bpf_map_update_elem(&principal_cache, &key, &fresh, BPF_ANY);
	return fresh.flags;
}

/* Does the caller have a principals entry with any of `mask`'s flags? */
static __always_inline int caller_principal(__u32 mask)
{
	return (caller_flags() & mask) != 0;
}

/* Root, or any registered principal: the first gate of the option hooks. */
static __always_inline int caller_authorized(void)
{
	if ((__u32)bpf_get_current_uid_gid() == 0)
		return 1;
	return caller_principal(CONNREDIR_PRINCIPAL_F_AUTHORIZED | CONNREDIR_PRINCIPAL_F_CALLOUT);
}

static __always_inline int cgroup_is_or_below(__u64 cgroup, __u32 level)
{
	return cgroup && bpf_get_current_ancestor_cgroup_id(level) == cgroup;
}

static __always_inline int callout_has_principal(const struct connredir_callout *c)
{
	return c->proxy_uid != CONNREDIR_UID_NONE || c->proxy_cgroup != 0;
}

/* Is the current task callout c's principal? Principals are per callout: the
 * proxy uid or cgroup the callout names. A callout that names none is served
 * by `connredir authorize`d principals (and root), as before principals were
 * per callout. */
static __always_inline int caller_serves(const struct connredir_callout *c)
{
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	if (uid == 0)
		return 1;
	if (!callout_has_principal(c))
		return caller_principal(CONNREDIR_PRINCIPAL_F_AUTHORIZED);
	if (c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == uid)
		return 1;
	return cgroup_is_or_below(c->proxy_cgroup, c->proxy_cgroup_level);
}

_Static_assert((CONNREDIR_CGROUP_LEVELS_MAX & (CONNREDIR_CGROUP_LEVELS_MAX - 1)) == 0,
	       "cgroup levels index with a mask");

/* The same question about whoever bound a socket, from its sk_owner value
 * (the binder's identity then, checked against the callout as it is now, so
 * a proxy started before its callout was added is still recognised). */
static __always_inline int owner_serves(const struct connredir_sk_owner *o,
					const struct connredir_callout *c)
{
	__u32 lvl = c->proxy_cgroup_level;

	if (o->flags & CONNREDIR_OWNER_F_ROOT)
		return 1;
	if (!callout_has_principal(c))
		return (o->flags & CONNREDIR_OWNER_F_AUTHORIZED) != 0;
	if (c->proxy_uid != CONNREDIR_UID_NONE && c->proxy_uid == o->uid)
		return 1;
	if (c->proxy_cgroup && lvl >= 1 && lvl <= CONNREDIR_CGROUP_LEVELS_MAX)
		return o->cgroup[(lvl - 1) & (CONNREDIR_CGROUP_LEVELS_MAX - 1)] == c->proxy_cgroup;
	return 0;
}

/* The current task as an sk_owner value (for the bind guard and the mark). */
static __always_inline void current_owner(struct connredir_sk_owner *o)
{
	struct connredir_principal_key key = {};
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 *flags;
	int level;

	o->uid = uid;
	o->flags = uid == 0 ? CONNREDIR_OWNER_F_ROOT : 0;
	key.kind = CONNREDIR_PRINCIPAL_UID;
	key.id = uid;
	flags = bpf_map_lookup_elem(&principals, &key);
	if (flags && (*flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED))
		o->flags |= CONNREDIR_OWNER_F_AUTHORIZED;
	key.kind = CONNREDIR_PRINCIPAL_CGROUP;
	for (level = 1; level <= CONNREDIR_CGROUP_LEVELS_MAX; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		o->cgroup[level - 1] = id;
		key.id = id;
		flags = bpf_map_lookup_elem(&principals, &key);
		if (flags && (*flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED))
			o->flags |= CONNREDIR_OWNER_F_AUTHORIZED;
	}
}

#endif /* CONNREDIR_LIB_PRINCIPALS_H */
