/*
 * metrics.c: the agent's GET /metrics (--metrics-port), a loopback
 * HTTP/1.1 listener separate from the identify endpoint: clusters by
 * state, restarts, identify requests waiting, the session with MASTER
 * (which of the MASTERs, switches between them, the highest epoch).
 * The page is written with the core's Prometheus writer (metrics.h).
 * Bounds in agent.h; every answer closes the connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "discluster/master.h"
#include "httphead.h"
#include "metrics.h"

#define CLOSE_LINGER_MS 2000

struct dcm__ctl_mconn_s {
  dcm__ctl_metrics_t *s;
  dcm__ctl_mconn_t *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer; /* head deadline, then close linger */
  int handles, answered;
  dcm__ctl_head_t head;
  char path[64];
  dcm__outq_t out;
};

/* ---- lifetime ------------------------------------------------------------ */

static void close_cb(uv_handle_t *h) {
  dcm__ctl_mconn_t *c = h->data;
  if (--c->handles > 0) return;
  dcm__outq_free(&c->out);
  free(c);
}

static void conn_abort(dcm__ctl_mconn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  dcm__ctl_metrics_t *s = c->s;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  uv_close((uv_handle_t *)&c->tcp, close_cb);
  uv_close((uv_handle_t *)&c->timer, close_cb);
}

/* The answer is out: the close follows the client's EOF or the linger. */
static void shutdown_cb(uv_shutdown_t *req, int status) {
  dcm__ctl_mconn_t *c = req->data;
  free(req);
  if (status < 0 && status != UV_ECANCELED) conn_abort(c);
}

static void linger_cb(uv_timer_t *t) { conn_abort(t->data); }

static void outq_error(dcm__outq_t *q, int status) {
  (void)status;
  conn_abort((dcm__ctl_mconn_t *)((char *)q - offsetof(dcm__ctl_mconn_t, out)));
}

/* ---- the page ------------------------------------------------------------ */

static char *page(dcm__agent_t *a, size_t *len) {
  static const dcm__cluster_state states[] = {DCM_CLUSTER_WAITING, DCM_CLUSTER_STARTING,
                                              DCM_CLUSTER_READY,   DCM_CLUSTER_BACKOFF,
                                              DCM_CLUSTER_FAILED,  DCM_CLUSTER_STOPPING};
  uint64_t count[6] = {0};
  char proto[16];
  dcm__prom_t p;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if ((unsigned)cl->state < 6) count[cl->state]++;
  snprintf(proto, sizeof proto, "%d", DCM_PROTOCOL_VERSION);
  dcm__prom_init(&p);
  dcm__prom_family(&p, "discluster_control_build_info", "gauge", "The build: always 1.");
  const char *build[] = {"version", DCM_VERSION, "protocol", proto, NULL};
  dcm__prom_int(&p, "discluster_control_build_info", build, 1);
  dcm__prom_family(&p, "discluster_control_connected", "gauge",
                   "1 while a session with MASTER is up (initialise received).");
  dcm__prom_int(&p, "discluster_control_connected", NULL, a->session != 0);
  dcm__prom_family(&p, "discluster_control_master", "gauge",
                   "Each MASTER given (index in the list, URL): 1 for the one of the session.");
  for (size_t i = 0; i < a->cfg.nmasters; i++) {
    char index[24], url[DCM_CTL_URL_MAX + 16];
    snprintf(index, sizeof index, "%zu", i);
    dcm__ctl_url_format(&a->cfg.masters[i], url, sizeof url);
    const char *labels[] = {"index", index, "url", url, NULL};
    dcm__prom_int(&p, "discluster_control_master", labels,
                  a->session && a->masters.session_master == (long)i);
  }
  dcm__prom_family(&p, "discluster_control_master_switches_total", "counter",
                   "Sessions begun with another MASTER than the session before.");
  dcm__prom_int(&p, "discluster_control_master_switches_total", NULL, a->masters.switches);
  dcm__prom_family(&p, "discluster_control_master_epoch", "gauge",
                   "The highest leader epoch seen from MASTER (high availability); 0 if none.");
  dcm__prom_int(&p, "discluster_control_master_epoch", NULL, a->masters.epoch);
  dcm__prom_family(&p, "discluster_control_draining", "gauge",
                   "1 after SIGTERM sent offload, until the agent stops.");
  dcm__prom_int(&p, "discluster_control_draining", NULL, a->mode == DCM_AGENT_DRAINING);
  dcm__prom_family(&p, "discluster_control_clusters", "gauge", "Cluster processes by state.");
  for (size_t i = 0; i < 6; i++) {
    const char *labels[] = {"state", dcm__cluster_state_name(states[i]), NULL};
    dcm__prom_int(&p, "discluster_control_clusters", labels, count[states[i]]);
  }
  dcm__prom_family(&p, "discluster_control_cluster_restarts_total", "counter",
                   "Restarts of crashed clusters.");
  dcm__prom_int(&p, "discluster_control_cluster_restarts_total", NULL, a->restarts_total);
  dcm__prom_family(&p, "discluster_control_shards_assigned", "gauge",
                   "Shards of MASTER's last connect.");
  dcm__prom_int(&p, "discluster_control_shards_assigned", NULL, a->nassigned);
  dcm__prom_family(&p, "discluster_control_shards_over_cap", "gauge",
                   "Assigned shards not started: beyond --max-clusters.");
  dcm__prom_int(&p, "discluster_control_shards_over_cap", NULL, a->nover);
  dcm__prom_family(&p, "discluster_control_identify_waiting", "gauge",
                   "Clusters' identify requests waiting for MASTER's grant.");
  dcm__prom_int(&p, "discluster_control_identify_waiting", NULL,
                dcm__ident_waiting(&a->ident));
  return dcm__prom_take(&p, len);
}

/* ---- answers ------------------------------------------------------------- */

static void answer(dcm__ctl_mconn_t *c, int status, const char *reason, const char *ctype,
                   const char *body, size_t blen) {
  char head[256];
  if (c->answered) return;
  c->answered = 1;
  int hlen = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                      status, reason, ctype, blen, status == 405 ? "Allow: GET\r\n" : "");
  uv_stream_t *st = (uv_stream_t *)&c->tcp;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL || dcm__outq_write(&c->out, st, head, (size_t)hlen) != 0 ||
      (blen && dcm__outq_write(&c->out, st, body, blen) != 0) ||
      dcm__outq_shutdown(&c->out, st, req, shutdown_cb) != 0) {
    free(req);
    conn_abort(c);
    return;
  }
  req->data = c;
  uv_timer_start(&c->timer, linger_cb, CLOSE_LINGER_MS, 0);
}

static void error(dcm__ctl_mconn_t *c, int status, const char *reason) {
  char body[96];
  int n = snprintf(body, sizeof body, "%d %s\n", status, reason);
  answer(c, status, reason, "text/plain", body, (size_t)n);
}

static void route(dcm__ctl_mconn_t *c) {
  char *q = memchr(c->path, '?', c->head.pathlen);
  if (q) *q = '\0';
  if (c->head.parser.http_major != 1) {
    error(c, 400, "Bad Request");
  } else if (c->head.path_long || strcmp(c->path, "/metrics") != 0) {
    error(c, 404, "Not Found");
  } else if (c->head.parser.method != HTTP_GET) {
    error(c, 405, "Method Not Allowed");
  } else {
    size_t len;
    char *body = page(c->s->a, &len);
    if (body == NULL)
      error(c, 500, "Internal Server Error");
    else
      answer(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, len);
    free(body);
  }
}

/* ---- reading ------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dcm__ctl_mconn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->s->rbuf, sizeof c->s->rbuf);
}

/* After the answer, reads go on (and are dropped) until the client's EOF,
   so unread bytes cannot make the kernel reset the connection early. */
static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  dcm__ctl_mconn_t *c = st->data;
  if (nread < 0) {
    conn_abort(c);
    return;
  }
  if (nread == 0 || c->answered) return;
  int r = dcm__ctl_head_feed(&c->head, buf->base, (size_t)nread, NULL);
  if (r == DCM_CTL_HEAD_DONE) {
    uv_timer_stop(&c->timer);
    route(c);
  } else if (r == 400) {
    error(c, 400, "Bad Request");
  } else if (r == 431) {
    error(c, 431, "Request Header Fields Too Large");
  }
}

static void head_deadline_cb(uv_timer_t *t) {
  dcm__ctl_mconn_t *c = t->data;
  error(c, 408, "Request Timeout");
}

/* ---- accepting ----------------------------------------------------------- */

static void connection_cb(uv_stream_t *server, int status) {
  dcm__ctl_metrics_t *s = server->data;
  if (status < 0) return;
  dcm__ctl_mconn_t *c = s->nconns < DCM_CTL_METRICS_MAX_CONNS ? calloc(1, sizeof *c) : NULL;
  if (c == NULL) { /* over the bound: accept and close at once */
    uv_tcp_t *t = malloc(sizeof *t);
    if (t == NULL) return;
    uv_tcp_init(s->a->loop, t);
    if (uv_accept(server, (uv_stream_t *)t) == 0) { /* accepted, now dropped */ }
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    return;
  }
  c->s = s;
  c->out.cap = DCM_PROM_MAX + 4096;
  c->out.on_error = outq_error;
  uv_tcp_init(s->a->loop, &c->tcp);
  uv_timer_init(s->a->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_abort(c);
    return;
  }
  dcm__ctl_head_init(&c->head, c->path, sizeof c->path - 1, DCM_CTL_METRICS_HEAD_MAX);
  uv_timer_start(&c->timer, head_deadline_cb, DCM_CTL_METRICS_HEAD_MS, 0);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) conn_abort(c);
}

int dcm__ctl_metrics_start(dcm__ctl_metrics_t *s, dcm__agent_t *a, int port) {
  s->a = a;
  return dcm__ctl_listen_loopback(a->loop, &s->tcp, s, port, 16, connection_cb, &s->listening,
                                  &s->port);
}

void dcm__ctl_metrics_stop(dcm__ctl_metrics_t *s) {
  if (s->listening && !uv_is_closing((uv_handle_t *)&s->tcp))
    uv_close((uv_handle_t *)&s->tcp, NULL);
  while (s->conns) conn_abort(s->conns);
}
