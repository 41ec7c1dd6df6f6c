// `connredir metrics`: connredir's state as Prometheus metrics, read from the
// pinned maps and sock_diag at each scrape (nothing is kept between scrapes,
// so a restart of the exporter loses nothing).
#include <bpf/bpf.h>
#include <unistd.h>

#include <map>

#include <fmt/format.h>

#include "connredir/control.hpp"
#include "system_util.hpp"

namespace connredir::control {
namespace {

// Label values escaped as the text format wants: backslash, quote, newline.
std::string label_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// Builds the exposition: one HELP/TYPE header per family, then its samples.
class Exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void sample(std::string_view name, uint64_t value,
              const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    text_ += name;
    if (!labels.empty()) {
      text_ += '{';
      for (size_t i = 0; i < labels.size(); ++i)
        text_ += fmt::format("{}{}=\"{}\"", i ? "," : "", labels[i].first,
                             label_value(labels[i].second));
      text_ += '}';
    }
    text_ += fmt::format(" {}\n", value);
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

const char* flow_role(uint32_t flags) {
  if (flags & CONNREDIR_SK_ACCEPTED) return "proxy-accepted";
  if (flags & CONNREDIR_SK_REDIRECTED) return "redirected";
  if (flags & CONNREDIR_SK_RECORDS_SET) return "records-set";
  return "other";
}

}  // namespace

Result<MapOccupancy> pinned_map_occupancy(const std::string& pin_dir, std::string_view name) {
  std::string path = fmt::format("{}/maps/{}", pin_dir, name);
  auto opened = open_pinned_map(pin_dir, name);
  if (!opened) return tl::unexpected(opened.error());
  const int fd = opened->get();
  MapOccupancy o;
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
    int e = errno;
    return fail(e, fmt::format("cannot inspect pinned map {}: {}", path, errno_text(e)));
  }
  o.capacity = info.max_entries;
  std::vector<uint8_t> key(info.key_size), next(info.key_size);
  const void* prev = nullptr;
  // Entries can come and go while we walk; the count is a snapshot, bounded
  // by the capacity so a walk that restarts (a deleted key) cannot run away.
  while (o.entries <= o.capacity && bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    ++o.entries;
    key.swap(next);
    prev = key.data();
  }
  int e = errno;
  if (e != ENOENT && o.entries <= o.capacity)
    return fail(e, fmt::format("walking pinned map {}: {}", path, errno_text(e)));
  return o;
}

Result<std::string> metrics_text(const std::string& pin_dir) {
  Exposition x;
  auto state = read_up_state(pin_dir);
  if (!state) return tl::unexpected(state.error());
  const bool up = state->up() && state->maps_pinned;
  x.family("connredir_up", "gauge", "1 if connredir is up (programs attached, maps pinned)");
  x.sample("connredir_up", up ? 1 : 0);
  if (!up) return x.text();

  auto store = KernelMapStore::open(pin_dir);
  if (!store) return tl::unexpected(store.error());
  Control c(**store);
  auto stats = c.stats();
  if (!stats) return tl::unexpected(stats.error());
  for (size_t i = 0; i < stats->size(); ++i) {
    std::string name = fmt::format("connredir_host_{}_total", stat_name(i));
    x.family(name, "counter", fmt::format("Host-wide: {}.", stat_help(i)));
    x.sample(name, (*stats)[i]);
  }

  auto callouts = c.list_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  x.family("connredir_callout_info", "gauge",
           "One per callout: its id and proxies (the value is always 1).");
  for (const auto& ci : *callouts)
    x.sample("connredir_callout_info", 1,
             {{"callout", ci.name},
              {"id", std::to_string(ci.id)},
              {"proxy4", ci.proxy4 ? ci.proxy4->to_string() : ""},
              {"proxy6", ci.proxy6 ? ci.proxy6->to_string() : ""}});
  x.family("connredir_callout_filters", "gauge", "Filters that select each callout.");
  for (const auto& ci : *callouts)
    x.sample("connredir_callout_filters", ci.filters, {{"callout", ci.name}});

  // Per-callout counters (callout_stats). Causes overlap on purpose, as in
  // the kernel: a connect refused by --on-failure refuse is also counted
  // under its cause (hop_cap, no_proxy_family, storage_fail), and not_owner
  // comes with down_bypass or down_refused; docs/METRICS.md says so.
  std::vector<CalloutCounters> per;
  for (const auto& ci : *callouts) {
    auto n = c.callout_counters(ci.id);
    if (!n) return tl::unexpected(n.error());
    per.push_back(*n);
  }
  struct Reason {
    const char* label;
    uint32_t index;
  };
  const Reason skipped[] = {{"self_skip", CONNREDIR_CSTAT_SELF_SKIP},
                            {"prev_skip", CONNREDIR_CSTAT_PREV_SKIP},
                            {"hop_cap", CONNREDIR_CSTAT_HOP_CAP},
                            {"no_proxy_family", CONNREDIR_CSTAT_NO_PROXY_FAMILY},
                            {"storage_fail", CONNREDIR_CSTAT_STORAGE_FAIL},
                            {"down_bypass", CONNREDIR_CSTAT_DOWN_BYPASS},
                            {"loop_broken", CONNREDIR_CSTAT_LOOP_BROKEN}};
  const Reason refused[] = {{"down_refused", CONNREDIR_CSTAT_DOWN_REFUSED},
                            {"failure_refused", CONNREDIR_CSTAT_FAILURE_REFUSED}};
  x.family("connredir_redirected_total", "counter", "Connects redirected to each callout's proxy.");
  for (size_t k = 0; k < per.size(); ++k)
    x.sample("connredir_redirected_total", per[k][CONNREDIR_CSTAT_REDIRECTED],
             {{"callout", (*callouts)[k].name}});
  x.family("connredir_skipped_total", "counter",
           "Connects a callout's filter selected that the callout did not redirect, by reason "
           "(the connect went on to the next callout or its destination).");
  for (size_t k = 0; k < per.size(); ++k)
    for (const auto& r : skipped)
      x.sample("connredir_skipped_total", per[k][r.index],
               {{"callout", (*callouts)[k].name}, {"reason", r.label}});
  x.family("connredir_refused_total", "counter",
           "Connects failed with ECONNREFUSED because of a callout's policy, by reason.");
  for (size_t k = 0; k < per.size(); ++k)
    for (const auto& r : refused)
      x.sample("connredir_refused_total", per[k][r.index],
               {{"callout", (*callouts)[k].name}, {"reason", r.label}});
  x.family("connredir_not_owner_total", "counter",
           "Connects that found a listener the callout's principal does not own at its proxy "
           "address (also counted as down_bypass or down_refused).");
  for (size_t k = 0; k < per.size(); ++k)
    x.sample("connredir_not_owner_total", per[k][CONNREDIR_CSTAT_NOT_OWNER],
             {{"callout", (*callouts)[k].name}});
  x.family("connredir_records_rejected_total", "counter",
           "Redirect records refused as forged, altered or malformed, sent by the callout's "
           "proxy principal.");
  for (size_t k = 0; k < per.size(); ++k)
    x.sample("connredir_records_rejected_total", per[k][CONNREDIR_CSTAT_RECORDS_REJECTED],
             {{"callout", (*callouts)[k].name}});
  x.family("connredir_implicit_total", "counter",
           "Onward connects of the callout's proxy principal that set no records and got the "
           "records of a flow it accepted for that destination (implicit records), by outcome: "
           "attached, or ambiguous (the accepted flows' chains differed; none attached).");
  for (size_t k = 0; k < per.size(); ++k) {
    x.sample("connredir_implicit_total", per[k][CONNREDIR_CSTAT_IMPLICIT],
             {{"callout", (*callouts)[k].name}, {"outcome", "attached"}});
    x.sample("connredir_implicit_total", per[k][CONNREDIR_CSTAT_IMPLICIT_AMBIGUOUS],
             {{"callout", (*callouts)[k].name}, {"outcome", "ambiguous"}});
  }

  auto counts = c.counts();
  if (!counts) return tl::unexpected(counts.error());
  x.family("connredir_callouts", "gauge", "Callouts registered.");
  x.sample("connredir_callouts", counts->callouts);
  x.family("connredir_filters", "gauge", "Filters installed.");
  x.sample("connredir_filters", counts->filters);
  x.family("connredir_principals", "gauge", "Principals (authorized and callout proxies).");
  x.sample("connredir_principals", counts->principals);

  auto handoff = pinned_map_occupancy(pin_dir, "handoff");
  if (!handoff) return tl::unexpected(handoff.error());
  x.family("connredir_handoff_entries", "gauge",
           "Redirected TCP connects published for a proxy's accept and not yet taken "
           "over, and live redirected UDP flows (each until its client socket closes).");
  x.sample("connredir_handoff_entries", handoff->entries);
  x.family("connredir_handoff_capacity", "gauge",
           "Capacity of the hand-off map (publishing fails when it is full).");
  x.sample("connredir_handoff_capacity", handoff->capacity);

  // Live sockets with connredir state, by role, from sock_diag (optional:
  // without it the family is absent and connredir_flows_available says why).
  auto diag = sock_diag_feature(pin_dir);
  x.family("connredir_flows_available", "gauge",
           "1 if live flows can be counted (the kernel's sock_diag dumps socket storage).");
  bool available = diag.present && *diag.present;
  x.sample("connredir_flows_available", available ? 1 : 0);
  if (available) {
    auto flows = dump_flows(pin_dir, {});
    if (!flows) return tl::unexpected(flows.error());
    std::map<std::string, uint64_t> by_role = {
        {"redirected", 0}, {"proxy-accepted", 0}, {"records-set", 0}, {"other", 0}};
    for (const auto& f : *flows) by_role[flow_role(f.state.flags)]++;
    x.family("connredir_flows", "gauge",
             "Live sockets carrying connredir state in the exporter's network namespace, by "
             "role.");
    for (const auto& [role, n] : by_role) x.sample("connredir_flows", n, {{"role", role}});
  }
  return x.text();
}

}  // namespace connredir::control
