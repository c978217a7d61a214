/*
 * two_masters.c: two masters on one loop share nothing. Both listen on
 * free ports and answer GET /healthz; after the first stops, the second
 * still answers; then it stops too, and every handle is closed.
 */
#include <discluster/master.h>
#include <stdio.h>
#include <string.h>

typedef struct probe_s probe_t;
typedef struct test_s test_t;
typedef void (*probe_cb)(test_t *t, probe_t *p, int ok);

struct probe_s {
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_write_t wreq;
  char buf[512];
  size_t len;
  probe_cb cb;
  test_t *t;
  int ok;
};

struct test_s {
  uv_loop_t loop;
  dcm_master_t *m[2];
  probe_t probe;
  int step, failed, stopped[2];
};

static void fail(test_t *t, const char *what) {
  fprintf(stderr, "two_masters: %s\n", what);
  t->failed = 1;
}

/* ---- a minimal HTTP GET, independent of the library's own code ---- */

static void probe_closed(uv_handle_t *h) {
  probe_t *p = h->data;
  p->cb(p->t, p, p->ok);
}

static void probe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  probe_t *p = h->data;
  *b = uv_buf_init(p->buf + p->len, (unsigned)(sizeof p->buf - 1 - p->len));
}

static void probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  probe_t *p = s->data;
  if (n > 0) p->len += (size_t)n;
  p->buf[p->len] = '\0';
  if (strncmp(p->buf, "HTTP/1.1 200", 12) == 0 || n < 0 || p->len == sizeof p->buf - 1) {
    p->ok = strncmp(p->buf, "HTTP/1.1 200", 12) == 0;
    uv_close((uv_handle_t *)s, probe_closed);
  }
}

static void probe_written(uv_write_t *w, int status) {}

static void probe_connected(uv_connect_t *req, int status) {
  probe_t *p = req->data;
  static char get[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  uv_buf_t b = uv_buf_init(get, sizeof get - 1);
  if (status < 0) {
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
    return;
  }
  uv_write(&p->wreq, (uv_stream_t *)&p->tcp, &b, 1, probe_written);
  uv_read_start((uv_stream_t *)&p->tcp, probe_alloc, probe_read);
}

static void probe(test_t *t, int port, probe_cb cb) {
  struct sockaddr_in sa;
  probe_t *p = &t->probe;
  memset(p, 0, sizeof *p);
  p->cb = cb;
  p->t = t;
  uv_ip4_addr("127.0.0.1", port, &sa);
  uv_tcp_init(&t->loop, &p->tcp);
  p->tcp.data = p;
  p->req.data = p;
  uv_tcp_connect(&p->req, &p->tcp, (struct sockaddr *)&sa, probe_connected);
}

/* ---- the sequence ---- */

static void next(test_t *t, probe_t *p, int ok);

static void on_stopped(dcm_master_t *m, void *arg) {
  test_t *t = arg;
  t->stopped[m == t->m[1]] = 1;
  if (m == t->m[0]) probe(t, dcm_master_port(t->m[1]), next); /* B still serves */
}

/* step 0: probe A; 1: probe B; 2: stop A, probe B; 3: stop B */
static void next(test_t *t, probe_t *p, int ok) {
  if (p && !ok) {
    fail(t, "healthz did not answer 200");
    dcm_master_stop(t->m[0], 0, NULL, NULL);
    dcm_master_stop(t->m[1], 0, NULL, NULL);
    return;
  }
  switch (t->step++) {
    case 0: probe(t, dcm_master_port(t->m[0]), next); break;
    case 1: probe(t, dcm_master_port(t->m[1]), next); break;
    case 2: dcm_master_stop(t->m[0], 0, on_stopped, t); break;
    case 3: dcm_master_stop(t->m[1], 0, on_stopped, t); break;
  }
}

int main(void) {
  static test_t test;
  test_t *t = &test;
  dcm_options_t o;
  uv_loop_init(&t->loop);
  for (int i = 0; i < 2; i++) {
    dcm_options_init(&o);
    o.listen_port = 0;
    o.shards = 2 + i;
    o.no_auth = 1;
    if (dcm_master_new(&t->loop, &o, &t->m[i]) != 0 || dcm_master_start(t->m[i], NULL, NULL) != 0) {
      fprintf(stderr, "two_masters: cannot start master %d\n", i);
      return 1;
    }
  }
  printf("ports %d and %d\n", dcm_master_port(t->m[0]), dcm_master_port(t->m[1]));
  if (dcm_master_port(t->m[0]) <= 0 || dcm_master_port(t->m[0]) == dcm_master_port(t->m[1]))
    fail(t, "the masters need two distinct ports");
  next(t, NULL, 1);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  if (t->step != 4 || !t->stopped[0] || !t->stopped[1]) fail(t, "the sequence did not finish");
  for (int i = 0; i < 2; i++) {
    if (dcm_master_exit_status(t->m[i]) != 0) fail(t, "non-zero exit status");
    dcm_master_free(t->m[i]);
  }
  if (uv_loop_close(&t->loop) != 0) fail(t, "a handle is still open");
  if (!t->failed) printf("ok\n");
  return t->failed;
}
