// The control plane on top of a MapStore: callouts, filters (with the index
// kept exact on every change), principals, the MAC secret.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

template <class T>
T from_bytes(const std::vector<uint8_t>& b) {
  T v;
  std::memcpy(&v, b.data(), sizeof v);
  return v;
}

std::vector<IndexFilter> index_filters(const std::vector<connredir_filter>& all) {
  std::vector<IndexFilter> out;
  out.reserve(all.size());
  for (const auto& f : all) out.push_back(index_filter(f));
  return out;
}

std::string callout_name(const connredir_callout& c) {
  return std::string(c.name, strnlen(c.name, sizeof c.name));
}

// The name of callout `id` among `all` ("?" if it is gone).
std::string callout_name(const std::vector<connredir_callout>& all, uint32_t id) {
  for (const auto& c : all)
    if (c.id == id) return callout_name(c);
  return "?";
}

// Filters some index entry names. A filter entry no index entry names was
// never active: an add or load was interrupted before its index writes.
std::set<uint32_t> named_filters(const Index& index) {
  std::set<uint32_t> named;
  for (const auto& [k, ids] : index) named.insert(ids.begin(), ids.end());
  return named;
}

std::string join_ids(const std::vector<uint32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s;
}

// Ids of the cgroups at and below `dir` (bounded walk; a cgroup tree with
// more entries than that is not searched further) and of its ancestors up to
// the cgroup2 mount. Empty if `dir` is not a directory (unit tests' fakes).
std::set<uint64_t> related_cgroups(const CgroupRef& ref) {
  namespace fs = std::filesystem;
  std::set<uint64_t> ids;
  std::error_code ec;
  fs::path p(ref.path);
  if (ref.path.empty() || !fs::is_directory(p, ec)) return ids;
  struct stat st {};
  fs::path up = p;
  for (uint32_t l = 0; l <= ref.level && !up.empty(); ++l, up = up.parent_path())
    if (::stat(up.c_str(), &st) == 0) ids.insert(st.st_ino);
  size_t budget = 4096;
  for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end && budget > 0;
       it.increment(ec), --budget)
    if (it->is_directory(ec) && ::stat(it->path().c_str(), &st) == 0) ids.insert(st.st_ino);
  return ids;
}

std::string principal_text(uint32_t kind, uint64_t id) {
  return kind == CONNREDIR_PRINCIPAL_UID ? fmt::format("uid {}", id)
                                         : fmt::format("cgroup id {}", id);
}

}  // namespace

const char* stat_name(size_t index) {
  static const char* const names[] = {
      "classified",      "redirected",   "hop_cap",    "no_proxy_family", "storage_fail",
      "published",       "publish_fail", "accepted",   "records_set",     "records_rejected",
      "denied",          "self_skip",    "prev_skip",  "down_bypass",     "down_refused",
      "failure_refused", "not_owner",    "trace_lost", "implicit",        "implicit_ambiguous",
      "loop_broken",     "permitted",    "blocked",
  };
  static_assert(sizeof names / sizeof names[0] == CONNREDIR_STAT_MAX, "a name per stat");
  return index < CONNREDIR_STAT_MAX ? names[index] : "?";
}

const char* stat_help(size_t index) {
  static const char* const help[] = {
      "connects whose destination hit the filter index",
      "connects rewritten to a proxy",
      "connects a filter selected but the chain was full (connected directly)",
      "connects a filter selected but its callout has no proxy for the family",
      "connects not redirected because per-socket storage could not be allocated",
      "flows handed to a proxy (TCP at connect, UDP at the first datagram or send)",
      "hand-offs that could not be published (hand-off map full)",
      "hand-offs consumed by a socket a proxy accepted",
      "redirect records attached by a proxy with setsockopt",
      "redirect records refused as forged, altered or malformed",
      "records queries and sets refused with EACCES (not a principal)",
      "callouts skipped because they redirected the connect's flow already (by self)",
      "callouts skipped because they redirected an earlier hop of the flow",
      "callouts skipped because their proxy was not listening (on-proxy-down bypass)",
      "connects refused because the callout's proxy was not listening (on-proxy-down refuse)",
      "connects refused because they could not be redirected (on-failure refuse)",
      "callouts whose proxy address had a listener their principal does not own",
      "trace events dropped because the trace ring buffer was full (reported by connredir trace)",
      ("records of a flow a proxy accepted, attached to its onward connect that set none "
       "(implicit records)"),
      ("onward connects of a proxy that got no implicit records because the flows it accepted "
       "for that destination had different chains"),
      ("connects not redirected (or refused by on-failure refuse) because the flow re-entered "
       "past the hop budget counting hops carried over record-less proxies (loop breaker)"),
      "connects and UDP sends a permit filter exempted from every lower-weight filter",
      "connects and UDP sends a block filter failed with EPERM",
  };
  static_assert(sizeof help / sizeof help[0] == CONNREDIR_STAT_MAX, "a help text per stat");
  return index < CONNREDIR_STAT_MAX ? help[index] : "?";
}

const char* callout_stat_name(size_t index) {
  static const char* const names[] = {
      "redirected",       "self_skip",   "prev_skip",          "hop_cap",      "no_proxy_family",
      "storage_fail",     "down_bypass", "not_owner",          "down_refused", "failure_refused",
      "records_rejected", "implicit",    "implicit_ambiguous", "loop_broken",
  };
  static_assert(sizeof names / sizeof names[0] == CONNREDIR_CSTAT_MAX, "a name per counter");
  return index < CONNREDIR_CSTAT_MAX ? names[index] : "?";
}

const char* callout_stat_help(size_t index) {
  static const char* const help[] = {
      "connects rewritten to the callout's proxy",
      "skipped: the callout redirected this flow already (REDIRECTED_BY_SELF)",
      "skipped: the callout redirected an earlier hop of the flow",
      "chosen, but the chain was full (connected directly)",
      "selected, but the callout has no proxy for the family",
      "chosen, but per-socket storage could not be allocated",
      "skipped: the proxy was not listening (on-proxy-down bypass)",
      ("a listener the callout's principal does not own was at the proxy address (also counted "
       "as down_bypass or down_refused)"),
      "connect refused: the proxy was not listening (on-proxy-down refuse)",
      "connect refused: it could not be redirected (on-failure refuse)",
      ("redirect records from the callout's proxy principal refused as forged, altered or "
       "malformed"),
      "onward connects of the callout's principal that got the records of a flow it accepted",
      ("onward connects of the callout's principal that got no implicit records: the flows it "
       "accepted for that destination had different chains"),
      ("chosen, but the flow passed the hop budget counting carried hops (loop breaker; not "
       "redirected, or refused by on-failure refuse)"),
  };
  static_assert(sizeof help / sizeof help[0] == CONNREDIR_CSTAT_MAX, "a help text per counter");
  return index < CONNREDIR_CSTAT_MAX ? help[index] : "?";
}

const char* to_string(ProxyDown p) { return p == ProxyDown::Bypass ? "bypass" : "refuse"; }

Result<ProxyDown> parse_proxy_down(std::string_view text) {
  if (text == "refuse") return ProxyDown::Refuse;
  if (text == "bypass") return ProxyDown::Bypass;
  return fail(EINVAL, fmt::format("--on-proxy-down '{}': expected refuse (fail the connect at "
                                  "once; the default) or bypass (skip this callout)",
                                  text));
}

const char* to_string(OnFailure p) { return p == OnFailure::Refuse ? "refuse" : "bypass"; }

Result<OnFailure> parse_on_failure(std::string_view text) {
  if (text == "refuse") return OnFailure::Refuse;
  if (text == "bypass") return OnFailure::Bypass;
  return fail(EINVAL, fmt::format("--on-failure '{}': expected refuse (fail the connect) or "
                                  "bypass (let it go on uninspected by this callout)",
                                  text));
}

const char* implicit_records_text(bool on) { return on ? "on" : "off"; }

Result<bool> parse_implicit_records(std::string_view text) {
  if (text == "on" || text == "true") return true;
  if (text == "off" || text == "false") return false;
  return fail(EINVAL, fmt::format("--implicit-records '{}': expected on (an onward connect of the "
                                  "proxy that sets no records gets those of the flow it accepted; "
                                  "the default) or off (it gets none); true or false in a "
                                  "configuration file",
                                  text));
}

const char* no_proxy_fate(uint32_t callout_flags) {
  return (callout_flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED) ? "are refused (--on-failure refuse)"
                                                           : "are not redirected by it";
}

CalloutInfo callout_info(const connredir_callout& c) {
  CalloutInfo i;
  i.id = c.id;
  i.name = callout_name(c);
  if (c.flags & CONNREDIR_CALLOUT_F_PROXY4) i.proxy4 = Address::from_abi(c.proxy4);
  if (c.flags & CONNREDIR_CALLOUT_F_PROXY6) i.proxy6 = Address::from_abi(c.proxy6);
  if (c.proxy_uid != CONNREDIR_UID_NONE) i.proxy_uid = c.proxy_uid;
  i.proxy_cgroup = c.proxy_cgroup;
  i.proxy_cgroup_level = c.proxy_cgroup_level;
  // Neither DOWN flag (maps of older versions): the kernel side refuses.
  i.on_proxy_down =
      (c.flags & CONNREDIR_CALLOUT_F_DOWN_BYPASS) ? ProxyDown::Bypass : ProxyDown::Refuse;
  if (c.flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED) i.on_failure = OnFailure::Refuse;
  i.shared_principal = (c.flags & CONNREDIR_CALLOUT_F_SHARED_PRINCIPAL) != 0;
  // Clear in maps of older versions: implicit records on, the default.
  i.implicit_records = (c.flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT) == 0;
  return i;
}

IndexFilter index_filter(const connredir_filter& f) {
  IndexFilter x;
  x.id = f.id;
  x.weight = f.weight;
  x.seq = f.seq;
  x.dst.family = f.family;
  x.dst.len = f.prefixlen;
  std::memcpy(x.dst.addr.data(), f.addr, 16);
  if (f.family == 0) x.dst = Prefix::any();
  return x;
}

connredir_filter make_filter(const FilterSpec& spec, uint32_t id, uint32_t callout_id,
                             uint64_t seq) {
  connredir_filter f;
  std::memset(&f, 0, sizeof f);
  f.id = id;
  f.callout_id = callout_id;
  f.weight = spec.weight;
  f.seq = seq;
  f.family = spec.dst.family;
  f.prefixlen = spec.dst.family ? spec.dst.len : 0;
  if (spec.dst.family) std::memcpy(f.addr, spec.dst.addr.data(), 16);
  f.proto = spec.proto;
  f.action = static_cast<uint8_t>(spec.action);
  f.port_lo = spec.ports.lo;
  f.port_hi = spec.ports.hi;
  f.app_uid = CONNREDIR_UID_NONE;
  if (spec.app_uid) {
    f.flags |= CONNREDIR_FILTER_F_APP_UID;
    f.app_uid = *spec.app_uid;
  }
  if (spec.app_cgroup) {
    f.flags |= CONNREDIR_FILTER_F_APP_CGROUP;
    f.app_cgroup = spec.app_cgroup->id;
    f.app_cgroup_level = spec.app_cgroup->level;
  }
  f.user_len = static_cast<uint16_t>(spec.context.size());
  std::memcpy(f.user, spec.context.data(), spec.context.size());
  return f;
}

FilterInfo filter_info(const connredir_filter& f, std::string_view callout) {
  FilterInfo i;
  i.id = f.id;
  i.action = static_cast<FilterAction>(f.action);
  i.callout_id = f.callout_id;
  if (i.action == FilterAction::Redirect) i.callout = std::string(callout);
  i.weight = f.weight;
  i.seq = f.seq;
  i.dst = index_filter(f).dst;
  i.ports = PortRange{f.port_lo, f.port_hi};
  i.proto = f.proto;
  if (f.flags & CONNREDIR_FILTER_F_APP_UID) i.app_uid = f.app_uid;
  if (f.flags & CONNREDIR_FILTER_F_APP_CGROUP) {
    i.app_cgroup = f.app_cgroup;
    i.app_cgroup_level = f.app_cgroup_level;
  }
  size_t n = std::min<size_t>(f.user_len, CONNREDIR_USER_CONTEXT_MAX);
  i.context.assign(reinterpret_cast<const char*>(f.user), n);
  return i;
}

namespace {

// Principals are per callout: a process that is the principal of two callouts
// may listen at both proxy addresses and read both callouts' flows. That must
// be the administrator's choice, so an overlap (same uid; same, ancestor or
// descendant cgroup) with an existing callout needs --shared-principal.
Result<void> check_principal_overlap(const CalloutSpec& spec,
                                     const std::vector<connredir_callout>& all) {
  std::set<uint64_t> related;
  if (spec.proxy_cgroup) {
    related = related_cgroups(*spec.proxy_cgroup);
    related.insert(spec.proxy_cgroup->id);
  }
  for (const auto& c : all) {
    std::string what;
    if (spec.proxy_uid && c.proxy_uid != CONNREDIR_UID_NONE && *spec.proxy_uid == c.proxy_uid)
      what = fmt::format("uid {}", c.proxy_uid);
    else if (c.proxy_cgroup && related.count(c.proxy_cgroup))
      what = c.proxy_cgroup == spec.proxy_cgroup->id
                 ? fmt::format("cgroup {}", spec.proxy_cgroup->path)
                 : fmt::format("cgroup id {} (nested with {})", c.proxy_cgroup,
                               spec.proxy_cgroup->path);
    if (what.empty()) continue;
    return fail(EEXIST, fmt::format("callout '{}' already has the principal {}: a process that is "
                                    "both callouts' principal could listen at both proxies and "
                                    "read both callouts' flows. Give '{}' a principal of its own, "
                                    "or pass --shared-principal if they share it on purpose",
                                    callout_name(c), what, spec.name));
  }
  return {};
}

}  // namespace

// ---- reading -----------------------------------------------------------------

Result<std::vector<connredir_callout>> Control::read_callouts() {
  std::vector<connredir_callout> out;
  for (uint32_t id = 1; id < CONNREDIR_MAX_CALLOUTS; ++id) {
    connredir_callout c;
    auto r = store_.lookup(MapId::Callouts, &id, &c);
    if (!r) return tl::unexpected(r.error());
    if (*r && (c.flags & CONNREDIR_CALLOUT_F_USED)) out.push_back(c);
  }
  return out;
}

Result<std::vector<connredir_filter>> Control::read_filters() {
  auto keys = store_.keys(MapId::Filters);
  if (!keys) return tl::unexpected(keys.error());
  std::vector<connredir_filter> out;
  out.reserve(keys->size());
  for (const auto& k : *keys) {
    connredir_filter f;
    auto r = store_.lookup(MapId::Filters, k.data(), &f);
    if (!r) return tl::unexpected(r.error());
    if (*r) out.push_back(f);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

Result<Index> Control::read_index() {
  auto keys = store_.keys(MapId::FilterIndex);
  if (!keys) return tl::unexpected(keys.error());
  Index idx;
  for (const auto& kb : *keys) {
    auto lk = from_bytes<connredir_lpm_key>(kb);
    connredir_candidates c;
    auto r = store_.lookup(MapId::FilterIndex, kb.data(), &c);
    if (!r) return tl::unexpected(r.error());
    if (!*r) continue;
    auto k = from_lpm_key(lk);
    if (!k) return tl::unexpected(k.error());
    uint32_t n = std::min<uint32_t>(c.count, CONNREDIR_CANDIDATES_MAX);
    idx[*k] = std::vector<uint32_t>(c.ids, c.ids + n);
  }
  return idx;
}

Result<void> Control::apply_index(const std::vector<IndexWrite>& writes) {
  for (const auto& w : writes) {
    auto key = to_lpm_key(w.key);
    if (w.erase()) {
      auto r = store_.erase(MapId::FilterIndex, &key);
      if (!r) return tl::unexpected(r.error());
      continue;
    }
    if (w.ids.size() > CONNREDIR_CANDIDATES_MAX)
      return fail(E2BIG, fmt::format("index entry {} too long", w.key.to_string()));
    connredir_candidates c;
    std::memset(&c, 0, sizeof c);
    c.count = static_cast<uint32_t>(w.ids.size());
    std::copy(w.ids.begin(), w.ids.end(), c.ids);
    auto r = store_.update(MapId::FilterIndex, &key, &c);
    if (!r) {
      auto e = r.error();
      if (e.code == E2BIG || e.code == ENOSPC)
        e.message += fmt::format(" (the index holds at most {} prefixes)", CONNREDIR_MAX_PREFIXES);
      return tl::unexpected(e);
    }
  }
  return {};
}

// ---- callouts ----------------------------------------------------------------

namespace {

// Checks a callout spec (both add and update).
Result<void> check_callout_spec(const CalloutSpec& spec) {
  if (auto v = validate_callout_name(spec.name); !v) return tl::unexpected(v.error());
  if (!spec.proxy4 && !spec.proxy6)
    return fail(EINVAL, fmt::format("callout '{}' needs a proxy (--proxy ADDR:PORT)", spec.name));
  if (spec.proxy4 && spec.proxy4->family != AF_INET)
    return fail(EINVAL, "the IPv4 proxy must be an IPv4 address");
  if (spec.proxy6 && spec.proxy6->family != AF_INET6)
    return fail(EINVAL, "the IPv6 proxy must be an IPv6 address");
  for (const auto* p : {&spec.proxy4, &spec.proxy6})
    if (*p && (*p)->port == 0)
      return fail(EINVAL, fmt::format("proxy {} needs a port (1..65535)", (*p)->to_string()));
  if (spec.proxy_cgroup && spec.proxy_cgroup->level > CONNREDIR_CGROUP_LEVELS_MAX)
    return fail(EINVAL, fmt::format("proxy cgroup {} is {} levels deep; at most {} are supported",
                                    spec.proxy_cgroup->path, spec.proxy_cgroup->level,
                                    CONNREDIR_CGROUP_LEVELS_MAX));
  return {};
}

// The map value for a checked callout spec.
connredir_callout make_callout(const CalloutSpec& spec, uint32_t id) {
  connredir_callout c;
  std::memset(&c, 0, sizeof c);
  c.id = id;
  c.flags = CONNREDIR_CALLOUT_F_USED;
  if (spec.proxy4) {
    c.proxy4 = spec.proxy4->to_abi();
    c.flags |= CONNREDIR_CALLOUT_F_PROXY4;
  }
  if (spec.proxy6) {
    c.proxy6 = spec.proxy6->to_abi();
    c.flags |= CONNREDIR_CALLOUT_F_PROXY6;
  }
  c.flags |= spec.on_proxy_down == ProxyDown::Bypass ? CONNREDIR_CALLOUT_F_DOWN_BYPASS
                                                     : CONNREDIR_CALLOUT_F_DOWN_REFUSE;
  if (spec.on_failure == OnFailure::Refuse) c.flags |= CONNREDIR_CALLOUT_F_FAIL_CLOSED;
  if (spec.shared_principal) c.flags |= CONNREDIR_CALLOUT_F_SHARED_PRINCIPAL;
  if (!spec.implicit_records) c.flags |= CONNREDIR_CALLOUT_F_NO_IMPLICIT;
  c.proxy_uid = spec.proxy_uid.value_or(CONNREDIR_UID_NONE);
  if (spec.proxy_cgroup) {
    c.proxy_cgroup = spec.proxy_cgroup->id;
    c.proxy_cgroup_level = spec.proxy_cgroup->level;
  }
  std::memcpy(c.name, spec.name.data(), spec.name.size());
  return c;
}

}  // namespace

Result<CalloutInfo> Control::add_callout(const CalloutSpec& spec) {
  if (auto v = check_callout_spec(spec); !v) return tl::unexpected(v.error());
  auto all = read_callouts();
  if (!all) return tl::unexpected(all.error());
  std::set<uint32_t> used;
  for (const auto& c : *all) {
    if (callout_name(c) == spec.name)
      return fail(EEXIST, fmt::format("a callout named '{}' exists (id {}); delete it first "
                                      "(`connredir callout del {}`)",
                                      spec.name, c.id, spec.name));
    used.insert(c.id);
  }
  if (!spec.shared_principal)
    if (auto r = check_principal_overlap(spec, *all); !r) return tl::unexpected(r.error());
  uint32_t id = 1;
  while (id < CONNREDIR_MAX_CALLOUTS && used.count(id)) ++id;
  if (id >= CONNREDIR_MAX_CALLOUTS)
    return fail(ENOSPC, fmt::format("all {} callout ids are in use; delete a callout first",
                                    CONNREDIR_MAX_CALLOUTS - 1));
  connredir_callout c = make_callout(spec, id);
  // The id may have served a deleted callout: its counters start from zero,
  // before the callout exists (nothing counts against an unused id).
  for (uint32_t i = 0; i < CONNREDIR_CSTAT_MAX; ++i) {
    uint32_t key = id * CONNREDIR_CSTAT_MAX + i;
    if (auto r = store_.erase(MapId::CalloutStats, &key); !r) return tl::unexpected(r.error());
  }
  if (auto r = store_.update(MapId::Callouts, &id, &c); !r) return tl::unexpected(r.error());
  if (auto r = sync_principals(); !r) {
    // Undo: the callout is not usable without its principals.
    (void)store_.erase(MapId::Callouts, &id);
    (void)sync_principals();
    return tl::unexpected(r.error());
  }
  return callout_info(c);
}

Result<CalloutInfo> Control::update_callout(const CalloutSpec& spec) {
  if (auto v = check_callout_spec(spec); !v) return tl::unexpected(v.error());
  auto all = read_callouts();
  if (!all) return tl::unexpected(all.error());
  auto it = std::find_if(all->begin(), all->end(),
                         [&](const connredir_callout& c) { return callout_name(c) == spec.name; });
  if (it == all->end())
    return fail(ENOENT, fmt::format("no callout named '{}' (add it with `connredir callout add`)",
                                    spec.name));
  const connredir_callout old = *it;
  if (!spec.shared_principal) {
    std::vector<connredir_callout> others;
    for (const auto& o : *all)
      if (o.id != old.id) others.push_back(o);
    if (auto r = check_principal_overlap(spec, others); !r) return tl::unexpected(r.error());
  }
  connredir_callout c = make_callout(spec, old.id);
  // One map update: a connect classified now sees the old or the new callout,
  // never a mix. sync_principals adds the new principal before it drops the
  // old one, so a proxy keeping its principal never loses it in between.
  if (auto r = store_.update(MapId::Callouts, &c.id, &c); !r) return tl::unexpected(r.error());
  if (auto r = sync_principals(); !r) {
    (void)store_.update(MapId::Callouts, &c.id, &old);
    (void)sync_principals();
    return tl::unexpected(r.error());
  }
  return callout_info(c);
}

Result<std::vector<CalloutInfo>> Control::list_callouts() {
  auto all = read_callouts();
  if (!all) return tl::unexpected(all.error());
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  std::vector<CalloutInfo> out;
  for (const auto& c : *all) {
    auto i = callout_info(c);
    i.filters = std::count_if(filters->begin(), filters->end(),
                              [&](const auto& f) { return f.callout_id == c.id; });
    out.push_back(std::move(i));
  }
  return out;
}

Result<CalloutInfo> Control::find_callout(std::string_view name) {
  auto all = list_callouts();
  if (!all) return tl::unexpected(all.error());
  for (auto& c : *all)
    if (c.name == name) return c;
  return fail(ENOENT, fmt::format("no callout named '{}' (see `connredir callout list`)", name));
}

Result<std::vector<uint32_t>> Control::delete_callout(std::string_view name, bool force) {
  auto all = read_callouts();
  if (!all) return tl::unexpected(all.error());
  auto it = std::find_if(all->begin(), all->end(),
                         [&](const auto& c) { return callout_name(c) == name; });
  if (it == all->end())
    return fail(ENOENT, fmt::format("no callout named '{}' (see `connredir callout list`)", name));
  uint32_t id = it->id;
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  std::vector<uint32_t> refs;
  for (const auto& f : *filters)
    if (f.callout_id == id) refs.push_back(f.id);
  if (!refs.empty() && !force)
    return fail(EBUSY,
                fmt::format("callout '{}' is used by filter{} {}: delete {} first "
                            "(`connredir filter del ID`) or use --force to delete {} too",
                            name, refs.size() > 1 ? "s" : "", join_ids(refs),
                            refs.size() > 1 ? "them" : "it", refs.size() > 1 ? "them" : "it"));
  // Filters first, so the kernel never sees a filter whose callout is gone.
  std::vector<connredir_filter> remaining = *filters;
  for (uint32_t fid : refs) {
    if (auto r = delete_filter_locked(remaining, fid); !r) return tl::unexpected(r.error());
    std::erase_if(remaining, [&](const auto& f) { return f.id == fid; });
  }
  if (auto r = store_.erase(MapId::Callouts, &id); !r) return tl::unexpected(r.error());
  if (auto r = sync_principals(); !r) return tl::unexpected(r.error());
  return refs;
}

// ---- filters -----------------------------------------------------------------

Result<void> check_filter_spec(const FilterSpec& spec) {
  if (spec.context.size() > CONNREDIR_USER_CONTEXT_MAX)
    return fail(EINVAL, fmt::format("context is {} bytes; at most {} are allowed",
                                    spec.context.size(), CONNREDIR_USER_CONTEXT_MAX));
  if (spec.proto != kProtoAny && spec.proto != kProtoTcp && spec.proto != kProtoUdp)
    return fail(EINVAL, "protocol must be tcp, udp or any");
  bool redirect = spec.action == FilterAction::Redirect;
  if (!redirect && !spec.context.empty())
    return fail(EINVAL, fmt::format("a {} filter hands no context to a proxy: drop the context",
                                    to_string(spec.action)));
  if (redirect && spec.callout.empty())
    return fail(EINVAL,
                "callout is required (callout = NAME; --callout NAME), or an action that names "
                "none (action = permit or block)");
  if (!redirect && !spec.callout.empty())
    return fail(EINVAL, fmt::format("a {} filter sends the flow to no callout: drop callout '{}' "
                                    "(or use action redirect)",
                                    to_string(spec.action), spec.callout));
  if (spec.ports.lo > spec.ports.hi) return fail(EINVAL, "port range is empty");
  if (spec.app_cgroup && spec.app_cgroup->level > CONNREDIR_CGROUP_LEVELS_MAX)
    return fail(EINVAL, fmt::format("app cgroup {} is {} levels deep; at most {} are supported",
                                    spec.app_cgroup->path, spec.app_cgroup->level,
                                    CONNREDIR_CGROUP_LEVELS_MAX));
  return {};
}

Result<FilterAdded> Control::add_filter(const FilterSpec& spec) {
  if (auto v = check_filter_spec(spec); !v) return tl::unexpected(v.error());
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  auto cit = std::find_if(callouts->begin(), callouts->end(),
                          [&](const auto& c) { return callout_name(c) == spec.callout; });
  bool redirect = spec.action == FilterAction::Redirect;
  if (redirect && cit == callouts->end())
    return fail(ENOENT, fmt::format("no callout named '{}' (see `connredir callout list`; "
                                    "create it with `connredir callout add`)",
                                    spec.callout));
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  if (filters->size() >= CONNREDIR_MAX_FILTERS)
    return fail(ENOSPC, fmt::format("there are already {} filters (CONNREDIR_MAX_FILTERS)",
                                    CONNREDIR_MAX_FILTERS));
  uint32_t id = 1;
  uint64_t seq = 1;
  for (const auto& f : *filters) {
    id = std::max(id, f.id + 1);
    seq = std::max<uint64_t>(seq, f.seq + 1);
  }
  if (id == 0) return fail(ENOSPC, "filter ids exhausted");

  connredir_filter f = make_filter(spec, id, redirect ? cit->id : 0, seq);

  auto ifs = index_filters(*filters);
  IndexPlanner planner(ifs);
  auto plan = planner.plan_add(index_filter(f));
  if (!plan) {
    auto e = plan.error();
    // Filters an interrupted command left behind count here although they
    // were never active; say so, since the repair can clear them.
    if (e.code == E2BIG) {
      if (auto idx = read_index()) {
        const auto named = named_filters(*idx);
        size_t orphans = 0;
        for (const auto& x : *filters) orphans += named.count(x.id) == 0;
        if (orphans > 0)
          e.message += fmt::format(
              " ({} of the filters were left by an interrupted command and were never active: "
              "`connredir filter check --repair` removes those that cannot be indexed)",
              orphans);
      }
    }
    return tl::unexpected(e);
  }

  // Filter entry first: index entries must never name a missing filter.
  if (auto r = store_.update(MapId::Filters, &id, &f); !r) {
    auto e = r.error();
    return fail(e.code, "adding the filter: " + e.message);
  }
  if (auto r = apply_index(*plan); !r) {
    // Roll back to the index as it was, then drop the filter entry.
    auto now = read_index();
    if (now) (void)apply_index(index_diff(*now, planner.build()));
    (void)store_.erase(MapId::Filters, &id);
    auto e = r.error();
    return fail(e.code,
                "updating the classifier index: " + e.message + "; the filter was not added");
  }

  FilterAdded out;
  out.filter = filter_info(f, spec.callout);
  out.index_writes = plan->size();
  if (!redirect) return out;
  bool v4 = f.family == 0 || f.family == CONNREDIR_AF_INET;
  bool v6 = f.family == 0 || f.family == CONNREDIR_AF_INET6;
  const char* fate = no_proxy_fate(cit->flags);
  if (v4 && !(cit->flags & CONNREDIR_CALLOUT_F_PROXY4))
    out.warnings.push_back(
        fmt::format("callout '{}' has no IPv4 proxy: IPv4 connects matching filter {} {}",
                    spec.callout, id, fate));
  if (v6 && !(cit->flags & CONNREDIR_CALLOUT_F_PROXY6))
    out.warnings.push_back(
        fmt::format("callout '{}' has no IPv6 proxy: IPv6 connects matching filter {} {}",
                    spec.callout, id, fate));
  return out;
}

Result<void> Control::delete_filter_locked(const std::vector<connredir_filter>& all, uint32_t id) {
  auto ifs = index_filters(all);
  IndexPlanner planner(ifs);
  auto plan = planner.plan_remove(id);
  if (!plan)
    return fail(ENOENT, fmt::format("no filter with id {} (see `connredir filter list`)", id));
  // Index first: once no entry names the filter, its entry can go.
  if (auto r = apply_index(*plan); !r) return tl::unexpected(r.error());
  auto r = store_.erase(MapId::Filters, &id);
  if (!r) return tl::unexpected(r.error());
  return {};
}

Result<std::vector<FilterInfo>> Control::list_filters() {
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  std::vector<FilterInfo> out;
  for (const auto& f : *filters) {
    out.push_back(filter_info(f, callout_name(*callouts, f.callout_id)));
  }
  return out;
}

Result<void> Control::delete_filter(uint32_t id) {
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  return delete_filter_locked(*filters, id);
}

Result<std::vector<IndexWrite>> Control::check_index() {
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  auto ifs = index_filters(*filters);
  IndexPlanner planner(ifs);
  auto kernel = read_index();
  if (!kernel) return tl::unexpected(kernel.error());
  return index_diff(*kernel, planner.build());
}

Result<Control::IndexRepair> Control::repair_index() {
  auto filters = read_filters();
  if (!filters) return tl::unexpected(filters.error());
  auto kernel = read_index();
  if (!kernel) return tl::unexpected(kernel.error());
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  const auto named = named_filters(*kernel);

  IndexRepair out;
  std::set<uint32_t> drop;
  std::set<std::string> crowded;
  Index want;
  // Each pass drops, for every over-long entry, as many of its never-named
  // filters as it is over (newest first); a dropped filter leaves the other
  // entries it was in as well, so the next build can only be shorter.
  for (;;) {
    std::vector<connredir_filter> keep;
    keep.reserve(filters->size());
    for (const auto& f : *filters)
      if (!drop.count(f.id)) keep.push_back(f);
    want = IndexPlanner(index_filters(keep)).build();
    bool over = false;
    for (const auto& [k, ids] : want) {
      if (ids.size() <= CONNREDIR_CANDIDATES_MAX) continue;
      over = true;
      crowded.insert(k.to_string());
      // Drops made for an earlier entry in this pass count here too, so
      // no more never-active filters go than needed.
      std::vector<uint32_t> orphans;
      size_t active = 0, already = 0;
      for (uint32_t id : ids) {
        if (named.count(id))
          ++active;
        else if (drop.count(id))
          ++already;
        else
          orphans.push_back(id);
      }
      size_t excess = ids.size() - CONNREDIR_CANDIDATES_MAX;
      if (active > CONNREDIR_CANDIDATES_MAX)
        return fail(E2BIG, fmt::format("index entry {} would name {} filters (at most {}) and "
                                       "{} of them are active; delete filters covering {} "
                                       "(`connredir filter list`, `connredir filter del ID`) "
                                       "and run the repair again",
                                       k.to_string(), ids.size(), CONNREDIR_CANDIDATES_MAX, active,
                                       k.to_string()));
      if (already >= excess) continue;
      std::sort(orphans.rbegin(), orphans.rend());
      drop.insert(orphans.begin(), orphans.begin() + static_cast<std::ptrdiff_t>(excess - already));
    }
    if (!over) break;
  }

  auto writes = index_diff(*kernel, want);
  // Every entry is self-contained, so any order is consistent; writing
  // before erasing keeps each destination answered throughout.
  std::stable_partition(writes.begin(), writes.end(), [](const auto& w) { return !w.erase(); });
  if (auto r = apply_index(writes); !r) return tl::unexpected(r.error());
  out.writes = writes.size();
  // Then the dropped filters: no entry names them (they were never named,
  // and the new index was built without them).
  for (const auto& f : *filters) {
    if (!drop.count(f.id)) continue;
    if (auto r = store_.erase(MapId::Filters, &f.id); !r) return tl::unexpected(r.error());
    out.removed.push_back(filter_info(f, callout_name(*callouts, f.callout_id)));
  }
  out.crowded.assign(crowded.begin(), crowded.end());
  return out;
}

// ---- principals --------------------------------------------------------------

Result<void> Control::authorize(uint32_t kind, uint64_t id) {
  connredir_principal_key k{kind, 0, id};
  uint32_t flags = 0;
  auto r = store_.lookup(MapId::Principals, &k, &flags);
  if (!r) return tl::unexpected(r.error());
  if (!*r) flags = 0;
  flags |= CONNREDIR_PRINCIPAL_F_AUTHORIZED;
  if (auto u = store_.update(MapId::Principals, &k, &flags); !u) {
    auto e = u.error();
    if (e.code == E2BIG || e.code == ENOSPC)
      e.message += fmt::format(" (at most {} principals)", CONNREDIR_PRINCIPALS_MAX);
    return tl::unexpected(e);
  }
  return bump_principals_gen();
}

Result<void> Control::bump_principals_gen() {
  uint32_t zero = 0;
  uint64_t gen = 0;
  auto r = store_.lookup(MapId::PrincipalsGen, &zero, &gen);
  if (!r) return tl::unexpected(r.error());
  ++gen;
  if (auto u = store_.update(MapId::PrincipalsGen, &zero, &gen); !u) {
    auto e = u.error();
    return fail(e.code, fmt::format("principals changed, but the kernel's cache of who is a "
                                    "principal could not be invalidated ({}); run the command "
                                    "again",
                                    e.message));
  }
  return {};
}

Result<void> Control::deauthorize(uint32_t kind, uint64_t id) {
  connredir_principal_key k{kind, 0, id};
  uint32_t flags = 0;
  auto r = store_.lookup(MapId::Principals, &k, &flags);
  if (!r) return tl::unexpected(r.error());
  if (!*r || !(flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED))
    return fail(ENOENT, fmt::format("{} is not explicitly authorized (see `connredir authorize "
                                    "--list`)",
                                    principal_text(kind, id)));
  flags &= ~CONNREDIR_PRINCIPAL_F_AUTHORIZED;
  if (flags == 0) {
    if (auto e = store_.erase(MapId::Principals, &k); !e) return tl::unexpected(e.error());
  } else if (auto u = store_.update(MapId::Principals, &k, &flags); !u) {
    return tl::unexpected(u.error());
  }
  return bump_principals_gen();
}

Result<std::vector<PrincipalInfo>> Control::list_principals() {
  auto keys = store_.keys(MapId::Principals);
  if (!keys) return tl::unexpected(keys.error());
  std::vector<PrincipalInfo> out;
  for (const auto& kb : *keys) {
    auto k = from_bytes<connredir_principal_key>(kb);
    uint32_t flags = 0;
    auto r = store_.lookup(MapId::Principals, kb.data(), &flags);
    if (!r) return tl::unexpected(r.error());
    if (*r) out.push_back(PrincipalInfo{k.kind, k.id, flags});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.kind, a.id) < std::tie(b.kind, b.id);
  });
  return out;
}

Result<void> Control::sync_principals_locked() {
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  std::set<std::pair<uint32_t, uint64_t>> want;
  for (const auto& c : *callouts) {
    if (c.proxy_uid != CONNREDIR_UID_NONE) want.insert({CONNREDIR_PRINCIPAL_UID, c.proxy_uid});
    if (c.proxy_cgroup) want.insert({CONNREDIR_PRINCIPAL_CGROUP, c.proxy_cgroup});
  }
  auto have = list_principals();
  if (!have) return tl::unexpected(have.error());
  // Additions first (a proxy must never lose its principal while a change
  // is in flight), then updates and removals.
  std::set<std::pair<uint32_t, uint64_t>> present;
  for (const auto& p : *have) present.insert({p.kind, p.id});
  for (const auto& [kind, id] : want) {
    if (present.count({kind, id})) continue;
    connredir_principal_key k{kind, 0, id};
    uint32_t flags = CONNREDIR_PRINCIPAL_F_CALLOUT;
    if (auto u = store_.update(MapId::Principals, &k, &flags); !u) {
      auto e = u.error();
      e.message = fmt::format("registering the proxy principal {}: {}", principal_text(kind, id),
                              e.message);
      if (e.code == E2BIG || e.code == ENOSPC)
        e.message += fmt::format(" (at most {} principals)", CONNREDIR_PRINCIPALS_MAX);
      return tl::unexpected(e);
    }
  }
  for (const auto& p : *have) {
    uint32_t flags = (p.flags & ~CONNREDIR_PRINCIPAL_F_CALLOUT) |
                     (want.count({p.kind, p.id}) ? CONNREDIR_PRINCIPAL_F_CALLOUT : 0);
    if (flags == p.flags) continue;
    connredir_principal_key k{p.kind, 0, p.id};
    if (flags == 0) {
      if (auto e = store_.erase(MapId::Principals, &k); !e) return tl::unexpected(e.error());
    } else if (auto u = store_.update(MapId::Principals, &k, &flags); !u) {
      return tl::unexpected(u.error());
    }
  }
  return {};
}

// Whatever happened, also after an error half-way: the kernel's cache of
// who is a principal is invalidated (an addition matters as much as a
// removal: a proxy that connected before its callout existed was cached as
// nobody).
Result<void> Control::sync_principals() {
  auto r = sync_principals_locked();
  auto b = bump_principals_gen();
  if (!r) return r;
  return b;
}

// ---- misc --------------------------------------------------------------------

Result<bool> Control::init_secret(std::span<const uint8_t, 16> random) {
  uint32_t zero = 0;
  connredir_secret s{};
  auto r = store_.lookup(MapId::Secret, &zero, &s);
  if (!r) return tl::unexpected(r.error());
  if (*r && (s.k0 != 0 || s.k1 != 0)) return false;
  std::memcpy(&s, random.data(), sizeof s);
  if (s.k0 == 0 && s.k1 == 0) return fail(EINVAL, "refusing an all-zero secret");
  if (auto u = store_.update(MapId::Secret, &zero, &s); !u) return tl::unexpected(u.error());
  return true;
}

Result<CalloutCounters> Control::callout_counters(uint32_t id) {
  CalloutCounters out{};
  if (id == 0 || id >= CONNREDIR_MAX_CALLOUTS)
    return fail(EINVAL, fmt::format("callout id {} is out of range (1..{})", id,
                                    CONNREDIR_MAX_CALLOUTS - 1));
  for (uint32_t i = 0; i < CONNREDIR_CSTAT_MAX; ++i) {
    uint32_t key = id * CONNREDIR_CSTAT_MAX + i;
    auto r = store_.lookup(MapId::CalloutStats, &key, &out[i]);
    if (!r) return tl::unexpected(r.error());
  }
  return out;
}

Result<Counts> Control::counts() {
  Counts c;
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  c.callouts = callouts->size();
  for (auto [id, out] :
       {std::pair{MapId::Filters, &c.filters}, std::pair{MapId::Principals, &c.principals},
        std::pair{MapId::FilterIndex, &c.prefixes}}) {
    auto k = store_.keys(id);
    if (!k) return tl::unexpected(k.error());
    *out = k->size();
  }
  return c;
}

}  // namespace connredir::control
