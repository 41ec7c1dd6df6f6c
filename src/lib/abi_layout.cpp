// Compile-time proof that the C++ compiler lays out the shared ABI exactly as
// the BPF side (clang -target bpf) and docs/ABI.md expect. A failure here
// means the ABI header changed or a compiler disagrees: fix the header (and
// bump CONNREDIR_ABI_VERSION), never these numbers alone.
#include <cstddef>

extern "C" {
#include "connredir_abi.h"
}

#define CR_SIZE(type, n) static_assert(sizeof(struct type) == (n), #type " size")
#define CR_OFF(type, field, n) \
  static_assert(offsetof(struct type, field) == (n), #type "." #field " offset")

CR_SIZE(connredir_addr, 20);
CR_OFF(connredir_addr, addr, 0);
CR_OFF(connredir_addr, port, 16);
CR_OFF(connredir_addr, family, 18);
static_assert(alignof(struct connredir_addr) == 2);

CR_SIZE(connredir_hop, 48);
CR_OFF(connredir_hop, callout_id, 0);
CR_OFF(connredir_hop, filter_id, 4);
CR_OFF(connredir_hop, time_ns, 8);
CR_OFF(connredir_hop, dst, 16);
CR_OFF(connredir_hop, proxy_uid, 36);
CR_OFF(connredir_hop, proxy_cgroup, 40);

CR_SIZE(connredir_origin, 56);
CR_OFF(connredir_origin, cgroup_id, 0);
CR_OFF(connredir_origin, pid, 8);
CR_OFF(connredir_origin, uid, 12);
CR_OFF(connredir_origin, comm, 16);
CR_OFF(connredir_origin, src, 32);
CR_OFF(connredir_origin, reserved, 52);

CR_SIZE(connredir_records, 472);
CR_OFF(connredir_records, magic, 0);
CR_OFF(connredir_records, version, 4);
CR_OFF(connredir_records, size, 6);
CR_OFF(connredir_records, flow_id, 8);
CR_OFF(connredir_records, hop_count, 16);
CR_OFF(connredir_records, carried_hops, 17);
CR_OFF(connredir_records, reserved1, 18);
CR_OFF(connredir_records, reserved2, 20);
CR_OFF(connredir_records, origin, 24);
CR_OFF(connredir_records, hops, 80);
CR_OFF(connredir_records, mac, 464);
static_assert(CONNREDIR_RECORDS_MAX >= sizeof(struct connredir_records));
// The size field is a __u16.
static_assert(sizeof(struct connredir_records) <= 0xffff);

CR_SIZE(connredir_implicit_key, 32);
CR_OFF(connredir_implicit_key, netns, 0);
CR_OFF(connredir_implicit_key, dst, 8);
CR_OFF(connredir_implicit_key, dst_port, 24);
CR_OFF(connredir_implicit_key, proto, 26);
CR_OFF(connredir_implicit_key, callout_id, 28);

CR_SIZE(connredir_context, 232);
CR_OFF(connredir_context, magic, 0);
CR_OFF(connredir_context, version, 4);
CR_OFF(connredir_context, size, 6);
CR_OFF(connredir_context, flow_id, 8);
CR_OFF(connredir_context, callout_id, 16);
CR_OFF(connredir_context, filter_id, 20);
CR_OFF(connredir_context, orig_dst, 24);
CR_OFF(connredir_context, orig_src, 44);
CR_OFF(connredir_context, pid, 64);
CR_OFF(connredir_context, uid, 68);
CR_OFF(connredir_context, cgroup_id, 72);
CR_OFF(connredir_context, comm, 80);
CR_OFF(connredir_context, hop, 96);
CR_OFF(connredir_context, reserved0, 97);
CR_OFF(connredir_context, user_len, 98);
CR_OFF(connredir_context, reserved1, 100);
CR_OFF(connredir_context, user, 104);
static_assert(offsetof(struct connredir_context, user) == CONNREDIR_CONTEXT_HDR_SIZE);
static_assert(sizeof(struct connredir_context) == CONNREDIR_CONTEXT_SIZE);
static_assert(CONNREDIR_CONTEXT_MAX >= CONNREDIR_CONTEXT_SIZE);

CR_SIZE(connredir_callout, 96);
CR_OFF(connredir_callout, id, 0);
CR_OFF(connredir_callout, flags, 4);
CR_OFF(connredir_callout, proxy4, 8);
CR_OFF(connredir_callout, proxy6, 28);
CR_OFF(connredir_callout, proxy_uid, 48);
CR_OFF(connredir_callout, proxy_cgroup_level, 52);
CR_OFF(connredir_callout, proxy_cgroup, 56);
CR_OFF(connredir_callout, name, 64);

CR_SIZE(connredir_filter, 200);
CR_OFF(connredir_filter, id, 0);
CR_OFF(connredir_filter, callout_id, 4);
CR_OFF(connredir_filter, weight, 8);
CR_OFF(connredir_filter, flags, 12);
CR_OFF(connredir_filter, seq, 16);
CR_OFF(connredir_filter, family, 24);
CR_OFF(connredir_filter, prefixlen, 25);
CR_OFF(connredir_filter, proto, 26);
CR_OFF(connredir_filter, action, 27);
CR_OFF(connredir_filter, port_lo, 28);
CR_OFF(connredir_filter, port_hi, 30);
CR_OFF(connredir_filter, addr, 32);
CR_OFF(connredir_filter, app_uid, 48);
CR_OFF(connredir_filter, app_cgroup_level, 52);
CR_OFF(connredir_filter, app_cgroup, 56);
CR_OFF(connredir_filter, user_len, 64);
CR_OFF(connredir_filter, reserved1, 66);
CR_OFF(connredir_filter, reserved2, 68);
CR_OFF(connredir_filter, user, 72);

// LPM_TRIE keys must start with the __u32 prefixlen; the data part is
// family + 16 address bytes, padded explicitly to a 4-byte multiple.
CR_SIZE(connredir_lpm_key, 24);
CR_OFF(connredir_lpm_key, prefixlen, 0);
CR_OFF(connredir_lpm_key, family, 4);
CR_OFF(connredir_lpm_key, addr, 5);
CR_OFF(connredir_lpm_key, reserved, 21);

CR_SIZE(connredir_candidates, 4 + 4 * CONNREDIR_CANDIDATES_MAX);
CR_OFF(connredir_candidates, ids, 4);

CR_SIZE(connredir_principal_key, 16);
CR_OFF(connredir_principal_key, kind, 0);
CR_OFF(connredir_principal_key, reserved, 4);
CR_OFF(connredir_principal_key, id, 8);

CR_SIZE(connredir_flow_key, 48);
CR_OFF(connredir_flow_key, netns, 0);
CR_OFF(connredir_flow_key, client_ip, 8);
CR_OFF(connredir_flow_key, proxy_ip, 24);
CR_OFF(connredir_flow_key, client_port, 40);
CR_OFF(connredir_flow_key, proxy_port, 42);
CR_OFF(connredir_flow_key, proto, 44);
CR_OFF(connredir_flow_key, reserved, 45);
CR_SIZE(connredir_udp_flow, 48);
CR_OFF(connredir_udp_flow, flow_id, 40);
CR_OFF(connredir_udp_flow, local, 20);

CR_SIZE(connredir_flow_view, 704);
CR_OFF(connredir_flow_view, context, 472);

CR_SIZE(connredir_sk_state, 760);
CR_OFF(connredir_sk_state, flags, 0);
// (the __u32 at offset 4 is BPF-private bookkeeping; its name may change)
CR_OFF(connredir_sk_state, handoff, 8);
CR_OFF(connredir_sk_state, records, 56);
CR_OFF(connredir_sk_state, context, 528);

CR_SIZE(connredir_sk_brief, 112);
CR_OFF(connredir_sk_brief, flow_id, 8);
CR_OFF(connredir_sk_brief, comm, 24);
CR_OFF(connredir_sk_brief, orig_dst, 40);
CR_OFF(connredir_sk_brief, handoff, 64);

CR_SIZE(connredir_sk_owner, 136);
CR_OFF(connredir_sk_owner, uid, 0);
CR_OFF(connredir_sk_owner, flags, 4);
CR_OFF(connredir_sk_owner, cgroup, 8);

CR_SIZE(connredir_secret, 16);
CR_OFF(connredir_secret, k0, 0);
CR_OFF(connredir_secret, k1, 8);

// Every records field the MAC covers sits before mac, and mac is the last
// member: the MAC input is exactly offsetof(mac) bytes.
static_assert(offsetof(struct connredir_records, mac) + sizeof(__u64) ==
              sizeof(struct connredir_records));
static_assert(CONNREDIR_MAX_HOPS <= 0xff, "hop_count is a __u8");
static_assert(CONNREDIR_USER_CONTEXT_MAX <= 0xffff, "user_len is a __u16");
static_assert(CONNREDIR_CONTEXT_SIZE <= 0xffff, "context size is a __u16");

// callout_stats: the counter numbers are part of the ABI (pinned maps outlive a
// binary), so pin them and the map's size down.
static_assert(CONNREDIR_CSTAT_REDIRECTED == 0);
static_assert(CONNREDIR_CSTAT_RECORDS_REJECTED == 10);
static_assert(CONNREDIR_CSTAT_LOOP_BROKEN == 13);
static_assert(CONNREDIR_CSTAT_MAX == 14);
static_assert(CONNREDIR_CALLOUT_STATS_ENTRIES == 64 * 14);

CR_SIZE(connredir_trace_verdict, 12);
CR_OFF(connredir_trace_verdict, filter_id, 4);
CR_OFF(connredir_trace_verdict, verdict, 8);
CR_OFF(connredir_trace_verdict, flags, 9);
CR_SIZE(connredir_trace_event, 280);
CR_OFF(connredir_trace_event, cgroup_id, 8);
CR_OFF(connredir_trace_event, pid, 16);
CR_OFF(connredir_trace_event, comm, 24);
CR_OFF(connredir_trace_event, dst, 40);
CR_OFF(connredir_trace_event, final_dst, 60);
CR_OFF(connredir_trace_event, proto, 80);
CR_OFF(connredir_trace_event, count, 83);
CR_OFF(connredir_trace_event, truncated, 84);
CR_OFF(connredir_trace_event, verdicts, 88);
static_assert((CONNREDIR_TRACE_VERDICTS_MAX & (CONNREDIR_TRACE_VERDICTS_MAX - 1)) == 0);
static_assert(CONNREDIR_TRACE_VERDICTS_MAX <= 0xff, "count is a __u8");
static_assert(CONNREDIR_TRACE_VERDICTS_MAX > CONNREDIR_MAX_HOPS,
              "an event holds a full chain and the callout that meets its cap");
