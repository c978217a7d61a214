/* The public handle's edge cases: failed start, double stop, bad options. */
#include <discluster/master.h>

#include <signal.h>

#include "check.h"

static void quiet(dcm_log_level level, const char *line, size_t len, void *arg) {
  (void)level, (void)line, (void)len, (void)arg;
}

static void init(dcm_options_t *o) {
  dcm_options_init(o);
  o->listen_port = 0;
  o->shards = 2;
  o->no_auth = 1; /* loopback, no CONTROL secret: said explicitly */
  o->log_cb = quiet;
}

static void free_right_after_a_failed_start(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *a, *b;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  CHECK_EQ(dcm_master_new(&loop, &o, &a), 0);
  CHECK_EQ(dcm_master_start(a, NULL, NULL), 0);
  o.listen_port = dcm_master_port(a); /* taken by a */
  CHECK_EQ(dcm_master_new(&loop, &o, &b), 0);
  CHECK_EQ(dcm_master_start(b, NULL, NULL), UV_EADDRINUSE);
  CHECK_EQ(dcm_master_start(b, NULL, NULL), DCM_ESTATE);
  dcm_master_free(b); /* completes once the listener has closed */
  CHECK_EQ(dcm_master_stop(a, 0, NULL, NULL), 0);
  CHECK_EQ(dcm_master_stop(a, 0, NULL, NULL), DCM_ESTATE);
  CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  dcm_master_free(a);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

static int stopped_events;

static void stop_from_event(dcm_master_t *m, const dcm_event_t *ev, void *arg) {
  (void)arg;
  if (ev->type == DCM_EVENT_LISTENING) CHECK_EQ(dcm_master_stop(m, 1, NULL, NULL), 0);
  if (ev->type == DCM_EVENT_STOPPED) stopped_events++;
}

static void stop_inside_the_event_callback(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *m;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  CHECK_EQ(dcm_master_start(m, stop_from_event, NULL), 0);
  CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_EQ(stopped_events, 1);
  CHECK_EQ(dcm_master_exit_status(m), 0);
  dcm_master_free(m);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

static void bad_options_are_refused(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *m = NULL;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  o.heartbeat_interval = -1;
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.no_auth = 0; /* no secret needs no_auth */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINSECURE);
  o.auth = "secret";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  CHECK_EQ(dcm_master_reload_tls(m), DCM_ESTATE); /* no TLS to reload */
  dcm_master_free(m);
  o.status_auth = "secret"; /* the read-only secret must differ */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.listen_host = "0.0.0.0";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINSECURE); /* no_auth: loopback only */
  o.auth = "secret";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINSECURE); /* no TLS off loopback */
  o.allow_plaintext = 1;
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  dcm_master_free(m);
  init(&o);
  o.tls_cert = "/nonexistent/cert.pem"; /* without its key */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  o.tls_key = "/nonexistent/key.pem"; /* unreadable */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.shards = 0; /* auto without a token */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.policy = "/nonexistent/policy.lua";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EPOLICY);
  CHECK(strcmp(dcm_strerror(DCM_EAUTH), "Discord rejected the bot token") == 0);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

/* ---- stop or free from inside callbacks (re-entrancy) ------------------ */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_write_t w;
  int close_after_write;
  char buf[512];
} peer_t;

static int stop_on; /* the event type whose callback stops the master */
static int free_in_close_cb;
static peer_t peer;
static int stopped_inside;

static void peer_read_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  (void)h, (void)n;
  static char sink[4096];
  *b = uv_buf_init(sink, sizeof sink);
}

static void peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, NULL);
}

static void peer_written(uv_write_t *w, int status) {
  (void)status;
  if (peer.close_after_write) {
    uv_close((uv_handle_t *)&peer.tcp, NULL);
  } else {
    uv_read_start((uv_stream_t *)&peer.tcp, peer_read_alloc, peer_read);
  }
  (void)w;
}

/* An upgrade and one masked `info` frame, written by hand. */
static void peer_connected(uv_connect_t *req, int status) {
  static const char info[] = "{\"o\":0,\"d\":{\"id\":\"a\",\"cores\":2,\"loadavg\":0}}";
  static const unsigned char key[4] = {1, 2, 3, 4};
  CHECK_EQ(status, 0);
  int n = snprintf(peer.buf, sizeof peer.buf,
                   "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
  size_t len = sizeof info - 1;
  peer.buf[n++] = (char)0x81;
  peer.buf[n++] = (char)(0x80 | len);
  memcpy(peer.buf + n, key, 4);
  n += 4;
  for (size_t i = 0; i < len; i++) peer.buf[n++] = (char)(info[i] ^ key[i % 4]);
  uv_buf_t b = uv_buf_init(peer.buf, (unsigned)n);
  uv_write(&peer.w, req->handle, &b, 1, peer_written);
}

static void freeing_close_cb(dcm_master_t *m, void *arg) {
  (void)arg;
  if (free_in_close_cb) dcm_master_free(m);
}

static void reentrant_event(dcm_master_t *m, const dcm_event_t *ev, void *arg) {
  uv_loop_t *loop = arg;
  if (ev->type == DCM_EVENT_LISTENING && stop_on != DCM_EVENT_LISTENING) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", ev->code, &a);
    uv_tcp_init(loop, &peer.tcp);
    uv_tcp_connect(&peer.req, &peer.tcp, (const struct sockaddr *)&a, peer_connected);
  }
  if ((int)ev->type == stop_on) {
    CHECK_EQ(dcm_master_stop(m, 0, freeing_close_cb, NULL), 0);
    stopped_inside++;
  }
}

static void stop_reentrantly(int event, int close_after_write, int shards, int free_it) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *m;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  o.shards = shards;
  if (shards == 0) { /* auto: Discord would be asked; nothing listens there */
    o.token = "t";
    o.api_base = "http://127.0.0.1:9";
  }
  o.collect_window = 30;
  o.heartbeat_interval = 0.2;
  o.heartbeat_grace = 0.2;
  stop_on = event;
  free_in_close_cb = free_it;
  memset(&peer, 0, sizeof peer);
  peer.close_after_write = close_after_write;
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  stopped_inside = 0;
  CHECK_EQ(dcm_master_start(m, reentrant_event, &loop), 0);
  CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_EQ(stopped_inside, 1);
  if (!free_it) dcm_master_free(m);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

static void stop_inside_disconnected(void) { stop_reentrantly(DCM_EVENT_DISCONNECTED, 1, 2, 0); }
static void stop_inside_timed_out(void) { stop_reentrantly(DCM_EVENT_TIMED_OUT, 0, 2, 0); }
static void stop_inside_listening_with_discord(void) {
  stop_reentrantly(DCM_EVENT_LISTENING, 0, 0, 0);
}
static void free_inside_the_stop_callback(void) { stop_reentrantly(DCM_EVENT_CONNECTED, 0, 2, 1); }

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  RUN(stop_inside_disconnected);
  RUN(stop_inside_timed_out);
  RUN(stop_inside_listening_with_discord);
  RUN(free_inside_the_stop_callback);
  RUN(free_right_after_a_failed_start);
  RUN(stop_inside_the_event_callback);
  RUN(bad_options_are_refused);
  return 0;
}
