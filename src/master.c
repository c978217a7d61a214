/*
 * master.c: the public handle: options copied and validated, the pieces
 * (log, JSON state, policy, Discord client, fleet, listener) created and
 * torn down, events delivered, and the graceful stop that closes every
 * handle before its callback runs. The only module that calls embedder
 * code: events are queued by the layers below and delivered from one
 * prepare handle, once per loop turn, when the state is whole.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "internal.h"
#include "json.h"
#include "options.h"

static int own(dcm_master_t *m, int slot, const char **field) {
  if (*field == NULL) return 0;
  m->owned[slot] = strdup(*field);
  if (m->owned[slot] == NULL) return DCM_ENOMEM;
  *field = m->owned[slot];
  return 0;
}

/* One queued event; its strings follow the struct. */
typedef struct {
  dcm__link_t link;
  dcm_event_type type;
  int code;
  const char *machine, *message;
} dcm__event_t;

static void drop_events(dcm_master_t *m) {
  while (!dcm__list_empty(&m->events)) {
    dcm__link_t *l = m->events.next;
    dcm__list_remove(l);
    free(DCM_CONTAINER(l, dcm__event_t, link));
  }
}

static void free_parts(dcm_master_t *m) {
  drop_events(m);
  if (m->tls_ctx) dcm__tls_ctx_free(m->tls_ctx); /* open connections hold their own reference */
  if (m->policy) dcm__policy_free(m->policy);
  dcm__idq_free(m->idq);
  dcm__ha_free(m);
  if (m->json) lua_close(m->json);
  dcm__fleet_free(m);
  dcm__ws_pool_free(m->wspool); /* after the last connection */
  dcm__log_close(&m->log);
  for (size_t i = 0; i < sizeof m->owned / sizeof m->owned[0]; i++) {
    if (m->owned[i]) memset(m->owned[i], 0, strlen(m->owned[i])); /* secrets too */
    free(m->owned[i]);
  }
  free(m);
}

int dcm_master_new(uv_loop_t *loop, const dcm_options_t *opts, dcm_master_t **out) {
  char err[256];
  if (loop == NULL || opts == NULL || out == NULL) return DCM_EINVAL;
  dcm_master_t *m = calloc(1, sizeof *m);
  if (m == NULL) return DCM_ENOMEM;
  dcm__list_init(&m->events); /* free_parts may run on any failure below */
  m->loop = loop;
  m->o = *opts;
  int r = dcm__log_init(&m->log, opts->log_level, opts->log_format, opts->log_cb, opts->log_arg);
  if (r == 0) {
    r = dcm__options_validate(&m->o, err, sizeof err);
    if (r != 0) dcm__error(&m->log, NULL, "%s", err);
  }
  if (r == 0 && (own(m, 0, &m->o.listen_host) || own(m, 1, &m->o.api_base) ||
                 own(m, 2, &m->o.policy) || own(m, 3, &m->o.policy_dir) ||
                 own(m, 4, &m->o.token) || own(m, 5, &m->o.auth) ||
                 own(m, 6, &m->o.gateway_url) || own(m, 7, &m->o.tls_cert) ||
                 own(m, 8, &m->o.tls_key) || own(m, 9, &m->o.status_auth) ||
                 own(m, 10, &m->o.etcd) || own(m, 11, &m->o.cluster) ||
                 own(m, 12, &m->o.advertise_url) || own(m, 13, &m->o.etcd_cacert) ||
                 own(m, 14, &m->o.etcd_cert) || own(m, 15, &m->o.etcd_key)))
    r = DCM_ENOMEM;
  if (r == 0 && m->o.tls_cert && m->o.tls_cert[0]) {
    r = dcm__tls_server_ctx(m->o.tls_cert, m->o.tls_key, &m->tls_ctx, err, sizeof err);
    if (r != 0) dcm__error(&m->log, NULL, "%s", err);
  }
  if (r == 0 && (m->json = dcm__json_new()) == NULL) r = DCM_ENOMEM;
  if (r == 0) r = dcm__fleet_init(m);
  if (r == 0) r = dcm__policy_new(m->o.policy, m->o.policy_dir, m->o.policy_timeout, &m->log,
                                 &m->policy);
  if (r != 0) {
    free_parts(m);
    return r;
  }
  dcm__list_init(&m->conns);
  dcm__list_init(&m->connect_queue);
  m->state = DCM_STATE_IDLE;
  *out = m;
  return 0;
}

/* Calls the embedder with every queued event, oldest first. */
static void deliver(dcm_master_t *m) {
  while (!dcm__list_empty(&m->events)) {
    dcm__link_t *l = m->events.next;
    dcm__event_t *e = DCM_CONTAINER(l, dcm__event_t, link);
    dcm_event_t ev = {e->type, e->machine, e->code, e->message};
    dcm__list_remove(l);
    m->depth++;
    m->cb(m, &ev, m->cb_arg);
    m->depth--;
    free(e);
  }
}

static void flush_cb(uv_prepare_t *p) {
  dcm_master_t *m = p->data;
  uv_prepare_stop(p);
  deliver(m);
}

void dcm__emit(dcm_master_t *m, dcm_event_type type, const char *machine, int code,
               const char *message) {
  if (m->cb == NULL) return;
  size_t lm = machine ? strlen(machine) + 1 : 0, lt = message ? strlen(message) + 1 : 0;
  dcm__event_t *e = malloc(sizeof *e + lm + lt);
  if (e == NULL) {
    dcm__error(&m->log, machine, "out of memory: event %d not delivered", (int)type);
    return;
  }
  char *p = (char *)(e + 1);
  e->type = type;
  e->code = code;
  e->machine = machine ? memcpy(p, machine, lm) : NULL;
  e->message = message ? memcpy(p + lm, message, lt) : NULL;
  dcm__list_push(&m->events, &e->link);
  if (!m->stopping) uv_prepare_start(&m->flush, flush_cb);
}

int dcm_master_start(dcm_master_t *m, dcm_event_cb cb, void *arg) {
  char where[96];
  if (m->started || m->start_failed) return DCM_ESTATE;
  int r = dcm__server_start(m);
  if (r != 0) {
    /* the listener may still be closing: dcm_master_free defers until it is */
    dcm__error(&m->log, NULL, "cannot listen on %s:%d: %s", m->o.listen_host, m->o.listen_port,
               uv_strerror(r));
    m->start_failed = 1;
    return r;
  }
  m->started = 1;
  m->cb = cb;
  m->cb_arg = arg;
  uv_timer_init(m->loop, &m->timer);
  uv_timer_init(m->loop, &m->budget_timer);
  uv_timer_init(m->loop, &m->idq_timer);
  uv_prepare_init(m->loop, &m->flush);
  uv_timer_init(m->loop, &m->handoff_timer);
  m->timer.data = m->budget_timer.data = m->idq_timer.data = m->flush.data = m;
  m->handoff_timer.data = m;
  m->open_handles += 5;
  snprintf(where, sizeof where, "%s%s%s:%d", strchr(m->o.listen_host, ':') ? "[" : "",
           m->o.listen_host, strchr(m->o.listen_host, ':') ? "]" : "", m->port);
  dcm__info(&m->log, NULL, "listening on %s (discluster-master %s, protocol %d, policy %s)",
            where, DCM_VERSION, DCM_PROTOCOL_VERSION, dcm__policy_path(m->policy));
  if (m->tls_ctx) {
    char cert[256];
    int bad = dcm__tls_ctx_describe(m->tls_ctx, cert, sizeof cert);
    dcm__info(&m->log, NULL, "TLS: wss:// and https:// only, certificate %s", cert);
    if (bad) dcm__warn(&m->log, NULL, "TLS: the certificate is expired or not yet valid");
  } else if (!dcm__is_loopback(m->o.listen_host)) {
    dcm__warn(&m->log, NULL, "no TLS on non-loopback %s (--allow-plaintext): the bot token "
              "travels to CONTROLs in cleartext", where);
  }
  dcm__emit(m, DCM_EVENT_LISTENING, NULL, m->port, where); /* on the first loop turn */
  r = dcm__ha_start(m); /* alone: the coordinator starts; HA: campaigning */
  if (r != 0) {
    dcm__error(&m->log, NULL, "cannot start: %s", dcm_strerror(r));
    m->exit_status = 1;
    dcm_master_stop(m, 0, NULL, NULL);
  }
  return 0;
}

int dcm_master_port(const dcm_master_t *m) { return m->port; }

int dcm_master_exit_status(const dcm_master_t *m) { return m->exit_status; }

int dcm_master_reload_policy(dcm_master_t *m) {
  int r = dcm__coord_reload_policy(m);
  if (r == 0) /* a failed reload has already said why, in one line */
    dcm__info(&m->log, NULL, "policy reloaded from %s; it applies to the next decision",
              dcm__policy_path(m->policy));
  dcm__emit(m, DCM_EVENT_POLICY_RELOADED, NULL, r, dcm__policy_path(m->policy));
  return r;
}

int dcm_master_reload_tls(dcm_master_t *m) {
  char err[512], cert[256];
  struct ssl_ctx_st *ctx = NULL;
  if (m->tls_ctx == NULL) return DCM_ESTATE;
  int r = dcm__tls_server_ctx(m->o.tls_cert, m->o.tls_key, &ctx, err, sizeof err);
  if (r != 0) {
    dcm__error(&m->log, NULL, "TLS reload failed, the previous certificate stays: %s", err);
    return r;
  }
  dcm__tls_ctx_free(m->tls_ctx); /* connections made with it keep a reference */
  m->tls_ctx = ctx;
  int bad = dcm__tls_ctx_describe(ctx, cert, sizeof cert);
  if (bad)
    dcm__warn(&m->log, NULL, "TLS reloaded: certificate %s is expired or not yet valid", cert);
  else
    dcm__info(&m->log, NULL, "TLS reloaded: certificate %s; it applies to new connections", cert);
  return 0;
}

/* Every handle is closed: what was still queued, then STOPPED, then the
   stop callback. The embedder may free m from any of them. */
static void finish_stop(dcm_master_t *m) {
  dcm__info(&m->log, NULL, "stopped (exit status %d)", m->exit_status);
  dcm__emit(m, DCM_EVENT_STOPPED, NULL, m->exit_status, NULL);
  if (m->cb) deliver(m);
  m->depth++;
  if (m->close_cb) m->close_cb(m, m->close_arg);
  m->depth--;
}

void dcm__master_release(dcm_master_t *m) {
  if (--m->open_handles > 0) return;
  if (m->stopping) finish_stop(m);
  if (m->free_pending) free_parts(m);
}

void dcm__handle_closed(uv_handle_t *h) { dcm__master_release(h->data); }

static void discord_closed(void *arg) { dcm__master_release(arg); }

int dcm_master_stop(dcm_master_t *m, int send_shutdown, dcm_close_cb cb, void *arg) {
  if (!m->started || m->stopping) return DCM_ESTATE;
  m->stopping = 1;
  m->close_cb = cb;
  m->close_arg = arg;
  dcm__info(&m->log, NULL, "stopping%s", send_shutdown ? ": sending shutdown to every CONTROL"
                                                       : "; CONTROLs keep their clusters");
  dcm__coord_stop(m);
  char next_leader[124] = ""; /* a close reason holds 123 bytes */
  const char *nl = m->ha_stepping ? dcm__ha_leader(m) : NULL;
  if (nl && strcmp(nl, m->ha_self) != 0 && strlen(nl) < sizeof next_leader)
    memcpy(next_leader, nl, strlen(nl) + 1);
  m->open_handles++; /* held until this function is done closing */
  dcm__server_stop(m);
  uv_close((uv_handle_t *)&m->timer, dcm__handle_closed);
  uv_close((uv_handle_t *)&m->budget_timer, dcm__handle_closed);
  uv_close((uv_handle_t *)&m->idq_timer, dcm__handle_closed);
  uv_close((uv_handle_t *)&m->flush, dcm__handle_closed);
  uv_close((uv_handle_t *)&m->handoff_timer, dcm__handle_closed);
  if (m->discord) {
    m->open_handles++;
    dcm__discord_close(m->discord, discord_closed, m);
    m->discord = NULL;
  }
  if (dcm__ha_close(m)) m->open_handles++; /* revokes a leader's lease: a follower leads now */
  size_t len = 0;
  const char *bye = NULL;
  if (send_shutdown) {
    if (m->shutdown_reason[0] == '\0')
      snprintf(m->shutdown_reason, sizeof m->shutdown_reason, "MASTER is shutting the fleet down");
    bye = dcm__enc_shutdown(m->json, m->shutdown_code ? m->shutdown_code : DCM_CLOSE_NORMAL,
                            m->shutdown_reason, &len);
  }
  while (!dcm__list_empty(&m->conns)) {
    dcm__conn_t *c = DCM_CONTAINER(m->conns.next, dcm__conn_t, link);
    dcm__list_remove(&c->link); /* abort() removes it again harmlessly */
    if (c->phase == DCM_CONN_ACTIVE || c->phase == DCM_CONN_HELLO) {
      if (bye && c->phase == DCM_CONN_ACTIVE) dcm__conn_send(c, bye, len);
      if (m->ha_stepping) /* the reason names the next leader when known */
        dcm__conn_close(c, DCM_CLOSE_NOT_LEADER, next_leader);
      else
        dcm__conn_close(c, send_shutdown ? DCM_CLOSE_NORMAL : DCM_CLOSE_GOING_AWAY,
                        send_shutdown ? "shutdown" : "master stopping");
    } else if (c->phase != DCM_CONN_CLOSING) {
      dcm__conn_abort(c);
    }
  }
  lua_settop(m->json, 0);
  while (!dcm__list_empty(&m->machines))
    dcm__fleet_remove(m, DCM_CONTAINER(m->machines.next, dcm__machine_t, link));
  dcm__master_release(m);
  return 0;
}

void dcm_master_free(dcm_master_t *m) {
  if (m == NULL) return;
  if (m->open_handles > 0 || m->depth > 0) { /* the last close, or finish_stop, frees */
    m->free_pending = 1;
    return;
  }
  free_parts(m);
}
