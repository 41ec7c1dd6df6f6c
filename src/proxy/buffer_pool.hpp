// BufferPool: relay buffers shared by every flow of one proxy (one thread).
// A direction holds a buffer only while bytes wait in it, and gives it back
// once everything was delivered, so an idle flow costs no buffer memory
// (measured: 10 000 idle relayed flows held 86 MB of touched 16 KiB buffers
// before; haproxy releases empty buffers the same way). Returned buffers are
// kept per size for reuse, at most `keep` of each, so a busy flow does not
// call malloc and free every round.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace connredir::proxy {

class BufferPool {
 public:
  explicit BufferPool(size_t keep = 256) : keep_(keep) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of exactly `size` bytes (contents undefined).
  std::unique_ptr<char[]> acquire(size_t size);
  // Takes `buf` (of `size` bytes) back; frees it if `keep` of that size wait.
  void release(std::unique_ptr<char[]> buf, size_t size);
  // Buffers waiting for reuse, all sizes.
  size_t idle() const;

 private:
  size_t keep_;
  std::vector<std::pair<size_t, std::vector<std::unique_ptr<char[]>>>> free_;  // by size
};

}  // namespace connredir::proxy
