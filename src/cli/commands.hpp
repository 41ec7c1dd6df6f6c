// Each command group registers its subcommands, with their options next to
// the handlers, in its own file; main.cpp only calls these and runs the one
// that was given.
#pragma once

#include <vector>

#include "command.hpp"
#include "common.hpp"

namespace connredir::cli {

using Commands = std::vector<Command>;

void add_system_commands(CLI::App& app, Globals& g, Commands& out);    // up down status
void add_callout_commands(CLI::App& app, Globals& g, Commands& out);   // callout ...
void add_filter_commands(CLI::App& app, Globals& g, Commands& out);    // filter ...
void add_authorize_command(CLI::App& app, Globals& g, Commands& out);  // authorize
void add_tool_commands(CLI::App& app, Globals& g, Commands& out);      // decode exec
void add_config_commands(CLI::App& app, Globals& g, Commands& out);    // apply export
void add_flows_command(CLI::App& app, Globals& g, Commands& out);      // flows
void add_metrics_command(CLI::App& app, Globals& g, Commands& out);    // metrics
void add_trace_command(CLI::App& app, Globals& g, Commands& out);      // trace

// `up` as `connredir up` prints it; shared with `apply`, which brings
// connredir up first.
int print_up(const std::string& pin_dir, const ctl::UpResult& r);

}  // namespace connredir::cli
