/*
 * fuzz_master_http.c: the MASTER's request head parser and routing
 * (server.c), with whatever follows an upgrade going on to the WebSocket
 * session and the protocol (session.c). The input is the first bytes a
 * peer sends on a new connection; they reach a started master through a
 * socketpair adopted as if accepted (dcm__server_adopt), once as one write
 * and once split at random points with a loop turn between the parts, then
 * the peer half-closes and the loop runs until the connection is gone.
 * Checks: both deliveries get the same status line (or none); every reply
 * is HTTP/1.1; afterwards no connection, machine or per-address count is
 * left behind. The master has a shared secret (Bearer fuzz-secret), fixed
 * shards and a collection window that never ends, so inputs leave no state
 * (one that stops the master with a fatal code gets a new master).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "internal.h"

#define AUTH "fuzz-secret"
#define STATUS_MAX 128
#define SETTLE_NS (10ull * 1000 * 1000 * 1000) /* far beyond any path: a hang */

static uv_loop_t loop;
static dcm_master_t *m;

/* DCM_FUZZ_LOG=1 shows the master's log (to see what an input does). */
static void quiet(dcm_log_level level, const char *line, size_t len, void *arg) {
  (void)level, (void)arg;
  if (getenv("DCM_FUZZ_LOG")) fprintf(stderr, "%.*s\n", (int)len, line);
}

static void setup(void) {
  static int once;
  if (!once) {
    signal(SIGPIPE, SIG_IGN);
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    once = 1;
  }
  dcm_options_t o;
  dcm_options_init(&o);
  o.listen_host = "127.0.0.1";
  o.listen_port = 0;
  o.shards = 4;
  o.collect_window = 1e7; /* never allocates: a machine that leaves is gone */
  o.token = "fuzz-token";
  o.auth = AUTH;
  o.max_message = 4096;
  o.log_level = DCM_LOG_DEBUG; /* every log line is formatted */
  o.log_cb = quiet;
  FUZZ_CHECK(dcm_master_new(&loop, &o, &m) == 0);
  FUZZ_CHECK(dcm_master_start(m, NULL, NULL) == 0);
  uv_run(&loop, UV_RUN_NOWAIT);
}

/* A `fatal` with one of Discord's fatal codes stops the fleet: start afresh. */
static void restart(void) {
  dcm_master_free(m); /* completes once every handle has closed */
  uv_run(&loop, UV_RUN_DEFAULT);
  setup();
}

typedef struct {
  char status[STATUS_MAX + 1]; /* the reply's first bytes */
  size_t len;
  int eof;
} reply_t;

static void drain(int fd, reply_t *r) {
  char buf[65536];
  for (;;) {
    ssize_t k = read(fd, buf, sizeof buf);
    if (k > 0) {
      size_t take = (size_t)k < STATUS_MAX - r->len ? (size_t)k : STATUS_MAX - r->len;
      memcpy(r->status + r->len, buf, take);
      r->len += take;
      continue;
    }
    if (k == 0 || (errno != EAGAIN && errno != EINTR)) r->eof = 1;
    if (k == 0 || errno != EINTR) return;
  }
}

static void serve(const uint8_t *data, const size_t *ends, size_t n, reply_t *r) {
  int sv[2];
  memset(r, 0, sizeof *r);
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  FUZZ_CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
  FUZZ_CHECK(dcm__server_adopt(m, sv[0]) == 0);
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *p = data + at;
    size_t left = ends[i] - at;
    while (left > 0) {
      ssize_t k = send(sv[1], p, left, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && errno == EAGAIN) { /* the server reads on */
        uv_run(&loop, UV_RUN_NOWAIT);
        drain(sv[1], r);
        continue;
      }
      if (k < 0) break; /* closed: what is left goes nowhere */
      p += k;
      left -= (size_t)k;
    }
    at = ends[i];
    uv_run(&loop, UV_RUN_NOWAIT);
    drain(sv[1], r);
  }
  shutdown(sv[1], SHUT_WR);
  uint64_t until = uv_hrtime() + SETTLE_NS;
  while (!r->eof || !dcm__list_empty(&m->conns) || m->nmachines > 0) {
    FUZZ_CHECK(uv_hrtime() < until);
    uv_run(&loop, UV_RUN_NOWAIT);
    drain(sv[1], r);
  }
  uv_run(&loop, UV_RUN_NOWAIT); /* close callbacks */
  close(sv[1]);
  FUZZ_CHECK(m->unauth == 0 && m->naddrs == 0);
  FUZZ_CHECK(r->len == 0 || (r->len >= 9 && memcmp(r->status, "HTTP/1.1 ", 9) == 0));
  char *eol = memchr(r->status, '\r', r->len);
  if (eol) r->len = (size_t)(eol - r->status);
  r->status[r->len] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (m == NULL) setup();
  fuzz_rng_t rng = fuzz_rng(data, size);
  size_t whole[1] = {size}, ends[9];
  size_t nends = fuzz_cuts(&rng, size, ends, 8);
  reply_t a, b;
  serve(data, whole, 1, &a);
  if (m->stopping) restart();
  serve(data, ends, nends, &b);
  if (m->stopping) restart();
  if (strcmp(a.status, b.status) != 0) {
    fprintf(stderr, "one write: '%s'; in %zu parts: '%s'\n", a.status, nends, b.status);
    FUZZ_CHECK(strcmp(a.status, b.status) == 0);
  }
  return 0;
}
