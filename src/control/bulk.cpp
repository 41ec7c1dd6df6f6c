// Bulk filter loading (`connredir filter load FILE`): the filter file
// formats and Control::load_filters, which computes the classifier index
// once for the whole set instead of once per filter.
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

using json = nlohmann::json;

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// Canonical key: '-' and '_' are the same.
std::string key_name(std::string_view k) {
  std::string out(k);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

Result<void> set_field(FilterLine& l, const std::string& key, std::string value) {
  static const std::map<std::string, std::string FilterLine::*> fields = {
      {"callout", &FilterLine::callout},
      {"dst", &FilterLine::dst},
      {"port", &FilterLine::port},
      {"proto", &FilterLine::proto},
      {"weight", &FilterLine::weight},
      {"app_uid", &FilterLine::app_uid},
      {"app_cgroup", &FilterLine::app_cgroup},
      {"context", &FilterLine::context},
  };
  auto it = fields.find(key_name(key));
  if (it == fields.end())
    return fail(EINVAL, fmt::format("unknown field '{}' (fields: callout, dst, port, proto, "
                                    "weight, app-uid, app-cgroup, context)",
                                    key));
  l.*(it->second) = std::move(value);
  return {};
}

Result<FilterLine> parse_json_line(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(EINVAL, "not a JSON object (one filter per line)");
  FilterLine l;
  for (const auto& [k, v] : j.items()) {
    std::string value;
    if (v.is_string())
      value = v.get<std::string>();
    else if (v.is_number_unsigned())
      value = std::to_string(v.get<uint64_t>());
    else if (v.is_null())
      continue;
    else
      return fail(EINVAL, fmt::format("field '{}' must be a string or a non-negative integer", k));
    if (auto r = set_field(l, k, std::move(value)); !r) return tl::unexpected(r.error());
  }
  return l;
}

Result<FilterLine> parse_text_line(const std::string& text) {
  FilterLine l;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    if (i >= text.size()) break;
    size_t end = text.find_first_of(" \t", i);
    if (end == std::string::npos) end = text.size();
    std::string_view tok(text.data() + i, end - i);
    i = end;
    size_t eq = tok.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return fail(EINVAL, fmt::format("'{}' is not KEY=VALUE", tok));
    if (auto r = set_field(l, std::string(tok.substr(0, eq)), std::string(tok.substr(eq + 1))); !r)
      return tl::unexpected(r.error());
  }
  return l;
}

std::string name_of(const connredir_callout& c) {
  return std::string(c.name, strnlen(c.name, sizeof c.name));
}

}  // namespace

Result<std::optional<FilterLine>> parse_filter_line(std::string_view line) {
  std::string t = trim(line);
  if (t.empty() || t[0] == '#') return std::optional<FilterLine>{};
  auto l = t[0] == '{' ? parse_json_line(t) : parse_text_line(t);
  if (!l) return tl::unexpected(l.error());
  return std::optional<FilterLine>{std::move(*l)};
}

Result<FilterSpec> filter_spec(const FilterLine& l, CgroupResolver resolve) {
  FilterSpec s;
  if (l.callout.empty()) return fail(EINVAL, "callout is required");
  if (auto v = validate_callout_name(l.callout); !v) return tl::unexpected(v.error());
  s.callout = l.callout;
  if (!l.dst.empty() && l.dst != "any") {
    auto p = parse_cidr(l.dst);
    if (!p) return tl::unexpected(p.error());
    s.dst = *p;
  }
  if (!l.port.empty() && l.port != "any") {
    auto p = parse_port_range(l.port);
    if (!p) return tl::unexpected(p.error());
    s.ports = *p;
  }
  if (!l.proto.empty()) {
    auto p = parse_proto(l.proto);
    if (!p) return tl::unexpected(p.error());
    s.proto = *p;
  }
  if (!l.weight.empty()) {
    auto w = parse_uint(l.weight, "weight", 0, 0xffffffff);
    if (!w) return tl::unexpected(w.error());
    s.weight = static_cast<uint32_t>(*w);
  }
  if (!l.app_uid.empty()) {
    auto u = parse_uint(l.app_uid, "app-uid", 0, 0xfffffffe);
    if (!u) return tl::unexpected(u.error());
    s.app_uid = static_cast<uint32_t>(*u);
  }
  if (!l.app_cgroup.empty()) {
    if (!resolve) return fail(EINVAL, "app-cgroup cannot be resolved here");
    auto cg = resolve(l.app_cgroup);
    if (!cg) return tl::unexpected(cg.error());
    s.app_cgroup = *cg;
  }
  if (l.context.size() > CONNREDIR_USER_CONTEXT_MAX)
    return fail(EINVAL, fmt::format("context is {} bytes; at most {} are allowed", l.context.size(),
                                    CONNREDIR_USER_CONTEXT_MAX));
  s.context = l.context;
  return s;
}

Result<std::vector<FilterSpec>> parse_filter_file(std::string_view text, CgroupResolver resolve) {
  std::vector<FilterSpec> out;
  std::map<std::string, CgroupRef> cgroups;  // each distinct directory resolved once
  size_t lineno = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    auto parsed = parse_filter_line(line);
    if (!parsed)
      return fail(parsed.error().code, fmt::format("line {}: {}", lineno, parsed.error().message));
    if (!*parsed) continue;
    FilterLine l = std::move(**parsed);
    std::optional<CgroupRef> cg;
    if (!l.app_cgroup.empty()) {
      auto it = cgroups.find(l.app_cgroup);
      if (it == cgroups.end()) {
        if (!resolve) return fail(EINVAL, fmt::format("line {}: app-cgroup not supported", lineno));
        auto r = resolve(l.app_cgroup);
        if (!r) return fail(r.error().code, fmt::format("line {}: {}", lineno, r.error().message));
        it = cgroups.emplace(l.app_cgroup, *r).first;
      }
      cg = it->second;
      l.app_cgroup.clear();
    }
    auto spec = filter_spec(l, resolve);
    if (!spec)
      return fail(spec.error().code, fmt::format("line {}: {}", lineno, spec.error().message));
    spec->app_cgroup = cg;
    out.push_back(std::move(*spec));
  }
  return out;
}

Result<FilterLoadResult> Control::load_filters(std::span<const FilterSpec> specs, bool replace) {
  auto callouts = read_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  std::map<std::string, const connredir_callout*> by_name;
  for (const auto& c : *callouts) by_name[name_of(c)] = &c;
  auto existing = read_filters();
  if (!existing) return tl::unexpected(existing.error());

  // Ids and ages continue after every existing filter, also when replacing:
  // old and new entries coexist while the index switches over.
  uint32_t next_id = 1;
  uint64_t next_seq = 1;
  for (const auto& f : *existing) {
    next_id = std::max(next_id, f.id + 1);
    next_seq = std::max<uint64_t>(next_seq, f.seq + 1);
  }
  size_t kept = replace ? 0 : existing->size();
  if (kept + specs.size() > CONNREDIR_MAX_FILTERS ||
      existing->size() + specs.size() > CONNREDIR_MAX_FILTERS)
    return fail(ENOSPC, fmt::format("{} filters would be stored at once ({} present{}); at most {} "
                                    "(CONNREDIR_MAX_FILTERS)",
                                    existing->size() + specs.size(), existing->size(),
                                    replace ? ", kept until the new index is in place" : "",
                                    CONNREDIR_MAX_FILTERS));
  if (static_cast<uint64_t>(next_id) + specs.size() > 0xffffffffull)
    return fail(ENOSPC, "filter ids exhausted");

  FilterLoadResult out;
  std::vector<connredir_filter> fresh;
  fresh.reserve(specs.size());
  std::set<std::string> warned;
  for (size_t i = 0; i < specs.size(); ++i) {
    const FilterSpec& spec = specs[i];
    auto bad = [&](int code, const std::string& msg) {
      return fail(code, fmt::format("filter {}: {}", i + 1, msg));
    };
    if (spec.context.size() > CONNREDIR_USER_CONTEXT_MAX)
      return bad(EINVAL, fmt::format("context is {} bytes; at most {} are allowed",
                                     spec.context.size(), CONNREDIR_USER_CONTEXT_MAX));
    if (spec.proto != kProtoAny && spec.proto != kProtoTcp)
      return bad(EINVAL, "protocol must be tcp or any");
    if (spec.ports.lo > spec.ports.hi) return bad(EINVAL, "port range is empty");
    if (spec.app_cgroup && spec.app_cgroup->level > CONNREDIR_CGROUP_LEVELS_MAX)
      return bad(EINVAL, fmt::format("app cgroup {} is {} levels deep; at most {} are supported",
                                     spec.app_cgroup->path, spec.app_cgroup->level,
                                     CONNREDIR_CGROUP_LEVELS_MAX));
    auto cit = by_name.find(spec.callout);
    if (cit == by_name.end())
      return bad(ENOENT,
                 fmt::format("no callout named '{}' (see `connredir callout list`)", spec.callout));
    const connredir_callout& co = *cit->second;
    connredir_filter f = make_filter(spec, next_id++, co.id, next_seq++);
    bool v4 = f.family == 0 || f.family == CONNREDIR_AF_INET;
    bool v6 = f.family == 0 || f.family == CONNREDIR_AF_INET6;
    for (auto [need, flag, fam] : {std::tuple{v4, CONNREDIR_CALLOUT_F_PROXY4, "IPv4"},
                                   std::tuple{v6, CONNREDIR_CALLOUT_F_PROXY6, "IPv6"}})
      if (need && !(co.flags & flag) && warned.insert(spec.callout + fam).second)
        out.warnings.push_back(
            fmt::format("callout '{}' has no {} proxy: {} connects matching its filters {}",
                        spec.callout, fam, fam, no_proxy_fate(co.flags)));
    fresh.push_back(f);
  }

  // The whole index, once.
  std::vector<IndexFilter> want;
  want.reserve(kept + fresh.size());
  if (!replace)
    for (const auto& f : *existing) want.push_back(index_filter(f));
  for (const auto& f : fresh) want.push_back(index_filter(f));
  auto target = build_index(want);
  if (!target) return tl::unexpected(target.error());
  auto before = read_index();
  if (!before) return tl::unexpected(before.error());
  auto writes = index_diff(*before, *target);
  std::stable_partition(writes.begin(), writes.end(), [](const auto& w) { return !w.erase(); });

  auto undo = [&](size_t written_filters) {
    if (auto now = read_index()) {
      auto back = index_diff(*now, *before);
      std::stable_partition(back.begin(), back.end(), [](const auto& w) { return !w.erase(); });
      (void)apply_index(back);
    }
    for (size_t i = 0; i < written_filters; ++i) (void)store_.erase(MapId::Filters, &fresh[i].id);
  };

  // 1. Filter entries: an index entry must never name a missing filter.
  for (size_t i = 0; i < fresh.size(); ++i) {
    if (auto r = store_.update(MapId::Filters, &fresh[i].id, &fresh[i]); !r) {
      undo(i);
      return fail(r.error().code, fmt::format("writing filter {}: {}; nothing was loaded", i + 1,
                                              r.error().message));
    }
  }
  // 2. The index: new and changed entries, then stale ones.
  if (auto r = apply_index(writes); !r) {
    undo(fresh.size());
    return fail(r.error().code,
                "updating the classifier index: " + r.error().message + "; nothing was loaded");
  }
  // 3. With replace, the old filters: no index entry names them any more.
  if (replace) {
    for (const auto& f : *existing) {
      if (auto r = store_.erase(MapId::Filters, &f.id); !r)
        return fail(r.error().code,
                    fmt::format("the new filters are in place, but removing old filter {} "
                                "failed: {}; run `connredir filter del {}`",
                                f.id, r.error().message, f.id));
      ++out.removed;
    }
  }
  out.added = fresh.size();
  out.index_writes = writes.size();
  if (!fresh.empty()) {
    out.first_id = fresh.front().id;
    out.last_id = fresh.back().id;
  }
  return out;
}

}  // namespace connredir::control
