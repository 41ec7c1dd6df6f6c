#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "blobs.hpp"
#include "connredir/records.hpp"

using namespace connredir;
using testblobs::bytes;

namespace {

void expect_rejected(const std::vector<uint8_t>& raw, std::string_view needle) {
  auto c = decode_context(raw);
  ASSERT_FALSE(c) << "malformed context decoded";
  EXPECT_EQ(c.error().code, EINVAL);
  EXPECT_NE(c.error().message.find(needle), std::string::npos) << c.error().message;
}

}  // namespace

TEST(Context, Decode) {
  auto c = decode_context(bytes(testblobs::context(5)));
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->flow_id, 99u);
  EXPECT_EQ(c->callout_id, 3u);
  EXPECT_EQ(c->filter_id, 7u);
  EXPECT_EQ(c->hop, 2);
  EXPECT_EQ(c->orig_dst.to_string(), "[::1]:443");
  EXPECT_EQ(c->orig_src.to_string(), "192.168.1.2:51000");
  EXPECT_EQ(c->pid, 55u);
  EXPECT_EQ(c->uid, 1001u);
  EXPECT_EQ(c->cgroup_id, 8888u);
  EXPECT_EQ(c->comm, "firefox");
  EXPECT_EQ(c->user, (std::vector<uint8_t>{1, 2, 3, 4, 5}));
}

TEST(Context, UserLengthLimits) {
  auto empty = decode_context(bytes(testblobs::context(0)));
  ASSERT_TRUE(empty) << empty.error().message;
  EXPECT_TRUE(empty->user.empty());
  auto full = decode_context(bytes(testblobs::context(CONNREDIR_USER_CONTEXT_MAX)));
  ASSERT_TRUE(full) << full.error().message;
  EXPECT_EQ(full->user.size(), size_t{CONNREDIR_USER_CONTEXT_MAX});
}

TEST(Context, Malformed) {
  auto good = bytes(testblobs::context(4));
  expect_rejected({}, "empty");
  auto shorter = good;
  shorter.resize(CONNREDIR_CONTEXT_HDR_SIZE + 4);  // header + user_len is not enough
  expect_rejected(shorter, "108 bytes");
  auto longer = good;
  longer.push_back(0);
  expect_rejected(longer, "233 bytes");

  auto c = testblobs::context(4);
  c.magic = CONNREDIR_RECORDS_MAGIC;  // a records blob is not a context
  expect_rejected(bytes(c), "magic");

  c = testblobs::context(4);
  c.version = 0;
  expect_rejected(bytes(c), "version 0");

  c = testblobs::context(4);
  c.user_len = CONNREDIR_USER_CONTEXT_MAX + 1;
  c.size = static_cast<__u16>(CONNREDIR_CONTEXT_HDR_SIZE + c.user_len);
  expect_rejected(bytes(c), "user_len 129");

  c = testblobs::context(4);
  c.size = CONNREDIR_CONTEXT_SIZE;  // must be header + user_len, not the struct size
  expect_rejected(bytes(c), "size field");

  c = testblobs::context(4);
  c.orig_dst.family = 0;
  expect_rejected(bytes(c), "original destination");

  c = testblobs::context(4);
  c.orig_src.family = 3;
  expect_rejected(bytes(c), "original source");
}

TEST(Context, Json) {
  auto c = decode_context(bytes(testblobs::context(3))).value();
  auto j = nlohmann::json::parse(to_json(c));
  EXPECT_EQ(j["flow_id"], 99);
  EXPECT_EQ(j["callout_id"], 3);
  EXPECT_EQ(j["hop"], 2);
  EXPECT_EQ(j["orig_dst"], "[::1]:443");
  EXPECT_EQ(j["orig_src"], "192.168.1.2:51000");
  EXPECT_EQ(j["comm"], "firefox");
  EXPECT_EQ(j["user_hex"], "010203");
}
