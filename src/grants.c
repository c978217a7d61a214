/*
 * grants.c: the coordinator's side of the identify queue (identify.c): it
 * takes `identify` and `release` from machines, sends `grant` when the
 * queue says a shard's turn has come (from one timer re-armed to the next
 * due grant), and waits for Discord's reset when the budget stops grants.
 */
#include <stdio.h>

#include "clock.h"
#include "coordinator.h"
#include "internal.h"

static void idq_timer_cb(uv_timer_t *t);

static void budget_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  dcm__info(&m->log, NULL, "asking Discord for the identify budget again");
  dcm__coord_fetch_gateway(m);
}

/* Runs the queue on the next loop turn, once the current decision is whole. */
void dcm__grants_kick(dcm_master_t *m) {
  if (m->idq && !m->stopping) uv_timer_start(&m->idq_timer, idq_timer_cb, 0, 0);
}

static void send_not_yours(dcm_master_t *m, dcm__machine_t *x, int shard, const char *why) {
  size_t len;
  char msg[96];
  snprintf(msg, sizeof msg, "identify: shard %d is %s", shard, why);
  dcm__info(&m->log, x->id, "error %d: %s", DCM_ERR_NOT_YOURS, msg);
  const char *s = dcm__enc_error(m->json, DCM_ERR_NOT_YOURS, msg, shard, &len);
  if (s && x->conn) dcm__conn_send(x->conn, s, len);
  lua_settop(m->json, 0);
}

static int grant_cb(void *arg, int shard, void *owner) {
  dcm_master_t *m = arg;
  dcm__machine_t *x = owner;
  size_t len;
  if (x->conn == NULL) return -1;
  if (m->owner[shard] != x) {
    send_not_yours(m, x, shard, "no longer assigned to this machine");
    return -1;
  }
  const char *s = dcm__enc_grant(m->json, shard, dcm__ha_term(m), &len);
  if (s) dcm__conn_send(x->conn, s, len);
  lua_settop(m->json, 0);
  if (s == NULL) return -1;
  dcm__debug(&m->log, x->id, "identify granted: shard %d (bucket %d)", shard,
             shard % dcm__idq_buckets(m->idq));
  dcm__ha_granted(m, shard % dcm__idq_buckets(m->idq));
  return 0;
}

/* Grants stop above the reserve: one line, then wait for Discord's reset. */
static void wait_for_budget(dcm_master_t *m) {
  if (m->budget_wait || !m->have_gw) return;
  uint64_t elapsed = uv_now(m->loop) - m->gw_at, reset = dcm__ms(m->gw.reset_after);
  uint64_t wait = (reset > elapsed ? reset - elapsed : 0) + 1000;
  dcm__warn(&m->log, NULL, "identify budget: %ld left, reserve %ld: grants stop (shards "
            "waiting: %zu) until the reset in %.0fs", dcm__idq_remaining(m->idq),
            dcm__idq_reserve(m->idq), dcm__idq_waiting(m->idq), (double)wait / 1000.0);
  m->budget_wait = 1;
  uv_timer_start(&m->budget_timer, budget_timer_cb, wait, 0);
}

void dcm__grants_refetch_in(dcm_master_t *m, uint64_t wait) {
  uv_timer_start(&m->budget_timer, budget_timer_cb, wait, 0);
}

static void idq_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  uint64_t now = uv_now(m->loop);
  uint64_t wake = dcm__idq_run(m->idq, now, grant_cb, m);
  dcm__ha_persist(m); /* this run's grants, in one record */
  if (wake != DCM_IDQ_NEVER)
    uv_timer_start(&m->idq_timer, idq_timer_cb, wake > now ? wake - now : 0, 0);
  if (dcm__idq_budget_blocked(m->idq)) wait_for_budget(m);
}

int dcm__grants_start(dcm_master_t *m) {
  m->idq = dcm__idq_new(m->shard_count, m->max_concurrency, dcm__ms(m->o.identify_interval));
  if (m->idq == NULL) return DCM_ENOMEM;
  /* Without Discord (fixed shards) the budget is unknown: pacing only. */
  dcm__idq_set_budget(m->idq, m->have_gw ? m->gw.remaining : -1, m->have_gw ? m->gw.total : 0,
                      m->o.identify_reserve);
  dcm__ha_identify_start(m); /* after a takeover: the last leader's pace and budget */
  return 0;
}

void dcm__coord_identify(dcm_master_t *m, dcm__machine_t *x, int shard) {
  if (m->idq == NULL || shard >= m->shard_count || m->owner[shard] != x) {
    send_not_yours(m, x, shard, "not assigned to this machine");
    return;
  }
  x->identify_queue = 1; /* it asks: its identifies are counted by grant */
  if (dcm__idq_request(m->idq, shard, x) == 0) dcm__grants_kick(m);
}

void dcm__coord_release(dcm_master_t *m, dcm__machine_t *x, int shard) {
  if (m->idq == NULL) return;
  int r = dcm__idq_release(m->idq, shard, x, uv_now(m->loop));
  if (r == DCM_IDQ_RETURNED)
    dcm__info(&m->log, x->id, "shard %d: grant returned unused; the identify goes back to "
              "the budget", shard);
  else if (r == DCM_IDQ_DEQUEUED)
    dcm__debug(&m->log, x->id, "shard %d: identify request withdrawn", shard);
}
