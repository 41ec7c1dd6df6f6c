// Redirect records and redirect context: decoding for diagnostics, and the
// WFP redirect-state rule. Decoding checks structure only; authenticity (the
// MAC) is checked by the kernel when a blob is set on a socket.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "connredir/address.hpp"
#include "connredir/error.hpp"

// Exported from libconnredir.so (built with hidden visibility by default).
#pragma GCC visibility push(default)

namespace connredir {

enum class RedirectState {
  NotRedirected = CONNREDIR_NOT_REDIRECTED,
  RedirectedBySelf = CONNREDIR_REDIRECTED_BY_SELF,
  RedirectedByOther = CONNREDIR_REDIRECTED_BY_OTHER,
  PreviouslyRedirectedBySelf = CONNREDIR_PREVIOUSLY_REDIRECTED_BY_SELF,
};
const char* to_string(RedirectState s);

struct Hop {
  uint32_t callout_id = 0;
  uint32_t filter_id = 0;
  uint64_t time_ns = 0;
  Address dst;
  uint32_t proxy_uid = CONNREDIR_UID_NONE;
  uint64_t proxy_cgroup = 0;
};

struct Origin {
  uint32_t pid = 0;
  uint32_t uid = 0;
  uint64_t cgroup_id = 0;
  std::string comm;
  Address src;
};

// A decoded records blob.
struct RecordsInfo {
  uint64_t flow_id = 0;
  Origin origin;
  std::vector<Hop> hops;
  uint64_t mac = 0;
};

// The opaque blob as read from / written to a socket.
using RecordsBlob = std::vector<uint8_t>;

// Structural decode (magic, version, size, hop count). EINVAL with a message
// naming the first problem on malformed input. Never reads past `blob`.
Result<RecordsInfo> decode_records(std::span<const uint8_t> blob);
// Same, from hex text (whitespace ignored), for `connredir decode HEX`.
Result<RecordsInfo> decode_records_hex(std::string_view hex);

// WFP's rule: state of the flow described by `records` relative to `callout_id`.
RedirectState redirect_state(const RecordsInfo& records, uint32_t callout_id);
// Convenience: decode then classify; EINVAL if the blob is malformed.
Result<RedirectState> redirect_state(std::span<const uint8_t> blob, uint32_t callout_id);

struct Context {
  uint64_t flow_id = 0;
  uint32_t callout_id = 0;
  uint32_t filter_id = 0;
  uint8_t hop = 0;
  Address orig_dst;
  Address orig_src;
  uint32_t pid = 0;
  uint32_t uid = 0;
  uint64_t cgroup_id = 0;
  std::string comm;
  std::vector<uint8_t> user;  // the filter's context bytes
};
Result<Context> decode_context(std::span<const uint8_t> raw);

// Multi-line human-readable rendering, and JSON (nlohmann) text.
std::string describe(const RecordsInfo& r);
std::string to_json(const RecordsInfo& r);
std::string to_json(const Context& c);

std::string to_hex(std::span<const uint8_t> bytes);

}  // namespace connredir

#pragma GCC visibility pop
