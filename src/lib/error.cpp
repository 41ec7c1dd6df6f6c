#include "connredir/error.hpp"

#include <string.h>

#include <string>

namespace connredir {

std::string errno_message(int code, const std::string& what) {
  // strerrordesc_np is thread-safe and locale-independent (unlike strerror),
  // so messages are stable in logs and tests.
  const char* desc = strerrordesc_np(code);
  std::string text = desc ? desc : "errno " + std::to_string(code);
  if (what.empty()) return text;
  return what + ": " + text;
}

}  // namespace connredir
