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
