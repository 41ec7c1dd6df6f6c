// `connredir flows`: live redirected flows and their chains.
#pragma once

#include <string>

namespace connredir::cli {
// Prints the flows (table or JSON); returns the process exit code.
int cmd_flows(const std::string& pin_dir, bool as_json);
}  // namespace connredir::cli
