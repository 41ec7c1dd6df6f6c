/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Counters: host-wide (`stats`) and per callout (`callout_stats`). Every
 * per-callout count refines a host-wide one next to it.
 */
#ifndef CONNREDIR_LIB_STATS_H
#define CONNREDIR_LIB_STATS_H

#include "maps.h"

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/* A global (not inlined, not static) function: the verifier checks it once,
 * on its own, instead of once per path through the classifier's candidate
 * loop, where it is called; inlined there it pushed connect4/6 past the
 * verifier's 1M-instruction budget. Callout ids come from map values: bound
 * them so a bad id cannot count in another callout's row. */
__noinline int callout_stat_inc(__u32 cid, __u32 idx)
{
	__u32 key;
	__u64 *v;

	if (cid >= CONNREDIR_MAX_CALLOUTS || idx >= CONNREDIR_CSTAT_MAX)
		return 0;
	key = cid * CONNREDIR_CSTAT_MAX + idx;
	v = bpf_map_lookup_elem(&callout_stats, &key);
	if (v)
		*v += 1;
	return 0;
}

#endif /* CONNREDIR_LIB_STATS_H */
