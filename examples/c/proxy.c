/* connredir-example-c: a minimal inspection proxy in C that takes part in a
 * connredir proxy chain. Copy it, then put your inspection where it says
 * "inspect here".
 *
 *   connredir-example-c --listen ADDR:PORT [--log FILE]
 *
 * For every connection connredir redirects to ADDR:PORT it reads the redirect
 * records, context and original destination, logs the flow as one JSON line
 * (to FILE, or standard output) when it ends, and relays it to the original
 * destination with the records attached, so the flow passes every vendor's
 * proxy exactly once. One thread per direction keeps the code short; a real
 * proxy would use epoll (see src/proxy/ in connredir for one).
 *
 * Build: make (pkg-config connredir), or as part of connredir's own build. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <connredir/connredir.h>

static FILE* g_log;

/* ---- Relaying ------------------------------------------------------------ */

struct pump {
  int from, to;
  uint64_t bytes;
};

/* Copies from -> to until EOF, then passes the EOF on (half-close), so each
 * side can finish sending after the other stopped. */
static void* pump(void* arg) {
  struct pump* p = arg;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(p->from, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* EOF or reset */
    /* inspect here: buf[0..n) is the next chunk of this direction */
    for (ssize_t off = 0; off < n;) {
      ssize_t w = send(p->to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) { /* the receiver is gone: end both directions */
        shutdown(p->from, SHUT_RDWR);
        shutdown(p->to, SHUT_RDWR);
        return NULL;
      }
      off += w;
    }
    p->bytes += (uint64_t)n;
  }
  shutdown(p->to, SHUT_WR);
  return NULL;
}

/* ---- The flow log ---------------------------------------------------------- */

static void json_string(FILE* f, const char* s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

static void format_addr(const struct sockaddr_storage* ss, socklen_t len, char* out) {
  if (connredir_format_addr((const struct sockaddr*)ss, len, out, CONNREDIR_ADDRSTRLEN) != 0)
    strcpy(out, "?");
}

/* One JSON line per flow: the chain so far (callout ids, oldest first; the
 * last one is ours), where the application was going, the bytes relayed. */
static void log_flow(const struct connredir_chain* chain, const struct connredir_flow_context* ctx,
                     const char* orig_dst, uint64_t up, uint64_t down, const char* result) {
  char* line = NULL;
  size_t size = 0;
  FILE* f = open_memstream(&line, &size);
  if (f == NULL) return;
  fprintf(f, "{\"proxy\":\"c\",\"flow_id\":%" PRIu64 ",\"chain\":[", chain->flow_id);
  for (unsigned i = 0; i < chain->hop_count; i++) {
    char dst[CONNREDIR_ADDRSTRLEN];
    format_addr(&chain->hops[i].dst, chain->hops[i].dst_len, dst);
    fprintf(f, "%s{\"callout_id\":%" PRIu32 ",\"filter_id\":%" PRIu32 ",\"dst\":", i ? "," : "",
            chain->hops[i].callout_id, chain->hops[i].filter_id);
    json_string(f, dst);
    fputc('}', f);
  }
  fprintf(f,
          "],\"callout_id\":%" PRIu32 ",\"hop\":%u,\"app\":{\"pid\":%" PRIu32 ",\"uid\":%" PRIu32
          ",\"comm\":",
          ctx->callout_id, ctx->hop, chain->app_pid, chain->app_uid);
  json_string(f, chain->app_comm);
  fputs("},\"orig_dst\":", f);
  json_string(f, orig_dst);
  fprintf(f, ",\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 ",\"result\":", up, down);
  json_string(f, result);
  fputs("}\n", f);
  fclose(f);
  /* One write per line, so concurrent flows never interleave. */
  flockfile(g_log);
  fputs(line, g_log);
  fflush(g_log);
  funlockfile(g_log);
  free(line);
}

/* ---- One flow ---------------------------------------------------------------- */

static void* handle_flow(void* arg) {
  int client = (int)(intptr_t)arg, server = -1;
  unsigned char records[CONNREDIR_RECORDS_MAX];
  size_t records_len = 0;
  struct connredir_chain chain;
  struct connredir_flow_context ctx;
  struct sockaddr_storage dst;
  socklen_t dst_len = 0;
  char orig_dst[CONNREDIR_ADDRSTRLEN] = "";
  char result[1024] = "ok";
  struct pump up = {0}, down = {0};
  memset(&chain, 0, sizeof chain);
  memset(&ctx, 0, sizeof ctx);

  /* 1. The flow, in one call: its redirect records (the opaque proof of
   *    which vendors' proxies this flow already passed) and its redirect
   *    context (which of our callout's filters sent it here, and the
   *    filter's --context bytes in ctx.user if the policy uses them).
   *    -ENOENT means nobody redirected it (a client connected to the proxy
   *    port directly): there is nowhere to relay it. */
  if (connredir_query_flow(client, records, sizeof records, &records_len, &ctx) != 0) {
    snprintf(result, sizeof result, "query_flow failed: %s", connredir_last_error());
    goto done;
  }
  /* Decoded only for the log; the bytes themselves are passed on unchanged. */
  connredir_decode_chain(records, records_len, &chain);

  /* 2. Where the application wanted to go. */
  if (connredir_original_dst(client, &dst, &dst_len) != 0) {
    snprintf(result, sizeof result, "original_dst failed: %s", connredir_last_error());
    goto done;
  }
  format_addr(&dst, dst_len, orig_dst);

  /* 3. The onward socket, with the records attached BEFORE connect(): the
   *    kernel then knows this connect continues the same flow, skips our
   *    callout and lets the next vendor's callout (if any) redirect it. */
  server = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server < 0) {
    snprintf(result, sizeof result, "socket failed: %s", strerror(errno));
    goto done;
  }
  if (connredir_set_records(server, records, records_len) != 0) {
    /* Never connect without the records: that connect would start a new
     * chain and the flow would be redirected, and inspected, all over again.
     * -EACCES (we are not the callout's --proxy-uid/--proxy-cgroup) and
     * -ENOPROTOOPT (we run outside the cgroups `connredir up` attached to)
     * are misconfigurations: fail the flow and say so loudly. */
    fprintf(stderr, "connredir-example-c: NOT relaying flow %" PRIu64 " to %s: %s\n", chain.flow_id,
            orig_dst, connredir_last_error());
    snprintf(result, sizeof result, "set_records failed: %s", connredir_last_error());
    goto done;
  }

  /* 4. Connect to the original destination. If another vendor's filter
   *    covers it, connredir redirects this connect to that vendor's proxy. */
  if (connect(server, (struct sockaddr*)&dst, dst_len) != 0) {
    snprintf(result, sizeof result, "connect to %s failed: %s", orig_dst, strerror(errno));
    goto done;
  }

  /* 5. Relay both directions until both sides closed. */
  up = (struct pump){.from = client, .to = server};
  down = (struct pump){.from = server, .to = client};
  pthread_t t;
  if (pthread_create(&t, NULL, pump, &down) != 0) {
    snprintf(result, sizeof result, "pthread_create failed");
    goto done;
  }
  pump(&up);
  pthread_join(t, NULL);

done:
  log_flow(&chain, &ctx, orig_dst, up.bytes, down.bytes, result);
  if (server >= 0) close(server);
  close(client);
  return NULL;
}

/* ---- Setup --------------------------------------------------------------------- */

/* "1.2.3.4:80" or "[::1]:80". */
static int parse_listen(const char* text, struct sockaddr_storage* ss, socklen_t* len) {
  char host[INET6_ADDRSTRLEN + 2];
  const char* colon = strrchr(text, ':');
  if (colon == NULL || (size_t)(colon - text) >= sizeof host) return -1;
  memcpy(host, text, (size_t)(colon - text));
  host[colon - text] = '\0';
  int port = atoi(colon + 1);
  memset(ss, 0, sizeof *ss);
  if (host[0] == '[') {
    struct sockaddr_in6* a = (struct sockaddr_in6*)ss;
    host[strlen(host) - 1] = '\0';
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    *len = sizeof *a;
    return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
  }
  struct sockaddr_in* a = (struct sockaddr_in*)ss;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  *len = sizeof *a;
  return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char** argv) {
  const char* listen_at = NULL;
  const char* log_path = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--listen") == 0) listen_at = argv[i + 1];
    if (strcmp(argv[i], "--log") == 0) log_path = argv[i + 1];
  }
  struct sockaddr_storage addr;
  socklen_t addr_len;
  if (listen_at == NULL || parse_listen(listen_at, &addr, &addr_len) != 0) {
    fprintf(stderr, "usage: %s --listen ADDR:PORT [--log FILE]\n", argv[0]);
    return 2;
  }
  g_log = log_path ? fopen(log_path, "a") : stdout;
  if (g_log == NULL) {
    fprintf(stderr, "connredir-example-c: cannot open %s: %s\n", log_path, strerror(errno));
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);

  /* The proxy's address must be the one its callout names
   * (`connredir callout add NAME --proxy ADDR:PORT --proxy-uid UID`), and
   * only root or that principal may bind it. */
  int one = 1;
  int l = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(l, (struct sockaddr*)&addr, addr_len) != 0 || listen(l, 128) != 0) {
    fprintf(stderr, "connredir-example-c: listen on %s: %s\n", listen_at, strerror(errno));
    return 1;
  }
  fprintf(stderr, "connredir-example-c: listening on %s\n", listen_at);

  for (;;) {
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    pthread_t t;
    if (pthread_create(&t, NULL, handle_flow, (void*)(intptr_t)c) != 0) {
      close(c);
      continue;
    }
    pthread_detach(t);
  }
}
