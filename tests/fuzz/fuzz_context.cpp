// decode_context on arbitrary bytes: never out of bounds, always EINVAL with
// a message on rejection, and the JSON rendering of a decoded one is valid.
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "connredir/records.hpp"

using namespace connredir;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = decode_context(std::span<const uint8_t>(data, size));
  if (!c) {
    if (c.error().code != EINVAL || c.error().message.empty()) __builtin_trap();
    return 0;
  }
  if (c->user.size() > CONNREDIR_USER_CONTEXT_MAX) __builtin_trap();
  const auto j = nlohmann::json::parse(to_json(*c), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) __builtin_trap();
  (void)c->orig_dst.to_string();
  (void)c->orig_src.to_string();
  return 0;
}
