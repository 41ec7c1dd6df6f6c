#include <gtest/gtest.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

TEST(ParseCidr, Ipv4) {
  auto p = parse_cidr("10.0.0.0/8");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->family, CONNREDIR_AF_INET);
  EXPECT_EQ(p->len, 8);
  EXPECT_EQ(p->addr[10], 0xff);
  EXPECT_EQ(p->addr[11], 0xff);
  EXPECT_EQ(p->addr[12], 10);
  EXPECT_EQ(p->to_string(), "10.0.0.0/8");
}

TEST(ParseCidr, BareAddressIsHostRoute) {
  auto p = parse_cidr("192.0.2.7");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->len, 32);
  auto q = parse_cidr("2001:db8::1");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->family, CONNREDIR_AF_INET6);
  EXPECT_EQ(q->len, 128);
  EXPECT_EQ(q->to_string(), "2001:db8::1/128");
}

TEST(ParseCidr, Ipv6) {
  auto p = parse_cidr("2001:db8::/32");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->family, CONNREDIR_AF_INET6);
  EXPECT_EQ(p->len, 32);
  EXPECT_EQ(p->to_string(), "2001:db8::/32");
  EXPECT_TRUE(parse_cidr("::/0"));
  EXPECT_TRUE(parse_cidr("0.0.0.0/0"));
}

TEST(ParseCidr, HostBitsRefusedNamingTheMaskedPrefix) {
  auto p = parse_cidr("10.1.2.3/8");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, EINVAL);
  EXPECT_NE(p.error().message.find("host bits"), std::string::npos);
  EXPECT_NE(p.error().message.find("10.0.0.0/8"), std::string::npos) << p.error().message;
  auto q = parse_cidr("2001:db8::1/32");
  ASSERT_FALSE(q);
  EXPECT_NE(q.error().message.find("2001:db8::/32"), std::string::npos);
  auto r = parse_cidr("10.0.0.128/25");
  EXPECT_TRUE(r);
  EXPECT_FALSE(parse_cidr("10.0.0.129/25"));
}

TEST(ParseCidr, V4MappedBecomesIpv4) {
  auto p = parse_cidr("::ffff:10.0.0.0/104");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->family, CONNREDIR_AF_INET);
  EXPECT_EQ(p->len, 8);
  EXPECT_EQ(*p, *parse_cidr("10.0.0.0/8"));
  auto h = parse_cidr("::ffff:192.0.2.1");
  ASSERT_TRUE(h);
  EXPECT_EQ(*h, *parse_cidr("192.0.2.1"));
}

TEST(ParseCidr, Garbage) {
  for (const char* s : {"", "/", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/8x",
                        "hello", "10.0.0/8", "1.2.3.4.5", "10.0.0.0/8/8", "[::1]/128"}) {
    auto p = parse_cidr(s);
    EXPECT_FALSE(p) << s;
    if (!p) {
      EXPECT_EQ(p.error().code, EINVAL);
    }
  }
}

TEST(Prefix, Contains) {
  auto any = Prefix::any();
  auto p8 = *parse_cidr("10.0.0.0/8");
  auto p16 = *parse_cidr("10.1.0.0/16");
  auto q16 = *parse_cidr("11.1.0.0/16");
  auto v6 = *parse_cidr("2001:db8::/32");
  EXPECT_TRUE(any.contains(p8));
  EXPECT_TRUE(any.contains(v6));
  EXPECT_TRUE(p8.contains(p16));
  EXPECT_FALSE(p16.contains(p8));
  EXPECT_FALSE(p8.contains(q16));
  EXPECT_FALSE(p8.contains(v6));
  EXPECT_FALSE(p8.contains(any));
  EXPECT_TRUE(p8.contains(p8));
  EXPECT_FALSE(parse_cidr("0.0.0.0/0")->contains(v6));
  EXPECT_TRUE(parse_cidr("::/0")->contains(v6));
  // v4-mapped storage does not make ::/0 contain IPv4.
  EXPECT_FALSE(parse_cidr("::/0")->contains(p8));
}

TEST(PortRange, Parse) {
  auto a = parse_port_range("443");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->lo, 443);
  EXPECT_EQ(a->hi, 443);
  EXPECT_EQ(a->to_string(), "443");
  auto b = parse_port_range("8000-8080");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->lo, 8000);
  EXPECT_EQ(b->hi, 8080);
  EXPECT_EQ(b->to_string(), "8000-8080");
  auto c = parse_port_range("1-65535");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->any());  // port 0 is excluded, but no connect goes to port 0 anyway
  EXPECT_TRUE(PortRange{}.any());
  EXPECT_EQ(PortRange{}.to_string(), "any");
  for (const char* s : {"0", "65536", "80-79", "-80", "80-", "a", "", "1-2-3", "80 "}) {
    auto r = parse_port_range(s);
    EXPECT_FALSE(r) << s;
    if (!r) {
      EXPECT_EQ(r.error().code, EINVAL);
    }
  }
  auto rev = parse_port_range("90-80");
  ASSERT_FALSE(rev);
  EXPECT_NE(rev.error().message.find("must not exceed"), std::string::npos);
}

TEST(Names, CalloutName) {
  EXPECT_TRUE(validate_callout_name("vendor-a.proxy_1"));
  EXPECT_TRUE(validate_callout_name(std::string(31, 'x')));
  EXPECT_FALSE(validate_callout_name(std::string(32, 'x')));
  EXPECT_FALSE(validate_callout_name(""));
  EXPECT_FALSE(validate_callout_name("a b"));
  EXPECT_FALSE(validate_callout_name("a/b"));
  EXPECT_FALSE(validate_callout_name("ä"));
}

TEST(Numbers, ParseUint) {
  EXPECT_EQ(*parse_uint("0", "uid", 0, 10), 0u);
  EXPECT_EQ(*parse_uint("4294967294", "uid", 0, 4294967294u), 4294967294u);
  EXPECT_FALSE(parse_uint("4294967295", "uid", 0, 4294967294u));
  EXPECT_FALSE(parse_uint("-1", "uid", 0, 10));
  EXPECT_FALSE(parse_uint("1x", "uid", 0, 10));
  EXPECT_FALSE(parse_uint("", "uid", 0, 10));
  EXPECT_FALSE(parse_uint("99999999999999999999999", "uid", 0, 10));
  auto e = parse_uint("11", "weight", 0, 10);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("weight"), std::string::npos);
}

TEST(Numbers, Proto) {
  EXPECT_EQ(*parse_proto("tcp"), 6);
  EXPECT_EQ(*parse_proto("any"), 0);
  EXPECT_EQ(*parse_proto("udp"), 17);
  EXPECT_FALSE(parse_proto("sctp"));
  EXPECT_EQ(proto_name(17), "udp");
  EXPECT_EQ(proto_name(0), "any");
}

TEST(Numbers, FilterAction) {
  EXPECT_EQ(*parse_filter_action("permit"), FilterAction::Permit);
  EXPECT_EQ(*parse_filter_action("block"), FilterAction::Block);
  EXPECT_EQ(*parse_filter_action("redirect"), FilterAction::Redirect);
  auto e = parse_filter_action("deny");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("permit"), std::string::npos);
}

}  // namespace
}  // namespace connredir::control
