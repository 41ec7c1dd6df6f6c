// Helpers shared by the control-plane tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "connredir/control.hpp"

namespace connredir::control::testing {

inline Prefix cidr(const std::string& s) {
  if (s == "any") return Prefix::any();
  auto p = parse_cidr(s);
  EXPECT_TRUE(p.has_value()) << s << ": " << (p ? "" : p.error().message);
  return p.value_or(Prefix{});
}

inline IndexFilter filt(uint32_t id, const std::string& dst, uint32_t weight = 0,
                        uint64_t seq = 0) {
  return IndexFilter{id, weight, seq ? seq : id, cidr(dst)};
}

// The definition the index must agree with: every filter containing the
// address, weight descending, seq ascending, id ascending.
inline std::vector<uint32_t> brute_force(const std::vector<IndexFilter>& fs, uint8_t family,
                                         const std::array<uint8_t, 16>& ip) {
  std::vector<const IndexFilter*> hit;
  for (const auto& f : fs)
    if (f.dst.contains_address(family, ip)) hit.push_back(&f);
  std::sort(hit.begin(), hit.end(), [](auto* a, auto* b) {
    if (a->weight != b->weight) return a->weight > b->weight;
    if (a->seq != b->seq) return a->seq < b->seq;
    return a->id < b->id;
  });
  std::vector<uint32_t> ids;
  for (auto* f : hit) ids.push_back(f->id);
  return ids;
}

// Apply planner writes to an in-memory index.
inline void apply_writes(Index& idx, const std::vector<IndexWrite>& ws) {
  for (const auto& w : ws) {
    if (w.erase())
      idx.erase(w.key);
    else
      idx[w.key] = w.ids;
  }
}

inline std::array<uint8_t, 16> ip_of(const std::string& s) { return cidr(s).addr; }
inline uint8_t fam_of(const std::string& s) { return cidr(s).family; }

}  // namespace connredir::control::testing
