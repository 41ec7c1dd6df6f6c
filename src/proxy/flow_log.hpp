// The per-flow JSON log: one line per finished flow, written with a single
// write(2) to an O_APPEND file so readers see whole lines while the proxy
// runs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "connredir/records.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {

struct ChainEntry {
  uint32_t callout_id = 0;
  uint32_t filter_id = 0;
  std::string dst;  // "ADDR:PORT" the connect asked for at that hop
};

// Everything one log line says. Optional fields are JSON null when unknown
// (for example a connection that was not redirected has no context).
struct FlowRecord {
  std::string name;                    // --name
  uint64_t flow_id = 0;                // 0 when there are no records
  std::vector<ChainEntry> chain;       // from the decoded records, in order
  std::optional<uint32_t> callout_id;  // this proxy's redirect (context)
  std::optional<uint32_t> filter_id;
  std::optional<uint32_t> hop;
  std::optional<std::string> orig_dst;
  std::optional<std::string> orig_src;
  std::optional<uint32_t> pid;  // original application
  std::optional<uint32_t> uid;
  std::optional<std::string> comm;
  std::string client;       // peer address of the accepted socket
  std::string listen;       // listener that accepted it
  bool propagated = false;  // records were set on the outgoing socket
  uint64_t bytes_up = 0;    // client -> server
  uint64_t bytes_down = 0;  // server -> client
  uint64_t duration_ms = 0;
  std::string result;               // "ok" or what went wrong
  std::string proto = "tcp";        // "tcp" or "udp"
  std::optional<uint64_t> dropped;  // UDP: datagrams that could not be sent at once
};

// What a flow's records and context say, for its log line: the chain, the
// application, this proxy's hop. Either may be missing (null / empty).
void describe_flow(FlowRecord& rec, std::span<const uint8_t> records, const Context* ctx);

// One JSON object, no trailing newline. Never throws on odd bytes: invalid
// UTF-8 (e.g. in comm) is replaced with U+FFFD.
std::string format_flow_json(const FlowRecord& r);

class FlowLog {
 public:
  FlowLog() = default;  // disabled: write() does nothing
  // "-" means standard output. Returns an empty string on success, else an
  // error message saying what to do.
  std::string open(const std::string& path);
  bool enabled() const { return static_cast<bool>(fd_) || stdout_; }
  // Writes the line and a newline in one write(2). A failed write is
  // reported on stderr once per distinct errno, never fatal.
  void write(const FlowRecord& r);

 private:
  UniqueFd fd_;
  bool stdout_ = false;
  std::string path_;
  int last_errno_ = 0;
};

}  // namespace connredir::proxy
