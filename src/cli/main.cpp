// connredir: the root tool. Loads/unloads the BPF side and edits callouts,
// filters and principals in the pinned maps. Each command group lives in its
// own file (*_cmd.cpp) with its options next to its handler; this file only
// registers them and runs the one given.
//
// Exit codes: 0 success, 1 runtime error (message says what to do), 2 bad
// arguments.
#include <algorithm>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.hpp"

namespace {

using namespace connredir::cli;

std::optional<std::string> unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* level = &app;
  std::string path = "connredir";
  for (int i = 1; i < argc; ++i) {
    std::string tok = argv[i];
    if (tok == "--") break;
    if (tok == "--pin-dir") {
      ++i;
      continue;
    }
    if (tok.empty() || tok[0] == '-') continue;
    auto subs = level->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return std::nullopt;  // a positional argument of a leaf command
    auto it =
        std::find_if(subs.begin(), subs.end(), [&](CLI::App* s) { return s->get_name() == tok; });
    if (it == subs.end()) {
      std::string names;
      for (auto* s : subs) names += (names.empty() ? "" : ", ") + s->get_name();
      return fmt::format("unknown command '{}' for {} (commands: {})", tok, path, names);
    }
    level = *it;
    path += " " + tok;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"connredir: WFP-style connection redirection for Linux (eBPF cgroup hooks)",
               "connredir"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CONNREDIR_VERSION);
  Globals g;
  app.add_option("--pin-dir", g.pin_dir, "bpffs directory holding the pinned maps and links")
      ->envname("CONNREDIR_PIN_DIR")
      ->capture_default_str();
  app.add_flag("--json", g.as_json, "JSON output (status, list commands, decode)");

  Commands commands;
  add_system_commands(app, g, commands);
  add_config_commands(app, g, commands);
  add_flows_command(app, g, commands);
  add_metrics_command(app, g, commands);
  add_trace_command(app, g, commands);
  add_callout_commands(app, g, commands);
  add_filter_commands(app, g, commands);
  add_authorize_command(app, g, commands);
  add_tool_commands(app, g, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (auto unknown = unknown_command(app, argc, argv)) return usage(*unknown);
    return usage(msg + " (see `connredir --help`)");
  }
  if (g.pin_dir.empty() || g.pin_dir.front() != '/')
    return usage("--pin-dir must be an absolute path");
  while (g.pin_dir.size() > 1 && g.pin_dir.back() == '/') g.pin_dir.pop_back();

  for (const auto& c : commands)
    if (*c.sub) return c.run();
  return usage("no command given (see `connredir --help`)");
}
