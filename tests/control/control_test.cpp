#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "test_util.hpp"

namespace connredir::control {
namespace {
using namespace testing;

class ControlTest : public ::testing::Test {
 protected:
  MemoryMapStore store;
  Control ctl{store};

  CalloutInfo add_callout(const std::string& name, const std::string& proxy = "127.0.0.1:9000",
                          std::optional<uint32_t> uid = std::nullopt,
                          std::optional<uint64_t> cgroup = std::nullopt) {
    CalloutSpec s;
    s.name = name;
    auto a = Address::parse(proxy);
    EXPECT_TRUE(a) << proxy;
    if (a->family == AF_INET)
      s.proxy4 = *a;
    else
      s.proxy6 = *a;
    s.proxy_uid = uid;
    if (cgroup) s.proxy_cgroup = CgroupRef{*cgroup, 2, "/x/y"};
    auto r = ctl.add_callout(s);
    EXPECT_TRUE(r) << r.error().message;
    return r.value_or(CalloutInfo{});
  }

  // An add that must be refused: its error (code 0 if it was accepted).
  Error refused_filter(const std::string& callout, const std::string& dst) {
    FilterSpec s;
    s.callout = callout;
    s.dst = cidr(dst);
    auto r = ctl.add_filter(s);
    EXPECT_FALSE(r) << dst;
    return r ? Error{} : r.error();
  }

  FilterAdded add_filter(const std::string& callout, const std::string& dst, uint32_t weight = 0) {
    FilterSpec s;
    s.callout = callout;
    s.dst = cidr(dst);
    s.weight = weight;
    auto r = ctl.add_filter(s);
    EXPECT_TRUE(r) << r.error().message;
    return r.value_or(FilterAdded{});
  }

  connredir_callout raw_callout(uint32_t id) {
    connredir_callout c{};
    EXPECT_TRUE(*store.lookup(MapId::Callouts, &id, &c));
    return c;
  }

  connredir_filter raw_filter(uint32_t id) {
    connredir_filter f{};
    EXPECT_TRUE(*store.lookup(MapId::Filters, &id, &f));
    return f;
  }

  // The kernel index content, decoded.
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

  std::map<std::pair<uint32_t, uint64_t>, uint32_t> principals() {
    std::map<std::pair<uint32_t, uint64_t>, uint32_t> out;
    auto list = ctl.list_principals();
    for (const auto& p : *list) out[{p.kind, p.id}] = p.flags;
    return out;
  }
};

TEST_F(ControlTest, CalloutAddStoresAbiLayout) {
  CalloutSpec s;
  s.name = "vendor-a";
  s.proxy4 = *Address::parse("127.0.0.1:9000");
  s.proxy6 = *Address::parse("[::1]:9001");
  s.proxy_uid = 1234;
  s.proxy_cgroup = CgroupRef{777, 3, "/a/b/c"};
  auto r = ctl.add_callout(s);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->id, 1u);
  auto c = raw_callout(1);
  EXPECT_EQ(c.id, 1u);
  // --on-proxy-down refuse is the default and is stored explicitly.
  EXPECT_EQ(c.flags, CONNREDIR_CALLOUT_F_USED | CONNREDIR_CALLOUT_F_PROXY4 |
                         CONNREDIR_CALLOUT_F_PROXY6 | CONNREDIR_CALLOUT_F_DOWN_REFUSE);
  EXPECT_EQ(c.proxy4.family, CONNREDIR_AF_INET);
  EXPECT_EQ(c.proxy4.addr[10], 0xff);
  EXPECT_EQ(c.proxy4.addr[12], 127);
  EXPECT_EQ(c.proxy4.port, htons(9000));
  EXPECT_EQ(c.proxy6.family, CONNREDIR_AF_INET6);
  EXPECT_EQ(c.proxy6.addr[15], 1);
  EXPECT_EQ(c.proxy6.port, htons(9001));
  EXPECT_EQ(c.proxy_uid, 1234u);
  EXPECT_EQ(c.proxy_cgroup, 777u);
  EXPECT_EQ(c.proxy_cgroup_level, 3u);
  EXPECT_STREQ(c.name, "vendor-a");
  auto list = ctl.list_callouts();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "vendor-a");
  EXPECT_EQ((*list)[0].proxy4->to_string(), "127.0.0.1:9000");
  EXPECT_EQ((*list)[0].proxy6->to_string(), "[::1]:9001");
}

TEST_F(ControlTest, CalloutValidation) {
  CalloutSpec s;
  s.name = "x";
  auto r = ctl.add_callout(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find("--proxy"), std::string::npos);
  s.proxy4 = *Address::parse("[::1]:80");
  EXPECT_FALSE(ctl.add_callout(s));
  s.proxy4 = *Address::parse("127.0.0.1:80");
  s.name = "bad name";
  EXPECT_FALSE(ctl.add_callout(s));
  s.name = "ok";
  EXPECT_TRUE(ctl.add_callout(s));
  auto dup = ctl.add_callout(s);
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, EEXIST);
}

// --on-failure: stored as CONNREDIR_CALLOUT_F_FAIL_CLOSED, read back, parsed;
// bypass (no flag) is the default. Filter warnings say what the policy does.
TEST_F(ControlTest, CalloutOnFailurePolicy) {
  EXPECT_EQ(*parse_on_failure("refuse"), OnFailure::Refuse);
  EXPECT_EQ(*parse_on_failure("bypass"), OnFailure::Bypass);
  auto bad = parse_on_failure("block");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_NE(bad.error().message.find("'block'"), std::string::npos);

  auto open = add_callout("open");
  EXPECT_EQ(raw_callout(open.id).flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED, 0u);
  CalloutSpec s;
  s.name = "closed";
  s.proxy4 = *Address::parse("127.0.0.1:9001");
  s.on_failure = OnFailure::Refuse;
  auto closed = ctl.add_callout(s);
  ASSERT_TRUE(closed);
  EXPECT_NE(raw_callout(closed->id).flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED, 0u);
  auto list = ctl.list_callouts();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].on_failure, OnFailure::Bypass);
  EXPECT_EQ((*list)[1].on_failure, OnFailure::Refuse);
  EXPECT_STREQ(to_string(OnFailure::Refuse), "refuse");

  // Both callouts have only an IPv4 proxy: an any-family filter warns about
  // IPv6, in the words of each policy.
  FilterSpec f;
  f.callout = "closed";
  auto fc = ctl.add_filter(f);
  ASSERT_TRUE(fc);
  ASSERT_EQ(fc->warnings.size(), 1u);
  EXPECT_NE(fc->warnings[0].find("are refused (--on-failure refuse)"), std::string::npos);
  f.callout = "open";
  auto fo = ctl.add_filter(f);
  ASSERT_TRUE(fo);
  ASSERT_EQ(fo->warnings.size(), 1u);
  EXPECT_NE(fo->warnings[0].find("are not redirected by it"), std::string::npos);
}

// --implicit-records: on (no flag) is the default; off is stored as
// CONNREDIR_CALLOUT_F_NO_IMPLICIT and read back; update_callout switches it
// either way in place. The CLI's text and a configuration's boolean both parse,
// anything else names the choices.
TEST_F(ControlTest, CalloutImplicitRecordsSwitch) {
  EXPECT_EQ(*parse_implicit_records("on"), true);
  EXPECT_EQ(*parse_implicit_records("true"), true);
  EXPECT_EQ(*parse_implicit_records("off"), false);
  EXPECT_EQ(*parse_implicit_records("false"), false);
  auto bad = parse_implicit_records("maybe");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_NE(bad.error().message.find("'maybe'"), std::string::npos);
  EXPECT_NE(bad.error().message.find("expected on"), std::string::npos);
  EXPECT_NE(bad.error().message.find("or off"), std::string::npos);
  EXPECT_FALSE(parse_implicit_records(""));
  EXPECT_FALSE(parse_implicit_records("ON"));
  EXPECT_STREQ(implicit_records_text(true), "on");
  EXPECT_STREQ(implicit_records_text(false), "off");

  auto on = add_callout("on");
  EXPECT_TRUE(on.implicit_records);
  EXPECT_EQ(raw_callout(on.id).flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
  CalloutSpec s;
  s.name = "off";
  s.proxy4 = *Address::parse("127.0.0.1:9001");
  s.implicit_records = false;
  auto off = ctl.add_callout(s);
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->implicit_records);
  uint32_t flags = raw_callout(off->id).flags;
  EXPECT_NE(flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
  // Only its own bit: the other policies keep their defaults.
  EXPECT_EQ(flags & CONNREDIR_CALLOUT_F_FAIL_CLOSED, 0u);
  EXPECT_EQ(flags & CONNREDIR_CALLOUT_F_SHARED_PRINCIPAL, 0u);
  EXPECT_NE(flags & CONNREDIR_CALLOUT_F_DOWN_REFUSE, 0u);
  auto list = ctl.list_callouts();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_TRUE((*list)[0].implicit_records);
  EXPECT_FALSE((*list)[1].implicit_records);

  s.implicit_records = true;
  auto back_on = ctl.update_callout(s);
  ASSERT_TRUE(back_on) << back_on.error().message;
  EXPECT_EQ(back_on->id, off->id);
  EXPECT_TRUE(back_on->implicit_records);
  EXPECT_EQ(raw_callout(off->id).flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
  s.implicit_records = false;
  ASSERT_TRUE(ctl.update_callout(s));
  EXPECT_NE(raw_callout(off->id).flags & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
}

TEST_F(ControlTest, CalloutIdsLowestFreeAndExhaustion) {
  for (int i = 1; i < CONNREDIR_MAX_CALLOUTS; ++i) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
    // GCC 12 -O3 false positive (GCC bug 105329): `"x" + std::string` with a 1-char literal
    // warns of an overlapping 2^63-byte memcpy inside libstdc++. Silenced for this line only.
    auto c = add_callout("c" + std::to_string(i));
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    EXPECT_EQ(c.id, static_cast<uint32_t>(i));
  }
  CalloutSpec s;
  s.name = "one-too-many";
  s.proxy4 = *Address::parse("127.0.0.1:80");
  auto r = ctl.add_callout(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOSPC);
  ASSERT_TRUE(ctl.delete_callout("c5", false));
  ASSERT_TRUE(ctl.delete_callout("c3", false));
  EXPECT_EQ(add_callout("again").id, 3u);
  EXPECT_EQ(add_callout("again2").id, 5u);
}

// A reused callout id starts with zero counters: the kernel's row of the
// deleted callout must not be reported as the new one's.
TEST_F(ControlTest, CalloutCountersZeroedWhenIdReused) {
  auto a = add_callout("a");
  auto b = add_callout("b");
  ASSERT_EQ(a.id, 1u);
  ASSERT_EQ(b.id, 2u);
  // What the BPF programs would have counted (the fake lets a test write).
  auto put = [&](uint32_t id, uint32_t idx, uint64_t v) {
    uint32_t key = id * CONNREDIR_CSTAT_MAX + idx;
    ASSERT_TRUE(store.update(MapId::CalloutStats, &key, &v));
  };
  put(1, CONNREDIR_CSTAT_REDIRECTED, 7);
  put(1, CONNREDIR_CSTAT_RECORDS_REJECTED, 3);
  put(2, CONNREDIR_CSTAT_SELF_SKIP, 5);
  auto n1 = ctl.callout_counters(1);
  ASSERT_TRUE(n1) << n1.error().message;
  EXPECT_EQ((*n1)[CONNREDIR_CSTAT_REDIRECTED], 7u);
  EXPECT_EQ((*n1)[CONNREDIR_CSTAT_RECORDS_REJECTED], 3u);
  EXPECT_EQ((*n1)[CONNREDIR_CSTAT_SELF_SKIP], 0u);

  ASSERT_TRUE(ctl.delete_callout("a", false));
  EXPECT_EQ(add_callout("a2").id, 1u);
  auto again = ctl.callout_counters(1);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, CalloutCounters{}) << "the new callout inherited the old one's counters";
  // Its neighbour's row is untouched.
  EXPECT_EQ((*ctl.callout_counters(2))[CONNREDIR_CSTAT_SELF_SKIP], 5u);
  // The zeroing precedes the callout entry: nothing counts against an id
  // before it is used.
  store.log.clear();
  add_callout("c");
  ASSERT_FALSE(store.log.empty());
  EXPECT_EQ(store.log.front(), "erase callout_stats");
  EXPECT_EQ(std::count(store.log.begin(), store.log.end(), "erase callout_stats"),
            CONNREDIR_CSTAT_MAX);
  auto pos = std::find(store.log.begin(), store.log.end(), "update callouts");
  ASSERT_NE(pos, store.log.end());
  EXPECT_EQ(pos - store.log.begin(), CONNREDIR_CSTAT_MAX);

  auto bad = ctl.callout_counters(CONNREDIR_MAX_CALLOUTS);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_STREQ(callout_stat_name(CONNREDIR_CSTAT_REDIRECTED), "redirected");
  EXPECT_STREQ(callout_stat_name(CONNREDIR_CSTAT_RECORDS_REJECTED), "records_rejected");
}

// A failed zeroing leaves no callout behind.
TEST_F(ControlTest, CalloutAddFailsCleanlyWhenCountersCannotBeZeroed) {
  store.fail_after = 1;
  CalloutSpec s;
  s.name = "x";
  s.proxy4 = *Address::parse("127.0.0.1:80");
  auto r = ctl.add_callout(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_TRUE(ctl.list_callouts()->empty());
}

TEST_F(ControlTest, DeleteReferencedCalloutRefusedOrForced) {
  add_callout("a");
  add_callout("b");
  add_filter("a", "10.0.0.0/8");
  add_filter("b", "10.1.0.0/16");
  add_filter("a", "10.1.2.0/24");
  auto r = ctl.delete_callout("a", false);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EBUSY);
  EXPECT_NE(r.error().message.find("filters 1, 3"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("--force"), std::string::npos);
  auto f = ctl.delete_callout("a", true);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(*f, (std::vector<uint32_t>{1, 3}));
  auto filters = ctl.list_filters();
  ASSERT_EQ(filters->size(), 1u);
  EXPECT_EQ((*filters)[0].id, 2u);
  EXPECT_EQ(kernel_index(), (Index{{index_keys(cidr("10.1.0.0/16"))[0], {2}}}));
  EXPECT_EQ(ctl.list_callouts()->size(), 1u);
  auto missing = ctl.delete_callout("a", false);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
}

TEST_F(ControlTest, FilterAddStoresAbiLayout) {
  add_callout("a");
  FilterSpec s;
  s.callout = "a";
  s.dst = cidr("192.0.2.0/24");
  s.ports = *parse_port_range("8000-8080");
  s.proto = kProtoTcp;
  s.weight = 7;
  s.app_uid = 1000;
  s.app_cgroup = CgroupRef{555, 2, "/p/q"};
  s.context = "hello";
  auto r = ctl.add_filter(s);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->filter.id, 1u);
  auto f = raw_filter(1);
  EXPECT_EQ(f.id, 1u);
  EXPECT_EQ(f.callout_id, 1u);
  EXPECT_EQ(f.weight, 7u);
  EXPECT_EQ(f.seq, 1u);
  EXPECT_EQ(f.family, CONNREDIR_AF_INET);
  EXPECT_EQ(f.prefixlen, 24);
  EXPECT_EQ(f.addr[10], 0xff);
  EXPECT_EQ(f.addr[12], 192);
  EXPECT_EQ(f.addr[14], 2);
  EXPECT_EQ(f.proto, 6);
  EXPECT_EQ(f.port_lo, 8000);
  EXPECT_EQ(f.port_hi, 8080);
  EXPECT_EQ(f.flags, CONNREDIR_FILTER_F_APP_UID | CONNREDIR_FILTER_F_APP_CGROUP);
  EXPECT_EQ(f.app_uid, 1000u);
  EXPECT_EQ(f.app_cgroup, 555u);
  EXPECT_EQ(f.app_cgroup_level, 2u);
  EXPECT_EQ(f.user_len, 5);
  EXPECT_EQ(std::memcmp(f.user, "hello", 5), 0);
  auto l = ctl.list_filters();
  ASSERT_EQ(l->size(), 1u);
  EXPECT_EQ((*l)[0].callout, "a");
  EXPECT_EQ((*l)[0].dst.to_string(), "192.0.2.0/24");
  EXPECT_EQ((*l)[0].ports.to_string(), "8000-8080");
  EXPECT_EQ((*l)[0].context, "hello");
  // Index: one /24 entry naming filter 1.
  auto key = to_lpm_key(index_keys(cidr("192.0.2.0/24"))[0]);
  connredir_candidates c{};
  ASSERT_TRUE(*store.lookup(MapId::FilterIndex, &key, &c));
  EXPECT_EQ(c.count, 1u);
  EXPECT_EQ(c.ids[0], 1u);
}

TEST_F(ControlTest, FilterDefaultsAreAny) {
  add_callout("a");
  FilterSpec s;
  s.callout = "a";
  auto r = ctl.add_filter(s);
  ASSERT_TRUE(r);
  auto f = raw_filter(1);
  EXPECT_EQ(f.family, 0);
  EXPECT_EQ(f.prefixlen, 0);
  EXPECT_EQ(f.port_lo, 0);
  EXPECT_EQ(f.port_hi, 65535);
  EXPECT_EQ(f.proto, 0);
  EXPECT_EQ(f.flags, 0u);
  EXPECT_EQ(kernel_index().size(), 2u);  // /0 of both families
  // The callout has only an IPv4 proxy: warn about IPv6.
  ASSERT_EQ(r->warnings.size(), 1u);
  EXPECT_NE(r->warnings[0].find("IPv6"), std::string::npos);
}

TEST_F(ControlTest, FilterIdsAndSeq) {
  add_callout("a");
  add_filter("a", "10.0.0.0/8");
  add_filter("a", "11.0.0.0/8");
  add_filter("a", "12.0.0.0/8");
  ASSERT_TRUE(ctl.delete_filter(2));
  auto f = add_filter("a", "13.0.0.0/8");
  EXPECT_EQ(f.filter.id, 4u);
  EXPECT_EQ(f.filter.seq, 4u);
  ASSERT_TRUE(ctl.delete_filter(4));
  // Max id is now 3: the id is reused, but seq still grows from the max
  // existing seq (3), so it sorts after filter 3.
  auto g = add_filter("a", "13.0.0.0/8");
  EXPECT_EQ(g.filter.id, 4u);
  EXPECT_EQ(g.filter.seq, 4u);
  auto bad = ctl.delete_filter(99);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ENOENT);
}

TEST_F(ControlTest, FilterErrors) {
  FilterSpec s;
  s.callout = "nope";
  auto r = ctl.add_filter(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_NE(r.error().message.find("nope"), std::string::npos);
  add_callout("a");
  s.callout = "a";
  s.context = std::string(CONNREDIR_USER_CONTEXT_MAX + 1, 'x');
  r = ctl.add_filter(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  s.context = std::string(CONNREDIR_USER_CONTEXT_MAX, 'x');
  EXPECT_TRUE(ctl.add_filter(s));
}

TEST_F(ControlTest, WriteOrderAddFilterFirstDeleteIndexFirst) {
  add_callout("a");
  add_filter("a", "10.1.0.0/16");
  store.log.clear();
  add_filter("a", "10.0.0.0/8");  // new /8 entry and the rewritten /16
  ASSERT_EQ(store.log.size(), 3u);
  EXPECT_EQ(store.log[0], "update filters");
  for (size_t i = 1; i < store.log.size(); ++i) EXPECT_EQ(store.log[i], "update filter_index");
  store.log.clear();
  ASSERT_TRUE(ctl.delete_filter(2));
  // /16 rewritten, /8 deleted, then the filter entry.
  ASSERT_EQ(store.log.size(), 3u);
  EXPECT_EQ(store.log.back(), "erase filters");
  for (size_t i = 0; i + 1 < store.log.size(); ++i)
    EXPECT_NE(store.log[i].find("filter_index"), std::string::npos) << store.log[i];
}

TEST_F(ControlTest, IndexStaysExactThroughChanges) {
  add_callout("a");
  add_callout("b");
  std::vector<std::string> dsts = {"10.0.0.0/8",  "10.1.0.0/16",    "any",  "2001:db8::/32",
                                   "10.1.2.3",    "10.2.0.0/16",    "::/0", "0.0.0.0/0",
                                   "10.1.0.0/16", "2001:db8:1::/48"};
  for (size_t i = 0; i < dsts.size(); ++i)
    add_filter(i % 2 ? "a" : "b", dsts[i], static_cast<uint32_t>(i % 3));
  auto check = [&] {
    auto c = ctl.check_index();
    ASSERT_TRUE(c);
    EXPECT_TRUE(c->empty()) << c->size() << " entries differ";
  };
  check();
  for (uint32_t id : {3u, 1u, 9u, 5u}) {
    ASSERT_TRUE(ctl.delete_filter(id));
    check();
  }
  ASSERT_TRUE(ctl.delete_callout("a", true));
  check();
  EXPECT_TRUE(ctl.list_filters()->size() > 0);
  ASSERT_TRUE(ctl.delete_callout("b", true));
  check();
  EXPECT_TRUE(kernel_index().empty());
  EXPECT_EQ(store.size(MapId::Filters), 0u);
}

TEST_F(ControlTest, OverflowRefusedWithoutSideEffects) {
  add_callout("a");
  for (int i = 0; i < CONNREDIR_CANDIDATES_MAX; ++i) add_filter("a", "10.0.0.0/8");
  auto before = kernel_index();
  store.log.clear();
  auto e = refused_filter("a", "10.1.0.0/16");
  EXPECT_EQ(e.code, E2BIG);
  EXPECT_NE(e.message.find("10.1.0.0/16"), std::string::npos) << e.message;
  EXPECT_TRUE(store.log.empty());
  EXPECT_EQ(kernel_index(), before);
  EXPECT_EQ(store.size(MapId::Filters), size_t{CONNREDIR_CANDIDATES_MAX});
}

TEST_F(ControlTest, FailedIndexWriteRollsBack) {
  add_callout("a");
  add_filter("a", "10.1.0.0/16");
  add_filter("a", "10.2.0.0/16");
  auto before = kernel_index();
  FilterSpec s;
  s.callout = "a";
  s.dst = cidr("10.0.0.0/8");
  store.fail_after = 3;  // filter entry, first index write ok, second fails
  auto r = ctl.add_filter(s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_EQ(kernel_index(), before);
  EXPECT_EQ(store.size(MapId::Filters), 2u);
  EXPECT_TRUE(ctl.check_index()->empty());
}

TEST_F(ControlTest, RepairIndex) {
  add_callout("a");
  add_filter("a", "10.0.0.0/8");
  add_filter("a", "10.1.0.0/16");
  // Corrupt: drop the /16 entry and add a stray one.
  auto k = to_lpm_key(index_keys(cidr("10.1.0.0/16"))[0]);
  ASSERT_TRUE(store.erase(MapId::FilterIndex, &k));
  auto stray = to_lpm_key(index_keys(cidr("11.0.0.0/8"))[0]);
  connredir_candidates c{};
  c.count = 1;
  c.ids[0] = 42;
  ASSERT_TRUE(store.update(MapId::FilterIndex, &stray, &c));
  EXPECT_EQ(ctl.check_index()->size(), 2u);
  auto n = ctl.repair_index();
  ASSERT_TRUE(n);
  EXPECT_EQ(n->writes, 2u);
  EXPECT_TRUE(n->removed.empty());
  EXPECT_TRUE(ctl.check_index()->empty());
  EXPECT_EQ(store.size(MapId::Filters), 2u);  // the un-named /16 filter fits: completed
}

// What a killed `filter add` leaves: a filter entry that no index entry
// names. The repair completes such filters while they fit and removes the
// newest of them where they would overflow a prefix; active filters stay.
TEST_F(ControlTest, RepairRemovesNeverActiveFiltersThatCannotBeIndexed) {
  add_callout("a");
  add_filter("a", "10.0.0.0/8");  // id 1: active, named
  for (int i = 0; i < CONNREDIR_CANDIDATES_MAX - 3; ++i) add_filter("a", "10.1.0.0/16");
  // A genuine 10.1.2.0/24 filter entry as the template, then gone again.
  uint32_t next = add_filter("a", "10.1.2.0/24").filter.id;
  connredir_filter tmpl = raw_filter(next);
  ASSERT_TRUE(ctl.delete_filter(next));
  auto active = kernel_index();
  // Five interrupted adds of 10.1.2.0/24: filter entries written, index not.
  std::vector<uint32_t> orphan_ids;
  for (int i = 0; i < 5; ++i) {
    connredir_filter f = tmpl;
    f.id = next + static_cast<uint32_t>(i);
    f.seq = tmpl.seq + static_cast<uint64_t>(i);
    ASSERT_TRUE(store.update(MapId::Filters, &f.id, &f));
    orphan_ids.push_back(f.id);
  }
  // 1 + 29 + 5 = 35 filters cover 10.1.2.0/24: 3 over the limit. A new add
  // there is refused, and the message points at the repair.
  EXPECT_FALSE(ctl.check_index()->empty());
  auto refused = refused_filter("a", "10.1.2.128/25");
  EXPECT_EQ(refused.code, E2BIG);
  EXPECT_NE(refused.message.find("5 of the filters were left by an interrupted command"),
            std::string::npos)
      << refused.message;
  auto n = ctl.repair_index();
  ASSERT_TRUE(n) << n.error().message;
  ASSERT_EQ(n->removed.size(), 3u);
  EXPECT_EQ(n->removed[0].id, orphan_ids[2]);  // the newest three went
  EXPECT_EQ(n->removed[2].id, orphan_ids[4]);
  EXPECT_EQ(n->crowded, std::vector<std::string>{"10.1.2.0/24"});
  EXPECT_TRUE(ctl.check_index()->empty());
  EXPECT_EQ(store.size(MapId::Filters), size_t{CONNREDIR_CANDIDATES_MAX});
  // Every entry that was there before still names the same filters.
  auto now = kernel_index();
  for (const auto& [k, ids] : active) EXPECT_EQ(now[k], ids) << k.to_string();
  // The two older orphans were completed: the /24 entry names them.
  auto slash24 = now[index_keys(cidr("10.1.2.0/24"))[0]];
  EXPECT_EQ(slash24.size(), size_t{CONNREDIR_CANDIDATES_MAX});
  EXPECT_NE(std::find(slash24.begin(), slash24.end(), orphan_ids[1]), slash24.end());
}

// A removal made for one over-long entry counts for the next: no more
// never-active filters go than needed. X (a /16, covering both /24 entries)
// is the newest orphan of the first entry; dropping it also fixes the second,
// so the second entry's own newer orphan Y must stay (and be completed).
TEST_F(ControlTest, RepairRemovesNoMoreThanNeededAcrossEntries) {
  add_callout("a");
  auto tmpl_of = [&](const std::string& dst) {
    uint32_t id = add_filter("a", dst).filter.id;
    connredir_filter f = raw_filter(id);
    EXPECT_TRUE(ctl.delete_filter(id));
    return f;
  };
  connredir_filter x = tmpl_of("10.1.0.0/16"), y = tmpl_of("10.1.3.0/24");
  add_filter("a", "10.0.0.0/8");
  for (int i = 0; i < 28; ++i) add_filter("a", "10.1.0.0/16");
  for (int i = 0; i < 3; ++i) add_filter("a", "10.1.2.0/24");  // first entry: 32 active
  for (int i = 0; i < 2; ++i) add_filter("a", "10.1.3.0/24");  // second entry: 31 active
  x.id = 1000;                                                 // older
  y.id = 1001;                                                 // newer
  ASSERT_TRUE(store.update(MapId::Filters, &x.id, &x));
  ASSERT_TRUE(store.update(MapId::Filters, &y.id, &y));
  // First entry: 32 + X = 33; second: 31 + X + Y = 33.
  auto n = ctl.repair_index();
  ASSERT_TRUE(n) << n.error().message;
  ASSERT_EQ(n->removed.size(), 1u);
  EXPECT_EQ(n->removed[0].id, 1000u);
  EXPECT_TRUE(ctl.check_index()->empty());
  auto second = kernel_index()[index_keys(cidr("10.1.3.0/24"))[0]];
  EXPECT_EQ(second.size(), size_t{CONNREDIR_CANDIDATES_MAX});
  EXPECT_NE(std::find(second.begin(), second.end(), 1001u), second.end());
}

// Active filters are never removed: if they alone overflow an entry (maps
// edited by hand), the repair refuses and says what to do.
TEST_F(ControlTest, RepairNeverRemovesActiveFilters) {
  add_callout("a");
  for (int i = 0; i < CONNREDIR_CANDIDATES_MAX; ++i) add_filter("a", "10.0.0.0/8");
  connredir_filter f = raw_filter(1);
  f.id = 1000;
  ASSERT_TRUE(store.update(MapId::Filters, &f.id, &f));
  // An entry names the extra filter (as if it had been active): now all 33
  // are active and the 10.0.0.0/8 entry cannot hold them.
  auto key = to_lpm_key(index_keys(cidr("11.0.0.0/8"))[0]);
  connredir_candidates c{};
  c.count = 1;
  c.ids[0] = 1000;
  ASSERT_TRUE(store.update(MapId::FilterIndex, &key, &c));
  auto before = kernel_index();
  auto n = ctl.repair_index();
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, E2BIG);
  EXPECT_NE(n.error().message.find("filter del"), std::string::npos) << n.error().message;
  EXPECT_EQ(store.size(MapId::Filters), size_t{CONNREDIR_CANDIDATES_MAX} + 1);
  EXPECT_EQ(kernel_index(), before);  // refused before writing anything
}

TEST_F(ControlTest, PrincipalsAreTheUnion) {
  ASSERT_TRUE(ctl.authorize(CONNREDIR_PRINCIPAL_UID, 1000));
  add_callout("a", "127.0.0.1:9000", 1000, 4242);
  add_callout("b", "127.0.0.1:9001", 2000);
  auto p = principals();
  EXPECT_EQ(p.size(), 3u);
  EXPECT_EQ((p[{CONNREDIR_PRINCIPAL_UID, 1000}]),
            CONNREDIR_PRINCIPAL_F_AUTHORIZED | CONNREDIR_PRINCIPAL_F_CALLOUT);
  EXPECT_EQ((p[{CONNREDIR_PRINCIPAL_UID, 2000}]), CONNREDIR_PRINCIPAL_F_CALLOUT);
  EXPECT_EQ((p[{CONNREDIR_PRINCIPAL_CGROUP, 4242}]), CONNREDIR_PRINCIPAL_F_CALLOUT);

  // Removing the callout keeps the explicit authorization of uid 1000.
  ASSERT_TRUE(ctl.delete_callout("a", false));
  p = principals();
  EXPECT_EQ(p.size(), 2u);
  EXPECT_EQ((p[{CONNREDIR_PRINCIPAL_UID, 1000}]), CONNREDIR_PRINCIPAL_F_AUTHORIZED);
  EXPECT_FALSE(p.count({CONNREDIR_PRINCIPAL_CGROUP, 4242}));

  // Deauthorizing a callout principal: refused (it was never explicit).
  auto r = ctl.deauthorize(CONNREDIR_PRINCIPAL_UID, 2000);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_EQ(principals().size(), 2u);
  ASSERT_TRUE(ctl.deauthorize(CONNREDIR_PRINCIPAL_UID, 1000));
  p = principals();
  EXPECT_EQ(p.size(), 1u);
  EXPECT_TRUE(p.count({CONNREDIR_PRINCIPAL_UID, 2000}));

  // Two callouts sharing a uid: refused unless on purpose; then the
  // principal stays until both are gone.
  CalloutSpec shared;
  shared.name = "c";
  shared.proxy4 = *Address::parse("127.0.0.1:9002");
  shared.proxy_uid = 2000;
  auto refused = ctl.add_callout(shared);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, EEXIST);
  EXPECT_NE(refused.error().message.find("--shared-principal"), std::string::npos);
  shared.shared_principal = true;
  auto added = ctl.add_callout(shared);
  ASSERT_TRUE(added) << added.error().message;
  EXPECT_TRUE(added->shared_principal);
  EXPECT_TRUE(raw_callout(added->id).flags & CONNREDIR_CALLOUT_F_SHARED_PRINCIPAL);
  ASSERT_TRUE(ctl.delete_callout("b", false));
  EXPECT_EQ(principals().size(), 1u);
  ASSERT_TRUE(ctl.delete_callout("c", false));
  EXPECT_TRUE(principals().empty());
}

// The BPF side caches each caller's principal flags and trusts an entry only
// under the current generation: every change to the principals, by
// authorize, deauthorize or a callout's principal coming or going, bumps it,
// after the change; a failed update says so and what to do.
TEST_F(ControlTest, EveryPrincipalChangeBumpsTheGeneration) {
  auto gen = [&] {
    uint32_t zero = 0;
    uint64_t g = 0;
    EXPECT_TRUE(*store.lookup(MapId::PrincipalsGen, &zero, &g));
    return g;
  };
  uint64_t g0 = gen();
  ASSERT_TRUE(ctl.authorize(CONNREDIR_PRINCIPAL_UID, 1000));
  EXPECT_EQ(gen(), g0 + 1);
  add_callout("a", "127.0.0.1:9000", 2000);
  uint64_t g1 = gen();
  EXPECT_GT(g1, g0 + 1) << "a callout's principal is a change";
  ASSERT_TRUE(ctl.deauthorize(CONNREDIR_PRINCIPAL_UID, 1000));
  EXPECT_EQ(gen(), g1 + 1);
  ASSERT_TRUE(ctl.delete_callout("a", false));
  EXPECT_GT(gen(), g1 + 1);
  EXPECT_TRUE(principals().empty());

  store.fail_after = 2;  // the principal lands, the generation update fails
  auto r = ctl.authorize(CONNREDIR_PRINCIPAL_UID, 1000);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("run the command again"), std::string::npos)
      << r.error().message;
  ASSERT_TRUE(ctl.authorize(CONNREDIR_PRINCIPAL_UID, 1000)) << "idempotent, and bumps again";
}

TEST_F(ControlTest, AuthorizeCgroupAndIdempotence) {
  ASSERT_TRUE(ctl.authorize(CONNREDIR_PRINCIPAL_CGROUP, 99));
  ASSERT_TRUE(ctl.authorize(CONNREDIR_PRINCIPAL_CGROUP, 99));
  auto p = principals();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ((p[{CONNREDIR_PRINCIPAL_CGROUP, 99}]), CONNREDIR_PRINCIPAL_F_AUTHORIZED);
  ASSERT_TRUE(ctl.sync_principals());
  EXPECT_EQ(principals().size(), 1u);
}

TEST_F(ControlTest, SecretOnlyWhenZero) {
  std::array<uint8_t, 16> k1{}, k2{};
  k1.fill(1);
  k2.fill(2);
  auto r = ctl.init_secret(k1);
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
  r = ctl.init_secret(k2);
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  uint32_t zero = 0;
  connredir_secret s{};
  ASSERT_TRUE(*store.lookup(MapId::Secret, &zero, &s));
  EXPECT_EQ(s.k0, 0x0101010101010101ull);
}

TEST_F(ControlTest, CountsAndStats) {
  add_callout("a", "127.0.0.1:1", 5);
  add_filter("a", "10.0.0.0/8");
  add_filter("a", "any");
  auto c = ctl.counts();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->callouts, 1u);
  EXPECT_EQ(c->filters, 2u);
  EXPECT_EQ(c->principals, 1u);
  EXPECT_EQ(c->prefixes, 3u);
  store.stat_values[CONNREDIR_STAT_REDIRECTED] = 5;
  auto s = ctl.stats();
  ASSERT_TRUE(s);
  EXPECT_EQ((*s)[CONNREDIR_STAT_REDIRECTED], 5u);
  EXPECT_STREQ(stat_name(CONNREDIR_STAT_REDIRECTED), "redirected");
  EXPECT_STREQ(stat_name(CONNREDIR_STAT_PREV_SKIP), "prev_skip");
}

}  // namespace
}  // namespace connredir::control
