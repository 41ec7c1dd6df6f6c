#include <gtest/gtest.h>

#include <random>
#include <set>

#include "test_util.hpp"

namespace connredir::control {
namespace {
using namespace testing;

Index build(const std::vector<IndexFilter>& fs) {
  auto r = build_index(fs);
  EXPECT_TRUE(r) << (r ? "" : r.error().message);
  return r.value_or(Index{});
}

IndexKey key(const std::string& s) { return index_keys(cidr(s)).front(); }

std::vector<uint32_t> lookup(const Index& idx, const std::string& addr) {
  return index_lookup(idx, fam_of(addr), ip_of(addr));
}

TEST(IndexKeys, LpmKeyLayout) {
  auto k = to_lpm_key(key("10.1.0.0/16"));
  EXPECT_EQ(k.prefixlen, 8u + 16);
  EXPECT_EQ(k.family, CONNREDIR_LPM_FAM_V4);
  EXPECT_EQ(k.addr[0], 10);
  EXPECT_EQ(k.addr[1], 1);
  for (int i = 2; i < 16; ++i) EXPECT_EQ(k.addr[i], 0) << i;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(k.reserved[i], 0);
  auto back = from_lpm_key(k);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, key("10.1.0.0/16"));
  EXPECT_EQ(back->to_string(), "10.1.0.0/16");

  auto k6 = to_lpm_key(key("2001:db8::/32"));
  EXPECT_EQ(k6.prefixlen, 8u + 32);
  EXPECT_EQ(k6.family, CONNREDIR_LPM_FAM_V6);
  EXPECT_EQ(k6.addr[0], 0x20);
  EXPECT_EQ(k6.addr[3], 0xb8);

  auto any = index_keys(Prefix::any());
  ASSERT_EQ(any.size(), 2u);
  EXPECT_EQ(to_lpm_key(any[0]).prefixlen, 8u);
  EXPECT_EQ(to_lpm_key(any[1]).prefixlen, 8u);
  EXPECT_EQ(any[0].fam, CONNREDIR_LPM_FAM_V4);
  EXPECT_EQ(any[1].fam, CONNREDIR_LPM_FAM_V6);

  connredir_lpm_key bad{};
  bad.family = 5;
  bad.prefixlen = 8;
  EXPECT_FALSE(from_lpm_key(bad));
  bad.family = CONNREDIR_LPM_FAM_V4;
  bad.prefixlen = 8 + 33;
  EXPECT_FALSE(from_lpm_key(bad));
}

TEST(Index, Empty) {
  auto idx = build({});
  EXPECT_TRUE(idx.empty());
  EXPECT_TRUE(lookup(idx, "10.0.0.1").empty());
}

TEST(Index, NestedPrefixes) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8"), filt(2, "10.1.0.0/16"),
                                 filt(3, "10.1.2.0/24"), filt(4, "10.1.2.3")};
  auto idx = build(fs);
  ASSERT_EQ(idx.size(), 4u);
  EXPECT_EQ(idx[key("10.0.0.0/8")], (std::vector<uint32_t>{1}));
  EXPECT_EQ(idx[key("10.1.0.0/16")], (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(idx[key("10.1.2.0/24")], (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(idx[key("10.1.2.3/32")], (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(lookup(idx, "10.9.9.9"), (std::vector<uint32_t>{1}));
  EXPECT_EQ(lookup(idx, "10.1.9.9"), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(lookup(idx, "10.1.2.4"), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(lookup(idx, "10.1.2.3"), (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_TRUE(lookup(idx, "11.0.0.1").empty());
}

TEST(Index, SiblingsDoNotMix) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8"), filt(2, "10.1.0.0/16"),
                                 filt(3, "10.2.0.0/16"), filt(4, "10.1.128.0/17")};
  auto idx = build(fs);
  EXPECT_EQ(idx[key("10.1.0.0/16")], (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(idx[key("10.2.0.0/16")], (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(idx[key("10.1.128.0/17")], (std::vector<uint32_t>{1, 2, 4}));
  EXPECT_EQ(lookup(idx, "10.1.1.1"), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(lookup(idx, "10.1.200.1"), (std::vector<uint32_t>{1, 2, 4}));
  EXPECT_EQ(lookup(idx, "10.2.200.1"), (std::vector<uint32_t>{1, 3}));
}

TEST(Index, FamiliesAreSeparate) {
  // ::/0 and 0.0.0.0/0 are different families; v4-mapped IPv4 must not leak
  // into IPv6 prefixes.
  std::vector<IndexFilter> fs = {filt(1, "0.0.0.0/0"), filt(2, "::/0"), filt(3, "::/96")};
  auto idx = build(fs);
  EXPECT_EQ(lookup(idx, "10.0.0.1"), (std::vector<uint32_t>{1}));
  EXPECT_EQ(lookup(idx, "2001:db8::1"), (std::vector<uint32_t>{2}));
  EXPECT_EQ(lookup(idx, "::5"), (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(lookup(idx, "::ffff:10.0.0.1"), (std::vector<uint32_t>{1}));  // parsed as IPv4
}

TEST(Index, FamilyAnyLivesAtBothRoots) {
  std::vector<IndexFilter> fs = {filt(1, "any"), filt(2, "10.0.0.0/8"), filt(3, "2001:db8::/32")};
  auto idx = build(fs);
  ASSERT_EQ(idx.size(), 4u);
  EXPECT_EQ(idx[key("0.0.0.0/0")], (std::vector<uint32_t>{1}));
  EXPECT_EQ(idx[key("::/0")], (std::vector<uint32_t>{1}));
  EXPECT_EQ(lookup(idx, "10.0.0.1"), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(lookup(idx, "192.0.2.1"), (std::vector<uint32_t>{1}));
  EXPECT_EQ(lookup(idx, "2001:db8::1"), (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(lookup(idx, "fe80::1"), (std::vector<uint32_t>{1}));
}

TEST(Index, OnlyV4FiltersLeaveV6Unindexed) {
  auto idx = build({filt(1, "10.0.0.0/8")});
  EXPECT_TRUE(lookup(idx, "2001:db8::1").empty());
}

TEST(Index, OrderWeightThenSeq) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8", 5, 10), filt(2, "10.1.0.0/16", 9, 20),
                                 filt(3, "any", 5, 5), filt(4, "10.1.0.0/16", 5, 30),
                                 filt(5, "10.0.0.0/8", 0, 1)};
  auto idx = build(fs);
  // weight 9 first; among weight 5: seq 5, 10, 30; then weight 0.
  EXPECT_EQ(lookup(idx, "10.1.0.1"), (std::vector<uint32_t>{2, 3, 1, 4, 5}));
  EXPECT_EQ(lookup(idx, "10.2.0.1"), (std::vector<uint32_t>{3, 1, 5}));
}

TEST(Index, TiesBySeqNotById) {
  // A filter re-created later (higher seq) but with a lower id sorts after.
  std::vector<IndexFilter> fs = {filt(7, "10.0.0.0/8", 1, 1), filt(3, "10.0.0.0/8", 1, 2)};
  EXPECT_EQ(lookup(build(fs), "10.0.0.1"), (std::vector<uint32_t>{7, 3}));
}

TEST(Index, SamePrefixTwice) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8"), filt(2, "10.0.0.0/8")};
  auto idx = build(fs);
  ASSERT_EQ(idx.size(), 1u);
  EXPECT_EQ(idx[key("10.0.0.0/8")], (std::vector<uint32_t>{1, 2}));
}

TEST(IndexPlanner, AddWritesExactlyTheAffectedEntries) {
  std::vector<IndexFilter> fs = {filt(1, "10.1.0.0/16"), filt(2, "10.2.0.0/16"),
                                 filt(3, "10.1.2.0/24"), filt(4, "192.168.0.0/16"),
                                 filt(5, "2001:db8::/32")};
  IndexPlanner p(fs);
  auto plan = p.plan_add(filt(6, "10.0.0.0/8"));
  ASSERT_TRUE(plan);
  std::set<IndexKey> keys;
  for (const auto& w : *plan) keys.insert(w.key);
  EXPECT_EQ(keys, (std::set<IndexKey>{key("10.0.0.0/8"), key("10.1.0.0/16"), key("10.2.0.0/16"),
                                      key("10.1.2.0/24")}));
  for (const auto& w : *plan) EXPECT_FALSE(w.erase());
}

TEST(IndexPlanner, AddOfExistingPrefixDoesNotCreate) {
  IndexPlanner p(std::vector<IndexFilter>{filt(1, "10.0.0.0/8")});
  auto plan = p.plan_add(filt(2, "10.0.0.0/8"));
  ASSERT_TRUE(plan);
  ASSERT_EQ(plan->size(), 1u);
  EXPECT_EQ((*plan)[0].ids, (std::vector<uint32_t>{1, 2}));
}

TEST(IndexPlanner, AddAnyTouchesEveryEntry) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8"), filt(2, "2001:db8::/32"),
                                 filt(3, "1.2.3.4")};
  IndexPlanner p(fs);
  auto plan = p.plan_add(filt(4, "any"));
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->size(), 5u);  // 3 existing + both roots
}

TEST(IndexPlanner, Delete) {
  std::vector<IndexFilter> fs = {filt(1, "10.0.0.0/8"), filt(2, "10.1.0.0/16"),
                                 filt(3, "10.1.0.0/16"), filt(4, "10.1.2.0/24")};
  IndexPlanner p(fs);
  Index idx = p.build();
  // Removing the /8 rewrites all three entries and deletes the /8.
  auto plan = p.plan_remove(1);
  ASSERT_TRUE(plan);
  ASSERT_EQ(plan->size(), 3u);
  apply_writes(idx, *plan);
  p.remove(1);
  EXPECT_EQ(idx, p.build());
  EXPECT_FALSE(idx.count(key("10.0.0.0/8")));
  EXPECT_EQ(idx[key("10.1.2.0/24")], (std::vector<uint32_t>{2, 3, 4}));
  // Removing one of two filters at a prefix keeps the prefix.
  plan = p.plan_remove(2);
  ASSERT_TRUE(plan);
  apply_writes(idx, *plan);
  p.remove(2);
  EXPECT_EQ(idx, p.build());
  EXPECT_EQ(idx[key("10.1.0.0/16")], (std::vector<uint32_t>{3}));
  // Unknown id.
  auto bad = p.plan_remove(99);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ENOENT);
  // Down to nothing.
  for (uint32_t id : {3u, 4u}) {
    plan = p.plan_remove(id);
    ASSERT_TRUE(plan);
    apply_writes(idx, *plan);
    p.remove(id);
  }
  EXPECT_TRUE(idx.empty());
}

TEST(IndexPlanner, DeleteAny) {
  std::vector<IndexFilter> fs = {filt(1, "any"), filt(2, "10.0.0.0/8")};
  IndexPlanner p(fs);
  Index idx = p.build();
  auto plan = p.plan_remove(1);
  ASSERT_TRUE(plan);
  apply_writes(idx, *plan);
  p.remove(1);
  EXPECT_EQ(idx, p.build());
  EXPECT_EQ(idx.size(), 1u);
  EXPECT_EQ(lookup(idx, "10.0.0.1"), (std::vector<uint32_t>{2}));
}

TEST(IndexPlanner, DuplicateIdRefused) {
  IndexPlanner p(std::vector<IndexFilter>{filt(1, "10.0.0.0/8")});
  auto r = p.plan_add(filt(1, "11.0.0.0/8"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EEXIST);
}

TEST(IndexPlanner, OverflowAtTheLimitIsRefused) {
  std::vector<IndexFilter> fs;
  for (uint32_t i = 1; i <= CONNREDIR_CANDIDATES_MAX; ++i) fs.push_back(filt(i, "10.0.0.0/8"));
  IndexPlanner p(fs);
  EXPECT_TRUE(build_index(fs));  // exactly at the limit is fine
  auto r = p.plan_add(filt(100, "10.0.0.0/8"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, E2BIG);
  EXPECT_NE(r.error().message.find("10.0.0.0/8"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(std::to_string(CONNREDIR_CANDIDATES_MAX)), std::string::npos);
  // A disjoint prefix is still fine.
  EXPECT_TRUE(p.plan_add(filt(101, "11.0.0.0/8")));
}

TEST(IndexPlanner, OverflowInADescendantNamesIt) {
  // 31 at /24 + one at /16 = 32 at the /24; a further /8 overflows the /24.
  std::vector<IndexFilter> fs;
  for (uint32_t i = 1; i <= CONNREDIR_CANDIDATES_MAX - 1; ++i) fs.push_back(filt(i, "10.1.2.0/24"));
  fs.push_back(filt(50, "10.1.0.0/16"));
  IndexPlanner p(fs);
  auto r = p.plan_add(filt(60, "10.0.0.0/8"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("10.1.2.0/24"), std::string::npos) << r.error().message;
  // A new longer prefix below the full one overflows at itself.
  auto s = p.plan_add(filt(61, "10.1.2.128/25"));
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("10.1.2.128/25"), std::string::npos) << s.error().message;
  // A sibling /16 is fine.
  EXPECT_TRUE(p.plan_add(filt(62, "10.2.0.0/16")));
  auto full = fs;
  full.push_back(filt(60, "10.0.0.0/8"));
  auto b = build_index(full);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, E2BIG);
}

TEST(IndexDiff, Basics) {
  Index a = build({filt(1, "10.0.0.0/8"), filt(2, "10.1.0.0/16")});
  Index b = build({filt(1, "10.0.0.0/8"), filt(3, "11.0.0.0/8")});
  auto d = index_diff(a, b);
  Index c = a;
  apply_writes(c, d);
  EXPECT_EQ(c, b);
  EXPECT_TRUE(index_diff(b, b).empty());
}

// ---- randomized: incremental index == full build == brute-force classifier --

struct Gen {
  std::mt19937_64 rng;
  explicit Gen(uint64_t seed) : rng(seed) {}
  uint64_t u(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); }

  // Addresses from a few clusters so that prefixes nest and collide a lot.
  std::pair<uint8_t, std::array<uint8_t, 16>> address() {
    std::array<uint8_t, 16> a{};
    if (u(3) != 0) {
      a[10] = a[11] = 0xff;
      static const uint8_t firsts[] = {10, 10, 10, 192, 172, 1};
      a[12] = firsts[u(6)];
      a[13] = static_cast<uint8_t>(u(4));
      a[14] = static_cast<uint8_t>(u(3) == 0 ? u(256) : u(4));
      a[15] = static_cast<uint8_t>(u(256));
      return {CONNREDIR_AF_INET, a};
    }
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = static_cast<uint8_t>(0xb8 + u(2));
    a[4] = static_cast<uint8_t>(u(3));
    for (int i = 5; i < 16; ++i) a[i] = static_cast<uint8_t>(u(4) == 0 ? u(256) : 0);
    a[15] = static_cast<uint8_t>(u(256));
    return {CONNREDIR_AF_INET6, a};
  }

  Prefix prefix() {
    if (u(200) == 0) return Prefix::any();
    auto [fam, a] = address();
    int bits = fam == CONNREDIR_AF_INET ? 32 : 128;
    int len;
    // Mostly long prefixes; some short ones.
    switch (u(6)) {
      case 0:
        len = static_cast<int>(u(bits / 4 + 1));
        break;
      case 1:
        len = bits;
        break;
      default:
        len = bits / 4 + static_cast<int>(u(bits - bits / 4 + 1));
    }
    Prefix p{fam, static_cast<uint8_t>(len), a};
    int off = fam == CONNREDIR_AF_INET ? 12 : 0;
    for (int i = len; i < bits; ++i)
      p.addr[off + i / 8] &= static_cast<uint8_t>(~(0x80 >> (i % 8)));
    return p;
  }
};

void check_against_brute_force(Gen& g, const Index& idx, const std::vector<IndexFilter>& live,
                               int probes) {
  for (int i = 0; i < probes; ++i) {
    auto [fam, ip] = g.address();
    auto got = index_lookup(idx, fam, ip);
    auto want = brute_force(live, fam, ip);
    ASSERT_EQ(got, want) << "address family " << int(fam) << " probe " << i;
  }
  // Also probe at every filter's own network address.
  for (const auto& f : live) {
    if (f.dst.family == 0) continue;
    ASSERT_EQ(index_lookup(idx, f.dst.family, f.dst.addr),
              brute_force(live, f.dst.family, f.dst.addr))
        << f.dst.to_string();
  }
}

class RandomIndex : public ::testing::TestWithParam<uint64_t> {};

TEST_P(RandomIndex, IncrementalMatchesBuildAndBruteForce) {
  Gen g(GetParam());
  IndexPlanner planner;
  Index idx;
  std::vector<IndexFilter> live;
  uint32_t next_id = 1;
  uint64_t seq = 1;
  int refused = 0, added = 0, removed = 0;
  for (int step = 0; step < 4000; ++step) {
    bool remove = !live.empty() && g.u(4) == 0;
    if (remove) {
      size_t i = g.u(live.size());
      auto plan = planner.plan_remove(live[i].id);
      ASSERT_TRUE(plan);
      apply_writes(idx, *plan);
      planner.remove(live[i].id);
      live.erase(live.begin() + static_cast<long>(i));
      ++removed;
    } else {
      IndexFilter f{next_id++, static_cast<uint32_t>(g.u(4)), seq++, g.prefix()};
      auto plan = planner.plan_add(f);
      if (!plan) {
        ASSERT_EQ(plan.error().code, E2BIG) << plan.error().message;
        // The refusal must be right: the full build with f overflows
        // (checked on a sample; a full build per refusal is slow).
        if (refused++ % 8 == 0) {
          auto with = live;
          with.push_back(f);
          ASSERT_FALSE(build_index(with)) << "refused but fits: " << f.dst.to_string();
        }
        continue;
      }
      // Plans only name entries whose value changes.
      for (const auto& w : *plan) {
        auto it = idx.find(w.key);
        ASSERT_TRUE(it == idx.end() || it->second != w.ids);
      }
      apply_writes(idx, *plan);
      planner.add(f);
      live.push_back(f);
      ++added;
    }
    for (const auto& [k, ids] : idx) ASSERT_LE(ids.size(), size_t{CONNREDIR_CANDIDATES_MAX});
    if (step % 250 == 0 || step == 3999) {
      auto full = build_index(live);
      ASSERT_TRUE(full) << full.error().message;
      ASSERT_EQ(idx, *full) << "step " << step;
      ASSERT_EQ(idx, planner.build());
      check_against_brute_force(g, idx, live, 2000);
    }
  }
  EXPECT_GT(added, 1000);
  EXPECT_GT(removed, 500);
  RecordProperty("refused", refused);
}

INSTANTIATE_TEST_SUITE_P(Seeds, RandomIndex, ::testing::Values(1, 2, 3, 42, 1234567));

TEST(RandomIndex, ManyFiltersWithoutOverflow) {
  // Thousands of disjoint-ish host and /24 filters: nothing refused, lookups
  // exact.
  Gen g(99);
  std::vector<IndexFilter> fs;
  std::set<Prefix> used;
  uint32_t id = 1;
  while (fs.size() < 5000) {
    std::array<uint8_t, 16> a{};
    a[10] = a[11] = 0xff;
    a[12] = 100;
    a[13] = static_cast<uint8_t>(g.u(256));
    a[14] = static_cast<uint8_t>(g.u(256));
    a[15] = static_cast<uint8_t>(g.u(256));
    Prefix p{CONNREDIR_AF_INET, static_cast<uint8_t>(g.u(2) ? 32 : 24), a};
    if (p.len == 24) p.addr[15] = 0;
    fs.push_back(IndexFilter{id, static_cast<uint32_t>(g.u(3)), id, p});
    ++id;
  }
  fs.push_back(IndexFilter{id, 0, id, *parse_cidr("100.0.0.0/8")});
  auto idx = build_index(fs);
  ASSERT_TRUE(idx) << idx.error().message;
  for (int i = 0; i < 20000; ++i) {
    std::array<uint8_t, 16> a{};
    a[10] = a[11] = 0xff;
    a[12] = static_cast<uint8_t>(g.u(2) ? 100 : 101);
    a[13] = static_cast<uint8_t>(g.u(256));
    a[14] = static_cast<uint8_t>(g.u(256));
    a[15] = static_cast<uint8_t>(g.u(256));
    ASSERT_EQ(index_lookup(*idx, CONNREDIR_AF_INET, a), brute_force(fs, CONNREDIR_AF_INET, a));
  }
  for (const auto& f : fs)
    ASSERT_EQ(index_lookup(*idx, f.dst.family, f.dst.addr),
              brute_force(fs, f.dst.family, f.dst.addr));
}

}  // namespace
}  // namespace connredir::control
