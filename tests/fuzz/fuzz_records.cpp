// decode_records on arbitrary bytes, and on the same bytes read as hex text;
// everything a decoded blob can be rendered with must work on it.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "connredir/records.hpp"

using namespace connredir;

namespace {

void exercise(const RecordsInfo& r) {
  (void)describe(r);
  const auto j = nlohmann::json::parse(to_json(r), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) __builtin_trap();  // to_json must always emit valid JSON
  if (r.hops.size() > CONNREDIR_MAX_HOPS) __builtin_trap();
  for (uint32_t callout : {0u, 1u, 2u, 0xffffffffu}) {
    const RedirectState s = redirect_state(r, callout);
    if (r.hops.empty() != (s == RedirectState::NotRedirected)) __builtin_trap();
  }
  if (!r.hops.empty() &&
      redirect_state(r, r.hops.back().callout_id) != RedirectState::RedirectedBySelf)
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  auto r = decode_records(bytes);
  if (r) {
    exercise(*r);
    // The hex path must agree with the binary path.
    auto again = decode_records_hex(to_hex(bytes));
    if (!again || again->flow_id != r->flow_id || again->hops.size() != r->hops.size())
      __builtin_trap();
  } else if (r.error().code != EINVAL || r.error().message.empty()) {
    __builtin_trap();
  }

  auto h = decode_records_hex(std::string_view(reinterpret_cast<const char*>(data), size));
  if (h) exercise(*h);
  return 0;
}
