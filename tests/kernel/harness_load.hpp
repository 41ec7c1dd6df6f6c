// Helpers for the load, fault and hostile-input kernel tests: an epoll echo
// server that holds thousands of connections and counts them, clients that
// open many connections or churn them with checksummed payloads, and raw
// access to the pinned BPF maps (entry counts, filling a map to capacity).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace connredir::test {

// Raises RLIMIT_NOFILE of this process to at least `n` (the hard limit too if
// allowed: CAP_SYS_RESOURCE); children inherit it. False if it cannot.
bool raise_nofile(uint64_t n);

// ---- Pinned maps ------------------------------------------------------------

// Number of entries of the pinned map PIN_DIR/maps/NAME (walks the keys);
// -1 (and errno) on failure.
long map_count(const std::string& pin_dir, const std::string& name);
// Inserts `n` entries into the pinned hash map NAME whose keys are
// `tag`-marked garbage (the first 8 key bytes are `tag`, the next 8 a
// counter, the rest zero) and zero values. Stops at the first failure.
// Returns how many were inserted; *err gets the errno of the failure.
long map_fill(const std::string& pin_dir, const std::string& name, uint64_t tag, long n, int* err);
// Deletes every entry whose first 8 key bytes are `tag`. Returns how many.
long map_unfill(const std::string& pin_dir, const std::string& name, uint64_t tag);
// max_entries of the pinned map (0 on failure).
uint32_t map_capacity(const std::string& pin_dir, const std::string& name);
// Overwrites the value at `key` of the pinned map NAME (a __u32-keyed map,
// e.g. an ARRAY) with zeros. False (and errno) on failure.
bool map_zero_value(const std::string& pin_dir, const std::string& name, uint32_t key);

// ---- Load echo server ----------------------------------------------------------

// Wire format of the load tests: a 16-byte header, then `len` payload bytes.
// The server echoes every byte (header included). With kCloseAfterEcho it
// closes the connection once it has echoed 16 + len bytes; otherwise it
// holds it until the client closes (and then closes its side).
struct LoadHeader {
  uint32_t magic;  // kLoadMagic
  uint32_t len;
  uint32_t flags;
  uint32_t seed;
};
inline constexpr uint32_t kLoadMagic = 0x4c445243;  // "CRDL"
inline constexpr uint32_t kCloseAfterEcho = 1;

// Payload byte `j` of the stream with `seed` (cheap, position-addressable,
// so a receiver can verify any window of the stream without storing it).
inline uint8_t load_byte(uint32_t seed, uint64_t j) {
  uint64_t x = (uint64_t{seed} << 32) ^ (j / 8) ^ 0x9e3779b97f4a7c15ull;
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<uint8_t>(x >> (8 * (j % 8)));
}

// Epoll echo server in a thread of this process (outside the policed
// cgroup). Counts connections open now, the peak, resets seen and bytes.
class LoadEchoServer {
 public:
  explicit LoadEchoServer(const std::string& host);  // "127.0.0.1" or "::1"; ephemeral port
  ~LoadEchoServer();
  int port() const { return port_; }
  std::string addr() const;
  long open() const { return open_; }
  long peak() const { return peak_; }
  long accepted() const { return accepted_; }
  long resets() const { return resets_; }
  uint64_t bytes() const { return bytes_; }

 private:
  void loop();
  int fd_ = -1;
  int ep_ = -1;
  int stop_fd_ = -1;
  int port_ = 0;
  bool v6_ = false;
  std::thread thread_;
  std::atomic<long> open_{0}, peak_{0}, accepted_{0}, resets_{0};
  std::atomic<uint64_t> bytes_{0};
};

// ---- Clients (run them inside fork_in in the app cgroup) -------------------

// Opens `n` connections, the i-th to dsts[i % dsts.size()] (at most
// `connecting` handshakes in flight), sends each a header + `payload` bytes
// (kept open: no close-after-echo), verifies the echo byte by byte, and only
// when all `n` are verified (or `timeout_ms` passed) closes them all. Result
// as "key=value ..." text: opened, verified, held (verified and open at the
// end, i.e. at once), corrupt, resets, errors, unfinished, bytes, first_error.
std::string hold_many(const std::vector<std::string>& dsts, int n, size_t payload, int connecting,
                      int timeout_ms);

// `workers` threads, each for `seconds` seconds (or, if `count` > 0, for
// `count` connections): connect, send a header with close-after-echo and a
// payload of 1..max_payload bytes, read to EOF, verify. Result text: conns,
// ok, corrupt, resets, errors, bytes, first_error.
std::string churn(const std::string& dst, int workers, int seconds, size_t max_payload,
                  long count = 0);

// Parses "key=value key=value" text into numbers (non-numbers are skipped).
long kv(const std::string& text, const std::string& key);

// Counts the lines of a flow log whose "result" is "ok", and all lines.
struct LogCount {
  long lines = 0;
  long ok = 0;
};
LogCount count_log(const std::string& path);

// TCP sockets in this netns (from /proc/net/tcp{,6}), except TIME_WAIT and
// listeners.
long tcp_socket_count();

// A KernelTest with a two-vendor chain: vendor-a (uid 4101, weight 200) and
// vendor-b (uid 4102, weight 100), proxies on 127.0.0.1:PORT_A / PORT_B,
// both filtering the destination's address and port.
class ChainFixture : public KernelTest {
 protected:
  static constexpr int kAppUid = 1000;
  static constexpr int kUidA = 4101;
  static constexpr int kUidB = 4102;
  static constexpr int kPortA = 15101;
  static constexpr int kPortB = 15102;
  // vendor-a (weight 200) and vendor-b (100) for dst_ip/dst_port, each
  // callout with `callout_extra` options.
  void register_chain(const std::string& dst_ip, int dst_port,
                      const std::vector<std::string>& callout_extra = {});
  Process& start_vendor(char v, const std::vector<std::string>& extra = {});
  // Lines of a flow log (vendor-b's) whose chain is [vendor-a, vendor-b].
  long two_hop_lines(const std::string& log);
  void two_vendor_chain(const std::string& dst_ip, int dst_port,
                        const std::vector<std::string>& extra = {}) {
    register_chain(dst_ip, dst_port);
    start_vendor('a', extra);
    start_vendor('b', extra);
  }
};

}  // namespace connredir::test
