// `connredir flows`: live redirected flows and their chains.
#pragma once

#include <string>

#include "command.hpp"

namespace connredir::cli {
// Registers `flows` and its options; run() prints the flows (table or JSON)
// and returns the process exit code.
Command add_flows_command(CLI::App& app, const std::string& pin_dir, bool& as_json);
}  // namespace connredir::cli
