// Bulk filter loading: the file formats and Control::load_filters (index
// computed once, written in the consistency-preserving order, rolled back on
// failure, equal to what one-by-one adds produce).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "test_util.hpp"

namespace connredir::control {
namespace {
using namespace testing;

Result<CgroupRef> fake_resolve(std::string_view dir) {
  if (dir == "/missing") return fail(ENOENT, "no such cgroup /missing");
  return CgroupRef{1000 + dir.size(), 3, std::string(dir)};
}

TEST(FilterFile, TextAndJsonLines) {
  auto specs = parse_filter_file(
      "# comment\n"
      "\n"
      "callout=a dst=10.0.0.0/8 port=8000-8080 proto=tcp weight=7 app-uid=1000\n"
      "{\"callout\":\"b\",\"dst\":\"2001:db8::/32\",\"port\":443,\"weight\":3,"
      "\"app_cgroup\":\"/cg/x\",\"context\":\"with spaces\"}\n"
      "  callout=a   \r\n",
      &fake_resolve);
  ASSERT_TRUE(specs) << specs.error().message;
  ASSERT_EQ(specs->size(), 3u);
  const auto& a = (*specs)[0];
  EXPECT_EQ(a.callout, "a");
  EXPECT_EQ(a.dst, cidr("10.0.0.0/8"));
  EXPECT_EQ(a.ports.lo, 8000);
  EXPECT_EQ(a.ports.hi, 8080);
  EXPECT_EQ(a.proto, kProtoTcp);
  EXPECT_EQ(a.weight, 7u);
  EXPECT_EQ(a.app_uid, 1000u);
  EXPECT_FALSE(a.app_cgroup);
  const auto& b = (*specs)[1];
  EXPECT_EQ(b.dst, cidr("2001:db8::/32"));
  EXPECT_EQ(b.ports.lo, 443);
  EXPECT_EQ(b.ports.hi, 443);
  ASSERT_TRUE(b.app_cgroup);
  EXPECT_EQ(b.app_cgroup->id, 1000u + 5);
  EXPECT_EQ(b.context, "with spaces");
  EXPECT_EQ((*specs)[2].dst, Prefix::any());
  EXPECT_TRUE((*specs)[2].ports.any());
}

TEST(FilterFile, ErrorsNameTheLine) {
  struct Case {
    const char* text;
    const char* needle;
  };
  for (const auto& c :
       {Case{"callout=a\ncallout=a dst=10.1.2.3/8\n", "line 2:"},
        Case{"callout=a colour=red\n", "unknown field 'colour'"},
        Case{"callout=a port\n", "not KEY=VALUE"}, Case{"dst=10.0.0.0/8\n", "callout is required"},
        Case{"{\"callout\":\"a\",\"weight\":-1}\n", "non-negative"},
        Case{"{\"callout\":\"a\"\n", "not a JSON object"},
        Case{"\n\n\ncallout=a app-cgroup=/missing\n", "line 4: no such cgroup"},
        Case{"callout=a port=0\n", "line 1:"}}) {
    auto r = parse_filter_file(c.text, &fake_resolve);
    ASSERT_FALSE(r) << c.text;
    EXPECT_NE(r.error().message.find(c.needle), std::string::npos)
        << c.text << " -> " << r.error().message;
  }
}

class LoadTest : public ::testing::Test {
 protected:
  MemoryMapStore store;
  Control ctl{store};

  void SetUp() override {
    for (const char* name : {"a", "b"}) {
      CalloutSpec s;
      s.name = name;
      s.proxy4 = *Address::parse("127.0.0.1:9000");
      ASSERT_TRUE(ctl.add_callout(s));
    }
  }

  static FilterSpec spec(const std::string& callout, const std::string& dst, uint32_t weight = 0) {
    FilterSpec s;
    s.callout = callout;
    s.dst = cidr(dst);
    s.weight = weight;
    return s;
  }

  Index kernel_index() {
    Index idx;
    auto keys = store.keys(MapId::FilterIndex);
    for (const auto& kb : *keys) {
      connredir_lpm_key k;
      std::memcpy(&k, kb.data(), sizeof k);
      connredir_candidates c{};
      EXPECT_TRUE(*store.lookup(MapId::FilterIndex, kb.data(), &c));
      idx[*from_lpm_key(k)] = std::vector<uint32_t>(c.ids, c.ids + c.count);
    }
    return idx;
  }
};

TEST_F(LoadTest, SameResultAsOneByOne) {
  std::vector<FilterSpec> specs = {spec("a", "10.0.0.0/8", 5), spec("b", "10.1.0.0/16", 9),
                                   spec("a", "any", 1), spec("b", "2001:db8::/32"),
                                   spec("a", "10.1.2.3", 5)};
  MemoryMapStore other;
  Control one(other);
  for (const char* name : {"a", "b"}) {
    CalloutSpec s;
    s.name = name;
    s.proxy4 = *Address::parse("127.0.0.1:9000");
    ASSERT_TRUE(one.add_callout(s));
  }
  for (const auto& s : specs) ASSERT_TRUE(one.add_filter(s));

  auto r = ctl.load_filters(specs, false);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->added, 5u);
  EXPECT_EQ(r->first_id, 1u);
  EXPECT_EQ(r->last_id, 5u);
  EXPECT_FALSE(r->warnings.empty());  // no IPv6 proxy for 2001:db8::/32 and "any"
  EXPECT_EQ(kernel_index(), [&] {
    Index idx;
    auto keys = other.keys(MapId::FilterIndex);
    for (const auto& kb : *keys) {
      connredir_lpm_key k;
      std::memcpy(&k, kb.data(), sizeof k);
      connredir_candidates c{};
      EXPECT_TRUE(*other.lookup(MapId::FilterIndex, kb.data(), &c));
      idx[*from_lpm_key(k)] = std::vector<uint32_t>(c.ids, c.ids + c.count);
    }
    return idx;
  }());
  auto a = ctl.list_filters();
  auto b = one.list_filters();
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].id, (*b)[i].id);
    EXPECT_EQ((*a)[i].seq, (*b)[i].seq);
    EXPECT_EQ((*a)[i].dst, (*b)[i].dst);
  }
  EXPECT_TRUE(ctl.check_index()->empty());
}

TEST_F(LoadTest, WritesFiltersBeforeIndexAndUpdatesBeforeErases) {
  ASSERT_TRUE(ctl.add_filter(spec("a", "10.0.0.0/8")));
  ASSERT_TRUE(ctl.add_filter(spec("a", "192.168.0.0/16")));
  store.log.clear();
  auto r =
      ctl.load_filters(std::vector<FilterSpec>{spec("b", "10.2.0.0/16"), spec("b", "::/0")}, true);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->removed, 2u);
  EXPECT_EQ(r->first_id, 3u);  // ids never reused while old entries exist
  // Order: filter entries, index updates, index erases, old filter erases.
  std::vector<std::string> phases;
  for (const auto& l : store.log)
    if (phases.empty() || phases.back() != l) phases.push_back(l);
  ASSERT_GE(phases.size(), 3u);
  EXPECT_EQ(phases.front(), "update filters");
  EXPECT_EQ(phases.back(), "erase filters");
  size_t first_index = store.log.size();
  for (size_t i = 0; i < store.log.size(); ++i) {
    if (store.log[i].find("filter_index") != std::string::npos && first_index == store.log.size())
      first_index = i;
  }
  for (size_t i = first_index; i < store.log.size(); ++i)
    EXPECT_NE(store.log[i], "update filters") << i;
  bool erased = false;
  for (const auto& l : store.log) {
    if (l == "erase filter_index") erased = true;
    if (erased) {
      EXPECT_NE(l, "update filter_index");
    }
  }
  EXPECT_TRUE(erased);
  auto list = ctl.list_filters();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].id, 3u);
  EXPECT_TRUE(ctl.check_index()->empty());
}

TEST_F(LoadTest, RefusesBeforeWritingAnything) {
  ASSERT_TRUE(ctl.add_filter(spec("a", "10.0.0.0/8")));
  store.log.clear();
  auto unknown =
      ctl.load_filters(std::vector<FilterSpec>{spec("a", "10.1.0.0/16"), spec("zz", "any")}, false);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ENOENT);
  EXPECT_NE(unknown.error().message.find("filter 2:"), std::string::npos);
  // 33 filters containing 10.0.0.0/24.
  std::vector<FilterSpec> many;
  for (int i = 0; i < CONNREDIR_CANDIDATES_MAX; ++i) many.push_back(spec("a", "10.0.0.0/24"));
  auto big = ctl.load_filters(many, false);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, E2BIG);
  EXPECT_NE(big.error().message.find("10.0.0.0/24"), std::string::npos);
  for (const auto& l : store.log) EXPECT_EQ(l.rfind("update", 0), std::string::npos) << l;
  EXPECT_EQ(ctl.list_filters()->size(), 1u);
}

TEST_F(LoadTest, RollsBackOnMapFailure) {
  ASSERT_TRUE(ctl.add_filter(spec("a", "10.0.0.0/8")));
  auto before = kernel_index();
  for (int n = 1; n <= 6; ++n) {
    store.fail_after = n;
    auto r =
        ctl.load_filters(std::vector<FilterSpec>{spec("b", "10.1.0.0/16"), spec("b", "10.2.0.0/16"),
                                                 spec("b", "10.1.1.0/24")},
                         false);
    store.fail_after = 0;
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(kernel_index(), before) << n;
    EXPECT_EQ(ctl.list_filters()->size(), 1u) << n;
  }
}

TEST_F(LoadTest, ManyFiltersOneIndexBuild) {
  std::vector<FilterSpec> specs;
  for (uint32_t i = 0; i < 20000; ++i) {
    auto s = spec("a", fmt::format("10.{}.{}.0/24", (i >> 8) & 255, i & 255));
    s.ports = PortRange{static_cast<uint16_t>(1000 + i % 100), static_cast<uint16_t>(2000)};
    specs.push_back(s);
  }
  auto r = ctl.load_filters(specs, false);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->added, 20000u);
  EXPECT_EQ(r->index_writes, 20000u);
  EXPECT_TRUE(ctl.check_index()->empty());
}

}  // namespace
}  // namespace connredir::control
