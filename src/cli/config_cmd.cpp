// `connredir apply [PATH...] [--dry-run]` and `connredir export`: the
// configuration files (/etc/connredir/connredir.toml, conf.d/*.toml) made the
// kernel state, and the kernel state written back as configuration.
#include <set>

#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

struct ApplyArgs {
  std::vector<std::string> paths;
  bool dry_run = false;
  int drain_ms = 1000;
};

// Where connredir is attached, from its pinned links: the cgroup and the
// proxies' cgroups (ids).
struct Attached {
  uint64_t cgroup = 0;
  std::set<uint64_t> proxies_in;
};

Attached attached_of(const ctl::UpState& state) {
  Attached a;
  for (const auto& l : state.links) {
    if (l.cgroup_id == 0) continue;
    if (ctl::proxy_scoped_link(l.name))
      a.proxies_in.insert(l.cgroup_id);
    else if (a.cgroup == 0)
      a.cgroup = l.cgroup_id;
  }
  return a;
}

// An up host attached elsewhere than [global] says is not changed by apply:
// moving the attachment detaches, and connects in between go unredirected.
Result<void> check_global(const ctl::GlobalConfig& g, const Attached& a) {
  auto where = [](uint64_t id) {
    return ctl::cgroup_path_by_id(id).value_or(fmt::format("cgroup id {}", id));
  };
  if (g.cgroup) {
    auto cg = ctl::resolve_cgroup(*g.cgroup);
    if (!cg)
      return fail(EINVAL, fmt::format("{}: [global] cgroup: {}", g.source->to_string(),
                                      cg.error().message));
    if (cg->id != a.cgroup)
      return fail(EEXIST,
                  fmt::format("connredir is up at cgroup {} but the configuration ({}) says {}: "
                              "apply does not move it (connects would go unredirected "
                              "meanwhile); run `connredir down` and then `connredir apply` if "
                              "that is what you want",
                              where(a.cgroup), g.source->to_string(), cg->path));
  }
  if (!g.proxies_in.empty()) {
    std::set<uint64_t> want;
    for (const auto& p : g.proxies_in) {
      auto cg = ctl::resolve_cgroup(p);
      if (!cg)
        return fail(EINVAL, fmt::format("{}: [global] proxies_in: {}", g.source->to_string(),
                                        cg.error().message));
      want.insert(cg->id);
    }
    if (want != a.proxies_in)
      return fail(EEXIST,
                  fmt::format("connredir is up with other proxy cgroups (proxies_in) than the "
                              "configuration ({}) says: run `connredir down` and then `connredir "
                              "apply` to move them",
                              g.source->to_string()));
  }
  return {};
}

const char* mark(ctl::PlanItem::Kind k) {
  return k == ctl::PlanItem::Add ? "+" : k == ctl::PlanItem::Change ? "~" : "-";
}

void print_item(const ctl::PlanItem& i) {
  fmt::print("  {} {}{}\n", mark(i.kind), i.what, i.detail.empty() ? "" : ": " + i.detail);
}

// The plan by file: each file's additions and changes, then the removals
// (with where they came from, or that they were made by hand).
void print_plan(const ctl::ApplyPlan& plan, const ctl::Config& cfg, bool dry_run) {
  for (const auto& f : cfg.files) {
    bool header = false;
    for (const auto& i : plan.items) {
      if (i.kind == ctl::PlanItem::Remove || i.source.rfind(f + ":", 0) != 0) continue;
      if (!header) fmt::print("{}:\n", f);
      header = true;
      print_item(i);
    }
  }
  bool header = false;
  for (const auto& i : plan.items) {
    if (i.kind == ctl::PlanItem::Remove || !i.source.empty()) continue;
    if (!header) fmt::print("(whole configuration):\n");
    header = true;
    print_item(i);
  }
  header = false;
  for (const auto& i : plan.items) {
    if (i.kind != ctl::PlanItem::Remove) continue;
    if (!header) fmt::print("not in the configuration:\n");
    header = true;
    fmt::print("  - {} ({}){}\n", i.what, i.source, i.detail.empty() ? "" : ": " + i.detail);
  }
  size_t n[3] = {};
  for (const auto& i : plan.items) n[i.kind]++;
  fmt::print("{} {} added, {} changed, {} removed{}\n",
             dry_run ? "would change:" : "changed:", n[ctl::PlanItem::Add],
             n[ctl::PlanItem::Change], n[ctl::PlanItem::Remove],
             plan.replace_filters ? " (the classifier replaced at once, as `filter load "
                                    "--replace` does)"
                                  : "");
}

int cmd_apply(const std::string& pin_dir, const ApplyArgs& a) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto files = ctl::config_files(a.paths);
  if (!files) return usage(files.error().message);
  // Everything is read and checked before anything changes.
  auto cfg = ctl::load_config(*files, &ctl::resolve_cgroup);
  if (!cfg) return usage(fmt::format("{} (nothing was changed)", cfg.error().message));
  // With the default files, [global] is the administrator's: a vendor's drop-in
  // that happens to be read first (no connredir.toml) still may not have it.
  if (a.paths.empty() && cfg->global.source && cfg->global.source->file != ctl::kConfigFile)
    return usage(fmt::format("{}: [global]: only {} may have [global] (nothing was changed)",
                             cfg->global.source->to_string(), ctl::kConfigFile));

  auto lock = ctl::CliLock::acquire(!a.dry_run);
  if (!lock) return report(lock.error());
  auto state = ctl::read_up_state(pin_dir);
  if (!state) return report(state.error());
  bool up = state->up() && state->maps_pinned;
  if (up) {
    if (auto r = check_global(cfg->global, attached_of(*state)); !r) return report(r.error());
  } else if (a.dry_run) {
    fmt::print("would bring connredir up at {} (cgroup {}), then:\n", pin_dir,
               cfg->global.cgroup.value_or("the cgroup2 root"));
  } else {
    ctl::UpOptions o;
    o.pin_dir = pin_dir;
    o.cgroup = cfg->global.cgroup.value_or("");
    o.proxies_in = cfg->global.proxies_in;
    auto r = ctl::up(o);
    if (!r) return report(r.error());
    print_up(pin_dir, *r);
    up = true;
  }

  std::unique_ptr<ctl::KernelMapStore> store;
  std::unique_ptr<ctl::MapStore> empty;
  if (up) {
    auto s = ctl::KernelMapStore::open(pin_dir);
    if (!s) return report(s.error());
    store = std::move(*s);
  } else {
    empty = std::make_unique<ctl::MemoryMapStore>();  // a dry run on a host that is down
  }
  ctl::Control c(store ? static_cast<ctl::MapStore&>(*store) : *empty);
  auto prev = ctl::read_applied_state(pin_dir);
  if (!prev) return report(prev.error());
  auto plan = ctl::plan_apply(c, *cfg, *prev ? &**prev : nullptr);
  if (!plan) return report(plan.error());
  for (const auto& n : plan->notes) fmt::print("note: {}\n", n);
  if (plan->empty()) {
    fmt::print(
        "nothing to change: the kernel state matches {} file{} ({} callouts, {} filters, "
        "{} principals)\n",
        cfg->files.size(), cfg->files.size() == 1 ? "" : "s", cfg->callouts.size(),
        cfg->filters.size(), cfg->principals.size());
  } else {
    print_plan(*plan, *cfg, a.dry_run);
  }
  if (a.dry_run) return 0;
  if (!plan->empty())
    if (auto r = ctl::apply_plan(c, *plan, a.drain_ms); !r)
      return report(Error{r.error().code,
                          fmt::format("{}; the changes before it were made: fix the cause and run "
                                      "`connredir apply` again",
                                      r.error().message)});
  auto st = ctl::applied_state_of(c, *cfg);
  if (!st) return report(st.error());
  if (auto r = ctl::write_applied_state(pin_dir, *st); !r) return report(r.error());
  return 0;
}

int cmd_export(const std::string& pin_dir) {
  auto s = open_session(pin_dir, false);
  if (!s) return report(s.error());
  auto state = ctl::read_up_state(pin_dir);
  if (!state) return report(state.error());
  Attached a = attached_of(*state);
  std::optional<std::string> cgroup;
  std::vector<std::string> proxies_in;
  if (a.cgroup) cgroup = ctl::cgroup_path_by_id(a.cgroup);
  for (uint64_t id : a.proxies_in)
    if (auto p = ctl::cgroup_path_by_id(id)) proxies_in.push_back(*p);
  ctl::Control c(*s->store);
  auto text = ctl::export_config(c, cgroup, proxies_in);
  if (!text) return report(text.error());
  fmt::print("{}", *text);
  return 0;
}

}  // namespace

void add_config_commands(CLI::App& app, Globals& g, Commands& out) {
  auto a = std::make_shared<ApplyArgs>();
  auto* apply = app.add_subcommand(
      "apply", "make callouts, filters and principals equal to the configuration files");
  apply->add_option("path", a->paths,
                    "configuration files or directories of *.toml (default: "
                    "/etc/connredir/connredir.toml, then /etc/connredir/conf.d/*.toml)");
  apply->add_flag("--dry-run", a->dry_run, "print what would change, change nothing");
  apply
      ->add_option("--drain-ms", a->drain_ms,
                   "before removing callouts, wait this long after the classifier stopped "
                   "picking them, so their proxies finish taking over the connects already "
                   "sent to them")
      ->capture_default_str()
      ->check(CLI::Range(0, 60000));
  apply->footer(
      "Brings connredir up as [global] says if it is not up. Refuses a configuration with any "
      "error before changing anything. Entries that are not in the configuration (made by hand "
      "with `callout add` and the like) are removed. See docs/CONFIG.md.");
  out.push_back({apply, [&g, a] { return cmd_apply(g.pin_dir, *a); }});

  auto* exp = app.add_subcommand("export", "print the running state as a configuration file");
  out.push_back({exp, [&g] { return cmd_export(g.pin_dir); }});
}

}  // namespace connredir::cli
