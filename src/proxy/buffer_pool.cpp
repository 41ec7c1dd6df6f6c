#include "buffer_pool.hpp"

namespace connredir::proxy {

std::unique_ptr<char[]> BufferPool::acquire(size_t size) {
  for (auto& [sz, list] : free_) {
    if (sz == size && !list.empty()) {
      auto b = std::move(list.back());
      list.pop_back();
      return b;
    }
  }
  return std::unique_ptr<char[]>(new char[size]);
}

void BufferPool::release(std::unique_ptr<char[]> buf, size_t size) {
  if (!buf) return;
  for (auto& [sz, list] : free_) {
    if (sz == size) {
      if (list.size() < keep_) list.push_back(std::move(buf));
      return;
    }
  }
  if (keep_ == 0) return;
  free_.emplace_back(size, std::vector<std::unique_ptr<char[]>>{});
  free_.back().second.push_back(std::move(buf));
}

size_t BufferPool::idle() const {
  size_t n = 0;
  for (const auto& [sz, list] : free_) n += list.size();
  return n;
}

}  // namespace connredir::proxy
