// The JSON line format of the flow log.
#include "flow_log.hpp"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include <gtest/gtest.h>

namespace connredir::proxy {
namespace {

FlowRecord sample() {
  FlowRecord r;
  r.name = "p1";
  r.flow_id = 0x1234567890abcdefull;
  r.chain = {{1, 10, "10.0.0.1:80"}, {2, 20, "127.0.0.1:15001"}};
  r.callout_id = 2;
  r.filter_id = 20;
  r.hop = 2;
  r.orig_dst = "10.0.0.1:80";
  r.orig_src = "10.0.0.2:40000";
  r.pid = 4242;
  r.uid = 1000;
  r.comm = "curl";
  r.client = "127.0.0.1:40001";
  r.listen = "127.0.0.1:15002";
  r.propagated = true;
  r.bytes_up = 77;
  r.bytes_down = 1u << 20;
  r.duration_ms = 12;
  r.result = "ok";
  return r;
}

TEST(FlowLog, FormatHasEveryKeyWithTheRightValues) {
  const std::string line = format_flow_json(sample());
  EXPECT_EQ(line.find('\n'), std::string::npos) << "one line per flow";
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j.size(), 20u);
  EXPECT_EQ(j["proto"], "tcp");
  EXPECT_TRUE(j["dropped"].is_null());
  EXPECT_EQ(j["name"], "p1");
  EXPECT_EQ(j["flow_id"].get<uint64_t>(), 0x1234567890abcdefull);
  ASSERT_EQ(j["chain"].size(), 2u);
  EXPECT_EQ(j["chain"][0],
            (nlohmann::json{{"callout_id", 1}, {"filter_id", 10}, {"dst", "10.0.0.1:80"}}));
  EXPECT_EQ(j["chain"][1]["callout_id"], 2);
  EXPECT_EQ(j["callout_id"], 2);
  EXPECT_EQ(j["filter_id"], 20);
  EXPECT_EQ(j["hop"], 2);
  EXPECT_EQ(j["orig_dst"], "10.0.0.1:80");
  EXPECT_EQ(j["orig_src"], "10.0.0.2:40000");
  EXPECT_EQ(j["pid"], 4242);
  EXPECT_EQ(j["uid"], 1000);
  EXPECT_EQ(j["comm"], "curl");
  EXPECT_EQ(j["client"], "127.0.0.1:40001");
  EXPECT_EQ(j["listen"], "127.0.0.1:15002");
  EXPECT_EQ(j["propagated"], true);
  EXPECT_EQ(j["bytes_up"], 77);
  EXPECT_EQ(j["bytes_down"], 1 << 20);
  EXPECT_EQ(j["duration_ms"], 12);
  EXPECT_EQ(j["result"], "ok");
}

TEST(FlowLog, UnknownContextFieldsAreNull) {
  FlowRecord r;
  r.name = "p";
  r.result = "not redirected";
  const auto j = nlohmann::json::parse(format_flow_json(r));
  for (const char* k :
       {"callout_id", "filter_id", "hop", "orig_dst", "orig_src", "pid", "uid", "comm"}) {
    EXPECT_TRUE(j[k].is_null()) << k;
  }
  EXPECT_EQ(j["flow_id"], 0);
  EXPECT_TRUE(j["chain"].is_array());
  EXPECT_TRUE(j["chain"].empty());
  EXPECT_EQ(j["result"], "not redirected");
}

TEST(FlowLog, OddBytesAndQuotesStayValidJson) {
  FlowRecord r = sample();
  r.comm = std::string("a\xff\"b\n", 5);
  r.result = "server said \"no\"\tthen reset";
  const std::string line = format_flow_json(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["comm"], "a\xEF\xBF\xBD\"b\n");  // invalid byte -> U+FFFD
  EXPECT_EQ(j["result"], r.result);
}

TEST(FlowLog, WritesOneNewlineTerminatedLinePerFlow) {
  char path[] = "/tmp/connredir-proxy-log-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    FlowLog log;
    ASSERT_EQ(log.open(path), "");
    log.write(sample());
    FlowRecord r = sample();
    r.result = "connecting to 10.0.0.1:80 failed: Connection refused";
    log.write(r);
    // Readable before the log is closed: every line is written at once.
    std::ifstream in(path);
    std::string l1, l2, l3;
    ASSERT_TRUE(std::getline(in, l1));
    ASSERT_TRUE(std::getline(in, l2));
    EXPECT_FALSE(std::getline(in, l3));
    EXPECT_EQ(nlohmann::json::parse(l1)["result"], "ok");
    EXPECT_EQ(nlohmann::json::parse(l2)["result"], r.result);
  }
  unlink(path);
}

TEST(FlowLog, OpenFailureSaysWhatToDo) {
  FlowLog log;
  const std::string err = log.open("/nonexistent-dir/x.log");
  EXPECT_NE(err.find("/nonexistent-dir/x.log"), std::string::npos);
  EXPECT_NE(err.find("--log"), std::string::npos);
  EXPECT_FALSE(log.enabled());
}

}  // namespace
}  // namespace connredir::proxy
