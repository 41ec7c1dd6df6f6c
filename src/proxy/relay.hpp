// Relay: moves bytes both ways between two connected, non-blocking stream
// sockets (the accepted client socket and the proxy's outgoing socket).
//
// Driving it: register both sockets once with an epoll instance in
// edge-triggered mode (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) and pass
// every event to on_event(). The relay never calls epoll_ctl itself: with edge triggering
// the interest set never has to change, backpressure is expressed by simply
// not reading a side whose data cannot be delivered yet, and the EPOLLOUT
// edge of the blocked destination resumes the direction.
//
// Per direction the first Options::splice_after bytes go recv -> small
// buffer -> send: a short flow (a request and a reply) then never pays for
// a large buffer or a splice pipe (pipe2 + two closes per direction, and
// splice's extra round trip through the pipe). Once a direction has
// delivered more than that and its buffer is empty it switches to its bulk
// mode: recv/send through a buffer of Options::copy_buffer bytes (the
// default), or with Options::splice socket -> pipe -> socket with splice(2).
// On loopback recv/send is the faster of the two (bench/RESULTS.md: 1.5 vs
// 1.3 GB/s through the proxy); splice avoids the copies but moves at most a
// pipe's worth per call. If pipe creation or splice fails with
// EINVAL/ENOSYS (a socket type without splice support) the direction falls
// back to recv/send.
//
// Half-close: EOF from one side is delivered as shutdown(SHUT_WR) on the
// other side once everything read before it has been written. The relay is
// Done when both directions are shut down; it then closes both sockets.
// Any error (reset, EPIPE, ...) fails the relay: the other side is closed
// with SO_LINGER 0 so it sees a reset too, and error() says what happened.
//
// The process must ignore SIGPIPE (splice to a closed socket raises it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <fcntl.h>
#include <sys/types.h>

#include "buffer_pool.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {

enum class Side : uint8_t { Client = 0, Server = 1 };
const char* to_string(Side s);

class Relay {
 public:
  // splice(2)'s signature; tests inject failures through it.
  using SpliceFn = ssize_t (*)(int, loff_t*, int, loff_t*, size_t, unsigned int);

  struct Options {
    bool splice = true;              // false: always recv/send
    SpliceFn splice_fn = nullptr;    // nullptr: ::splice
    size_t copy_buffer = 64 * 1024;  // buffer per direction in copy mode
    unsigned budget = 64;            // fill/drain rounds per call before yielding
    // A direction moves its first splice_after bytes by recv/send through
    // a buffer of min(small_buffer, copy_buffer) bytes, then switches to its
    // bulk mode (splice, or the copy_buffer). 0: bulk mode from the first
    // byte.
    size_t splice_after = 64 * 1024;
    size_t small_buffer = 16 * 1024;
    // recv/send: a recv that returns less than it asked for emptied the
    // socket, so the direction waits for the next EPOLLIN edge instead of
    // calling recv again for EAGAIN. Needs EPOLLRDHUP in the interest set:
    // once an event reports EPOLLRDHUP/HUP/ERR for a socket (an EOF may have
    // arrived with the data) it is read until EAGAIN or EOF again.
    bool short_read_empties = true;
    // Where recv/send buffers come from and go back to once empty (an idle
    // direction then holds none). nullptr: each direction keeps its own
    // buffer for the flow's life.
    BufferPool* pool = nullptr;
  };
  enum class State : uint8_t { Running, Done, Failed };

  // Takes ownership of two connected, non-blocking sockets.
  Relay(UniqueFd client, UniqueFd server, const Options& options);
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;
  ~Relay() = default;

  // Readiness reported by epoll for `side`'s socket.
  State on_event(Side side, uint32_t events);
  // True when a direction stopped only because it used up its budget (the
  // socket still has data and no new edge will come): call resume() soon.
  bool needs_resume() const { return resume_mask_ != 0; }
  State resume();
  // Close both sockets now; with `reset`, with SO_LINGER 0 (peers see RST).
  // Sets state Failed with `reason` unless already finished.
  void abort(const std::string& reason, bool reset);

  State state() const { return state_; }
  uint64_t bytes_up() const { return dirs_[kUp].bytes; }      // client -> server
  uint64_t bytes_down() const { return dirs_[kDown].bytes; }  // server -> client
  const std::string& error() const { return error_; }
  // After a failure: the side whose socket failed (reset, read/write
  // error); Client or Server. Internal when the relay gave up on its own or
  // was aborted.
  enum class Culprit : uint8_t { None, Client, Server, Internal };
  Culprit culprit() const { return culprit_; }
  int fd(Side s) const { return socks_[static_cast<int>(s)].get(); }
  // Bytes read from `from` and not yet delivered to the other side.
  size_t buffered(Side from) const { return dirs_[static_cast<int>(from)].pending(); }
  // True while the direction reading from `from` uses splice.
  bool splicing(Side from) const { return !dirs_[static_cast<int>(from)].copy; }
  // True while the direction reading from `from` is in its small-flow phase
  // (small buffer, switching to the bulk mode after Options::splice_after
  // bytes).
  bool small_phase(Side from) const { return dirs_[static_cast<int>(from)].upgrade; }
  // True while the direction reading from `from` holds a recv/send buffer.
  bool holds_buffer(Side from) const { return dirs_[static_cast<int>(from)].buf != nullptr; }

 private:
  static constexpr int kUp = 0;    // reads the client, writes the server
  static constexpr int kDown = 1;  // reads the server, writes the client

  struct Direction {
    int from = 0;  // index into socks_
    int to = 0;
    bool copy = false;         // recv/send mode instead of splice
    bool upgrade = false;      // small-flow phase: small buffer, bulk mode later
    bool eof = false;          // `from` returned EOF
    bool done = false;         // shutdown(to, SHUT_WR) issued
    bool src_empty = false;    // `from` returned EAGAIN with nothing buffered (or a short read)
    bool hup_seen = false;     // an event reported EPOLLRDHUP/HUP/ERR for `from`
    bool dst_blocked = false;  // `to` returned EAGAIN
    UniqueFd pipe_r, pipe_w;
    size_t in_pipe = 0;
    std::unique_ptr<char[]> buf;
    size_t buf_cap = 0, buf_off = 0, buf_len = 0;
    uint64_t bytes = 0;  // delivered to `to`
    size_t pending() const { return copy ? buf_len - buf_off : in_pipe; }
  };

  void pump(int dir);
  // Each returns bytes moved, 0 for EOF (fill only), or -errno.
  ssize_t fill(Direction& d);
  ssize_t drain(Direction& d);
  bool to_copy_mode(Direction& d);
  // Returns d's (empty) buffer to the pool; without a pool frees it when
  // `always` (the direction is over or changes mode), else keeps it.
  void drop_buffer(Direction& d, bool always);
  void fail(Direction& d, bool reading, int err);
  void finish(State s);

  Options options_;
  UniqueFd socks_[2];
  Direction dirs_[2];
  State state_ = State::Running;
  unsigned resume_mask_ = 0;
  std::string error_;
  Culprit culprit_ = Culprit::None;
};

}  // namespace connredir::proxy
