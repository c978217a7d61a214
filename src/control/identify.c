/*
 * identify.c: the clusters' identify endpoint, a loopback HTTP/1.1 server.
 * A cluster asks GET $DISCLUSTER_IDENTIFY_URL?shard=N before each IDENTIFY;
 * the request waits while the agent asks MASTER (`identify`) and is
 * answered 200 when MASTER sends `grant`. The path is the cluster run's
 * random key, so other local users cannot spend the bot's budget and an
 * old run's URL stops working. Request heads are read by httphead.c with
 * the bounds in agent.h; every answer closes the connection.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "httphead.h"
#include "outq.h"

#define CLOSE_LINGER_MS 2000
#define REFUSAL_LOG_MS 10000
#define OUT_CAP 4096 /* an answer is one small head and body */

typedef enum {
  IDENT_HEAD,    /* reading the request head */
  IDENT_WAITING, /* waiting for MASTER's grant */
  IDENT_DONE     /* answered; flushing, then closing */
} ident_phase;

struct dcm__ident_conn_s {
  dcm__ident_t *s;
  dcm__ident_conn_t *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer; /* head deadline, then close linger */
  int handles;
  int overflow; /* counted in noverflow: answered 503 at once */
  ident_phase phase;
  dcm__ctl_head_t head;
  char url[DCM_CTL_IDENT_URL_MAX + 1];
  size_t extra_bytes;
  dcm__cluster_t *cl; /* while waiting */
  int shard;
  dcm__outq_t out;
};

static const char *me(const dcm__ident_t *s) { return s->a->cfg.id; }

/* ---- lifetime ------------------------------------------------------------ */

static void conn_close_cb(uv_handle_t *h) {
  dcm__ident_conn_t *c = h->data;
  if (--c->handles > 0) return;
  free(c);
}

static void conn_abort(dcm__ident_conn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  dcm__ident_t *s = c->s;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->overflow) s->noverflow--; else s->nconns--;
  c->phase = IDENT_DONE;
  c->cl = NULL;
  uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
  uv_close((uv_handle_t *)&c->timer, conn_close_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  dcm__ident_conn_t *c = req->data;
  free(req);
  if (status < 0 && status != UV_ECANCELED) conn_abort(c);
}

static void linger_cb(uv_timer_t *t) { conn_abort(t->data); }

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Flushes the answer and half-closes; closes at the client's EOF or after
 * a bounded linger. Reading on meanwhile (and dropping what comes) keeps
 * the kernel from answering unread bytes with a reset that could overtake
 * the answer. */
static void conn_finish(dcm__ident_conn_t *c) {
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb); /* EALREADY when reading */
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
    free(req);
    conn_abort(c);
    return;
  }
  req->data = c;
  uv_timer_start(&c->timer, linger_cb, CLOSE_LINGER_MS, 0);
}

static void outq_error(dcm__outq_t *q, int status) {
  (void)status;
  conn_abort((dcm__ident_conn_t *)((char *)q - offsetof(dcm__ident_conn_t, out)));
}

/* ---- answers ------------------------------------------------------------- */

static const char *reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    default: return "Service Unavailable";
  }
}

/* Answers and closes; why goes into the body of an error. */
static void answer(dcm__ident_conn_t *c, int status, const char *why) {
  char head[256], body[160];
  if (c->phase == IDENT_DONE) return;
  c->phase = IDENT_DONE;
  c->cl = NULL;
  int blen = status == 200 ? snprintf(body, sizeof body, "{\"shard\":%d}", c->shard)
                           : snprintf(body, sizeof body, "%d %s: %s\n", status, reason(status), why);
  int hlen = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                      "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                      status, reason(status), status == 200 ? "application/json" : "text/plain",
                      blen, status == 405 ? "Allow: GET\r\n" : "");
  uv_timer_stop(&c->timer);
  if (dcm__outq_write(&c->out, (uv_stream_t *)&c->tcp, head, (size_t)hlen) != 0 ||
      dcm__outq_write(&c->out, (uv_stream_t *)&c->tcp, body, (size_t)blen) != 0) {
    conn_abort(c);
    return;
  }
  conn_finish(c);
}

/* The request waiting for shard, or NULL (at most one per shard: a shard
 * is in one running cluster at a time, and 409 refuses a second). */
static dcm__ident_conn_t *waiting_for(dcm__ident_t *s, int shard) {
  for (dcm__ident_conn_t *c = s->conns; c; c = c->next)
    if (c->phase == IDENT_WAITING && c->shard == shard) return c;
  return NULL;
}

/* ---- routing ------------------------------------------------------------- */

static int has_shard(const dcm__cluster_t *cl, int shard) {
  return dcm__ctl_subset(&shard, 1, cl->shards, cl->nshards);
}

static void route(dcm__ident_conn_t *c) {
  dcm__ident_t *s = c->s;
  dcm__agent_t *a = s->a;
  char key[DCM_CTL_KEY_HEX + 1];
  int shard = -1;
  if (c->head.parser.http_major != 1) {
    answer(c, 400, "HTTP/1.x only");
    return;
  }
  if (c->head.parser.method != HTTP_GET) {
    answer(c, 405, "GET only");
    return;
  }
  if (c->head.path_long) {
    answer(c, 414, "request target too long");
    return;
  }
  dcm__ctl_target_kind k = dcm__ctl_identify_target(c->url, c->head.pathlen, key, &shard);
  dcm__cluster_t *cl = NULL;
  if (k != DCM_CTL_TARGET_NO_PATH)
    for (dcm__cluster_t *x = a->clusters; x && !cl; x = x->next)
      if (x->key[0] && dcm__ctl_key_equal(x->key, key)) cl = x;
  if (cl == NULL) {
    answer(c, 404, "not a running cluster's identify URL");
    return;
  }
  if (k == DCM_CTL_TARGET_BAD_SHARD) {
    dcm__debug(&a->log, me(s), "cluster %d: identify request without a usable shard: 400", cl->id);
    answer(c, 400, "expected ?shard=N");
    return;
  }
  c->shard = shard;
  if (cl->destroying || cl->state == DCM_CLUSTER_STOPPING || a->mode == DCM_AGENT_STOPPING) {
    dcm__debug(&a->log, me(s), "cluster %d: identify for shard %d while stopping: 503", cl->id,
               shard);
    answer(c, 503, "the cluster is stopping");
    return;
  }
  if (!has_shard(cl, shard)) {
    dcm__warn(&a->log, me(s), "cluster %d asked to identify shard %d, which is not its own: 403",
              cl->id, shard);
    answer(c, 403, "not this cluster's shard");
    return;
  }
  if (waiting_for(s, shard)) {
    dcm__warn(&a->log, me(s), "cluster %d asked to identify shard %d twice: 409", cl->id, shard);
    answer(c, 409, "a request for this shard is already waiting");
    return;
  }
  c->phase = IDENT_WAITING;
  c->cl = cl;
  dcm__debug(&a->log, me(s), "cluster %d waits to identify shard %d%s", cl->id, shard,
             a->session ? "" : " (asking MASTER once connected)");
  dcm__agent_send_shard_op(a, DCM_OP_IDENTIFY, shard);
}

/* ---- reading ------------------------------------------------------------- */

static void feed_head(dcm__ident_conn_t *c, const char *data, size_t n) {
  size_t used;
  int r = dcm__ctl_head_feed(&c->head, data, n, &used);
  if (r == DCM_CTL_HEAD_DONE) {
    uv_timer_stop(&c->timer);
    c->extra_bytes = n - used;
    route(c);
  } else if (r == 400) {
    answer(c, 400, http_errno_description(HTTP_PARSER_ERRNO(&c->head.parser)));
  } else if (r == 431) {
    answer(c, 431, "request head too long");
  }
}

/* The waiting client is gone: withdraw its request at MASTER. */
static void client_gone(dcm__ident_conn_t *c, const char *why) {
  dcm__agent_t *a = c->s->a;
  if (c->phase == IDENT_WAITING) {
    dcm__info(&a->log, me(c->s), "cluster %d stopped waiting to identify shard %d (%s); "
              "released", c->cl->id, c->shard, why);
    dcm__agent_send_shard_op(a, DCM_OP_RELEASE, c->shard);
  }
  conn_abort(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dcm__ident_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->s->rbuf, sizeof c->s->rbuf);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  dcm__ident_conn_t *c = st->data;
  if (nread < 0) {
    client_gone(c, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
    return;
  }
  if (nread == 0) return;
  switch (c->phase) {
    case IDENT_HEAD:
      feed_head(c, buf->base, (size_t)nread);
      break;
    case IDENT_WAITING:
      c->extra_bytes += (size_t)nread;
      if (c->extra_bytes > DCM_CTL_IDENT_EXTRA_MAX) {
        dcm__warn(&c->s->a->log, me(c->s), "cluster %d sent over %d bytes after its request "
                  "for shard %d: 400, released", c->cl->id, DCM_CTL_IDENT_EXTRA_MAX, c->shard);
        dcm__agent_send_shard_op(c->s->a, DCM_OP_RELEASE, c->shard);
        answer(c, 400, "unexpected data after the request");
      }
      break;
    default:
      break;
  }
}

static void head_deadline_cb(uv_timer_t *t) {
  dcm__ident_conn_t *c = t->data;
  if (c->phase == IDENT_HEAD) answer(c, 408, "no complete request head in time");
}

/* ---- accepting ----------------------------------------------------------- */

static void refuse(dcm__ident_t *s) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (t == NULL) return;
  uv_tcp_init(s->a->loop, t);
  if (uv_accept((uv_stream_t *)&s->tcp, (uv_stream_t *)t) == 0) { /* accept, then drop */ }
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  s->refused++;
  uint64_t now = uv_now(s->a->loop);
  if (s->last_refusal_log == 0 || now - s->last_refusal_log >= REFUSAL_LOG_MS) {
    dcm__warn(&s->a->log, me(s), "identify endpoint: over %d connections; %llu refused so far",
              DCM_CTL_IDENT_MAX_CONNS + DCM_CTL_IDENT_OVERFLOW, (unsigned long long)s->refused);
    s->last_refusal_log = now;
  }
}

static void connection_cb(uv_stream_t *server, int status) {
  dcm__ident_t *s = server->data;
  if (status < 0) {
    dcm__warn(&s->a->log, me(s), "identify endpoint: accept failed: %s", uv_strerror(status));
    return;
  }
  int overflow = s->nconns >= DCM_CTL_IDENT_MAX_CONNS;
  if (overflow && s->noverflow >= DCM_CTL_IDENT_OVERFLOW) {
    refuse(s);
    return;
  }
  dcm__ident_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    refuse(s);
    return;
  }
  c->s = s;
  c->overflow = overflow;
  c->phase = IDENT_HEAD;
  c->out.cap = OUT_CAP;
  c->out.on_error = outq_error;
  uv_tcp_init(s->a->loop, &c->tcp);
  uv_timer_init(s->a->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  if (overflow) s->noverflow++; else s->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_abort(c);
    return;
  }
  if (overflow) {
    answer(c, 503, "too many open requests");
    return;
  }
  dcm__ctl_head_init(&c->head, c->url, DCM_CTL_IDENT_URL_MAX, DCM_CTL_IDENT_HEAD_MAX);
  uv_timer_start(&c->timer, head_deadline_cb, DCM_CTL_IDENT_HEAD_MS, 0);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) conn_abort(c);
}

int dcm__ctl_listen_loopback(uv_loop_t *loop, uv_tcp_t *tcp, void *data, int port, int backlog,
                             uv_connection_cb cb, int *listening, int *bound_port) {
  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  int len = sizeof bound;
  int r = uv_ip4_addr("127.0.0.1", port, &addr);
  if (r != 0) return r;
  if ((r = uv_tcp_init(loop, tcp)) != 0) return r;
  tcp->data = data;
  *listening = 1;
  if ((r = uv_tcp_bind(tcp, (const struct sockaddr *)&addr, 0)) != 0 ||
      (r = uv_listen((uv_stream_t *)tcp, backlog, cb)) != 0 ||
      (r = uv_tcp_getsockname(tcp, (struct sockaddr *)&bound, &len)) != 0)
    return r; /* the caller's stop closes the handle */
  *bound_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  return 0;
}

int dcm__ident_start(dcm__ident_t *s, dcm__agent_t *a, int port) {
  s->a = a;
  return dcm__ctl_listen_loopback(a->loop, &s->tcp, s, port, 128, connection_cb, &s->listening,
                                  &s->port);
}

void dcm__ident_stop(dcm__ident_t *s) {
  if (s->listening && !uv_is_closing((uv_handle_t *)&s->tcp))
    uv_close((uv_handle_t *)&s->tcp, NULL);
  while (s->conns) conn_abort(s->conns);
}

/* ---- keys and MASTER's answers ------------------------------------------- */

int dcm__ident_new_key(char key[DCM_CTL_KEY_HEX + 1]) {
  unsigned char raw[DCM_CTL_KEY_BYTES];
  int r = uv_random(NULL, NULL, raw, sizeof raw, 0, NULL);
  if (r == 0) dcm__ctl_hex(raw, sizeof raw, key);
  memset(raw, 0, sizeof raw);
  return r;
}

void dcm__ident_cluster_gone(dcm__ident_t *s, dcm__cluster_t *cl) {
  dcm__ident_conn_t *c = s->conns, *next;
  for (; c; c = next) {
    next = c->next; /* answer never frees c synchronously, but stay safe */
    if (c->phase != IDENT_WAITING || c->cl != cl) continue;
    dcm__debug(&s->a->log, me(s), "cluster %d is stopping: its request for shard %d gets 503 "
               "and is released", cl->id, c->shard);
    dcm__agent_send_shard_op(s->a, DCM_OP_RELEASE, c->shard);
    answer(c, 503, "the cluster is stopping");
  }
}

void dcm__ident_granted(dcm__ident_t *s, int shard) {
  dcm__ident_conn_t *c = waiting_for(s, shard);
  if (c == NULL) {
    dcm__info(&s->a->log, me(s), "grant for shard %d, but nobody waits for it; returned",
              shard);
    dcm__agent_send_shard_op(s->a, DCM_OP_RELEASE, shard);
    return;
  }
  dcm__info(&s->a->log, me(s), "cluster %d may identify shard %d", c->cl->id, shard);
  answer(c, 200, "");
}

void dcm__ident_refused(dcm__ident_t *s, int shard) {
  dcm__ident_conn_t *c = waiting_for(s, shard);
  if (c == NULL) return;
  dcm__warn(&s->a->log, me(s), "MASTER refused shard %d (not this machine's): cluster %d's "
            "request gets 403", shard, c->cl->id);
  answer(c, 403, "MASTER refused this shard");
}

void dcm__ident_resend(dcm__ident_t *s) {
  size_t n = 0;
  for (dcm__ident_conn_t *c = s->conns; c; c = c->next) {
    if (c->phase != IDENT_WAITING) continue;
    dcm__agent_send_shard_op(s->a, DCM_OP_IDENTIFY, c->shard);
    n++;
  }
  if (n) dcm__info(&s->a->log, me(s), "asked MASTER again for %zu waiting identifies", n);
}

size_t dcm__ident_waiting(const dcm__ident_t *s) {
  size_t n = 0;
  for (const dcm__ident_conn_t *c = s->conns; c; c = c->next) n += c->phase == IDENT_WAITING;
  return n;
}
