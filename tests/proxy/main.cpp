#include <signal.h>

#include <gtest/gtest.h>

int main(int argc, char** argv) {
  // The relay reports EPIPE instead of dying, as in connredir-proxy itself.
  signal(SIGPIPE, SIG_IGN);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
