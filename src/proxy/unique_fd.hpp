// The proxy's file descriptors: the shared UniqueFd (src/common).
#pragma once

#include "../common/unique_fd.hpp"

namespace connredir::proxy {
using connredir::UniqueFd;
}  // namespace connredir::proxy
