#include "connredir/records.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>

#include "blobs.hpp"

using namespace connredir;
using testblobs::bytes;

namespace {

void expect_rejected(const std::vector<uint8_t>& blob, std::string_view needle) {
  auto r = decode_records(blob);
  ASSERT_FALSE(r) << "malformed blob decoded";
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
}

}  // namespace

TEST(Records, DecodeRoundTrip) {
  auto raw = testblobs::records({5, 9, 12});
  auto r = decode_records(bytes(raw));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->flow_id, 0x1122334455667788ull);
  EXPECT_EQ(r->mac, 0xdeadbeefcafef00dull);
  EXPECT_EQ(r->origin.pid, 1234u);
  EXPECT_EQ(r->origin.uid, 1000u);
  EXPECT_EQ(r->origin.cgroup_id, 4242u);
  EXPECT_EQ(r->origin.comm, "curl");
  EXPECT_EQ(r->origin.src.to_string(), "10.0.0.5:40000");
  ASSERT_EQ(r->hops.size(), 3u);
  EXPECT_EQ(r->hops[0].callout_id, 5u);
  EXPECT_EQ(r->hops[0].filter_id, 105u);
  EXPECT_EQ(r->hops[0].time_ns, 1000u);
  EXPECT_EQ(r->hops[0].dst.to_string(), "93.184.216.34:80");
  EXPECT_EQ(r->hops[0].proxy_uid, 2005u);
  EXPECT_EQ(r->hops[1].proxy_uid, CONNREDIR_UID_NONE);
  EXPECT_EQ(r->hops[1].proxy_cgroup, 777u);
  EXPECT_EQ(r->hops[2].dst.to_string(), "127.0.0.1:8002");

  // Re-encoding the decoded fields gives back the hand-built struct.
  connredir_records again{};
  again.magic = CONNREDIR_RECORDS_MAGIC;
  again.version = CONNREDIR_ABI_VERSION;
  again.size = sizeof again;
  again.flow_id = r->flow_id;
  again.hop_count = static_cast<__u8>(r->hops.size());
  again.origin.cgroup_id = r->origin.cgroup_id;
  again.origin.pid = r->origin.pid;
  again.origin.uid = r->origin.uid;
  std::memcpy(again.origin.comm, r->origin.comm.data(), r->origin.comm.size());
  again.origin.src = r->origin.src.to_abi();
  for (size_t i = 0; i < r->hops.size(); ++i) {
    again.hops[i].callout_id = r->hops[i].callout_id;
    again.hops[i].filter_id = r->hops[i].filter_id;
    again.hops[i].time_ns = r->hops[i].time_ns;
    again.hops[i].dst = r->hops[i].dst.to_abi();
    again.hops[i].proxy_uid = r->hops[i].proxy_uid;
    again.hops[i].proxy_cgroup = r->hops[i].proxy_cgroup;
  }
  again.mac = r->mac;
  EXPECT_EQ(bytes(again), bytes(raw));
}

TEST(Records, MaxHopsAndFullComm) {
  auto raw = testblobs::records({1, 2, 3, 4, 5, 6, 7, 8});
  std::memcpy(raw.origin.comm, "0123456789abcdef", 16);  // no NUL terminator
  auto r = decode_records(bytes(raw));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->hops.size(), 8u);
  EXPECT_EQ(r->origin.comm, "0123456789abcdef");
}

TEST(Records, Malformed) {
  auto good = bytes(testblobs::records({1}));
  expect_rejected({}, "empty");

  auto shorter = good;
  shorter.pop_back();
  expect_rejected(shorter, "471 bytes");

  auto longer = good;
  longer.push_back(0);
  expect_rejected(longer, "473 bytes");

  auto raw = testblobs::records({1});
  raw.magic = 0x12345678;
  expect_rejected(bytes(raw), "magic");

  raw = testblobs::records({1});
  raw.version = 2;
  expect_rejected(bytes(raw), "version 2");

  raw = testblobs::records({1});
  raw.size = 400;
  expect_rejected(bytes(raw), "size field");

  raw = testblobs::records({1});
  raw.hop_count = 9;
  expect_rejected(bytes(raw), "hop_count 9");

  raw = testblobs::records({1});
  raw.hop_count = 255;
  expect_rejected(bytes(raw), "hop_count 255");

  raw = testblobs::records({1, 2});
  raw.hops[1].dst.family = 7;
  expect_rejected(bytes(raw), "hop 2");

  raw = testblobs::records({1});
  raw.hops[0].dst = connredir_addr{};
  expect_rejected(bytes(raw), "hop 1");

  raw = testblobs::records({1});
  raw.origin.src.family = 1;
  expect_rejected(bytes(raw), "origin");

  // An all-zero blob of the right length is rejected (zero magic).
  expect_rejected(std::vector<uint8_t>(sizeof(connredir_records)), "magic");
}

TEST(Records, UnusedHopSlotsAreNotChecked) {
  auto raw = testblobs::records({1});
  raw.hops[5].dst.family = 99;  // beyond hop_count: ignored
  EXPECT_TRUE(decode_records(bytes(raw)));
}

TEST(Records, UnsetOriginSourceIsAccepted) {
  auto raw = testblobs::records({1});
  raw.origin.src = connredir_addr{};
  auto r = decode_records(bytes(raw));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->origin.src.family, 0);
}

TEST(Records, RedirectStates) {
  auto none = decode_records(bytes(testblobs::records({}))).value();
  EXPECT_EQ(redirect_state(none, 7), RedirectState::NotRedirected);

  auto chain = decode_records(bytes(testblobs::records({3, 7, 5}))).value();
  EXPECT_EQ(redirect_state(chain, 5), RedirectState::RedirectedBySelf);
  EXPECT_EQ(redirect_state(chain, 7), RedirectState::PreviouslyRedirectedBySelf);
  EXPECT_EQ(redirect_state(chain, 3), RedirectState::PreviouslyRedirectedBySelf);
  EXPECT_EQ(redirect_state(chain, 9), RedirectState::RedirectedByOther);

  // Last hop wins over an earlier hop by the same callout.
  auto again = decode_records(bytes(testblobs::records({4, 2, 4}))).value();
  EXPECT_EQ(redirect_state(again, 4), RedirectState::RedirectedBySelf);

  auto blob = bytes(testblobs::records({1, 2}));
  EXPECT_EQ(redirect_state(blob, 1).value(), RedirectState::PreviouslyRedirectedBySelf);
  blob.resize(10);
  EXPECT_EQ(redirect_state(blob, 1).error().code, EINVAL);

  EXPECT_STREQ(to_string(RedirectState::NotRedirected), "not-redirected");
  EXPECT_STREQ(to_string(RedirectState::RedirectedBySelf), "redirected-by-self");
  EXPECT_STREQ(to_string(RedirectState::RedirectedByOther), "redirected-by-other");
  EXPECT_STREQ(to_string(RedirectState::PreviouslyRedirectedBySelf),
               "previously-redirected-by-self");
}

TEST(Records, StateEnumMatchesAbi) {
  EXPECT_EQ(static_cast<int>(RedirectState::NotRedirected), CONNREDIR_NOT_REDIRECTED);
  EXPECT_EQ(static_cast<int>(RedirectState::RedirectedBySelf), CONNREDIR_REDIRECTED_BY_SELF);
  EXPECT_EQ(static_cast<int>(RedirectState::RedirectedByOther), CONNREDIR_REDIRECTED_BY_OTHER);
  EXPECT_EQ(static_cast<int>(RedirectState::PreviouslyRedirectedBySelf),
            CONNREDIR_PREVIOUSLY_REDIRECTED_BY_SELF);
}

TEST(Records, Hex) {
  auto blob = bytes(testblobs::records({1, 2}));
  std::string hex = to_hex(blob);
  EXPECT_EQ(hex.size(), blob.size() * 2);
  EXPECT_EQ(hex.substr(0, 8), "43525231");  // "CRR1" little endian
  auto r = decode_records_hex(hex);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->hops.size(), 2u);

  // Whitespace anywhere, upper case and a 0x prefix are fine.
  std::string spaced = "  0x";
  for (size_t i = 0; i < hex.size(); ++i) {
    spaced.push_back(static_cast<char>(std::toupper(hex[i])));
    if (i % 32 == 31) spaced += "\n\t ";
  }
  EXPECT_TRUE(decode_records_hex(spaced)) << decode_records_hex(spaced).error().message;

  auto odd = decode_records_hex(hex.substr(1));
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message.find("odd"), std::string::npos);

  auto bad = decode_records_hex("43zz");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_NE(bad.error().message.find("offset 2"), std::string::npos) << bad.error().message;

  auto empty = decode_records_hex("");
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("empty"), std::string::npos);

  EXPECT_EQ(to_hex(std::vector<uint8_t>{0x00, 0xab, 0xff}), "00abff");
}

TEST(Records, Describe) {
  auto r = decode_records(bytes(testblobs::records({5, 9}))).value();
  std::string text = describe(r);
  EXPECT_NE(text.find("flow id 0x1122334455667788"), std::string::npos) << text;
  EXPECT_NE(text.find("pid 1234"), std::string::npos) << text;
  EXPECT_NE(text.find("\"curl\""), std::string::npos) << text;
  EXPECT_NE(text.find("uid 1000"), std::string::npos) << text;
  EXPECT_NE(text.find("src 10.0.0.5:40000"), std::string::npos) << text;
  EXPECT_NE(text.find("hop 1: callout 5 filter 105 dst 93.184.216.34:80 proxy uid 2005 cgroup 0"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("hop 2: callout 9 filter 109 dst 127.0.0.1:8001 proxy uid none cgroup 777"),
            std::string::npos)
      << text;

  // Application-chosen comm cannot inject control characters.
  r.origin.comm = "a\nb\x1b";
  text = describe(r);
  EXPECT_NE(text.find("a\\x0ab\\x1b"), std::string::npos) << text;
}

TEST(Records, Json) {
  auto r = decode_records(bytes(testblobs::records({5, 9}))).value();
  auto j = nlohmann::json::parse(to_json(r));
  EXPECT_EQ(j["flow_id"].get<uint64_t>(), 0x1122334455667788ull);
  EXPECT_EQ(j["origin"]["comm"], "curl");
  EXPECT_EQ(j["origin"]["src"], "10.0.0.5:40000");
  EXPECT_EQ(j["hop_count"], 2);
  ASSERT_EQ(j["hops"].size(), 2u);
  EXPECT_EQ(j["hops"][0]["callout_id"], 5);
  EXPECT_EQ(j["hops"][0]["dst"], "93.184.216.34:80");
  EXPECT_TRUE(j["hops"][1]["proxy_uid"].is_null());
  EXPECT_EQ(j["mac"], "deadbeefcafef00d");

  // Invalid UTF-8 in comm must not make rendering fail.
  r.origin.comm = "\xff\xfe";
  const auto j2 = nlohmann::json::parse(to_json(r), nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(j2.is_object());
}
