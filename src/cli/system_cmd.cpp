// `connredir up`, `down` and `status`: the BPF side's lifecycle, and what
// is loaded where (kernel features, other programs on connredir's hooks).
#include <algorithm>
#include <set>

#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

json features_json(const std::vector<ctl::KernelFeature>& fs) {
  json arr = json::array();
  for (const auto& f : fs) {
    json j = {{"name", f.name},
              {"description", f.description},
              {"required", f.required},
              {"present", f.present ? json(*f.present) : json(nullptr)},
              {"detail", f.detail}};
    if (!f.required) j["disables_when_missing"] = f.disables;
    arr.push_back(j);
  }
  return arr;
}

// One line per feature: present, missing (and what that disables), or not
// probed (and why).
void print_features(const std::vector<ctl::KernelFeature>& fs) {
  fmt::print("kernel features:\n");
  for (const auto& f : fs) {
    const char* mark = !f.present ? "unknown" : *f.present ? "ok" : "MISSING";
    fmt::print(
        "  {:<8} {:<22} {}{}\n", mark, f.name, f.detail,
        f.present && !*f.present && !f.required ? fmt::format(" (disables: {})", f.disables) : "");
  }
}

// Every hook connredir attached, with the programs the kernel runs there.
Result<std::vector<ctl::HookPrograms>> our_hooks(const ctl::UpState& state) {
  std::set<uint32_t> ours;
  for (const auto& l : state.links) ours.insert(l.prog_id);
  std::set<std::pair<uint64_t, uint32_t>> seen;
  std::vector<ctl::HookPrograms> hooks;
  for (const auto& l : state.links) {
    if (l.cgroup_id == 0 || !seen.insert({l.cgroup_id, l.attach_type}).second) continue;
    auto path = ctl::cgroup_path_by_id(l.cgroup_id);
    if (!path) continue;
    auto h = ctl::programs_on_hook(*path, l.attach_type, ours);
    if (!h) return tl::unexpected(h.error());
    hooks.push_back(std::move(*h));
  }
  return hooks;
}

// "before"/"after" connredir for each foreign program of a hook.
std::string relative_position(const ctl::HookPrograms& h, size_t i) {
  size_t first_ours = h.programs.size();
  for (size_t k = 0; k < h.programs.size(); ++k)
    if (h.programs[k].ours) {
      first_ours = k;
      break;
    }
  return i < first_ours ? "before connredir" : "after connredir";
}

struct UpArgs {
  std::string cgroup;
  std::vector<std::string> proxies_in;
};

int cmd_up(const std::string& pin_dir, const UpArgs& a) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(true);
  if (!lock) return report(lock.error());
  ctl::UpOptions o;
  o.pin_dir = pin_dir;
  o.cgroup = a.cgroup;
  o.proxies_in = a.proxies_in;
  auto r = ctl::up(o);
  if (!r) return report(r.error());
  return print_up(pin_dir, *r);
}

int cmd_down(const std::string& pin_dir) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(true);
  if (!lock) return report(lock.error());
  auto r = ctl::down(pin_dir);
  if (!r) return report(r.error());
  if (!*r)
    fmt::print("connredir is not up at {} (nothing to do)\n", pin_dir);
  else
    fmt::print(
        "connredir is down: programs detached, {} removed (established flows keep "
        "working)\n",
        pin_dir);
  return 0;
}

int cmd_status(const std::string& pin_dir, bool as_json) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(false);
  if (!lock) return report(lock.error());
  auto state = ctl::read_up_state(pin_dir);
  if (!state) return report(state.error());
  json j = {{"pin_dir", pin_dir}, {"up", state->up() && state->maps_pinned}};
  std::vector<std::string> problems;
  uint64_t cg = 0;
  std::vector<uint64_t> proxy_cgs;
  json links = json::array();
  for (const auto& l : state->links) {
    links.push_back({{"name", l.name},
                     {"link_id", l.link_id},
                     {"prog_id", l.prog_id},
                     {"cgroup_id", l.cgroup_id}});
    if (l.cgroup_id == 0) problems.push_back(fmt::format("link {}: its cgroup is gone", l.name));
    if (ctl::proxy_scoped_link(l.name)) {
      if (std::find(proxy_cgs.begin(), proxy_cgs.end(), l.cgroup_id) == proxy_cgs.end())
        proxy_cgs.push_back(l.cgroup_id);
    } else if (cg == 0) {
      cg = l.cgroup_id;
    }
  }
  j["links"] = links;
  j["cgroup"] = cgroup_json(cg, 0);
  if (cg) j["cgroup"].erase("level");
  json pj = json::array();
  for (uint64_t id : proxy_cgs) {
    pj.push_back(cgroup_json(id, 0));
    pj.back().erase("level");
  }
  j["proxies_in"] = pj;
  if (state->up() && !state->maps_pinned) problems.push_back("links pinned but maps missing");

  std::optional<ctl::Counts> counts;
  std::vector<uint64_t> stats;
  std::vector<std::pair<std::string, ctl::CalloutCounters>> callout_counters;
  bool secret_set = false;
  if (state->maps_pinned) {
    auto store = ctl::KernelMapStore::open(pin_dir);
    if (!store) return report(store.error());
    ctl::Control c(**store);
    auto n = c.counts();
    if (!n) return report(n.error());
    counts = *n;
    auto s = c.stats();
    if (!s) return report(s.error());
    stats = *s;
    uint32_t zero = 0;
    connredir_secret sec{};
    auto r = (*store)->lookup(ctl::MapId::Secret, &zero, &sec);
    if (!r) return report(r.error());
    secret_set = *r && (sec.k0 || sec.k1);
    if (!secret_set) problems.push_back("records MAC key not initialised: run `connredir up`");
    j["counts"] = {{"callouts", n->callouts},
                   {"filters", n->filters},
                   {"principals", n->principals},
                   {"prefixes", n->prefixes}};
    json js = json::object();
    for (size_t i = 0; i < stats.size(); ++i) js[ctl::stat_name(i)] = stats[i];
    j["stats"] = js;
    auto list = c.list_callouts();
    if (!list) return report(list.error());
    json jc = json::object();
    for (const auto& ci : *list) {
      auto n = c.callout_counters(ci.id);
      if (!n) return report(n.error());
      callout_counters.emplace_back(ci.name, *n);
      jc[ci.name] = counters_json(*n);
    }
    j["callout_stats"] = jc;
    j["secret_initialised"] = secret_set;
  }
  auto features = ctl::probe_kernel_features(pin_dir);
  j["features"] = features_json(features);
  std::vector<ctl::HookPrograms> hooks;
  if (auto h = our_hooks(*state))
    hooks = std::move(*h);
  else
    problems.push_back(h.error().message);
  json hj = json::array();
  size_t foreign = 0;
  for (const auto& h : hooks) {
    json progs = json::array();
    for (size_t i = 0; i < h.programs.size(); ++i) {
      const auto& p = h.programs[i];
      json pj = {{"prog_id", p.prog_id},
                 {"name", p.name},
                 {"tag", p.tag},
                 {"ours", p.ours},
                 {"attached_at", p.attached_at},
                 {"attach_mode", p.attach_mode}};
      if (!p.ours) {
        pj["position"] = relative_position(h, i);
        foreign++;
      }
      progs.push_back(pj);
    }
    hj.push_back({{"attach_type", h.attach_type}, {"cgroup", h.cgroup}, {"programs", progs}});
  }
  j["hooks"] = hj;
  j["foreign_programs"] = foreign;
  j["problems"] = problems;
  if (as_json) {
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  if (!state->up() && !state->maps_pinned) {
    fmt::print("connredir is not up at {} (run `connredir up`)\n", pin_dir);
    return 0;
  }
  fmt::print("state:      {}\n", j["up"].get<bool>() ? "up" : "partially up");
  fmt::print("pin dir:    {}\n", pin_dir);
  fmt::print("cgroup:     {}\n", cgroup_text(cg));
  for (uint64_t id : proxy_cgs) fmt::print("proxies in: {}\n", cgroup_text(id));
  std::string names;
  for (const auto& l : state->links) names += (names.empty() ? "" : " ") + l.name;
  fmt::print("links:      {} ({})\n", state->links.size(), names);
  if (counts) {
    fmt::print("callouts:   {}\n", counts->callouts);
    fmt::print("filters:    {} ({} index prefixes)\n", counts->filters, counts->prefixes);
    fmt::print("principals: {}\n", counts->principals);
    fmt::print("stats:\n");
    for (size_t i = 0; i < stats.size(); ++i)
      fmt::print("  {:<18} {}\n", ctl::stat_name(i), stats[i]);
    if (!callout_counters.empty()) fmt::print("per callout:\n");
    for (const auto& [name, n] : callout_counters)
      fmt::print("  {:<18} {}\n", name, counters_text(n));
  }
  print_features(features);
  if (foreign == 0) {
    fmt::print("other programs on connredir's hooks: none\n");
  } else {
    fmt::print("other programs on connredir's hooks (the kernel runs them in this order):\n");
    for (const auto& h : hooks)
      for (size_t i = 0; i < h.programs.size(); ++i) {
        const auto& p = h.programs[i];
        if (p.ours) continue;
        fmt::print("  {:<28} prog {} {:<16} attached at {} ({}), runs {}\n", h.attach_type,
                   p.prog_id, p.name.empty() ? "-" : p.name, p.attached_at, p.attach_mode,
                   relative_position(h, i));
      }
  }
  for (const auto& p : problems) fmt::print("problem:    {}\n", p);
  return 0;
}

}  // namespace

int print_up(const std::string& pin_dir, const ctl::UpResult& r) {
  if (r.already_up) {
    fmt::print("connredir is already up at {} (cgroup {}, id {})\n", pin_dir, r.cgroup.path,
               r.cgroup.id);
    return 0;
  }
  print_features(r.features);
  const auto scoped = static_cast<size_t>(
      std::count_if(r.attached.begin(), r.attached.end(),
                    [](const std::string& n) { return ctl::proxy_scoped_link(n); }));
  const size_t here = r.attached.size() - scoped;
  fmt::print("connredir is up at {}: {} program{} attached to cgroup {} (id {}){}\n", pin_dir, here,
             here == 1 ? "" : "s", r.cgroup.path, r.cgroup.id,
             r.secret_initialised ? "; new records MAC key" : "; existing records MAC key kept");
  for (const auto& p : r.proxies_in)
    fmt::print(
        "proxy socket options (records, context, SO_ORIGINAL_DST) attached only to cgroup {} (id "
        "{})\n",
        p.path, p.id);
  for (const auto& l : r.adopted.adopted)
    fmt::print(
        "adopted the listener {} of pid {} ({}, uid {}, cgroup {}): it was bound before "
        "connredir was up\n",
        l.local.to_string(), l.pid, l.comm, l.uid, l.cgroup);
  for (const auto& p : r.adopted.problems) fmt::print(stderr, "warning: {}\n", p);
  if (r.pool_route_added)
    fmt::print("added the local route {} dev lo: the IPv6 address pool of unconnected UDP sends\n",
               ctl::udp_pool6_cidr());
  if (!r.pool_route_problem.empty()) fmt::print(stderr, "warning: {}\n", r.pool_route_problem);
  return 0;
}

void add_system_commands(CLI::App& app, Globals& g, Commands& out) {
  auto a = std::make_shared<UpArgs>();
  auto* up = app.add_subcommand("up", "load, pin and attach the BPF programs (idempotent)");
  up->add_option("--cgroup", a->cgroup, "cgroup v2 directory to attach to (default: the root)");
  up->add_option("--proxies-in", a->proxies_in,
                 "cgroup (inside --cgroup) the proxies run in; repeatable. The proxies' "
                 "socket-option hooks attach only there, so applications elsewhere pay nothing "
                 "on getsockopt/setsockopt")
      ->allow_extra_args(false);
  out.push_back({up, [&g, a] { return cmd_up(g.pin_dir, *a); }});

  auto* down = app.add_subcommand("down", "detach and unpin everything");
  out.push_back({down, [&g] { return cmd_down(g.pin_dir); }});

  auto* status = app.add_subcommand("status", "is connredir up, counts, statistics");
  status->add_flag("--json", g.as_json, "JSON output");
  out.push_back({status, [&g] { return cmd_status(g.pin_dir, g.as_json); }});
}

}  // namespace connredir::cli
