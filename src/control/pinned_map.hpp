// Opening one of connredir's pinned maps by name, with the error every caller
// gives (internal to the control library).
#pragma once

#include <string>
#include <string_view>

#include "../common/unique_fd.hpp"
#include "connredir/error.hpp"

namespace connredir::control {

// PIN_DIR/maps/NAME. ENOENT says to run `connredir up`; EPERM/EACCES, root.
Result<UniqueFd> open_pinned_map(const std::string& pin_dir, std::string_view name);

}  // namespace connredir::control
