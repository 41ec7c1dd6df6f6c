#include "relay.hpp"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <string>

#include "connredir/error.hpp"

namespace connredir::proxy {

namespace {

// splice() moves at most what fits into the pipe; ask for more than any pipe
// holds so one call empties the socket's queue when the pipe has room.
constexpr size_t kSpliceChunk = size_t{1} << 20;
constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

void set_linger_zero(int fd) {
  if (fd < 0) return;
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  // Best effort: if it fails the peer sees a FIN instead of a RST, which
  // still ends its connection; nothing else could be done about it.
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

}  // namespace

const char* to_string(Side s) { return s == Side::Client ? "client" : "server"; }

Relay::Relay(UniqueFd client, UniqueFd server, const Options& options) : options_(options) {
  socks_[0] = std::move(client);
  socks_[1] = std::move(server);
  dirs_[kUp].from = 0;
  dirs_[kUp].to = 1;
  dirs_[kDown].from = 1;
  dirs_[kDown].to = 0;
  if (options_.copy_buffer == 0) options_.copy_buffer = 64 * 1024;
  if (options_.small_buffer == 0) options_.small_buffer = 16 * 1024;
  if (options_.budget == 0) options_.budget = 1;
  if (!options_.splice_fn) options_.splice_fn = &::splice;
  for (auto& d : dirs_) {
    d.upgrade = options_.splice_after > 0 &&
                (options_.splice || options_.copy_buffer > options_.small_buffer);
    d.copy = !options_.splice || d.upgrade;
  }
}

Relay::State Relay::on_event(Side side, uint32_t events) {
  if (state_ != State::Running) return state_;
  const int s = static_cast<int>(side);
  // Direction reading this socket, and the one writing to it.
  Direction& rd = dirs_[s == 0 ? kUp : kDown];
  Direction& wr = dirs_[s == 0 ? kDown : kUp];
  const bool err = (events & (EPOLLERR | EPOLLHUP)) != 0;
  if (events & EPOLLERR) {
    // A pending socket error (typically a reset): fail now, even when this
    // side would not be read any more because it already sent its EOF.
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (::getsockopt(socks_[s].get(), SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
    if (soerr != 0) {
      fail(rd, true, soerr);
      return state_;
    }
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
    rd.src_empty = false;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) rd.hup_seen = true;
    pump(s == 0 ? kUp : kDown);
  }
  if (state_ == State::Running && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
    wr.dst_blocked = false;
    // Writability only matters when something waits to be written (or an
    // error has to surface through the write path).
    if (wr.pending() > 0 || (err && !wr.done)) pump(s == 0 ? kDown : kUp);
  }
  return state_;
}

Relay::State Relay::resume() {
  const unsigned mask = std::exchange(resume_mask_, 0u);
  for (int dir = 0; dir < 2 && state_ == State::Running; ++dir) {
    if (mask & (1u << dir)) pump(dir);
  }
  return state_;
}

void Relay::pump(int dir) {
  Direction& d = dirs_[dir];
  resume_mask_ &= ~(1u << dir);
  for (unsigned round = 0; state_ == State::Running && !d.done; ++round) {
    if (round == options_.budget) {
      resume_mask_ |= 1u << dir;  // fairness: let other connections run
      return;
    }
    if (d.upgrade && d.bytes > options_.splice_after && d.pending() == 0) {
      // Past the small-flow phase with nothing buffered: bulk mode from now
      // on (splice, or recv/send through the large buffer fill() allocates).
      d.upgrade = false;
      d.copy = !options_.splice;
      drop_buffer(d, true);  // the next fill takes one of the bulk size
    }
    bool moved = false;
    const bool room = !d.copy || d.buf_len < d.buf_cap || !d.buf;
    if (!d.eof && !d.src_empty && room) {
      const ssize_t n = fill(d);
      if (n > 0) {
        moved = true;
      } else if (n == 0) {
        d.eof = true;
        moved = true;
      } else if (n == -EAGAIN) {
        // With data still in the pipe EAGAIN may mean "pipe full", not
        // "socket empty": retry after the pipe drains.
        if (d.pending() == 0) d.src_empty = true;
      } else if ((n == -EINVAL || n == -ENOSYS) && !d.copy) {
        if (!to_copy_mode(d)) return;
        continue;
      } else {
        fail(d, true, static_cast<int>(-n));
        return;
      }
    }
    if (d.pending() > 0 && !d.dst_blocked) {
      const ssize_t n = drain(d);
      if (n > 0) {
        d.bytes += static_cast<uint64_t>(n);
        moved = true;
      } else if (n == -EAGAIN) {
        d.dst_blocked = true;
      } else if ((n == -EINVAL || n == -ENOSYS) && !d.copy) {
        if (!to_copy_mode(d)) return;
        continue;
      } else {
        fail(d, false, n == 0 ? EPIPE : static_cast<int>(-n));
        return;
      }
    }
    if (d.eof && d.pending() == 0) {
      if (::shutdown(socks_[d.to].get(), SHUT_WR) != 0) {
        fail(d, false, errno);
        return;
      }
      d.done = true;
      d.pipe_r.reset();
      d.pipe_w.reset();
      drop_buffer(d, true);  // this direction is over
      if (dirs_[kUp].done && dirs_[kDown].done) finish(State::Done);
      return;
    }
    if (!moved) return;
  }
}

ssize_t Relay::fill(Direction& d) {
  const int from = socks_[d.from].get();
  if (d.copy) {
    if (!d.buf) {
      d.buf_cap =
          d.upgrade ? std::min(options_.small_buffer, options_.copy_buffer) : options_.copy_buffer;
      d.buf = options_.pool ? options_.pool->acquire(d.buf_cap)
                            : std::unique_ptr<char[]>(new char[d.buf_cap]);
    }
    if (d.buf_off == d.buf_len) d.buf_off = d.buf_len = 0;
    const size_t want = d.buf_cap - d.buf_len;
    const ssize_t n = ::recv(from, d.buf.get() + d.buf_len, want, 0);
    if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    d.buf_len += static_cast<size_t>(n);
    // A short read emptied the socket: the next data (or an EOF, reported
    // with EPOLLRDHUP) brings a new edge. Saves the recv that returns EAGAIN.
    if (n > 0 && static_cast<size_t>(n) < want && options_.short_read_empties && !d.hup_seen) {
      d.src_empty = true;
    }
    return n;
  }
  if (!d.pipe_w) {
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
      // Out of descriptors or pipe quota: copying still works.
      return -EINVAL;
    }
    d.pipe_r.reset(p[0]);
    d.pipe_w.reset(p[1]);
  }
  const ssize_t n =
      options_.splice_fn(from, nullptr, d.pipe_w.get(), nullptr, kSpliceChunk, kSpliceFlags);
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  d.in_pipe += static_cast<size_t>(n);
  return n;
}

ssize_t Relay::drain(Direction& d) {
  const int to = socks_[d.to].get();
  if (d.copy) {
    const ssize_t n = ::send(to, d.buf.get() + d.buf_off, d.buf_len - d.buf_off, MSG_NOSIGNAL);
    if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    d.buf_off += static_cast<size_t>(n);
    if (d.buf_off == d.buf_len) drop_buffer(d, false);  // all delivered
    return n;
  }
  const ssize_t n =
      options_.splice_fn(d.pipe_r.get(), nullptr, to, nullptr, d.in_pipe, kSpliceFlags);
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  d.in_pipe -= static_cast<size_t>(n);
  return n;
}

bool Relay::to_copy_mode(Direction& d) {
  d.copy = true;
  d.upgrade = false;
  d.buf_cap = std::max(options_.copy_buffer, d.in_pipe);
  d.buf.reset(new char[d.buf_cap]);
  d.buf_off = d.buf_len = 0;
  // Bytes already spliced into the pipe move to the buffer, in order.
  while (d.in_pipe > 0) {
    const ssize_t n = ::read(d.pipe_r.get(), d.buf.get() + d.buf_len, d.in_pipe);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      abort("relay: cannot recover data from the splice pipe (" + errno_text(n < 0 ? errno : EIO) +
                "); both connections were reset",
            true);
      return false;
    }
    d.buf_len += static_cast<size_t>(n);
    d.in_pipe -= static_cast<size_t>(n);
  }
  d.pipe_r.reset();
  d.pipe_w.reset();
  return true;
}

void Relay::fail(Direction& d, bool reading, int err) {
  const int bad = reading ? d.from : d.to;
  const int other = reading ? d.to : d.from;
  const char* who = to_string(static_cast<Side>(bad));
  culprit_ = static_cast<Side>(bad) == Side::Client ? Culprit::Client : Culprit::Server;
  // A reset arriving after the peer's FIN is reported as EPIPE by the kernel.
  if (err == ECONNRESET || (err == EPIPE && reading)) {
    error_ = std::string(who) + " reset the connection";
  } else if (err == EPIPE) {
    error_ = std::string(who) + " reset the connection while data was still being sent to it";
  } else {
    error_ = std::string(reading ? "reading from " : "writing to ") + who + ": " + errno_text(err);
  }
  set_linger_zero(socks_[other].get());
  finish(State::Failed);
}

void Relay::abort(const std::string& reason, bool reset) {
  if (state_ != State::Running) return;
  if (reset) {
    set_linger_zero(socks_[0].get());
    set_linger_zero(socks_[1].get());
  }
  error_ = reason;
  culprit_ = Culprit::Internal;
  finish(State::Failed);
}

void Relay::finish(State s) {
  state_ = s;
  resume_mask_ = 0;
  socks_[0].reset();
  socks_[1].reset();
  for (auto& d : dirs_) {
    d.pipe_r.reset();
    d.pipe_w.reset();
    drop_buffer(d, true);
  }
}

void Relay::drop_buffer(Direction& d, bool always) {
  d.buf_off = d.buf_len = 0;
  if (options_.pool) {
    options_.pool->release(std::move(d.buf), d.buf_cap);  // leaves d.buf empty
  } else if (always) {
    d.buf.reset();
  }  // else no pool: keep it for the flow's next bytes
}

}  // namespace connredir::proxy
