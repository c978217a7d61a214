/* ha.c: see ha.h. */
#include "ha.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "election.h"
#include "fleet.h"
#include "internal.h"
#include "json.h"

/* What the previous leader left under `identify`, kept until the queue exists. */
struct dcm__ha_record_s {
  int have;             /* 0: unknown (absent, unreadable): hold every bucket */
  long long mc, remaining, total, reset_at;
  long long *last;      /* [mc]: wall ms of the bucket's last grant, 0 = none */
};

static void step_down(dcm_master_t *m, const char *why) {
  if (m->ha_stepping || m->stopping) return;
  m->ha_stepping = 1;
  m->ha_leading = 0;
  const char *next = m->ha_closed ? NULL : dcm__elect_leader(m->elect);
  if (next && strcmp(next, m->ha_self) == 0) next = NULL;
  dcm__error(&m->log, NULL, "stepping down as leader (epoch %" PRIu64 "): %s; CONTROLs are "
             "closed with %d and go to the next leader", m->ha_epoch, why, DCM_CLOSE_NOT_LEADER);
  dcm__emit(m, DCM_EVENT_STEPPED_DOWN, NULL, DCM_ESTEPPED, next);
  m->exit_status = DCM_EXIT_STEPPED_DOWN;
  dcm_master_stop(m, 0, NULL, NULL);
}

int dcm__ha_leading(dcm_master_t *m) {
  if (m->o.etcd == NULL) return 1;
  if (m->ha_closed || !m->ha_leading) return 0;
  if (dcm__elect_leading(m->elect)) return 1;
  step_down(m, "the lease was not renewed in time");
  return 0;
}

int dcm__ha_follower(const dcm_master_t *m) { return m->o.etcd != NULL && !m->ha_leading; }

uint64_t dcm__ha_epoch(const dcm_master_t *m) { return m->ha_leading ? m->ha_epoch : 0; }

const dcm__epoch_t *dcm__ha_term(const dcm_master_t *m) {
  return m->ha_leading ? &m->ha_term : NULL;
}

const char *dcm__ha_role(const dcm_master_t *m) {
  return m->o.etcd == NULL ? "standalone" : m->ha_leading ? "leader" : "follower";
}

const char *dcm__ha_leader(const dcm_master_t *m) {
  if (m->o.etcd == NULL || m->ha_closed) return NULL;
  return m->ha_leading ? m->ha_self : dcm__elect_leader(m->elect);
}

size_t dcm__ha_describe(const dcm_master_t *m, char *buf, size_t n) {
  /* URLs were validated printable and quote-free (options.c, election.c) */
  const char *leader = dcm__ha_leader(m);
  int k = snprintf(buf, n, "{\"role\":\"%s\",\"leader\":%s%s%s,\"epoch\":%" PRIu64
                   ",\"cluster\":\"%s\",\"lease_ttl\":%g}",
                   dcm__ha_role(m), leader ? "\"" : "", leader ? leader : "null",
                   leader ? "\"" : "", m->ha_leading ? m->ha_epoch : 0,
                   m->o.etcd ? m->o.cluster : "", m->o.etcd ? m->o.lease_ttl : 0.0);
  return k < 0 ? 0 : (size_t)k < n ? (size_t)k : n - 1;
}

/* ---- the identify record --------------------------------------------- */

static void free_record(dcm_master_t *m) {
  if (m->ha_rec) free(m->ha_rec->last);
  free(m->ha_rec);
  m->ha_rec = NULL;
}

static long long int_field(lua_State *L, const char *key, long long dflt) {
  long long v = dflt;
  if (dcm__json_field(L, -1, key) != LUA_TNUMBER || !dcm__json_tointeger(L, -1, &v)) v = dflt;
  lua_pop(L, 1);
  return v;
}

/* Reads the record on the JSON state; rec->have stays 0 when unusable. */
static void parse_record(dcm_master_t *m, const char *s, size_t len, struct dcm__ha_record_s *rec) {
  lua_State *L = m->json;
  if (s == NULL || dcm__json_decode(L, s, len) != 0) return;
  if (!dcm__json_isobject(L, -1)) goto out;
  rec->mc = int_field(L, "max_concurrency", 0);
  rec->remaining = int_field(L, "remaining", -1);
  rec->total = int_field(L, "total", 0);
  rec->reset_at = int_field(L, "reset_at", 0);
  if (rec->mc < 1 || rec->mc > 1024) goto out;
  rec->last = calloc((size_t)rec->mc, sizeof *rec->last);
  if (rec->last == NULL) goto out;
  if (dcm__json_field(L, -1, "buckets") == LUA_TTABLE) {
    for (long long b = 0; b < rec->mc; b++) {
      char key[24];
      snprintf(key, sizeof key, "%lld", b);
      rec->last[b] = int_field(L, key, 0);
    }
  }
  lua_pop(L, 1);
  rec->have = 1;
out:
  lua_settop(L, 0);
}

/*
 * Pacing after a takeover does not trust the record's times: every grant of
 * an earlier leader was sent while its lease held, and this leader was
 * elected only after that lease ended (expired, revoked, or given up before
 * its expiry), so one whole interval from now is always enough, whatever the
 * clocks of the two machines say and whether the earlier leader's last
 * record write reached etcd. The record's budget is applied (it can only
 * lower what Discord says), and its grant times are logged for operators.
 */
void dcm__ha_identify_start(dcm_master_t *m) {
  if (m->o.etcd == NULL || m->idq == NULL) return;
  int nb = dcm__idq_buckets(m->idq);
  uint64_t now = uv_now(m->loop), interval = dcm__ms(m->o.identify_interval);
  long long wall = dcm__wall_ms();
  struct dcm__ha_record_s *r = m->ha_rec;
  free(m->ha_last);
  m->ha_last = calloc((size_t)nb, sizeof *m->ha_last);
  m->ha_nlast = m->ha_last ? nb : 0;
  for (int b = 0; b < nb; b++) dcm__idq_hold(m->idq, b, now + interval);
  long long latest = 0;
  for (long long b = 0; r && r->have && b < r->mc; b++)
    if (r->last[b] > latest) latest = r->last[b];
  if (latest > 0)
    dcm__info(&m->log, NULL, "identify: every bucket waits %.1fs after the takeover (the last "
              "leader's latest grant was %.1fs ago by the two clocks)", (double)interval / 1000.0,
              (double)(wall - latest) / 1000.0);
  else
    dcm__info(&m->log, NULL, "identify: every bucket waits %.1fs after the takeover",
              (double)interval / 1000.0);
  if (r == NULL || !r->have) return;
  long spendable = dcm__idq_remaining(m->idq);
  if (r->remaining >= 0 && r->reset_at > wall && (spendable < 0 || r->remaining < spendable)) {
    /* Discord may not have counted the last leader's newest identifies yet. */
    dcm__idq_set_budget(m->idq, (long)r->remaining, (long)r->total, m->o.identify_reserve);
    dcm__info(&m->log, NULL, "identify: %lld left in the budget as the last leader counted",
              r->remaining);
  }
}

void dcm__ha_granted(dcm_master_t *m, int bucket) {
  if (m->o.etcd == NULL || bucket < 0 || bucket >= m->ha_nlast) return;
  m->ha_last[bucket] = dcm__wall_ms();
  m->ha_dirty = 1;
}

void dcm__ha_persist(dcm_master_t *m) {
  if (m->o.etcd == NULL || !m->ha_dirty || m->idq == NULL || !m->ha_leading || m->ha_closed)
    return;
  lua_State *L = m->json;
  long long wall = dcm__wall_ms(), interval = (long long)dcm__ms(m->o.identify_interval);
  size_t len;
  m->ha_dirty = 0;
  lua_settop(L, 0);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)m->ha_epoch);
  lua_setfield(L, -2, "epoch");
  lua_pushinteger(L, m->ha_nlast);
  lua_setfield(L, -2, "max_concurrency");
  lua_pushinteger(L, interval);
  lua_setfield(L, -2, "interval_ms");
  lua_createtable(L, 0, 0); /* only buckets a grant still holds */
  for (int b = 0; b < m->ha_nlast; b++) {
    if (m->ha_last[b] <= 0 || wall - m->ha_last[b] >= interval) continue;
    char key[16];
    snprintf(key, sizeof key, "%d", b);
    lua_pushinteger(L, m->ha_last[b]);
    lua_setfield(L, -2, key);
  }
  lua_setfield(L, -2, "buckets");
  long remaining = dcm__idq_remaining(m->idq);
  if (remaining >= 0 && m->have_gw) {
    uint64_t elapsed = uv_now(m->loop) - m->gw_at, reset = dcm__ms(m->gw.reset_after);
    lua_pushinteger(L, remaining);
    lua_setfield(L, -2, "remaining");
    lua_pushinteger(L, m->gw.total);
    lua_setfield(L, -2, "total");
    lua_pushinteger(L, wall + (long long)(reset > elapsed ? reset - elapsed : 0));
    lua_setfield(L, -2, "reset_at");
  }
  const char *s = dcm__json_encode(L, -1, &len);
  if (s == NULL || dcm__elect_put(m->elect, "identify", s, len) != 0)
    dcm__warn(&m->log, NULL, "identify: could not record the grants in etcd");
  lua_settop(L, 0);
}

/* ---- election events -------------------------------------------------- */

/* ---- the fleet record: who the next leader should wait for ------------ */

static void free_expect(dcm_master_t *m) {
  for (size_t i = 0; i < m->ha_nexpect; i++) free(m->ha_expect[i]);
  free(m->ha_expect);
  m->ha_expect = NULL;
  m->ha_nexpect = 0;
}

void dcm__ha_fleet_persist(dcm_master_t *m) {
  if (m->o.etcd == NULL || !m->ha_leading || m->ha_closed || !m->allocated) return;
  lua_State *L = m->json;
  size_t len, n = 0;
  int top = lua_gettop(L);
  lua_createtable(L, 0, 0);
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state == DCM_MACHINE_DEAD || x->nshards == 0) continue;
    lua_pushstring(L, x->id);
    lua_rawseti(L, -2, (lua_Integer)++n);
  }
  if (n == 0) {
    lua_pop(L, 1);
    dcm__json_push_empty_array(L);
  }
  const char *s = dcm__json_encode(L, -1, &len);
  if (s && (m->ha_fleet_last == NULL || strcmp(s, m->ha_fleet_last) != 0)) {
    char *copy = strdup(s);
    if (copy && dcm__elect_put(m->elect, "fleet", s, len) == 0) {
      free(m->ha_fleet_last);
      m->ha_fleet_last = copy;
    } else {
      free(copy);
    }
  }
  lua_settop(L, top);
}

static void parse_fleet(dcm_master_t *m, const char *s, size_t len) {
  lua_State *L = m->json;
  size_t n = 0;
  free_expect(m);
  if (s == NULL || dcm__json_decode(L, s, len) != 0) return;
  if (dcm__json_isarray(L, -1, &n) && n > 0 && n <= 1000000 &&
      (m->ha_expect = calloc(n, sizeof *m->ha_expect)) != NULL) {
    for (size_t i = 1; i <= n; i++) {
      size_t idlen;
      lua_rawgeti(L, -1, (lua_Integer)i);
      const char *id = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &idlen) : NULL;
      if (id && dcm__valid_id(id, idlen) && (m->ha_expect[m->ha_nexpect] = strdup(id)))
        m->ha_nexpect++;
      lua_pop(L, 1);
    }
  }
  lua_settop(L, 0);
}

int dcm__ha_fleet_back(dcm_master_t *m) {
  if (m->ha_nexpect == 0) return 0;
  for (size_t i = 0; i < m->ha_nexpect; i++) {
    dcm__machine_t *x = dcm__fleet_find(m, m->ha_expect[i]);
    if (x == NULL || x->state != DCM_MACHINE_LIVE) return 0;
  }
  return 1;
}

static void got_fleet(void *arg, const char *value, size_t len) {
  dcm_master_t *m = arg;
  m->ha_reading = 0;
  if (m->stopping || m->ha_closed || m->ha_leading || !dcm__elect_leading(m->elect)) return;
  parse_fleet(m, value, len);
  if (m->ha_nexpect)
    dcm__info(&m->log, NULL, "the last leader's fleet ran on %zu machines; the collection ends "
              "as soon as they are all back", m->ha_nexpect);
  m->ha_leading = 1;
  int r = dcm__coord_start(m);
  if (r != 0) {
    dcm__error(&m->log, NULL, "cannot start as leader: %s", dcm_strerror(r));
    m->exit_status = 1;
    dcm_master_stop(m, 0, NULL, NULL);
  }
}

static void got_record(void *arg, const char *value, size_t len) {
  dcm_master_t *m = arg;
  if (m->stopping || m->ha_closed || !dcm__elect_leading(m->elect)) {
    m->ha_reading = 0;
    return;
  }
  free_record(m);
  m->ha_rec = calloc(1, sizeof *m->ha_rec);
  if (m->ha_rec) parse_record(m, value, len, m->ha_rec);
  if (dcm__elect_get(m->elect, "fleet", got_fleet, m) != 0) got_fleet(m, NULL, 0);
}

static void on_elect(void *arg, dcm__elect_event ev) {
  dcm_master_t *m = arg;
  if (m->stopping || m->ha_closed) return;
  switch (ev) {
    case DCM_ELECT_LEADING:
      if (m->ha_leading || m->ha_reading) return;
      m->ha_epoch = m->ha_term.n = dcm__elect_epoch(m->elect);
      snprintf(m->ha_term.source, sizeof m->ha_term.source, "%s",
               dcm__elect_cluster_id(m->elect));
      dcm__info(&m->log, NULL, "elected leader of cluster %s (epoch %" PRIu64 "); adopting the "
                "fleet from the CONTROLs' reports", m->o.cluster, m->ha_epoch);
      dcm__emit(m, DCM_EVENT_LEADER, NULL, (int)(m->ha_epoch & 0x7fffffff), m->ha_self);
      m->ha_reading = 1;
      if (dcm__elect_get(m->elect, "identify", got_record, m) != 0) got_record(m, NULL, 0);
      return;
    case DCM_ELECT_FOLLOWING: {
      const char *leader = dcm__elect_leader(m->elect);
      if (leader == NULL || strcmp(leader, m->ha_last_leader) == 0) return;
      snprintf(m->ha_last_leader, sizeof m->ha_last_leader, "%s", leader);
      dcm__info(&m->log, NULL, "following the leader at %s", leader);
      dcm__emit(m, DCM_EVENT_FOLLOWER, NULL, 0, leader);
      return;
    }
    case DCM_ELECT_STEPPED_DOWN:
      if (m->ha_leading || m->ha_reading) step_down(m, "leadership lost (the lease was not renewed)");
      return;
    case DCM_ELECT_UNAVAILABLE:
      return; /* election.c logs the outage once; a leader steps down on its own deadline */
  }
}

int dcm__ha_start(dcm_master_t *m) {
  if (m->o.etcd == NULL) return dcm__coord_start(m);
  if (m->o.advertise_url) {
    snprintf(m->ha_self, sizeof m->ha_self, "%s", m->o.advertise_url);
  } else {
    int v6 = strchr(m->o.listen_host, ':') != NULL;
    snprintf(m->ha_self, sizeof m->ha_self, "%s://%s%s%s:%d", m->tls_ctx ? "wss" : "ws",
             v6 ? "[" : "", m->o.listen_host, v6 ? "]" : "", m->port);
  }
  dcm__elect_opts_t eo = {m->o.etcd, m->o.cluster, m->ha_self, m->o.lease_ttl,
                          m->o.etcd_cacert, m->o.etcd_cert, m->o.etcd_key};
  int r = dcm__elect_new(m->loop, &m->log, &eo, on_elect, m, &m->elect);
  if (r == 0) r = dcm__elect_start(m->elect);
  if (r != 0) return r;
  dcm__info(&m->log, NULL, "HA: campaigning to lead cluster %s through etcd (lease %gs) as %s; "
            "following until elected", m->o.cluster, m->o.lease_ttl, m->ha_self);
  return 0;
}

static void elect_closed(void *arg) { dcm__master_release(arg); }

int dcm__ha_close(dcm_master_t *m) {
  if (m->elect == NULL || m->ha_closed) return 0;
  m->ha_closed = 1; /* the elector is freed once closed: nothing here asks it again */
  m->ha_leading = 0;
  dcm__elect_close(m->elect, elect_closed, m);
  return 1;
}

void dcm__ha_free(dcm_master_t *m) {
  free_record(m);
  free_expect(m);
  free(m->ha_fleet_last);
  m->ha_fleet_last = NULL;
  free(m->ha_last);
  m->ha_last = NULL;
  m->ha_nlast = 0;
}
