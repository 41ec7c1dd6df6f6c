// Bulk filter loading (`connredir filter load FILE`): Control::load_filters,
// which computes the classifier index once for the whole set instead of once
// per filter. The filter file formats are in spec.cpp.
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

std::string name_of(const connredir_callout& c) {
  return std::string(c.name, strnlen(c.name, sizeof c.name));
}

}  // namespace

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
    if (auto v = check_filter_spec(spec); !v) return bad(v.error().code, v.error().message);
    if (spec.action != FilterAction::Redirect) {
      fresh.push_back(make_filter(spec, next_id++, 0, next_seq++));
      continue;
    }
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
