/*
 * session.c: protocol v1 on one WebSocket connection: the `info` handshake
 * (4002, 4003), `initialise`, heartbeats and their deadline (4001), error
 * packets (4004-4006), and handing lifecycle packets to the coordinator.
 * Also renders GET /status. Every packet costs O(1) beyond its own size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "fleet.h"
#include "internal.h"
#include "json.h"

static const char *mid(const dcm__conn_t *c) {
  return c->machine ? c->machine->id : NULL;
}

static void send_text(dcm__conn_t *c, const char *s, size_t n) {
  if (s) dcm__conn_send(c, s, n);
  lua_settop(c->m->json, 0);
}

static void send_error(dcm__conn_t *c, int code, const char *why) {
  size_t n;
  dcm__info(&c->m->log, mid(c), "peer %s: error %d: %s", c->peer, code, why);
  const char *s = dcm__enc_error(c->m->json, code, why, -1, &n);
  send_text(c, s, n);
}

/* How long after its last heartbeat a connection is closed. */
static uint64_t heartbeat_window(const dcm_options_t *o) {
  return dcm__ms(o->heartbeat_interval) + dcm__ms(o->heartbeat_grace);
}

void dcm__session_open(dcm__conn_t *c) {
  dcm_master_t *m = c->m;
  if (!dcm__coord_accepting(m)) {
    dcm__conn_close(c, DCM_CLOSE_GOING_AWAY, "master is not accepting yet");
    return;
  }
  dcm__debug(&m->log, NULL, "peer %s: upgraded, waiting for info", c->peer);
  dcm__conn_set_deadline(c, uv_now(m->loop) + dcm__ms(m->o.handshake_timeout));
}

void dcm__session_initialise(dcm__conn_t *c) {
  dcm_master_t *m = c->m;
  size_t n;
  const char *s = dcm__enc_initialise(m->json, m->o.token,
                                      (long long)dcm__ms(m->o.heartbeat_interval),
                                      m->shard_count, m->max_concurrency, m->gateway_url,
                                      dcm__ha_term(m), &n);
  send_text(c, s, n);
}

static void copy_report(dcm__machine_t *x, dcm__packet_t *p) {
  x->cores = p->cores;
  dcm__machine_set_loadavg(x, p->loadavg);
  snprintf(x->version, sizeof x->version, "%s", p->version);
}

static void hello(dcm__conn_t *c, dcm__packet_t *p) {
  dcm_master_t *m = c->m;
  dcm__machine_t *x = dcm__fleet_find(m, p->id);
  int resumed = 0;
  if (x && x->state == DCM_MACHINE_LIVE) {
    dcm__warn(&m->log, p->id, "peer %s: id already connected from %s; closing the newcomer (4003)",
              c->peer, x->conn ? x->conn->peer : "?");
    dcm__conn_close(c, DCM_CLOSE_DUPLICATE, "machine id already connected");
    return;
  }
  if (x) {
    uv_timer_stop(&x->timer);
    x->state = DCM_MACHINE_LIVE;
    x->draining = 0; /* a CONTROL still draining sends `offload` again */
    resumed = 1;
  } else {
    x = dcm__fleet_add(m, p->id);
    if (x == NULL) {
      dcm__conn_abort(c);
      return;
    }
    x->standby = p->standby;
  }
  x->declared_standby = p->standby;
  x->identify_queue = p->identify_queue;
  x->handoff = p->handoff;
  copy_report(x, p);
  free(x->reported);
  x->reported = NULL;
  x->nreported = 0;
  x->has_reported = p->has_shards;
  x->reported_count = p->shard_count;
  if (p->has_shards) { /* keep it: adoption after a MASTER restart */
    x->reported = p->shards;
    x->nreported = p->nshards;
    p->shards = NULL;
    p->nshards = 0;
  }
  x->conn = c;
  c->machine = x;
  c->loadavg = x->loadavg;
  c->phase = DCM_CONN_ACTIVE;
  if (c->counted_unauth) {
    c->counted_unauth = 0;
    m->unauth--;
  }
  c->last_heartbeat = uv_now(m->loop);
  dcm__conn_slide_deadline(c, heartbeat_window(&m->o));
  dcm__info(&m->log, x->id, "%s from %s: cores=%d loadavg=%.2f standby=%s%s%s",
            resumed ? "reconnected inside the grace" : "identified", c->peer, x->cores,
            dcm__machine_loadavg(x), x->standby ? "yes" : "no", x->version[0] ? " version=" : "",
            x->version);
  dcm__emit(m, resumed ? DCM_EVENT_RESUMED : DCM_EVENT_CONNECTED, x->id, 0, c->peer);
  if (m->state == DCM_STATE_FETCHING) { /* initialise once Discord gave the count */
    dcm__info(&m->log, x->id, "held until Discord's answer gives the shard count");
    x->held = 1;
    return;
  }
  if (x->nreported > 0 && x->reported_count > 0)
    dcm__coord_running_count(m, x, x->reported_count);
  dcm__session_initialise(c);
  dcm__coord_joined(m, x, resumed);
}

/* heartbeat.failed_clusters: an extension, so a bad one is logged once and
   ignored; the heartbeat itself always counts. p: the heartbeat, or NULL
   for a canonical one with failed_clusters []. */
static void failed_clusters(dcm__machine_t *x, dcm__packet_t *p) {
  if (p && !p->has_failed) {
    if (!x->failed_warned)
      dcm__warn(&x->m->log, x->id, "heartbeat: ignoring failed_clusters: %s", p->message);
    x->failed_warned = 1;
    return;
  }
  char *json = p ? p->failed_json : NULL;
  size_t n = p ? p->nshards : 0;
  if (x->failed_warned) x->failed_warned = 0;
  if (x->failed_clusters || json) { /* the latest text, for /status */
    free(x->failed_clusters);
    x->failed_clusters = json;
    if (p) p->failed_json = NULL;
  }
  if (x->nfailed == n && (n == 0 || memcmp(x->failed, p->shards, n * sizeof(int)) == 0))
    return;
  if (n)
    dcm__warn(&x->m->log, x->id, "reports %zu shards in failed clusters: %.300s", n,
              x->failed_clusters ? x->failed_clusters : "(list too long to show)");
  else
    dcm__info(&x->m->log, x->id, "reports no failed clusters any more");
  int *shards = NULL; /* sorted, unique */
  if (p) {
    shards = p->shards;
    p->shards = NULL;
    p->nshards = 0;
  }
  dcm__coord_failed(x->m, x, shards, n);
}

/* p as for failed_clusters; has_loadavg and loadavg are p's or the
   canonical heartbeat's; failed: the heartbeat says something of
   failed_clusters (else the failed set stays as it is). */
static void heartbeat(dcm__conn_t *c, dcm__packet_t *p, int has_loadavg, double loadavg,
                      int failed) {
  dcm_master_t *m = c->m;
  c->last_heartbeat = uv_now(m->loop); /* moves the deadline (it slides) */
  if (has_loadavg) c->loadavg = loadavg;
  if (failed) failed_clusters(c->machine, p);
  if (m->heartbeat_ack_len == 0) { /* the same frame every time: encode once */
    size_t n;
    const char *s = dcm__enc_ack(m->json, DCM_OP_HEARTBEAT, &n);
    if (s)
      m->heartbeat_ack_len =
          dcm__conn_frame(m, s, n, m->heartbeat_ack, sizeof m->heartbeat_ack);
    if (m->heartbeat_ack_len == 0) {
      send_text(c, s, n);
      return;
    }
    lua_settop(m->json, 0);
  }
  dcm__conn_send_frame(c, m->heartbeat_ack, m->heartbeat_ack_len);
}

static void active(dcm__conn_t *c, dcm__packet_t *p) {
  dcm_master_t *m = c->m;
  dcm__machine_t *x = c->machine;
  char why[128];
  switch (p->op) {
    case DCM_OP_HEARTBEAT:
      heartbeat(c, p, p->has_loadavg, p->loadavg, p->has_failed || p->message[0]);
      break;
    case DCM_OP_INFO:
      if (strcmp(p->id, x->id) != 0) {
        send_error(c, DCM_ERR_BAD_STATE, "info: d.id differs from this connection's id");
        break;
      }
      copy_report(x, p);
      dcm__coord_info(m, x);
      break;
    case DCM_OP_ACK:
      dcm__coord_ack(m, x, p->ack_op);
      break;
    case DCM_OP_READY:
      if (dcm__coord_ready(m, x, p->shards, p->nshards) != 0)
        send_error(c, DCM_ERR_BAD_STATE, "ready: no connect is waiting for these shards");
      break;
    case DCM_OP_OFFLOAD:
      dcm__coord_offload(m, x);
      break;
    case DCM_OP_IDENTIFY:
      dcm__coord_identify(m, x, p->shard);
      break;
    case DCM_OP_RELEASE:
      dcm__coord_release(m, x, p->shard);
      break;
    case DCM_OP_SESSIONS:
      dcm__coord_sessions(m, x, p->sessions, p->nsessions, p->nbad);
      break;
    case DCM_OP_STOPPED:
      dcm__coord_stopped(m, x, p->shards, p->nshards);
      break;
    case DCM_OP_FATAL:
      dcm__coord_fatal(m, x, p->code, p->message, p->shard);
      break;
    default:
      snprintf(why, sizeof why, "opcode %d (%s) is sent by MASTER, not by CONTROL",
               p->op, dcm__op_name(p->op));
      send_error(c, DCM_ERR_BAD_STATE, why);
  }
}

void dcm__session_message(dcm__conn_t *c, const char *msg, size_t len) {
  dcm_master_t *m = c->m;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  double loadavg;
  int form = c->phase == DCM_CONN_ACTIVE ? dcm__heartbeat_canonical(msg, len, &loadavg) : 0;
  if (form) { /* the common packet: no decode, no packet */
    heartbeat(c, NULL, 1, loadavg, form == DCM_HEARTBEAT_EMPTY);
    return;
  }
  dcm__packet_t p;
  char err[192];
  /* Not shard_count: info.shards may name shards of an older, larger fleet
     (adoption skips them); the 1 MiB message cap bounds the rest. */
  size_t max = 1u << 20;
  int r = dcm__packet_decode(m->json, msg, len, max, &p, err, sizeof err);
  if (c->phase == DCM_CONN_HELLO) {
    if (r == 0 && p.op != DCM_OP_INFO) {
      r = DCM_ERR_BAD_STATE;
      snprintf(err, sizeof err, "the first packet must be info, not %s", dcm__op_name(p.op));
    }
    if (r != 0) {
      dcm__info(&m->log, NULL, "peer %s: bad handshake, closing (4002): %s", c->peer, err);
      dcm__conn_close(c, DCM_CLOSE_BAD_INFO, err);
    } else {
      hello(c, &p);
    }
  } else if (r != 0) {
    send_error(c, r, err);
  } else {
    active(c, &p);
  }
  dcm__packet_clear(&p);
}

void dcm__session_deadline(dcm__conn_t *c) {
  dcm_master_t *m = c->m;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  if (c->phase == DCM_CONN_HELLO) {
    dcm__info(&m->log, NULL, "peer %s: no info within %.3gs, closing (4002)", c->peer,
              m->o.handshake_timeout);
    dcm__conn_close(c, DCM_CLOSE_BAD_INFO, "no info before the handshake timeout");
    return;
  }
  dcm__warn(&m->log, mid(c), "no heartbeat for %.3gs, closing (4001)",
            (double)(uv_now(m->loop) - c->last_heartbeat) / 1000.0);
  c->timed_out = 1;
  dcm__conn_close(c, DCM_CLOSE_DEAD, "heartbeat timeout");
}

void dcm__session_closed(dcm__conn_t *c) {
  dcm__machine_t *x = c->machine;
  if (x == NULL) return;
  c->machine = NULL;
  x->conn = NULL;
  x->loadavg = c->loadavg;
  dcm__coord_lost(c->m, x, c->timed_out);
}

/* ---- /status ----------------------------------------------------------- */

static void push_machine(dcm_master_t *m, dcm__machine_t *x, uint64_t now) {
  lua_State *L = m->json;
  static const char *const states[] = {"live", "disconnected", "dead"};
  lua_createtable(L, 0, 8);
  lua_pushstring(L, x->id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, x->cores);
  lua_setfield(L, -2, "cores");
  lua_pushnumber(L, dcm__machine_loadavg(x));
  lua_setfield(L, -2, "loadavg");
  lua_pushboolean(L, x->standby);
  lua_setfield(L, -2, "standby");
  /* a standby that took shards runs them as an active until a rebalance */
  lua_pushstring(L, x->standby && x->nshards == 0 ? "standby" : "active");
  lua_setfield(L, -2, "role");
  lua_pushstring(L, states[x->state]);
  lua_setfield(L, -2, "state");
  dcm__json_push_int_array(L, x->shards, x->nshards);
  lua_setfield(L, -2, "shards");
  if (x->conn) {
    lua_pushinteger(L, (lua_Integer)(now - x->conn->last_heartbeat));
    lua_setfield(L, -2, "last_heartbeat_age_ms");
  }
  if (x->version[0]) {
    lua_pushstring(L, x->version);
    lua_setfield(L, -2, "version");
  }
  if (x->failed_clusters &&
      dcm__json_decode(L, x->failed_clusters, strlen(x->failed_clusters)) == 0)
    lua_setfield(L, -2, "failed_clusters");
  if (x->nfailed) {
    dcm__json_push_int_array(L, x->failed, x->nfailed);
    lua_setfield(L, -2, "failed_shards");
  }
  static const char *const connects[] = {NULL, "sent", "acked", "ready", "late"};
  if (connects[x->connect]) {
    lua_pushstring(L, connects[x->connect]);
    lua_setfield(L, -2, "connect");
  }
  if (x->draining) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "draining");
  }
}

/* The identify queue: budget, grants, and what waits where and why. */
static void push_identify(dcm_master_t *m, uint64_t now) {
  lua_State *L = m->json;
  const dcm__idq_t *q = m->idq;
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)dcm__ms(m->o.identify_interval));
  lua_setfield(L, -2, "interval_ms");
  lua_pushinteger(L, dcm__idq_reserve(q));
  lua_setfield(L, -2, "reserve");
  lua_pushinteger(L, (lua_Integer)dcm__idq_granted(q));
  lua_setfield(L, -2, "granted");
  lua_pushinteger(L, (lua_Integer)dcm__idq_returned(q));
  lua_setfield(L, -2, "returned");
  lua_pushinteger(L, (lua_Integer)dcm__idq_waiting(q));
  lua_setfield(L, -2, "waiting");
  if (dcm__idq_budget_blocked(q)) {
    lua_pushstring(L, m->budget_wait ? "budget: waiting for Discord's reset"
                                     : "budget: at the reserve");
    lua_setfield(L, -2, "blocked");
  }
  lua_createtable(L, 0, 0);
  int k = 0;
  for (int b = 0; b < dcm__idq_buckets(q); b++) {
    size_t depth = dcm__idq_depth(q, b);
    if (depth == 0) continue;
    uint64_t at = dcm__idq_next_at(q, b);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, b);
    lua_setfield(L, -2, "bucket");
    lua_pushinteger(L, (lua_Integer)depth);
    lua_setfield(L, -2, "waiting");
    lua_pushinteger(L, (lua_Integer)(at > now ? at - now : 0));
    lua_setfield(L, -2, "next_grant_in_ms");
    lua_pushstring(L, dcm__idq_budget_blocked(q) ? "budget" : at > now ? "interval" : "due");
    lua_setfield(L, -2, "why");
    lua_rawseti(L, -2, ++k);
  }
  if (k == 0) {
    lua_pop(L, 1);
    dcm__json_push_empty_array(L);
  }
  lua_setfield(L, -2, "buckets");
  lua_setfield(L, -2, "identify");
}

const char *dcm__status_json(dcm_master_t *m, size_t *len) {
  lua_State *L = m->json;
  uint64_t now = uv_now(m->loop);
  lua_settop(L, 0);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, dcm__state_name(m->state));
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, m->shard_count);
  lua_setfield(L, -2, "shard_count");
  if (m->recommended && m->recommended != m->shard_count) {
    lua_pushinteger(L, m->recommended);
    lua_setfield(L, -2, "recommended_shard_count");
  }
  lua_pushinteger(L, m->max_concurrency);
  lua_setfield(L, -2, "max_concurrency");
  if (m->have_gw) {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, m->gw.total);
    lua_setfield(L, -2, "total");
    lua_pushinteger(L, m->idq ? dcm__idq_remaining(m->idq) : m->gw.remaining);
    lua_setfield(L, -2, "remaining");
    double left = m->gw.reset_after * 1000.0 - (double)(now - m->gw_at);
    lua_pushinteger(L, (lua_Integer)(left > 0 ? left : 0)); /* aged since the fetch */
    lua_setfield(L, -2, "reset_after");
    lua_pushinteger(L, m->gw.max_concurrency);
    lua_setfield(L, -2, "max_concurrency");
    lua_setfield(L, -2, "session_start_limit");
  }
  lua_createtable(L, (int)m->nmachines, 0);
  int i = 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    push_machine(m, DCM_CONTAINER(l, dcm__machine_t, link), now);
    lua_rawseti(L, -2, ++i);
  }
  if (i == 0) {
    lua_pop(L, 1);
    dcm__json_push_empty_array(L);
  }
  lua_setfield(L, -2, "machines");
  if (m->idq) push_identify(m, now);
  if (m->o.etcd) { /* the leader's view of its term (a follower answers ha.c's body) */
    lua_createtable(L, 0, 5);
    lua_pushstring(L, dcm__ha_role(m));
    lua_setfield(L, -2, "role");
    lua_pushinteger(L, (lua_Integer)dcm__ha_epoch(m));
    lua_setfield(L, -2, "epoch");
    lua_pushstring(L, m->ha_self);
    lua_setfield(L, -2, "leader");
    lua_pushstring(L, m->o.cluster);
    lua_setfield(L, -2, "cluster");
    lua_pushnumber(L, m->o.lease_ttl);
    lua_setfield(L, -2, "lease_ttl");
    lua_setfield(L, -2, "ha");
  }
  size_t known = 0;
  for (int s = 0; m->session && s < m->shard_count; s++) known += m->session[s] != NULL;
  lua_pushinteger(L, (lua_Integer)known);
  lua_setfield(L, -2, "sessions_known");
  if (m->rebalancing) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "rebalancing");
  }
  int *un = malloc(((size_t)m->shard_count + 1) * sizeof *un);
  if (un == NULL) return NULL;
  size_t n = dcm__fleet_unassigned(m, un);
  dcm__json_push_int_array(L, un, n);
  free(un);
  lua_setfield(L, -2, "unassigned");
  return dcm__json_encode(L, -1, len);
}
