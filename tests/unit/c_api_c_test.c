/* <connredir/connredir.h> must compile as strict C11 and link from C: this
 * file is built with -std=c11 -Wpedantic and calls the API the way a C proxy
 * does. c_api_test.cpp runs it. */
#include <connredir/connredir.h>

#include <errno.h>
#include <string.h>

int connredir_c_api_from_c(void) {
  unsigned char rec[CONNREDIR_RECORDS_MAX];
  size_t len = 1;
  struct sockaddr_storage dst;
  socklen_t dst_len = 1;
  struct connredir_flow_context ctx;
  struct connredir_chain chain;
  char text[CONNREDIR_ADDRSTRLEN];

  if (connredir_query_records(-1, rec, sizeof rec, &len) != -EBADF || len != 0) return 1;
  if (strstr(connredir_last_error(), "not an open file descriptor") == NULL) return 2;
  if (connredir_set_records(-1, rec, sizeof rec) != -EBADF) return 3;
  if (connredir_original_dst(-1, &dst, &dst_len) != -EBADF || dst_len != 0) return 4;
  if (connredir_query_context(-1, &ctx) != -EBADF) return 5;
  memset(rec, 0, sizeof rec);
  if (connredir_decode_chain(rec, sizeof rec, &chain) != -EINVAL) return 6;
  if (connredir_format_addr(NULL, 0, text, sizeof text) != -EINVAL) return 7;
  if (sizeof chain.hops / sizeof chain.hops[0] != CONNREDIR_MAX_HOPS) return 8;
  if (connredir_query_flow(-1, rec, sizeof rec, &len, &ctx) != -EBADF || len != 0) return 9;
  return 0;
}
