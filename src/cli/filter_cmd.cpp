// `connredir filter add|load|list|del|check`. `add` takes its options from
// the filter field table and `load` its keys from the same table (control.hpp),
// so flags, filter files and configuration files go through one validator.
#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

// "callout acme", "permit", "block": what a matching connect meets.
std::string action_target(const ctl::FilterInfo& f) {
  if (f.action == ctl::FilterAction::Redirect) return "callout " + f.callout;
  return ctl::to_string(f.action);
}

int cmd_filter_add(const std::string& pin_dir, const ctl::FilterLine& line) {
  auto spec = ctl::filter_spec(line, &ctl::resolve_cgroup);
  if (!spec) return usage(spec.error().message);

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.add_filter(*spec);
  if (!r) return report(r.error());
  for (const auto& w : r->warnings) fmt::print(stderr, "connredir: warning: {}\n", w);
  fmt::print("filter {} added: {} port {} proto {} -> {} (weight {})\n", r->filter.id,
             r->filter.dst.to_string(), r->filter.ports.to_string(),
             ctl::proto_name(r->filter.proto), action_target(r->filter), r->filter.weight);
  return 0;
}

int cmd_filter_load(const std::string& pin_dir, const std::string& file, bool replace,
                    bool as_json) {
  auto text = read_text(file, "filter file");
  if (!text) return usage(text.error().message);
  auto specs = ctl::parse_filter_file(*text, &ctl::resolve_cgroup);
  if (!specs) return usage(fmt::format("{}: {}", file, specs.error().message));

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.load_filters(*specs, replace);
  if (!r) return report(r.error());
  for (const auto& w : r->warnings) fmt::print(stderr, "connredir: warning: {}\n", w);
  if (as_json) {
    fmt::print("{}\n", json{{"added", r->added},
                            {"removed", r->removed},
                            {"index_writes", r->index_writes},
                            {"first_id", r->first_id},
                            {"last_id", r->last_id}}
                           .dump());
    return 0;
  }
  if (r->added == 0)
    fmt::print("no filters in {}{}\n", file,
               r->removed ? fmt::format("; {} filters removed", r->removed) : "");
  else
    fmt::print("{} filters loaded (ids {}-{}), {} index entr{} written{}\n", r->added, r->first_id,
               r->last_id, r->index_writes, r->index_writes == 1 ? "y" : "ies",
               r->removed ? fmt::format(", {} previous filters removed", r->removed) : "");
  return 0;
}

int cmd_filter_list(const std::string& pin_dir, bool as_json) {
  auto s = open_session(pin_dir, false);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto list = c.list_filters();
  if (!list) return report(list.error());
  auto src = Sources::read(pin_dir);
  if (!src) return report(src.error());
  if (as_json) {
    json arr = json::array();
    for (const auto& f : *list)
      arr.push_back({{"id", f.id},
                     {"action", ctl::to_string(f.action)},
                     {"callout", f.callout},
                     {"callout_id", f.callout_id},
                     {"weight", f.weight},
                     {"seq", f.seq},
                     {"family", family_text(f.dst.family)},
                     {"dst", f.dst.to_string()},
                     {"port_lo", f.ports.lo},
                     {"port_hi", f.ports.hi},
                     {"proto", ctl::proto_name(f.proto)},
                     {"app_uid", f.app_uid ? json(*f.app_uid) : json(nullptr)},
                     {"app_cgroup", cgroup_json(f.app_cgroup, f.app_cgroup_level)},
                     {"context", f.context},
                     {"source", Sources::to_json(src->filter(f.id))}});
    fmt::print("{}\n", arr.dump(2, ' ', false, json::error_handler_t::replace));
    return 0;
  }
  if (list->empty()) {
    fmt::print("no filters (add one with `connredir filter add --callout NAME ...`)\n");
    return 0;
  }
  fmt::print("{:<6} {:<9} {:<16} {:<6} {:<6} {:<24} {:<11} {:<5} {:<24} {:<40} {}\n", "ID",
             "ACTION", "CALLOUT", "WEIGHT", "SEQ", "DST", "PORTS", "PROTO", "APP", "SOURCE",
             "CONTEXT");
  for (const auto& f : *list) {
    std::string app;
    if (f.app_uid) app = fmt::format("uid={}", *f.app_uid);
    if (f.app_cgroup) app += fmt::format("{}cgroup={}", app.empty() ? "" : ",", f.app_cgroup);
    fmt::print("{:<6} {:<9} {:<16} {:<6} {:<6} {:<24} {:<11} {:<5} {:<24} {:<40} {}\n", f.id,
               ctl::to_string(f.action), f.callout.empty() ? "-" : f.callout, f.weight, f.seq,
               f.dst.to_string(), f.ports.to_string(), ctl::proto_name(f.proto),
               app.empty() ? "-" : app, src->filter(f.id),
               f.context.empty()
                   ? "-"
                   : json(f.context).dump(-1, ' ', false, json::error_handler_t::replace));
  }
  return 0;
}

int cmd_filter_del(const std::string& pin_dir, const std::string& id_text) {
  auto id = ctl::parse_uint(id_text, "filter id", 1, 0xffffffff);
  if (!id) return usage(id.error().message);
  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  if (auto r = c.delete_filter(static_cast<uint32_t>(*id)); !r) return report(r.error());
  fmt::print("filter {} deleted\n", *id);
  return 0;
}

int cmd_filter_check(const std::string& pin_dir, bool repair) {
  auto s = open_session(pin_dir, repair);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto w = c.check_index();
  if (!w) return report(w.error());
  if (w->empty()) {
    fmt::print("classifier index is consistent with the filters\n");
    return 0;
  }
  for (const auto& x : *w)
    fmt::print("index entry {}: {}\n", x.key.to_string(),
               x.erase() ? "stray (should not exist)" : "missing or stale");
  if (!repair) {
    fmt::print(stderr,
               "connredir: the index differs from the filters in {} entr{}: run "
               "`connredir filter check --repair`\n",
               w->size(), w->size() == 1 ? "y" : "ies");
    return kExitRuntime;
  }
  auto n = c.repair_index();
  if (!n) return report(n.error());
  for (const auto& f : n->removed)
    fmt::print(
        "filter {} ({}, dst {}, ports {}) removed: no index entry named it, so an "
        "interrupted `filter add` or `filter load` left it and it was never active\n",
        f.id, action_target(f), f.dst.to_string(), f.ports.to_string());
  if (!n->removed.empty())
    fmt::print(
        "(indexing them would have put more than {} filters on {}; re-run the interrupted "
        "command if you still want them)\n",
        CONNREDIR_CANDIDATES_MAX, fmt::join(n->crowded, ", "));
  fmt::print("repaired {} index entr{}\n", n->writes, n->writes == 1 ? "y" : "ies");
  return 0;
}

struct FilterLoadArgs {
  std::string file;
  bool replace = false;
};

}  // namespace

void add_filter_commands(CLI::App& app, Globals& g, Commands& out) {
  auto* filter = app.add_subcommand("filter", "manage filters");
  filter->require_subcommand(1);

  auto line = std::make_shared<ctl::FilterLine>();
  auto* f_add = filter->add_subcommand("add", "add a filter");
  for (const auto& f : ctl::filter_fields())
    f_add->add_option("--" + option_name(f.key), (*line).*(f.member), f.help);
  out.push_back({f_add, [&g, line] { return cmd_filter_add(g.pin_dir, *line); }});

  auto load = std::make_shared<FilterLoadArgs>();
  auto* f_load = filter->add_subcommand(
      "load", "add many filters from a file (one per line, JSON or KEY=VALUE; see --help)");
  f_load->footer(
      "One filter per line, the fields of `filter add`:\n"
      "  {\"callout\":\"acme\",\"dst\":\"10.0.0.0/8\",\"port\":\"443\",\"weight\":100,"
      "\"app_uid\":1000}\n"
      "  callout=acme dst=10.0.0.0/8 port=8000-8080 proto=tcp weight=100 app-cgroup=DIR\n"
      "  action=block proto=udp port=443 weight=1000\n"
      "Blank lines and lines starting with # are skipped. The index is computed once.");
  f_load->add_option("file", load->file, "filter file ('-' = standard input)")->required();
  f_load->add_flag("--replace", load->replace,
                   "replace every existing filter (switched over without a gap)");
  f_load->add_flag("--json", g.as_json, "JSON output");
  out.push_back({f_load, [&g, load] {
                   return cmd_filter_load(g.pin_dir, load->file, load->replace, g.as_json);
                 }});

  auto* f_list = filter->add_subcommand("list", "list filters");
  f_list->add_flag("--json", g.as_json, "JSON output");
  out.push_back({f_list, [&g] { return cmd_filter_list(g.pin_dir, g.as_json); }});

  auto id = std::make_shared<std::string>();
  auto* f_del = filter->add_subcommand("del", "delete a filter");
  f_del->add_option("id", *id, "filter id")->required();
  out.push_back({f_del, [&g, id] { return cmd_filter_del(g.pin_dir, *id); }});

  auto repair = std::make_shared<bool>(false);
  auto* f_check =
      filter->add_subcommand("check", "verify the classifier index against the filters");
  f_check->add_flag("--repair", *repair, "rewrite entries that differ");
  out.push_back({f_check, [&g, repair] { return cmd_filter_check(g.pin_dir, *repair); }});
}

}  // namespace connredir::cli
