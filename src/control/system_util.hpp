// Helpers of system.cpp that other files of the control library share
// (internal: not installed).
#pragma once

#include <string>
#include <string_view>

#include "../common/unique_fd.hpp"
#include "connredir/error.hpp"

namespace connredir::control {

// A whole file (/proc, /sys, configuration), or an error naming it.
Result<std::string> read_file(const char* path);
// PIN_DIR/maps/NAME. ENOENT says to run `connredir up`; EPERM/EACCES, root.
Result<UniqueFd> open_pinned_map(const std::string& pin_dir, std::string_view name);

}  // namespace connredir::control
