// `connredir callout add|list|del`: the redirectors. `add` takes its options
// from the callout field table (control.hpp), as configuration files do.
#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

struct CalloutAddArgs {
  ctl::CalloutLine line;
  std::string name_opt;
};

struct CalloutDelArgs {
  std::string name, name_opt;
  bool force = false;
};

int cmd_callout_add(const std::string& pin_dir, const CalloutAddArgs& a) {
  ctl::CalloutLine line = a.line;
  if (!line.name.empty() && !a.name_opt.empty() && line.name != a.name_opt)
    return usage("give the callout name once (NAME or --name)");
  if (line.name.empty()) line.name = a.name_opt;
  if (line.name.empty()) return usage("callout add needs a NAME");
  auto parsed = ctl::callout_spec(line, &ctl::resolve_cgroup);
  if (!parsed) return usage(parsed.error().message);

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.add_callout(parsed->spec);
  if (!r) return report(r.error());
  fmt::print("callout {} added (id {})\n", r->name, r->id);
  if (parsed->unit_waiting)
    fmt::print(
        "note: {} is not running, so the callout has no cgroup principal yet; run "
        "`connredir apply` or re-add the callout once it runs\n",
        parsed->proxy_unit);
  return 0;
}

int cmd_callout_list(const std::string& pin_dir, bool as_json) {
  auto s = open_session(pin_dir, false);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto list = c.list_callouts();
  if (!list) return report(list.error());
  auto src = Sources::read(pin_dir);
  if (!src) return report(src.error());
  std::vector<ctl::CalloutCounters> counters;
  for (const auto& i : *list) {
    auto n = c.callout_counters(i.id);
    if (!n) return report(n.error());
    counters.push_back(*n);
  }
  if (as_json) {
    json arr = json::array();
    for (size_t k = 0; k < list->size(); ++k) {
      const auto& i = (*list)[k];
      arr.push_back({{"id", i.id},
                     {"name", i.name},
                     {"proxy4", i.proxy4 ? json(i.proxy4->to_string()) : json(nullptr)},
                     {"proxy6", i.proxy6 ? json(i.proxy6->to_string()) : json(nullptr)},
                     {"proxy_uid", i.proxy_uid ? json(*i.proxy_uid) : json(nullptr)},
                     {"proxy_cgroup", cgroup_json(i.proxy_cgroup, i.proxy_cgroup_level)},
                     {"on_proxy_down", ctl::to_string(i.on_proxy_down)},
                     {"on_failure", ctl::to_string(i.on_failure)},
                     {"shared_principal", i.shared_principal},
                     {"implicit_records", i.implicit_records},
                     {"filters", i.filters},
                     {"counters", counters_json(counters[k])},
                     {"source", Sources::to_json(src->callout(i.name))}});
    }
    fmt::print("{}\n", arr.dump(2));
    return 0;
  }
  if (list->empty()) {
    fmt::print("no callouts (add one with `connredir callout add NAME --proxy ADDR:PORT`)\n");
    return 0;
  }
  fmt::print("{:<4} {:<20} {:<22} {:<30} {:<9} {:<7} {:<9} {:<10} {:<6} {:<8} {:<40} {}\n", "ID",
             "NAME", "PROXY4", "PROXY6", "PROXY-UID", "FILTERS", "ON-DOWN", "ON-FAILURE", "SHARED",
             "IMPLICIT", "PROXY-CGROUP", "SOURCE");
  for (const auto& i : *list)
    fmt::print("{:<4} {:<20} {:<22} {:<30} {:<9} {:<7} {:<9} {:<10} {:<6} {:<8} {:<40} {}\n", i.id,
               i.name, i.proxy4 ? i.proxy4->to_string() : "-",
               i.proxy6 ? i.proxy6->to_string() : "-",
               i.proxy_uid ? std::to_string(*i.proxy_uid) : "-", i.filters,
               ctl::to_string(i.on_proxy_down), ctl::to_string(i.on_failure),
               i.shared_principal ? "yes" : "no", ctl::implicit_records_text(i.implicit_records),
               cgroup_text(i.proxy_cgroup), src->callout(i.name));
  fmt::print("\ncounters:\n");
  for (size_t k = 0; k < list->size(); ++k)
    fmt::print("  {:<20} {}\n", (*list)[k].name, counters_text(counters[k]));
  return 0;
}

int cmd_callout_del(const std::string& pin_dir, const CalloutDelArgs& a) {
  std::string name = a.name.empty() ? a.name_opt : a.name;
  if (name.empty()) return usage("callout del needs a NAME");
  if (auto v = ctl::validate_callout_name(name); !v) return usage(v.error().message);
  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.delete_callout(name, a.force);
  if (!r) return report(r.error());
  if (r->empty())
    fmt::print("callout {} deleted\n", name);
  else
    fmt::print("callout {} deleted with {} filter{}\n", name, r->size(), r->size() > 1 ? "s" : "");
  return 0;
}

}  // namespace

void add_callout_commands(CLI::App& app, Globals& g, Commands& out) {
  auto* callout = app.add_subcommand("callout", "manage callouts (redirectors)");
  callout->require_subcommand(1);

  auto add = std::make_shared<CalloutAddArgs>();
  auto* c_add = callout->add_subcommand("add", "add a callout");
  for (const auto& f : ctl::callout_fields()) {
    std::string opt = "--" + option_name(f.key);
    if (f.member == &ctl::CalloutLine::name) {
      c_add->add_option("name", add->line.name, f.help);
      c_add->add_option("--name", add->name_opt, "callout name (alternative to NAME)");
    } else if (!f.member) {
      c_add->add_option(opt, add->line.proxies, f.help)->allow_extra_args(false);
    } else if (f.flag) {
      auto* member = &(add->line.*(f.member));
      c_add->add_flag_callback(
          opt, [member] { *member = "true"; }, f.help);
    } else {
      c_add->add_option(opt, add->line.*(f.member), f.help);
    }
  }
  out.push_back({c_add, [&g, add] { return cmd_callout_add(g.pin_dir, *add); }});

  auto* c_list = callout->add_subcommand("list", "list callouts");
  c_list->add_flag("--json", g.as_json, "JSON output");
  out.push_back({c_list, [&g] { return cmd_callout_list(g.pin_dir, g.as_json); }});

  auto del = std::make_shared<CalloutDelArgs>();
  auto* c_del = callout->add_subcommand("del", "delete a callout");
  c_del->add_option("name", del->name, "callout name");
  c_del->add_option("--name", del->name_opt, "callout name (alternative to NAME)");
  c_del->add_flag("--force", del->force, "also delete the filters that use it");
  out.push_back({c_del, [&g, del] { return cmd_callout_del(g.pin_dir, *del); }});
}

}  // namespace connredir::cli
