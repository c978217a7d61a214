/*
 * client.c: one WebSocket client connection to MASTER: resolve, TCP
 * connect, the HTTP/1.1 upgrade (its 101 response checked with http-parser
 * and Sec-WebSocket-Accept), then a client-side wslay session (masked
 * frames). With wss:// a TLS handshake (tls.c) comes first: MASTER's chain
 * is verified (system store or --ca-file) with its host name, and every
 * byte after it is encrypted; a failure is one reason for the agent's log
 * line and the usual retry, never a fallback to plaintext. Writes are
 * queued with a bound; every phase has a deadline (connect_timeout covers
 * TCP, TLS, the upgrade and initialise). A refusal's status line and
 * headers (the head is bounded by DCM_CTL_HEAD_MAX) are read: a follower's
 * 503 (Discluster-Role, Discluster-Leader) and a 4020 close (its reason the
 * leader's URL) are passed to the agent, which picks the next MASTER.
 * Protocol decisions are agent.c's; this file only moves messages.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent.h"
#include "discluster/master.h"
#include "outq.h"
#include "wskey.h"

#define CLOSE_LINGER_MS 2000


static uint64_t ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

/* ---- lifetime ------------------------------------------------------------ */

static void maybe_done(dcm__client_t *c) {
  if (c->handles > 0 || c->gai_pending) return;
  dcm__agent_t *a = c->a;
  /* Copies: the agent may start the next attempt before this returns. */
  dcm__ctl_ending_t end = c->end;
  char why[sizeof c->why];
  end.established = c->ws_ready;
  memcpy(why, c->why, sizeof why);
  if (c->ws_ready) dcm__ws_free(&c->ws);
  if (c->tls_on) dcm__tls_free(&c->tls);
  dcm__outq_free(&c->out);
  free(c);
  dcm__agent_on_closed(a, &end, why);
}

static void close_cb(uv_handle_t *h) {
  dcm__client_t *c = h->data;
  c->handles--;
  maybe_done(c);
}

void dcm__client_abort(dcm__client_t *c, const char *why) {
  if (why && c->why[0] == '\0') snprintf(c->why, sizeof c->why, "%s", why);
  c->phase = DCM_CLIENT_CLOSING;
  if (c->gai_pending) uv_cancel((uv_req_t *)&c->gai); /* its callback still runs */
  if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, close_cb);
  if (!uv_is_closing((uv_handle_t *)&c->timer)) uv_close((uv_handle_t *)&c->timer, close_cb);
}

/* ---- writes -------------------------------------------------------------- */

static dcm__client_t *of_outq(dcm__outq_t *q) {
  return (dcm__client_t *)((char *)q - offsetof(dcm__client_t, out));
}

static void outq_error(dcm__outq_t *q, int status) {
  dcm__client_abort(of_outq(q), uv_strerror(status));
}

/* Everything queued is written: a pong held back meanwhile may go. */
static void outq_drain(dcm__outq_t *q) {
  dcm__client_t *c = of_outq(q);
  if (c->ws_ready && c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp) &&
      dcm__ws_drained(&c->ws) != 0)
    dcm__client_abort(c, "write to MASTER failed");
}

/* Bytes for the socket (ciphertext under TLS). The upgrade head carries
   the secret: queued copies are wiped (out.wipe). */
static int sock_write(dcm__client_t *c, const void *data, size_t len) {
  if (!c->tcp_open) return UV_EPIPE;
  return dcm__outq_write(&c->out, (uv_stream_t *)&c->tcp, data, len);
}

static int raw_write(dcm__client_t *c, const void *data, size_t len) {
  if (c->tls_on) return dcm__tls_write(&c->tls, data, len);
  return sock_write(c, data, len);
}

static int ws_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  return raw_write(ws->data, data, len) == 0 ? 0 : -1;
}

static void ws_message(dcm__ws_t *ws, const char *msg, size_t len) {
  dcm__client_t *c = ws->data;
  if (c->phase == DCM_CLIENT_OPEN) dcm__agent_on_message(c->a, msg, len);
}

static int ws_idle(dcm__ws_t *ws) {
  dcm__client_t *c = ws->data;
  return c->out.bytes == 0;
}

static const dcm__ws_cbs_t ws_cbs = {ws_message, ws_write, ws_idle};

int dcm__client_send(dcm__client_t *c, const char *text, size_t len) {
  if (c->phase != DCM_CLIENT_OPEN || !c->ws_ready) return DCM_ESTATE;
  int r = dcm__ws_send(&c->ws, text, len);
  if (r != 0 || c->ws.write_failed) {
    dcm__client_abort(c, "write to MASTER failed");
    return r ? r : DCM_ESTATE;
  }
  return 0;
}

/* ---- deadlines ----------------------------------------------------------- */

static void deadline_cb(uv_timer_t *t) {
  dcm__client_t *c = t->data;
  if (c->phase == DCM_CLIENT_CLOSING) {
    dcm__client_abort(c, NULL); /* the close handshake took too long */
  } else if (c->phase == DCM_CLIENT_OPEN && c->idle_ms) {
    uint64_t quiet = uv_now(c->a->loop) - c->last_rx;
    if (quiet >= c->idle_ms) {
      char why[96];
      snprintf(why, sizeof why, "MASTER silent for %.1fs", (double)quiet / 1000.0);
      dcm__client_abort(c, why);
    }
  } else {
    dcm__client_abort(c, c->phase == DCM_CLIENT_HANDSHAKE ? "timed out in the TLS handshake"
                                                          : "timed out before initialise");
  }
}

void dcm__client_set_idle(dcm__client_t *c, uint64_t idle) {
  if (c->phase != DCM_CLIENT_OPEN) return;
  c->idle_ms = idle;
  uv_timer_stop(&c->timer);
  if (idle == 0) return;
  uint64_t every = idle / 4 < 1000 ? idle / 4 : 1000;
  if (every == 0) every = 1;
  uv_timer_start(&c->timer, deadline_cb, every, every);
}

void dcm__client_close(dcm__client_t *c, uint16_t code, const char *reason) {
  if (c->phase != DCM_CLIENT_OPEN) {
    dcm__client_abort(c, reason);
    return;
  }
  c->phase = DCM_CLIENT_CLOSING;
  if (c->why[0] == '\0') snprintf(c->why, sizeof c->why, "%s", reason);
  if (dcm__ws_close(&c->ws, code, reason) != 0 || dcm__ws_done(&c->ws)) {
    dcm__client_abort(c, NULL);
    return;
  }
  uv_timer_start(&c->timer, deadline_cb, CLOSE_LINGER_MS, 0);
}

/* ---- the upgrade --------------------------------------------------------- */

typedef struct {
  dcm__client_t *c;
  char field[64];
  int upgrade_ok, connection_ok, accept_ok;
  int follower;       /* Discluster-Role: follower */
  int leaders;        /* Discluster-Leader headers seen */
  const char *leader; /* the first one's value, in c->head */
  size_t leader_len;
} head_t;

static int on_field(http_parser *p, const char *at, size_t n) {
  head_t *h = p->data;
  snprintf(h->field, sizeof h->field, "%.*s", (int)(n < 63 ? n : 63), at);
  return 0;
}

/* 1 if the comma-separated list v contains token, case-insensitively. */
static int has_token(const char *v, size_t n, const char *token) {
  size_t tl = strlen(token);
  for (size_t i = 0; i < n;) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t j = i;
    while (j < n && v[j] != ',') j++;
    size_t e = j;
    while (e > i && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e - i == tl && strncasecmp(v + i, token, tl) == 0) return 1;
    i = j;
  }
  return 0;
}

static int on_value(http_parser *p, const char *at, size_t n) {
  head_t *h = p->data;
  if (strcasecmp(h->field, "upgrade") == 0) {
    h->upgrade_ok = has_token(at, n, "websocket");
  } else if (strcasecmp(h->field, "connection") == 0) {
    h->connection_ok = has_token(at, n, "upgrade");
  } else if (strcasecmp(h->field, "sec-websocket-accept") == 0) {
    size_t k = strlen(h->c->accept);
    h->accept_ok = n == k && memcmp(at, h->c->accept, k) == 0;
  } else if (strcasecmp(h->field, "discluster-role") == 0) {
    h->follower = has_token(at, n, "follower");
  } else if (strcasecmp(h->field, "discluster-leader") == 0 && h->leaders++ == 0) {
    while (n > 0 && (*at == ' ' || *at == '\t')) at++, n--;
    while (n > 0 && (at[n - 1] == ' ' || at[n - 1] == '\t')) n--;
    h->leader = at;
    h->leader_len = n;
  }
  return 0;
}

/* The leader a follower's refusal or a 4020 close names (text, n bytes):
 * kept in c->end when it is a usable URL; else *bad says why not. */
static int take_leader(dcm__client_t *c, const char *text, size_t n, char *bad, size_t badlen) {
  if (dcm__ctl_parse_url(text, n, &c->end.leader, bad, badlen) != 0) return -1;
  memcpy(c->end.leader_text, text, n); /* printable ASCII: the parser checked */
  c->end.leader_text[n] = '\0';
  c->end.has_leader = 1;
  return 0;
}

/* 503 with Discluster-Role: follower: an election is under way, or the
 * leader is elsewhere (Discluster-Leader). */
static void follower_refusal(dcm__client_t *c, const head_t *h) {
  char bad[96];
  const char *who = c->url->hostport;
  c->end.follower = 1;
  if (h->leaders == 0)
    snprintf(c->why, sizeof c->why, "MASTER at %s is a follower (HTTP 503) and knows no "
             "leader yet", who);
  else if (h->leaders > 1)
    snprintf(c->why, sizeof c->why, "MASTER at %s is a follower (HTTP 503); ignoring its "
             "%d Discluster-Leader headers (one expected)", who, h->leaders);
  else if (take_leader(c, h->leader, h->leader_len, bad, sizeof bad) != 0)
    snprintf(c->why, sizeof c->why, "MASTER at %s is a follower (HTTP 503); ignoring its "
             "malformed Discluster-Leader header (%s)", who, bad);
  else
    snprintf(c->why, sizeof c->why, "MASTER at %s is a follower (HTTP 503); the leader is %s",
             who, c->end.leader_text);
}

static int on_headers_complete(http_parser *p) {
  (void)p;
  return 1; /* no body expected; a 101 ends at the head */
}

/* Checks the complete response head (len bytes); returns 0 or sets why. */
static int check_head(dcm__client_t *c, size_t len) {
  http_parser p;
  http_parser_settings s;
  head_t h;
  memset(&s, 0, sizeof s);
  memset(&h, 0, sizeof h);
  s.on_header_field = on_field;
  s.on_header_value = on_value;
  s.on_headers_complete = on_headers_complete;
  h.c = c;
  http_parser_init(&p, HTTP_RESPONSE);
  p.data = &h;
  http_parser_execute(&p, &s, c->head, len);
  if (HTTP_PARSER_ERRNO(&p) != HPE_OK && HTTP_PARSER_ERRNO(&p) != HPE_CB_headers_complete) {
    snprintf(c->why, sizeof c->why, "bad HTTP response from MASTER: %s",
             http_errno_name(HTTP_PARSER_ERRNO(&p)));
    return -1;
  }
  if (p.status_code == 503 && h.follower) {
    follower_refusal(c, &h);
    return -1;
  }
  if (p.status_code == 401) {
    snprintf(c->why, sizeof c->why,
             "MASTER refused the upgrade: HTTP 401 (DISCLUSTER_AUTH missing or wrong)");
    return -1;
  }
  if (p.status_code == 403) {
    snprintf(c->why, sizeof c->why, "MASTER refused the upgrade: HTTP 403 (DISCLUSTER_AUTH "
             "holds the read-only status secret, not the CONTROL one)");
    return -1;
  }
  if (p.status_code != 101) {
    snprintf(c->why, sizeof c->why, "MASTER refused the upgrade: HTTP %d%s", p.status_code,
             p.status_code == 400 && !c->tls_on ? " (if MASTER serves TLS, use wss://)"
             : p.status_code == 503 ? " (no Discluster-Role: follower, so not a follower's "
                                      "refusal)" : "");
    return -1;
  }
  if (!h.upgrade_ok || !h.connection_ok || !h.accept_ok) {
    snprintf(c->why, sizeof c->why, "MASTER's 101 response lacks %s",
             !h.upgrade_ok ? "Upgrade: websocket"
             : !h.connection_ok ? "Connection: Upgrade" : "the right Sec-WebSocket-Accept");
    return -1;
  }
  return 0;
}

/* MASTER's close frame: its code and reason (printable bytes only) for the
 * log; 4020 is a leader stepping down, its reason the new leader's URL. */
static void peer_closed(dcm__client_t *c) {
  char reason[DCM_WS_REASON_MAX + 1], bad[96];
  if (c->why[0] != '\0') return;
  uint16_t code = dcm__ws_close_code_received(&c->ws);
  const char *r = dcm__ws_close_reason_received(&c->ws);
  size_t n = strlen(r);
  if (code == DCM_CLOSE_NOT_LEADER) {
    c->end.follower = 1;
    if (n == 0)
      snprintf(c->why, sizeof c->why, "MASTER at %s stepped down (close 4020), no leader "
               "named", c->url->hostport);
    else if (take_leader(c, r, n, bad, sizeof bad) != 0)
      snprintf(c->why, sizeof c->why, "MASTER at %s stepped down (close 4020); its close "
               "reason is not a leader URL (%s)", c->url->hostport, bad);
    else
      snprintf(c->why, sizeof c->why, "MASTER at %s stepped down (close 4020); the leader "
               "is %s", c->url->hostport, c->end.leader_text);
    return;
  }
  for (size_t i = 0; i < n; i++)
    reason[i] = (unsigned char)r[i] < 0x20 || (unsigned char)r[i] >= 0x7f ? '?' : r[i];
  reason[n] = '\0';
  snprintf(c->why, sizeof c->why, "MASTER closed the WebSocket (%u%s%s)", (unsigned)code,
           n ? ": " : "", reason);
}

static void feed(dcm__client_t *c, const char *data, size_t n) {
  c->last_rx = uv_now(c->a->loop);
  int r = dcm__ws_feed(&c->ws, (const uint8_t *)data, n);
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return; /* the agent dropped it */
  if (dcm__ws_close_received(&c->ws)) peer_closed(c);
  if (r < 0 || dcm__ws_done(&c->ws)) {
    if (c->why[0] == '\0') snprintf(c->why, sizeof c->why, "WebSocket protocol error");
    dcm__client_abort(c, NULL);
  } else if (dcm__ws_close_received(&c->ws) && c->phase == DCM_CLIENT_OPEN) {
    c->phase = DCM_CLIENT_CLOSING; /* our close reply is queued; wait for it */
    uv_timer_start(&c->timer, deadline_cb, CLOSE_LINGER_MS, 0);
  }
}

static void upgrading(dcm__client_t *c, const char *data, size_t n) {
  size_t room = sizeof c->head - c->headlen;
  size_t k = n < room ? n : room;
  memcpy(c->head + c->headlen, data, k);
  c->headlen += k;
  char *end = NULL;
  for (size_t i = 3; i < c->headlen; i++) {
    if (memcmp(c->head + i - 3, "\r\n\r\n", 4) == 0) {
      end = c->head + i + 1;
      break;
    }
  }
  if (end == NULL) {
    if (c->headlen == sizeof c->head)
      dcm__client_abort(c, "MASTER's response head is longer than " DCM_CTL_STR(DCM_CTL_HEAD_MAX)
                           " bytes");
    return;
  }
  size_t headlen = (size_t)(end - c->head);
  if (check_head(c, headlen) != 0) {
    dcm__client_abort(c, NULL);
    return;
  }
  if (dcm__ws_init(&c->ws, 1, DCM_CTL_MAX_MESSAGE, &ws_cbs, c) != 0) {
    dcm__client_abort(c, "out of memory");
    return;
  }
  c->ws_ready = 1;
  c->phase = DCM_CLIENT_OPEN;
  c->last_rx = uv_now(c->a->loop);
  /* Bytes after the head (within this read) are the first frames. */
  size_t extra = c->headlen - headlen + (n - k);
  const char *rest = data + (n - extra);
  dcm__agent_on_open(c->a);
  if (extra > 0 && c->phase == DCM_CLIENT_OPEN) feed(c, rest, extra);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dcm__client_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

/* Bytes from MASTER (decrypted under TLS); 1 once the connection is going. */
static int client_input(dcm__client_t *c, const char *data, size_t n) {
  if (c->phase == DCM_CLIENT_UPGRADING)
    upgrading(c, data, n);
  else if (c->ws_ready)
    feed(c, data, n);
  return uv_is_closing((uv_handle_t *)&c->tcp);
}

/* The request head, which carries the secret; the plain copy is wiped. */
static void send_upgrade(dcm__client_t *c) {
  dcm__agent_t *a = c->a;
  uint8_t raw[16];
  char key[32];
  char head[1536];
  if (uv_random(NULL, NULL, raw, sizeof raw, 0, NULL) != 0) {
    for (size_t i = 0; i < sizeof raw; i++) raw[i] = (uint8_t)rand();
  }
  size_t klen = dcm__base64(raw, sizeof raw, key);
  dcm__ws_accept(key, klen, c->accept);
  int n = snprintf(head, sizeof head,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                   "User-Agent: discluster-control/" DCM_VERSION "\r\n%s%s%s\r\n",
                   c->url->path, c->url->hostport, key,
                   a->cfg.auth ? "Authorization: " : "", a->cfg.auth ? a->cfg.auth : "",
                   a->cfg.auth ? "\r\n" : "");
  int r = n > 0 && (size_t)n < sizeof head ? raw_write(c, head, (size_t)n) : UV_E2BIG;
  explicit_bzero(head, sizeof head);
  if (r != 0) {
    snprintf(c->why, sizeof c->why, "upgrade request: %s",
             r == DCM_ESTATE || r == DCM_EINVAL ? "TLS write failed" : uv_strerror(r));
    dcm__client_abort(c, NULL);
    return;
  }
  c->phase = DCM_CLIENT_UPGRADING;
}

static int tls_plain(dcm__tls_t *t, const char *data, size_t len) {
  return client_input(t->data, data, len);
}

static int tls_cipher(dcm__tls_t *t, const void *data, size_t len) {
  return sock_write(t->data, data, len);
}

static int tls_ready(dcm__tls_t *t) {
  dcm__client_t *c = t->data;
  send_upgrade(c);
  return uv_is_closing((uv_handle_t *)&c->tcp);
}

static const dcm__tls_cbs_t tls_cbs = {tls_plain, tls_cipher, tls_ready};

/* The reason a TLS session failed, with a hint where one helps. */
static void tls_failed(dcm__client_t *c) {
  const char *why = c->tls.why, *hint = "";
  if (strstr(why, "wrong version number") || strstr(why, "packet length too long"))
    hint = " (is MASTER serving TLS? it needs --tls-cert and --tls-key)";
  else if (strstr(why, "certificate verify failed"))
    hint = " (check --ca-file and the host name in --master)";
  if (c->tls.peer_closed)
    snprintf(c->why, sizeof c->why, "MASTER closed TLS");
  else if (!c->tls.ready)
    snprintf(c->why, sizeof c->why, "TLS handshake with %.120s failed: %.170s%s",
             c->url->hostport, why, hint);
  else
    snprintf(c->why, sizeof c->why, "TLS error: %s", why);
  dcm__client_abort(c, NULL);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  dcm__client_t *c = s->data;
  if (nread < 0) {
    if (c->why[0] == '\0')
      snprintf(c->why, sizeof c->why, "%s%s",
               nread == UV_EOF ? "MASTER closed the connection" : uv_strerror((int)nread),
               c->phase == DCM_CLIENT_HANDSHAKE ? " during the TLS handshake" : "");
    dcm__client_abort(c, NULL);
  } else if (nread > 0 && !uv_is_closing((uv_handle_t *)&c->tcp)) {
    if (!c->tls_on)
      client_input(c, buf->base, (size_t)nread);
    else if (dcm__tls_feed(&c->tls, buf->base, (size_t)nread, c->pbuf, sizeof c->pbuf) < 0 &&
             !uv_is_closing((uv_handle_t *)&c->tcp))
      tls_failed(c);
  }
}

static void connect_cb(uv_connect_t *req, int status) {
  dcm__client_t *c = req->data;
  dcm__agent_t *a = c->a;
  if (status == UV_ECANCELED || c->phase == DCM_CLIENT_CLOSING) return;
  if (status < 0) {
    snprintf(c->why, sizeof c->why, "connect to %s: %s", c->url->hostport,
             uv_strerror(status));
    dcm__client_abort(c, NULL);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  int r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r != 0) {
    snprintf(c->why, sizeof c->why, "read from %s: %s", c->url->hostport, uv_strerror(r));
    dcm__client_abort(c, NULL);
    return;
  }
  if (!c->url->tls) {
    send_upgrade(c);
    return;
  }
  r = dcm__tls_init(&c->tls, a->cfg.tls_ctx, c->url->host, &tls_cbs, c);
  if (r != 0) {
    snprintf(c->why, sizeof c->why, "TLS setup for %s: %s", c->url->host, dcm_strerror(r));
    dcm__client_abort(c, NULL);
    return;
  }
  c->tls_on = 1;
  c->phase = DCM_CLIENT_HANDSHAKE;
  if (dcm__tls_start(&c->tls) < 0) tls_failed(c);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  dcm__client_t *c = req->data;
  c->gai_pending = 0;
  if (c->phase == DCM_CLIENT_CLOSING) {
    uv_freeaddrinfo(res);
    maybe_done(c);
    return;
  }
  if (status < 0 || res == NULL) {
    snprintf(c->why, sizeof c->why, "cannot resolve %s: %s", c->url->host,
             uv_strerror(status));
    uv_freeaddrinfo(res);
    dcm__client_abort(c, NULL);
    return;
  }
  int r = uv_tcp_init(c->a->loop, &c->tcp);
  if (r == 0) {
    c->tcp_open = 1;
    c->handles++;
    c->tcp.data = c;
    c->creq.data = c;
    r = uv_tcp_connect(&c->creq, &c->tcp, res->ai_addr, connect_cb);
  }
  uv_freeaddrinfo(res);
  if (r != 0) {
    snprintf(c->why, sizeof c->why, "connect to %s: %s", c->url->hostport,
             uv_strerror(r));
    dcm__client_abort(c, NULL);
    return;
  }
  c->phase = DCM_CLIENT_CONNECTING;
}

int dcm__client_start(dcm__agent_t *a, const dcm__ctl_url_t *url, dcm__client_t **out) {
  char port[16];
  struct addrinfo hints;
  dcm__client_t *c = calloc(1, sizeof *c);
  if (c == NULL) return DCM_ENOMEM;
  c->a = a;
  c->url = url;
  c->out.cap = DCM_CTL_MAX_OUTBOUND;
  c->out.wipe = 1;
  c->out.on_error = outq_error;
  c->out.on_drain = outq_drain;
  c->phase = DCM_CLIENT_RESOLVING;
  uv_timer_init(a->loop, &c->timer);
  c->timer.data = c;
  c->handles = 1;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof port, "%d", url->port);
  c->gai.data = c;
  *out = c;
  int r = uv_getaddrinfo(a->loop, &c->gai, gai_cb, url->host, port, &hints);
  if (r != 0) {
    /* No callback will come: report through on_closed like any failure. */
    snprintf(c->why, sizeof c->why, "cannot resolve %s: %s", url->host, uv_strerror(r));
    dcm__client_abort(c, NULL);
    return 0;
  }
  c->gai_pending = 1;
  uv_timer_start(&c->timer, deadline_cb, ms(a->cfg.connect_timeout), 0);
  return 0;
}
