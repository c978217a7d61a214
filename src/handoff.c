/*
 * handoff.c: shards that move keep their Discord session, and never run
 * twice. The session table's updates (`sessions`), planned moves that stop
 * before they start (the receiver's `connect` waits for the sender's
 * `stopped`, bounded by the handoff timeout), and rebalancing.
 */
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "coordinator.h"
#include "fleet.h"
#include "internal.h"

static void handoff_timer_cb(uv_timer_t *t);

void dcm__handoff_arm(dcm_master_t *m) {
  uint64_t first = UINT64_MAX, now = uv_now(m->loop);
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->awaiting > 0 && x->handoff_deadline < first) first = x->handoff_deadline;
  }
  if (first == UINT64_MAX)
    uv_timer_stop(&m->handoff_timer);
  else if (!m->stopping)
    uv_timer_start(&m->handoff_timer, handoff_timer_cb, first > now ? first - now : 0, 0);
}

/* Shard s is `to`'s now. If a machine still runs it (planned move), `to`
   waits for that one's `stopped`; otherwise `to` is owed a `connect`. */
void dcm__handoff_give(dcm_master_t *m, int s, dcm__machine_t *from, dcm__machine_t *to) {
  if (from && from->handoff && !m->leaving[s]) m->leaving[s] = from;
  if (m->leaving[s] == NULL || m->leaving[s] == to) {
    m->leaving[s] = NULL;
    dcm__coord_queue_connect(m, to);
    return;
  }
  if (to->awaiting++ == 0) {
    to->handoff_deadline = uv_now(m->loop) + dcm__ms(m->o.handoff_timeout);
    dcm__handoff_arm(m);
  }
}

/* s has stopped where it ran (or we stop waiting): its new owner may start. */
void dcm__handoff_done(dcm_master_t *m, int s) {
  dcm__machine_t *to = m->owner[s];
  m->leaving[s] = NULL;
  if (to && to->awaiting > 0 && --to->awaiting == 0) dcm__coord_queue_connect(m, to);
}

static void handoff_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  uint64_t now = uv_now(m->loop);
  size_t late = 0;
  for (int s = 0; s < m->shard_count; s++) {
    dcm__machine_t *to = m->owner[s];
    if (m->leaving[s] && to && to->awaiting > 0 && to->handoff_deadline <= now) {
      if (late++ == 0)
        dcm__warn(&m->log, m->leaving[s]->id, "did not confirm the stop of shard %d within the "
                  "handoff timeout (%.3gs); starting it on %s anyway", s,
                  m->o.handoff_timeout, to->id);
      dcm__handoff_done(m, s);
    }
  }
  if (late > 1) dcm__warn(&m->log, NULL, "%zu shards started without a confirmed stop", late);
  dcm__handoff_arm(m);
  dcm__coord_pump(m);
  dcm__handoff_progress(m);
}

void dcm__coord_stopped(dcm_master_t *m, dcm__machine_t *x, const int *shards, size_t n) {
  size_t done = 0;
  for (size_t i = 0; i < n; i++) {
    int s = shards[i];
    if (s >= 0 && s < m->shard_count && m->leaving[s] == x) {
      dcm__handoff_done(m, s);
      done++;
    }
  }
  dcm__info(&m->log, x->id, "stopped %zu shards%s", n,
            done ? "; their new machines start them" : "");
  if (done) {
    dcm__handoff_arm(m);
    dcm__coord_pump(m);
  }
  dcm__handoff_progress(m);
}

void dcm__coord_sessions(dcm_master_t *m, dcm__machine_t *x, const dcm__session_t *ss,
                         size_t n, size_t nbad) {
  size_t kept = 0, foreign = 0;
  for (size_t i = 0; i < n; i++) {
    int s = ss[i].shard;
    /* only from the machine that runs the shard, or is stopping it */
    if (s < m->shard_count && (m->owner[s] == x || m->leaving[s] == x) &&
        dcm__fleet_set_session(m, &ss[i]) == 0)
      kept++;
    else
      foreign++;
  }
  if (nbad || foreign)
    dcm__warn(&m->log, x->id, "sessions: %zu kept, %zu invalid, %zu for shards it does not run; "
              "ignored", kept, nbad, foreign);
  else
    dcm__debug(&m->log, x->id, "sessions: %zu updated", kept);
}

/* ---- rebalance ------------------------------------------------------------ */

/* Machines that should run shards: live, not draining, not declared standby. */
static size_t targets(dcm_master_t *m, dcm__machine_t **xs) {
  size_t n = dcm__fleet_live(m, xs, 1), k = 0;
  for (size_t i = 0; i < n; i++)
    if (!xs[i]->draining && !xs[i]->declared_standby) xs[k++] = xs[i];
  return k;
}

/* One step: plan over the current fleet, move at most a batch. Returns the
   shards moved, 0 when the fleet matches the plan, < 0 on error. */
static long step(dcm_master_t *m) {
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  int *owner = malloc((size_t)m->shard_count * sizeof *owner);
  long moved = 0, differ = 0;
  size_t n = xs && owner ? targets(m, xs) : 0;
  int r = n ? dcm__coord_plan(m, xs, n, owner) : DCM_EINVAL;
  for (int s = 0; r == 0 && s < m->shard_count; s++) {
    dcm__machine_t *cur = m->owner[s], *to = xs[owner[s]];
    if (cur == to) continue;
    differ++;
    if (moved >= m->o.rebalance_batch || m->leaving[s]) continue;
    if (cur && (cur->state != DCM_MACHINE_LIVE || dcm__fleet_take(m, cur, s) != 0)) continue;
    if (dcm__fleet_give(m, to, s) != 0) continue;
    if (cur) dcm__coord_queue_connect(m, cur); /* the sender's smaller connect goes first */
    dcm__handoff_give(m, s, cur, to);
    moved++;
  }
  if (r == 0) {
    for (size_t i = 0; i < n; i++) xs[i]->standby = 0; /* they run shards now */
    if (moved)
      dcm__info(&m->log, NULL, "rebalance step %d: moving %ld shards (%ld differ from the plan)",
                ++m->rebalance_step, moved, differ);
  }
  free(xs);
  free(owner);
  return r == 0 ? moved : r;
}

static void finish_rebalance(dcm_master_t *m, const char *how) {
  m->rebalancing = 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->declared_standby && x->nshards == 0) x->standby = 1; /* a spare again */
  }
  dcm__info(&m->log, NULL, "rebalance %s after %d steps", how, m->rebalance_step);
}

/* A step is over when nothing is still stopping and every machine that got a
   `connect` answered `ready` (or was late, or is gone). */
static int step_over(dcm_master_t *m) {
  if (!dcm__list_empty(&m->connect_queue)) return 0;
  for (int s = 0; s < m->shard_count; s++)
    if (m->leaving[s]) return 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state == DCM_MACHINE_LIVE &&
        (x->connect == DCM_CONNECT_SENT || x->connect == DCM_CONNECT_ACKED))
      return 0;
  }
  return 1;
}

void dcm__handoff_progress(dcm_master_t *m) {
  if (!m->rebalancing || m->stopping || !step_over(m)) return;
  long moved = step(m);
  if (moved < 0)
    finish_rebalance(m, "stopped: no plan for the current fleet");
  else if (moved == 0)
    finish_rebalance(m, "done: the fleet matches the plan");
  else
    dcm__coord_pump(m);
}

int dcm_master_rebalance(dcm_master_t *m) {
  if (!m->started || m->stopping || !m->allocated || !dcm__ha_leading(m)) return DCM_ESTATE;
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  size_t n = xs ? targets(m, xs) : 0;
  free(xs);
  if (n == 0) {
    dcm__warn(&m->log, NULL, "rebalance: no live machine that is neither draining nor standby");
    return DCM_EINVAL;
  }
  dcm__info(&m->log, NULL, "rebalance %s over %zu machines, %d shards at a time",
            m->rebalancing ? "restarted" : "started", n, m->o.rebalance_batch);
  m->rebalancing = 1;
  m->rebalance_step = 0;
  m->counters.rebalances++;
  if (step_over(m)) {
    dcm__handoff_progress(m);
  } /* else: the step under way ends first */
  return 0;
}
