/*
 * server.c: the TCP listener and each connection's transport: the HTTP
 * request head (http-parser), routing (/healthz, /status, WebSocket
 * upgrade), the shared-secret check, writes with a bounded outbound queue,
 * per-connection deadlines, and closing. Protocol decisions are session.c's.
 * With a certificate, TLS (tls.c) sits between the socket and all of that:
 * reads are decrypted before the HTTP parser or wslay see them, writes are
 * encrypted into the same bounded queue, and the head timeout covers the
 * TLS handshake plus the request head.
 *
 * Credentials: `auth` (CONTROLs joining, POST /rebalance) and the read-only
 * `status_auth` (GET /status), each given raw or as "Bearer <secret>" in
 * Authorization and compared in constant time.
 * Unidentified connections are counted per source address by unauth.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "internal.h"
#include "outq.h"
#include "wskey.h"

#define CLOSE_LINGER_MS 2000


static void conn_finish(dcm__conn_t *c);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* ---- lifetime --------------------------------------------------------- */

static void conn_free_cb(uv_handle_t *h) {
  dcm__conn_t *c = h->data;
  dcm_master_t *m = c->m;
  if (--c->handles_open > 0) return;
  if (c->ws_ready) dcm__ws_free(&c->ws);
  if (c->tls_on) dcm__tls_free(&c->tls);
  dcm__outq_free(&c->out);
  free(c->h);
  free(c);
  dcm__master_release(m);
}

/* Detaches the connection from the protocol exactly once. */
static void conn_detach(dcm__conn_t *c) {
  dcm_master_t *m = c->m;
  if (c->counted_unauth) {
    c->counted_unauth = 0;
    m->unauth--;
  }
  dcm__unauth_unlink(c);
  if (c->phase == DCM_CONN_HELLO || c->phase == DCM_CONN_ACTIVE)
    dcm__session_closed(c);
}

/* reset: RST rather than FIN, so evicted peers leave no TIME_WAIT here. */
static void conn_drop(dcm__conn_t *c, int reset) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  conn_detach(c);
  c->phase = DCM_CONN_CLOSING;
  dcm__list_remove(&c->link);
  if (!reset || uv_tcp_close_reset(&c->tcp, conn_free_cb) != 0)
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
  uv_close((uv_handle_t *)&c->timer, conn_free_cb);
}

void dcm__conn_abort(dcm__conn_t *c) { conn_drop(c, 0); }

void dcm__conn_evict(dcm__conn_t *c) { conn_drop(c, 1); }

static void shutdown_cb(uv_shutdown_t *req, int status) {
  dcm__conn_t *c = req->data;
  free(req);
  (void)status;
  if (status != UV_ECANCELED) dcm__conn_abort(c);
}

/* Graceful end: flush what is queued, half-close, then close. */
static void conn_finish(dcm__conn_t *c) {
  if (c->finishing || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  c->finishing = 1;
  conn_detach(c);
  c->phase = DCM_CONN_CLOSING;
  uv_read_stop((uv_stream_t *)&c->tcp);
  if (c->tls_on) dcm__tls_close(&c->tls); /* close_notify goes before the FIN */
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req) req->data = c;
  if (req == NULL || dcm__outq_shutdown(&c->out, (uv_stream_t *)&c->tcp, req, shutdown_cb) != 0) {
    free(req);
    dcm__conn_abort(c);
    return;
  }
  dcm__conn_set_deadline(c, uv_now(c->m->loop) + CLOSE_LINGER_MS);
}

/* ---- writes ----------------------------------------------------------- */

static void outq_error(dcm__outq_t *q, int status) {
  (void)status;
  dcm__conn_abort(DCM_CONTAINER(q, dcm__conn_t, out));
}

static int live(const dcm__conn_t *c) {
  return !c->finishing && !uv_is_closing((const uv_handle_t *)&c->tcp);
}

/* Everything queued is written: send a held pong, read again. */
static void outq_drain(dcm__outq_t *q) {
  dcm__conn_t *c = DCM_CONTAINER(q, dcm__conn_t, out);
  if (!live(c)) return;
  if (c->ws_ready && dcm__ws_drained(&c->ws) != 0) {
    dcm__conn_abort(c);
    return;
  }
  if (c->reads_paused && !dcm__outq_full(&c->out)) {
    c->reads_paused = 0;
    dcm__debug(&c->m->log, c->machine ? c->machine->id : NULL,
               "peer %s reads its replies again: reads resumed", c->peer);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) dcm__conn_abort(c);
  }
}

/* Bytes for the socket: ciphertext under TLS. */
static int queue_write(dcm__conn_t *c, const void *data, size_t len) {
  int r = dcm__outq_write(&c->out, (uv_stream_t *)&c->tcp, data, len);
  if (r == 0) c->m->counters.bytes_out += len;
  if (r == UV_ENOBUFS)
    dcm__warn(&c->m->log, c->machine ? c->machine->id : NULL,
              "peer %s is not reading: outbound queue over %zu bytes, closing",
              c->peer, c->m->o.max_outbound);
  return r;
}

static int tls_cipher(dcm__tls_t *t, const void *data, size_t len) {
  return queue_write(t->data, data, len);
}

/* Plaintext HTTP or WebSocket bytes. After a handshake that failed on a
   plaintext HTTP request, the one reply saying so goes in the clear. */
static int conn_write(dcm__conn_t *c, const void *data, size_t len) {
  if (c->tls_on && !c->tls.plain_http) return dcm__tls_write(&c->tls, data, len);
  return queue_write(c, data, len);
}

static int ws_write(dcm__ws_t *ws, const uint8_t *data, size_t len) {
  return conn_write(ws->data, data, len) == 0 ? 0 : -1;
}

static int ws_idle(dcm__ws_t *ws) {
  dcm__conn_t *c = ws->data;
  return c->out.bytes == 0;
}

static int can_send(const dcm__conn_t *c) {
  return (c->phase == DCM_CONN_HELLO || c->phase == DCM_CONN_ACTIVE) && !c->send_failed;
}

static int sent(dcm__conn_t *c, int r) {
  c->m->counters.packets_out += r == 0;
  if (r != 0) {
    /* Callers are in the middle of a change: abort on the next loop turn
       rather than under their feet. */
    c->send_failed = 1;
    dcm__conn_set_deadline(c, uv_now(c->m->loop));
  }
  return r;
}

int dcm__conn_send(dcm__conn_t *c, const char *text, size_t len) {
  return can_send(c) ? sent(c, dcm__ws_send(&c->ws, text, len)) : DCM_ESTATE;
}

size_t dcm__conn_frame(dcm_master_t *m, const char *text, size_t len, uint8_t *out,
                       size_t cap) {
  return m->wspool ? dcm__ws_encode(m->wspool, text, len, out, cap) : 0;
}

int dcm__conn_send_frame(dcm__conn_t *c, const uint8_t *frame, size_t len) {
  return can_send(c) ? sent(c, dcm__ws_send_frame(&c->ws, frame, len)) : DCM_ESTATE;
}

void dcm__conn_close(dcm__conn_t *c, uint16_t code, const char *reason) {
  if (c->phase != DCM_CONN_HELLO && c->phase != DCM_CONN_ACTIVE) return;
  conn_detach(c);
  c->phase = DCM_CONN_CLOSING;
  if (dcm__ws_close(&c->ws, code, reason) != 0 || dcm__ws_done(&c->ws)) {
    conn_finish(c);
    return;
  }
  /* wait for the peer's close frame, but not for long */
  dcm__conn_set_deadline(c, uv_now(c->m->loop) + CLOSE_LINGER_MS);
}

/* ---- deadlines -------------------------------------------------------- */

static uint64_t deadline(const dcm__conn_t *c) {
  return c->slide ? c->last_heartbeat + c->slide : c->deadline;
}

static void timer_cb(uv_timer_t *t) {
  dcm__conn_t *c = t->data;
  uint64_t now = uv_now(c->m->loop), due = deadline(c);
  if (c->send_failed) {
    dcm__conn_abort(c);
    return;
  }
  if (now < due) { /* moved later since armed: re-arm lazily */
    uv_timer_start(&c->timer, timer_cb, due - now, 0);
    return;
  }
  switch (c->phase) {
    case DCM_CONN_HTTP:
      dcm__info(&c->m->log, NULL, "peer %s: no complete %s within %.3gs, closing", c->peer,
                c->tls_on && !c->tls.ready ? "TLS handshake" : "request head",
                c->m->o.head_timeout);
      dcm__conn_abort(c);
      break;
    case DCM_CONN_HELLO:
    case DCM_CONN_ACTIVE:
      dcm__session_deadline(c);
      break;
    default:
      dcm__conn_abort(c);
  }
}

/* Only a deadline earlier than the armed one re-arms: a later one waits
   for the timer, which re-arms towards it. */
static void arm(dcm__conn_t *c) {
  uint64_t now = uv_now(c->m->loop), due = deadline(c);
  int armed = uv_is_active((uv_handle_t *)&c->timer);
  if (!armed || due < now + uv_timer_get_due_in(&c->timer))
    uv_timer_start(&c->timer, timer_cb, due > now ? due - now : 0, 0);
}

void dcm__conn_set_deadline(dcm__conn_t *c, uint64_t deadline) {
  c->deadline = deadline;
  c->slide = 0;
  arm(c);
}

void dcm__conn_slide_deadline(dcm__conn_t *c, uint64_t slide) {
  c->slide = slide ? slide : 1; /* 0 means no slide */
  arm(c);
}

/* ---- HTTP ------------------------------------------------------------- */

static void http_reply(dcm__conn_t *c, int status, const char *reason,
                       const char *extra, const char *ctype, const char *body,
                       size_t bodylen) {
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                   status, reason, ctype, bodylen, extra ? extra : "");
  c->phase = DCM_CONN_PLAIN;
  if (conn_write(c, head, (size_t)n) != 0 || (bodylen && conn_write(c, body, bodylen) != 0)) {
    dcm__conn_abort(c);
    return;
  }
  conn_finish(c);
}

static void http_error(dcm__conn_t *c, int status, const char *reason,
                       const char *extra) {
  char body[128];
  int n = snprintf(body, sizeof body, "%d %s\n", status, reason);
  dcm__debug(&c->m->log, NULL, "peer %s: HTTP %d %s", c->peer, status, reason);
  http_reply(c, status, reason, extra, "text/plain", body, (size_t)n);
}

/* HA: /healthz and a follower's /status say who leads; a follower refuses a
   CONTROL's upgrade naming the leader (where the leader is is no secret). */
static void ha_reply(dcm__conn_t *c, int refuse) {
  char body[512], extra[256];
  size_t n = dcm__ha_describe(c->m, body, sizeof body - 1);
  const char *leader = dcm__ha_leader(c->m);
  snprintf(extra, sizeof extra, "Discluster-Role: %s\r\n%s%s%s%s", dcm__ha_role(c->m),
           leader ? "Discluster-Leader: " : "", leader ? leader : "", leader ? "\r\n" : "",
           refuse ? "Retry-After: 1\r\n" : "");
  body[n++] = '\n';
  if (refuse)
    dcm__debug(&c->m->log, NULL, "peer %s: upgrade refused: following %s", c->peer,
               leader ? leader : "(no leader yet)");
  http_reply(c, refuse ? 503 : 200, refuse ? "Service Unavailable" : "OK", extra,
             "application/json", body, n);
}

/* 1 if the comma-separated list contains token, case-insensitively. */
static int has_token(const char *list, const char *token) {
  size_t tl = strlen(token);
  const char *p = list;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    const char *s = p;
    while (*p && *p != ',') p++;
    const char *e = p;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if ((size_t)(e - s) == tl && strncasecmp(s, token, tl) == 0) return 1;
  }
  return 0;
}

/* Time depends on the candidate's length only, never on where it differs. */
static int secret_equal(const char *cand, size_t clen, const char *secret) {
  size_t slen = strlen(secret);
  volatile unsigned char diff = (unsigned char)(clen != slen);
  for (size_t i = 0; i < clen; i++)
    diff |= (unsigned char)(cand[i] ^ secret[slen ? i % slen : 0]);
  return diff == 0;
}

/* An Authorization value, the raw secret or "Bearer <secret>", against a
   configured secret (none configured: no match). */
static int auth_matches(const char *v, size_t vl, const char *secret) {
  if (secret == NULL || secret[0] == '\0') return 0;
  if (vl > 7 && strncasecmp(v, "Bearer ", 7) == 0) v += 7, vl -= 7;
  return secret_equal(v, vl, secret);
}

static void header_done(dcm__conn_t *c) {
  if (!c->h->in_value) return;
  c->h->in_value = 0;
  char *v = c->h->value;
  size_t vl = c->h->valuelen;
  while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
  while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
  v[vl] = '\0';
  if (c->h->field_truncated) goto out;
  if (strcasecmp(c->h->field, "upgrade") == 0) {
    c->h->hdr_upgrade = has_token(v, "websocket");
  } else if (strcasecmp(c->h->field, "connection") == 0) {
    c->h->hdr_conn_upgrade |= has_token(v, "upgrade");
  } else if (strcasecmp(c->h->field, "sec-websocket-version") == 0) {
    c->h->hdr_version13 = strcmp(v, "13") == 0;
  } else if (strcasecmp(c->h->field, "sec-websocket-key") == 0) {
    c->h->hdr_has_key = !c->h->value_truncated && dcm__ws_key_valid(v, vl);
    if (c->h->hdr_has_key) memcpy(c->h->wskey, v, vl + 1);
  } else if (strcasecmp(c->h->field, "authorization") == 0) {
    int ok = !c->h->value_truncated;
    c->h->hdr_auth_ok = ok && auth_matches(v, vl, c->m->o.auth);
    c->h->hdr_status_ok = ok && auth_matches(v, vl, c->m->o.status_auth);
    memset(c->h->value, 0, sizeof c->h->value); /* do not keep the secret */
  }
out:
  c->h->fieldlen = c->h->valuelen = 0;
  c->h->field_truncated = c->h->value_truncated = 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  dcm__conn_t *c = p->data;
  size_t room = sizeof c->h->path - 1 - c->h->pathlen;
  if (len > room) len = room;
  memcpy(c->h->path + c->h->pathlen, at, len);
  c->h->pathlen += len;
  c->h->path[c->h->pathlen] = '\0';
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  dcm__conn_t *c = p->data;
  header_done(c);
  if (c->h->fieldlen + len > DCM_HDR_FIELD_MAX) {
    c->h->field_truncated = 1;
    len = DCM_HDR_FIELD_MAX - c->h->fieldlen;
  }
  memcpy(c->h->field + c->h->fieldlen, at, len);
  c->h->fieldlen += len;
  c->h->field[c->h->fieldlen] = '\0';
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  dcm__conn_t *c = p->data;
  c->h->in_value = 1;
  if (c->h->valuelen + len > DCM_HDR_VALUE_MAX) {
    c->h->value_truncated = 1;
    len = DCM_HDR_VALUE_MAX - c->h->valuelen;
  }
  memcpy(c->h->value + c->h->valuelen, at, len);
  c->h->valuelen += len;
  return 0;
}

/* 1: no body. What follows the head is WebSocket data or ignored. */
static int on_headers_complete(http_parser *p) {
  dcm__conn_t *c = p->data;
  header_done(c);
  c->h->head_done = 1;
  return 1;
}

/* Stops the parser after the first request: pipelined ones are not parsed. */
static int on_message_complete(http_parser *p) {
  (void)p;
  return 1;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* May join as a CONTROL or POST /rebalance: the CONTROL secret, or none set (no_auth). */
static int authorized(dcm__conn_t *c) {
  const char *secret = c->m->o.auth;
  return secret == NULL || secret[0] == '\0' || c->h->hdr_auth_ok;
}

/* May use read-only routes: either secret, or none set at all. */
static int may_read(dcm__conn_t *c) {
  const char *a = c->m->o.auth, *s = c->m->o.status_auth;
  if ((a == NULL || a[0] == '\0') && (s == NULL || s[0] == '\0')) return 1;
  return c->h->hdr_auth_ok || c->h->hdr_status_ok;
}

/* 401, or 403 for the read-only secret where it does not reach. */
static void refuse_auth(dcm__conn_t *c, const char *what) {
  if (c->h->hdr_status_ok) {
    dcm__warn(&c->m->log, NULL, "peer %s: %s refused: the read-only status secret does not "
              "allow it", c->peer, what);
    http_error(c, 403, "Forbidden", NULL);
    return;
  }
  dcm__warn(&c->m->log, NULL, "peer %s: %s refused: missing or wrong shared secret", c->peer,
            what);
  http_error(c, 401, "Unauthorized", "WWW-Authenticate: Bearer\r\n");
}

static const dcm__ws_cbs_t ws_cbs;

static void upgrade(dcm__conn_t *c, const char *rest, size_t restlen) {
  dcm_master_t *m = c->m;
  if (!c->h->hdr_upgrade || !c->h->hdr_conn_upgrade || !c->h->hdr_has_key) {
    http_error(c, 400, "Bad Request", NULL);
    return;
  }
  if (!c->h->hdr_version13) {
    http_error(c, 426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
    return;
  }
  if (!authorized(c)) {
    refuse_auth(c, "upgrade");
    return;
  }
  dcm__ws_init_pooled(&c->ws, m->wspool, m->o.max_message, &ws_cbs, c);
  c->ws_ready = 1;
  char accept[DCM_WS_ACCEPT_LEN + 1];
  char head[256];
  dcm__ws_accept(c->h->wskey, strlen(c->h->wskey), accept);
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
  if (conn_write(c, head, (size_t)n) != 0) {
    dcm__conn_abort(c);
    return;
  }
  c->phase = DCM_CONN_HELLO;
  dcm__unauth_touch(c);
  dcm__session_open(c);
  if (restlen && c->phase == DCM_CONN_HELLO) {
    if (dcm__ws_feed(&c->ws, (const uint8_t *)rest, restlen) != 0 || dcm__ws_done(&c->ws))
      conn_finish(c);
  }
}

/* POST /rebalance: an operator's command, so the secret when one is set. */
static void rebalance(dcm__conn_t *c) {
  static const char started[] = "rebalance started\n", early[] = "not running yet\n",
                    none[] = "no live machine that is neither draining nor standby\n";
  if (c->h->parser.method != HTTP_POST) {
    http_error(c, 405, "Method Not Allowed", "Allow: POST\r\n");
  } else if (!authorized(c)) {
    refuse_auth(c, "POST /rebalance");
  } else if (dcm__ha_follower(c->m)) {
    ha_reply(c, 1); /* the leader rebalances: it is named */
  } else {
    int r = dcm_master_rebalance(c->m);
    dcm__info(&c->m->log, NULL, "peer %s: POST /rebalance: %s", c->peer,
              r == 0 ? "started" : dcm_strerror(r));
    if (r == 0)
      http_reply(c, 202, "Accepted", NULL, "text/plain", started, sizeof started - 1);
    else
      http_reply(c, 409, "Conflict", NULL, "text/plain", r == DCM_ESTATE ? early : none,
                 r == DCM_ESTATE ? sizeof early - 1 : sizeof none - 1);
  }
}

/* GET /metrics: behind the same check as /status. */
static void metrics(dcm__conn_t *c) {
  size_t len;
  if (!may_read(c)) { /* either secret: a monitoring system gets the read-only one */
    http_error(c, 401, "Unauthorized", "WWW-Authenticate: Bearer\r\n");
    return;
  }
  char *body = dcm__metrics_text(c->m, &len);
  if (body == NULL)
    http_error(c, 500, "Internal Server Error", NULL);
  else
    http_reply(c, 200, "OK", NULL, "text/plain; version=0.0.4; charset=utf-8", body, len);
  free(body);
}

static void route(dcm__conn_t *c, const char *rest, size_t restlen) {
  dcm_master_t *m = c->m;
  char *q = strchr(c->h->path, '?');
  if (q) *q = '\0';
  if (c->h->parser.http_major != 1 || c->h->parser.http_minor > 1) {
    http_error(c, 400, "Bad Request", NULL);
  } else if (strcmp(c->h->path, "/rebalance") == 0) {
    rebalance(c);
  } else if (c->h->parser.method != HTTP_GET) {
    http_error(c, 405, "Method Not Allowed", "Allow: GET\r\n");
  } else if (c->h->parser.upgrade || c->h->hdr_upgrade) {
    if (dcm__ha_follower(m))
      ha_reply(c, 1);
    else
      upgrade(c, rest, restlen);
  } else if (strcmp(c->h->path, "/healthz") == 0) {
    if (m->o.etcd)
      ha_reply(c, 0);
    else
      http_reply(c, 200, "OK", "Discluster-Role: standalone\r\n", "text/plain", "ok\n", 3);
  } else if (strcmp(c->h->path, "/status") == 0) {
    if (!may_read(c)) {
      http_error(c, 401, "Unauthorized", "WWW-Authenticate: Bearer\r\n");
      return;
    }
    if (dcm__ha_follower(m)) { /* it has no fleet: who leads */
      ha_reply(c, 0);
      return;
    }
    size_t len;
    const char *body = dcm__status_json(m, &len);
    if (body == NULL) {
      http_error(c, 500, "Internal Server Error", NULL);
      return;
    }
    http_reply(c, 200, "OK", NULL, "application/json", body, len);
    lua_settop(m->json, 0);
  } else if (strcmp(c->h->path, "/metrics") == 0) {
    metrics(c);
  } else {
    http_error(c, 404, "Not Found", NULL);
  }
}

static void feed_http(dcm__conn_t *c, const char *data, size_t len) {
  size_t limit = c->m->o.max_head;
  size_t room = limit - c->h->head_bytes;
  size_t take = len < room ? len : room;
  size_t n = http_parser_execute(&c->h->parser, &parser_settings, data, take);
  c->h->head_bytes += n;
  if (c->h->head_done) { /* n ends exactly at the head */
    route(c, data + n, len - n);
    free(c->h); /* routed: an idle CONTROL keeps none of the head's state */
    c->h = NULL;
    return;
  }
  enum http_errno e = HTTP_PARSER_ERRNO(&c->h->parser);
  if (e != HPE_OK) {
    dcm__debug(&c->m->log, NULL, "peer %s: bad request head: %s", c->peer,
               http_errno_description(e));
    http_error(c, 400, "Bad Request", NULL);
  } else if (c->h->head_bytes >= limit) {
    dcm__warn(&c->m->log, NULL, "peer %s: request head over %zu bytes", c->peer, limit);
    http_error(c, 431, "Request Header Fields Too Large", NULL);
  }
}

/* ---- reads ------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dcm__conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->m->readbuf, sizeof c->m->readbuf);
}

/* Plaintext from the peer (decrypted under TLS). 1 once the connection is
   going: whatever follows is dropped. */
static int conn_input(dcm__conn_t *c, const char *data, size_t len) {
  switch (c->phase) {
    case DCM_CONN_HTTP:
      feed_http(c, data, len);
      break;
    case DCM_CONN_HELLO:
    case DCM_CONN_ACTIVE:
    case DCM_CONN_CLOSING:
      if (!c->ws_ready) break;
      if (dcm__ws_feed(&c->ws, (const uint8_t *)data, len) != 0 || dcm__ws_done(&c->ws)) {
        uint16_t code = dcm__ws_close_code(&c->ws);
        if (code == DCM_CLOSE_TOO_BIG)
          dcm__warn(&c->m->log, c->machine ? c->machine->id : NULL,
                    "peer %s: message over %zu bytes, closed with 1009", c->peer,
                    c->m->o.max_message);
        else if (code == 1002)
          dcm__info(&c->m->log, c->machine ? c->machine->id : NULL,
                    "peer %s: WebSocket framing error, closed with 1002", c->peer);
        conn_finish(c);
      } else if (live(c) && !c->reads_paused && dcm__outq_full(&c->out)) {
        /* Replies pile up: read no more requests for them until they drain. */
        c->reads_paused = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
        dcm__debug(&c->m->log, c->machine ? c->machine->id : NULL,
                   "peer %s is not reading: %zu bytes queued, reads paused", c->peer,
                   c->out.bytes);
      }
      break;
    default:
      break; /* a plain reply is on its way; ignore what follows */
  }
  return !live(c);
}

static int tls_plain(dcm__tls_t *t, const char *data, size_t len) {
  return conn_input(t->data, data, len);
}

static const dcm__tls_cbs_t tls_cbs = {tls_plain, tls_cipher, NULL};

/* Ciphertext: decrypted piecewise into the shared plaintext buffer. */
static void tls_input(dcm__conn_t *c, const char *data, size_t len) {
  static const char hint[] = "this port speaks TLS: use https:// or wss://\n";
  if (dcm__tls_feed(&c->tls, data, len, c->m->plainbuf, sizeof c->m->plainbuf) >= 0 || !live(c))
    return;
  const char *id = c->machine ? c->machine->id : NULL;
  if (c->tls.peer_closed) {
    dcm__debug(&c->m->log, id, "peer %s closed TLS", c->peer);
  } else if (c->tls.plain_http) {
    dcm__info(&c->m->log, NULL, "peer %s: plaintext HTTP on the TLS port, answered 400", c->peer);
    http_reply(c, 400, "Bad Request", NULL, "text/plain", hint, sizeof hint - 1);
    return;
  } else if (!c->tls.ready) {
    dcm__info(&c->m->log, NULL, "peer %s: TLS handshake failed: %s", c->peer, c->tls.why);
  } else {
    dcm__info(&c->m->log, id, "peer %s: TLS error: %s, closing", c->peer, c->tls.why);
  }
  conn_finish(c); /* an alert may be queued: it goes first */
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  dcm__conn_t *c = s->data;
  if (nread == 0) return;
  if (nread > 0) c->m->counters.bytes_in += (uint64_t)nread;
  if (nread < 0) {
    if (c->phase == DCM_CONN_HELLO || c->phase == DCM_CONN_ACTIVE)
      dcm__debug(&c->m->log, c->machine ? c->machine->id : NULL,
                 "peer %s: connection dropped (%s)", c->peer, uv_err_name((int)nread));
    dcm__conn_abort(c);
    return;
  }
  if (c->tls_on)
    tls_input(c, buf->base, (size_t)nread);
  else
    conn_input(c, buf->base, (size_t)nread);
}

static void ws_message(dcm__ws_t *ws, const char *msg, size_t len) {
  dcm__conn_t *c = ws->data;
  c->m->counters.packets_in++;
  if (c->send_failed) return;
  if (c->phase == DCM_CONN_ACTIVE) {
    dcm__session_message(c, msg, len);
  } else if (c->phase == DCM_CONN_HELLO) {
    dcm__session_message(c, msg, len);
    /* identified (session.c uncounts it): its address slot goes */
    if (!c->counted_unauth && c->addr) dcm__unauth_unlink(c);
  }
}

static const dcm__ws_cbs_t ws_cbs = {ws_message, ws_write, ws_idle};

/* The fields every heartbeat touches share the connection's first line. */
_Static_assert(offsetof(dcm__conn_t, tcp) <= 40, "the hot block outgrew its line");

/* ---- accept ----------------------------------------------------------- */

/* Out of memory for a connection: accept and close it at once. */
static void refuse(dcm_master_t *m, uv_stream_t *server) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (t == NULL) return;
  uv_tcp_init(m->loop, t);
  if (uv_accept(server, (uv_stream_t *)t) == 0) { /* accept, then drop */ }
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  m->refused++;
  uint64_t now = uv_now(m->loop);
  if (now - m->last_refusal_log >= 10000 || m->last_refusal_log == 0) {
    dcm__warn(&m->log, NULL, "out of memory: refused %lu connections so far", m->refused);
    m->last_refusal_log = now;
  }
}

/* A new connection: accepted from server, or (server NULL) over fd.
   0 once it owns the socket, even if it is already closing. */
static int conn_open(dcm_master_t *m, uv_stream_t *server, uv_os_sock_t fd) {
  unsigned char key[16];
  char addr[INET6_ADDRSTRLEN + 4];
  dcm__conn_t *c = dcm__calloc_lines(sizeof *c);
  if (c == NULL) {
    if (server) refuse(m, server);
    return DCM_ENOMEM;
  }
  c->m = m;
  uv_tcp_init(m->loop, &c->tcp);
  uv_timer_init(m->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  c->out.cap = m->o.max_outbound;
  c->out.on_error = outq_error;
  c->out.on_drain = outq_drain;
  dcm__list_init(&c->addr_link);
  m->open_handles++; /* released in conn_free_cb */
  dcm__list_push(&m->conns, &c->link);
  c->phase = DCM_CONN_HTTP;
  int r = server ? uv_accept(server, (uv_stream_t *)&c->tcp) : uv_tcp_open(&c->tcp, fd);
  if (r != 0) {
    dcm__conn_abort(c);
    return r;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  dcm__unauth_peer(&c->tcp, c->peer, sizeof c->peer, key, addr, sizeof addr);
  dcm__unauth_make_room(m, key, addr);
  c->h = calloc(1, sizeof *c->h);
  if (c->h == NULL || dcm__unauth_link(c, key, addr) != 0) {
    dcm__conn_abort(c);
    return 0; /* from here on fd is the connection's, closed with it */
  }
  c->counted_unauth = 1;
  m->unauth++;
  if (m->tls_ctx) {
    if (dcm__tls_init(&c->tls, m->tls_ctx, NULL, &tls_cbs, c) != 0) {
      dcm__conn_abort(c);
      return 0;
    }
    c->tls_on = 1;
  }
  http_parser_init(&c->h->parser, HTTP_REQUEST);
  c->h->parser.data = c;
  dcm__conn_set_deadline(c, uv_now(m->loop) + dcm__ms(m->o.head_timeout));
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) dcm__conn_abort(c);
  return 0;
}

static void connection_cb(uv_stream_t *server, int status) {
  dcm_master_t *m = server->data;
  if (status < 0) {
    dcm__warn(&m->log, NULL, "accept failed: %s", uv_strerror(status));
    return;
  }
  if (m->stopping) return;
  conn_open(m, server, -1);
}

int dcm__server_adopt(dcm_master_t *m, uv_os_sock_t fd) {
  if (!m->started || m->stopping) return DCM_ESTATE;
  return conn_open(m, NULL, fd);
}

int dcm__server_start(dcm_master_t *m) {
  struct sockaddr_storage addr;
  const char *host = strcmp(m->o.listen_host, "localhost") == 0 ? "127.0.0.1" : m->o.listen_host;
  int r = strchr(host, ':')
              ? uv_ip6_addr(host, m->o.listen_port, (struct sockaddr_in6 *)&addr)
              : uv_ip4_addr(host, m->o.listen_port, (struct sockaddr_in *)&addr);
  if (r != 0) return r;
  if (m->wspool == NULL && (m->wspool = dcm__ws_pool_new(0)) == NULL) return UV_ENOMEM;
  if ((r = dcm__unauth_init(m)) != 0) return r;
  if ((r = uv_tcp_init(m->loop, &m->listener)) != 0) {
    free(m->addr_counts);
    m->addr_counts = NULL;
    return r;
  }
  m->listener.data = m;
  m->open_handles++;
  if ((r = uv_tcp_bind(&m->listener, (struct sockaddr *)&addr, 0)) != 0 ||
      (r = uv_listen((uv_stream_t *)&m->listener, 1024, connection_cb)) != 0) {
    uv_close((uv_handle_t *)&m->listener, dcm__handle_closed);
    free(m->addr_counts);
    m->addr_counts = NULL;
    return r;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&m->listener, (struct sockaddr *)&bound, &len);
  m->port = ntohs(bound.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&bound)->sin6_port
                      : ((struct sockaddr_in *)&bound)->sin_port);
  return 0;
}

void dcm__server_stop(dcm_master_t *m) {
  if (!uv_is_closing((uv_handle_t *)&m->listener))
    uv_close((uv_handle_t *)&m->listener, dcm__handle_closed);
  dcm__unauth_release(m); /* now, or when the last unidentified one goes */
}
