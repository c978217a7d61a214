/*
 * coordinator.c: the master's lifecycle. Fetch /gateway/bot, collect
 * CONTROLs, refresh their load, adopt what a restarted fleet already runs,
 * allocate the rest through the policy, send `connect` to one CONTROL at a
 * time, then keep the fleet whole: reconnect grace, failover, offload, late
 * joiners as standby, and the fatal stop. Every transition is one log line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "coordinator.h"
#include "fleet.h"
#include "internal.h"

#define REFRESH_WAIT_MS 5000

static const char *const state_names[] = {"idle",       "fetching", "collecting",
                                          "connecting", "running",  "shutdown"};

const char *dcm__state_name(dcm__state s) { return state_names[s]; }

static void set_state(dcm_master_t *m, dcm__state s) {
  if (m->state == s) return;
  dcm__info(&m->log, NULL, "state %s -> %s", state_names[m->state], state_names[s]);
  m->state = s;
  dcm__emit(m, DCM_EVENT_STATE, NULL, (int)s, state_names[s]);
}

int dcm__coord_accepting(const dcm_master_t *m) {
  return !m->stopping && m->state >= DCM_STATE_FETCHING && m->state <= DCM_STATE_RUNNING;
}

static void fatal_stop(dcm_master_t *m, int status, const char *machine, int code,
                       const char *message) {
  if (m->stopping) return;
  m->exit_status = status;
  m->shutdown_code = code;
  snprintf(m->shutdown_reason, sizeof m->shutdown_reason, "%s%s%.*s", machine ? machine : "",
           machine ? ": " : "", 120, message); /* bounded: the id is at most 128 */
  dcm__emit(m, DCM_EVENT_FATAL, machine, code, message);
  dcm_master_stop(m, 1, NULL, NULL);
}

/* Machines that may receive shards: live, not draining, not `but`. */
static size_t receivers(dcm_master_t *m, dcm__machine_t **xs, const dcm__machine_t *but,
                        int standby_too) {
  size_t n = dcm__fleet_live(m, xs, standby_too), k = 0;
  for (size_t i = 0; i < n; i++)
    if (xs[i] != but && !xs[i]->draining) xs[k++] = xs[i];
  return k;
}

/* ---- policy calls ------------------------------------------------------ */

static dcm__pmachine_t *policy_view(dcm__machine_t **xs, size_t n) {
  dcm__pmachine_t *pm = calloc(n ? n : 1, sizeof *pm);
  if (pm == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    pm[i].id = xs[i]->id;
    pm[i].cores = xs[i]->cores;
    pm[i].loadavg = dcm__machine_loadavg(xs[i]);
    pm[i].standby = xs[i]->standby;
    pm[i].shards = xs[i]->shards;
    pm[i].nshards = xs[i]->nshards;
  }
  return pm;
}

void dcm__coord_queue_connect(dcm_master_t *m, dcm__machine_t *x) {
  if (dcm__list_empty(&x->queue_link)) dcm__list_push(&m->connect_queue, &x->queue_link);
}

/*
 * Places shards (unassigned now) on machines through the failover policy,
 * as if `dead` had held them. Receivers are queued for a `connect`, at once,
 * or (stop before start) once `from`, still running them, confirms the stop.
 * Returns how many were placed; the rest stay unassigned.
 */
static size_t place(dcm_master_t *m, const dcm__pmachine_t *dead, dcm__machine_t *from,
                    dcm__machine_t **xs, size_t n) {
  if (dead->nshards == 0 || n == 0) return 0;
  dcm__pmachine_t *pm = policy_view(xs, n);
  int *owner = malloc(dead->nshards * sizeof *owner);
  size_t placed = 0;
  dcm__pctx_t ctx = {m->shard_count, m->max_concurrency};
  if (pm && owner && dcm__policy_failover(m->policy, dead, pm, n, &ctx, owner) == 0) {
    for (size_t i = 0; i < dead->nshards; i++) {
      if (owner[i] < 0 || (size_t)owner[i] >= n) continue;
      dcm__machine_t *to = xs[owner[i]];
      if (dcm__fleet_give(m, to, dead->shards[i]) == 0) {
        placed++;
        dcm__handoff_give(m, dead->shards[i], from, to);
      }
    }
  } else {
    dcm__error(&m->log, dead->id, "failover policy gave no usable result; %zu shards stay unassigned",
               dead->nshards);
  }
  free(pm);
  free(owner);
  return placed;
}

static void place_unassigned(dcm_master_t *m, int active_only) {
  if (m->nunassigned == 0) return;
  int *un = malloc(((size_t)m->shard_count + 1) * sizeof *un);
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  if (un && xs) {
    size_t nu = dcm__fleet_unassigned(m, un);
    size_t n = receivers(m, xs, NULL, !active_only);
    if (nu && n) {
      dcm__pmachine_t dead = {"(unassigned)", 0, 0, 0, un, nu};
      size_t placed = place(m, &dead, NULL, xs, n);
      dcm__info(&m->log, NULL, "placed %zu of %zu unassigned shards on %zu live machines",
                placed, nu, n);
    }
  }
  free(un);
  free(xs);
}

/* ---- connect ------------------------------------------------------------- */

static void summarize(const int *s, size_t n, char *out, size_t len) {
  size_t o = 0;
  out[0] = '\0';
  for (size_t i = 0; i < n && o + 24 < len; i++) {
    size_t j = i;
    while (j + 1 < n && s[j + 1] == s[j] + 1) j++;
    o += (size_t)snprintf(out + o, len - o, "%s%d", o ? "," : "", s[i]);
    if (j > i) o += (size_t)snprintf(out + o, len - o, "-%d", s[j]);
    i = j;
  }
  if (n == 0) snprintf(out, len, "none");
}

/* Shards of a (sorted) that are not in b (sorted). */
static size_t count_new(const int *a, size_t na, const int *b, size_t nb) {
  size_t i = 0, j = 0, n = 0;
  for (; i < na; i++) {
    while (j < nb && b[j] < a[i]) j++;
    if (j == nb || b[j] != a[i]) n++;
  }
  return n;
}

/* Connecting is over when no live machine still owes its first `ready`. */
static void maybe_running(dcm_master_t *m) {
  if (m->state != DCM_STATE_CONNECTING || !dcm__list_empty(&m->connect_queue))
    return;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state == DCM_MACHINE_LIVE &&
        (x->connect == DCM_CONNECT_SENT || x->connect == DCM_CONNECT_ACKED))
      return;
  }
  set_state(m, DCM_STATE_RUNNING);
}

static void connect_timeout_cb(uv_timer_t *t) {
  dcm__machine_t *x = t->data;
  dcm_master_t *m = x->m;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  if (x->connect != DCM_CONNECT_SENT && x->connect != DCM_CONNECT_ACKED) return;
  dcm__warn(&m->log, x->id, "not ready within the connect timeout (%.3gs); it holds no other "
            "machine back", m->o.connect_timeout);
  x->connect = DCM_CONNECT_LATE;
  maybe_running(m);
  dcm__handoff_progress(m);
}

static void send_connect(dcm_master_t *m, dcm__machine_t *x) {
  size_t len;
  char list[160];
  int *copy = malloc((x->nshards ? x->nshards : 1) * sizeof *copy);
  if (copy == NULL) {
    dcm__error(&m->log, x->id, "out of memory: connect not sent");
    return;
  }
  /* A CONTROL that does not ask for grants identifies on its own: count
     every shard new to it (an estimate, on the safe side). */
  if (!x->identify_queue && m->idq)
    dcm__idq_spend(m->idq, (long)count_new(x->shards, x->nshards, x->sent, x->nsent));
  /* Shards new to it move with their last session: it resumes them. */
  const dcm__session_t **sess = calloc(x->nshards ? x->nshards : 1, sizeof *sess);
  size_t handed = 0;
  for (size_t i = 0, j = 0; sess && i < x->nshards; i++) {
    while (j < x->nsent && x->sent[j] < x->shards[i]) j++;
    if ((j == x->nsent || x->sent[j] != x->shards[i]) && m->session[x->shards[i]])
      sess[i] = m->session[x->shards[i]], handed++;
  }
  m->counters.resumes_handed += handed;
  if (x->nshards) memcpy(copy, x->shards, x->nshards * sizeof *copy);
  free(x->sent);
  x->sent = copy;
  x->nsent = x->nshards;
  const char *s = dcm__enc_connect(m->json, x->shards, x->nshards, x->nshards == 0,
                                   handed ? sess : NULL, dcm__ha_term(m), &len);
  free(sess);
  if (s) dcm__conn_send(x->conn, s, len);
  lua_settop(m->json, 0);
  summarize(x->shards, x->nshards, list, sizeof list);
  dcm__info(&m->log, x->id, "connect: %zu shards (%s)%s%s", x->nshards, list,
            x->nshards == 0 ? ", redundant" : "", handed ? ", with sessions to resume" : "");
  if (x->nshards > 0) {
    x->connect = DCM_CONNECT_SENT;
    uv_timer_start(&x->timer, connect_timeout_cb, dcm__ms(m->o.connect_timeout), 0);
  } else {
    x->connect = DCM_CONNECT_NONE; /* nothing to wait for */
    uv_timer_stop(&x->timer);
  }
  dcm__emit(m, DCM_EVENT_ASSIGNED, x->id, (int)x->nshards, NULL);
}

/* Sends every `connect` owed, all in this turn: pacing is the queue's job. */
void dcm__coord_pump(dcm_master_t *m) {
  /* A policy call may have taken a while since leadership was last checked. */
  if (m->o.etcd) {
    uv_update_time(m->loop);
    if (!dcm__ha_leading(m)) return;
  }
  while (!dcm__list_empty(&m->connect_queue)) {
    dcm__link_t *l = m->connect_queue.next;
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, queue_link);
    dcm__list_remove(l);
    if (x->state != DCM_MACHINE_LIVE || x->conn == NULL) continue; /* re-queued on resume */
    if (x->awaiting > 0) continue; /* queued again when the senders stopped */
    send_connect(m, x);
  }
  maybe_running(m);
  dcm__ha_fleet_persist(m);
}

/* ---- allocation -------------------------------------------------------- */

static int cmp_int(const void *a, const void *b) {
  int p = *(const int *)a, q = *(const int *)b;
  return (p > q) - (p < q);
}

static void allocate(dcm_master_t *m);

/* Takes what the machines report running, first id wins a conflict. */
static size_t adopt(dcm_master_t *m, dcm__machine_t **xs, size_t n) {
  size_t adopted = 0;
  for (size_t i = 0; i < n; i++) {
    dcm__machine_t *x = xs[i];
    size_t beyond = 0, taken = 0; /* one summary line each, not one per shard */
    int first_beyond = -1, first_taken = -1;
    const char *holder = NULL;
    for (size_t k = 0; x->has_reported && k < x->nreported; k++) {
      int s = x->reported[k];
      if (s >= m->shard_count) {
        if (beyond++ == 0) first_beyond = s;
      } else if (m->owner[s] != NULL) {
        if (m->owner[s] != x && taken++ == 0) first_taken = s, holder = m->owner[s]->id;
      } else if (dcm__fleet_give(m, x, s) == 0) {
        adopted++;
      }
    }
    if (beyond)
      dcm__warn(&m->log, x->id, "reports %zu shards beyond the %d shards (first: %d); ignored",
                beyond, m->shard_count, first_beyond);
    if (taken)
      dcm__warn(&m->log, x->id, "reports %zu shards also reported by a lower id (first: %d, "
                "kept by %s); ignored", taken, first_taken, holder);
  }
  return adopted;
}

int dcm__coord_plan(dcm_master_t *m, dcm__machine_t **xs, size_t n, int *owner) {
  dcm__pmachine_t *pm = policy_view(xs, n);
  dcm__pctx_t ctx = {m->shard_count, m->max_concurrency};
  int r = pm ? dcm__policy_allocate(m->policy, pm, n, &ctx, owner) : DCM_ENOMEM;
  free(pm);
  return r;
}

static int policy_allocate(dcm_master_t *m, dcm__machine_t **xs, size_t n) {
  int *owner = malloc((size_t)m->shard_count * sizeof *owner);
  int r = owner ? dcm__coord_plan(m, xs, n, owner) : DCM_ENOMEM;
  for (int s = 0; r == 0 && s < m->shard_count; s++) dcm__fleet_give(m, xs[owner[s]], s);
  free(owner);
  return r;
}

static void allocate(dcm_master_t *m) {
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  if (xs == NULL) return;
  size_t n = dcm__fleet_live(m, xs, 1);
  m->refreshing = 0;
  if (n == 0) {
    dcm__warn(&m->log, NULL, "collection window over with no CONTROL connected; "
                             "the first to join gets the shards");
    free(xs);
    return;
  }
  size_t adopted = adopt(m, xs, n);
  size_t active = 0;
  for (size_t i = 0; i < n; i++) active += !xs[i]->standby;
  if (adopted > 0) {
    dcm__info(&m->log, NULL, "adopted %zu of %d shards the fleet already runs", adopted,
              m->shard_count);
    place_unassigned(m, active > 0);
  } else {
    size_t k = 0;
    if (active == 0) {
      dcm__warn(&m->log, NULL, "only standby machines are connected; allocating over them");
      k = n;
    } else {
      for (size_t i = 0; i < n; i++)
        if (!xs[i]->standby) xs[k++] = xs[i];
    }
    if (policy_allocate(m, xs, k) != 0) {
      dcm__error(&m->log, NULL, "allocation failed; shards stay unassigned");
    } else {
      dcm__info(&m->log, NULL, "allocated %d shards over %zu machines", m->shard_count, k);
    }
    n = dcm__fleet_live(m, xs, 1);
  }
  for (size_t i = 0; i < n; i++) {
    /* What it runs counts as sent: only new shards cost an identify. */
    free(xs[i]->sent);
    xs[i]->sent = xs[i]->reported;
    xs[i]->nsent = xs[i]->nreported;
    if (xs[i]->nsent) qsort(xs[i]->sent, xs[i]->nsent, sizeof(int), cmp_int);
    xs[i]->reported = NULL;
    xs[i]->nreported = 0;
    xs[i]->has_reported = 0;
    dcm__coord_queue_connect(m, xs[i]);
  }
  free(xs);
  m->allocated = 1;
  set_state(m, DCM_STATE_CONNECTING);
  dcm__coord_pump(m);
}

static void refresh_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  dcm__info(&m->log, NULL, "%d machines did not answer the info request in time; allocating anyway",
            m->info_waiting);
  allocate(m);
}

static void end_window(dcm_master_t *m, const char *why) {
  size_t len;
  m->window_over = 1;
  uv_timer_stop(&m->timer);
  dcm__info(&m->log, NULL, "collection over (%s) with %zu machines; refreshing their load", why,
            m->nmachines);
  m->info_waiting = 0;
  const char *req = dcm__enc_info_request(m->json, &len);
  for (dcm__link_t *l = m->machines.next; req && l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state != DCM_MACHINE_LIVE) continue;
    x->info_pending = 1;
    m->info_waiting++;
    dcm__conn_send(x->conn, req, len);
  }
  lua_settop(m->json, 0);
  if (m->info_waiting == 0) {
    allocate(m);
    return;
  }
  m->refreshing = 1;
  uint64_t wait = dcm__ms(m->o.handshake_timeout);
  uv_timer_start(&m->timer, refresh_timer_cb, wait < REFRESH_WAIT_MS ? wait : REFRESH_WAIT_MS, 0);
}

static void window_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  end_window(m, "window elapsed");
}

static void begin_collecting(dcm_master_t *m) {
  set_state(m, DCM_STATE_COLLECTING);
  dcm__info(&m->log, NULL, "collecting CONTROLs for %.3gs (%d shards, max_concurrency %d%s)",
            m->o.collect_window, m->shard_count, m->max_concurrency,
            m->o.expected_machines ? ", ends early at the expected machine count" : "");
  uv_timer_start(&m->timer, window_timer_cb, dcm__ms(m->o.collect_window), 0);
}

/*
 * No automatic reshard: a MASTER that (re)starts under a running fleet keeps
 * the count the fleet runs with, whatever Discord now recommends, so no
 * cluster is stopped. Only with --shards auto and before the allocation.
 */
void dcm__coord_running_count(dcm_master_t *m, dcm__machine_t *x, int count) {
  if (m->allocated || m->o.shards > 0 || count == m->shard_count) return;
  dcm__idq_t *q = dcm__idq_new(count, m->max_concurrency, dcm__ms(m->o.identify_interval));
  if (q == NULL || dcm__fleet_set_shards(m, count) != 0) {
    dcm__idq_free(q);
    dcm__error(&m->log, x->id, "out of memory keeping the running shard count %d", count);
    return;
  }
  if (m->recommended == 0) m->recommended = m->gw.shards;
  dcm__warn(&m->log, x->id, "the running fleet has %d shards; Discord recommends %d. Keeping %d "
            "(no cluster is stopped). To reshard, restart the whole fleet with --shards %d",
            count, m->recommended, count, m->recommended);
  dcm__idq_free(m->idq);
  m->idq = q;
  dcm__idq_set_budget(m->idq, m->have_gw ? m->gw.remaining : -1, m->have_gw ? m->gw.total : 0,
                      m->o.identify_reserve);
  dcm__ha_identify_start(m);
  /* Machines initialised with the old count (none of them runs shards yet)
     hear the kept one. */
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *y = DCM_CONTAINER(l, dcm__machine_t, link);
    if (y != x && y->conn && !y->held) dcm__session_initialise(y->conn);
  }
}

/* CONTROLs that identified while MASTER was asking Discord get their
   `initialise` now and join the collection like any other. */
static void release_held(dcm_master_t *m) {
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  size_t n = 0;
  if (xs == NULL) return;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->held && x->conn) xs[n++] = x;
    x->held = 0;
  }
  for (size_t i = 0; i < n; i++) {
    if (xs[i]->nreported > 0 && xs[i]->reported_count > 0)
      dcm__coord_running_count(m, xs[i], xs[i]->reported_count);
    dcm__session_initialise(xs[i]->conn);
    dcm__coord_joined(m, xs[i], 0);
  }
  free(xs);
}

static void on_gateway(dcm__discord_t *d, int status, const dcm__gateway_t *gw, void *arg) {
  dcm_master_t *m = arg;
  (void)d;
  if (!dcm__ha_leading(m)) return; /* lost leadership: the step down has begun */
  if (status != 0 && m->state == DCM_STATE_FETCHING) {
    const char *msg = status == DCM_EAUTH ? "Discord rejected the bot token"
                                          : "Discord's /gateway/bot failed permanently";
    dcm__error(&m->log, NULL, "%s; stopping", msg);
    fatal_stop(m, 4, NULL, status, msg);
    return;
  }
  if (status != 0) { /* a running fleet is never stopped by one bad answer */
    m->refetch_backoff = m->refetch_backoff > 0 ? m->refetch_backoff * 2 : 5;
    if (m->refetch_backoff > 900) m->refetch_backoff = 900;
    dcm__error(&m->log, NULL, "asking Discord for the identify budget failed (%s); the fleet "
               "keeps running, grants stay stopped; asking again in %.0fs", dcm_strerror(status),
               m->refetch_backoff);
    dcm__grants_refetch_in(m, dcm__ms(m->refetch_backoff));
    return;
  }
  m->refetch_backoff = 0;
  m->gw = *gw;
  m->have_gw = 1;
  m->gw_at = uv_now(m->loop);
  m->budget_wait = 0;
  if (m->o.gateway_url == NULL) snprintf(m->gateway_url, sizeof m->gateway_url, "%s", gw->url);
  dcm__info(&m->log, NULL, "Discord: %d shards recommended, max_concurrency %d, "
                           "identify budget %d/%d, resets in %.0fs",
            gw->shards, gw->max_concurrency, gw->remaining, gw->total, gw->reset_after);
  if (m->state == DCM_STATE_FETCHING) {
    int r = dcm__fleet_set_shards(m, gw->shards);
    m->max_concurrency = m->o.max_concurrency ? m->o.max_concurrency : gw->max_concurrency;
    if (r == 0) r = dcm__grants_start(m);
    if (r != 0) {
      fatal_stop(m, 1, NULL, r, "out of memory");
      return;
    }
    begin_collecting(m);
    release_held(m);
    return;
  }
  if (gw->shards != m->shard_count)
    dcm__info(&m->log, NULL, "Discord now recommends %d shards; the fleet keeps its %d",
              gw->shards, m->shard_count);
  dcm__idq_set_budget(m->idq, gw->remaining, gw->total, m->o.identify_reserve);
  dcm__grants_kick(m);
}

void dcm__coord_fetch_gateway(dcm_master_t *m) {
  int r = dcm__discord_fetch(m->discord, on_gateway, m);
  if (r != 0) dcm__error(&m->log, NULL, "cannot ask Discord: %s", dcm_strerror(r));
}

int dcm__coord_start(dcm_master_t *m) {
  dcm__list_init(&m->connect_queue);
  snprintf(m->gateway_url, sizeof m->gateway_url, "%s",
           m->o.gateway_url ? m->o.gateway_url : "wss://gateway.discord.gg");
  if (m->o.shards > 0) {
    int r = dcm__fleet_set_shards(m, m->o.shards);
    m->max_concurrency = m->o.max_concurrency ? m->o.max_concurrency : 1;
    if (r == 0) r = dcm__grants_start(m);
    if (r != 0) return r;
    begin_collecting(m);
    return 0;
  }
  int r = dcm__discord_new(m->loop, m->o.api_base, m->o.token, &m->log, &m->discord);
  if (r != 0) return r;
  set_state(m, DCM_STATE_FETCHING);
  return dcm__discord_fetch(m->discord, on_gateway, m);
}

/* ---- machine events ---------------------------------------------------- */

/* Places shards (taken from `from`, unassigned now) on the receivers; a
   planned move (sender still running them) waits for the sender's stop. */
static size_t move_shards(dcm_master_t *m, const dcm__pmachine_t *from,
                          dcm__machine_t *sender, const dcm__machine_t *but) {
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  size_t n = xs ? receivers(m, xs, but, 1) : 0;
  size_t placed = n ? place(m, from, sender, xs, n) : 0;
  free(xs);
  if (placed < from->nshards)
    dcm__warn(&m->log, from->id, "%zu shards stay unassigned until a machine can take them",
              from->nshards - placed);
  return placed;
}

/* Removes x from the fleet: its requests go, and nobody waits for its stops. */
static void forget(dcm_master_t *m, dcm__machine_t *x) {
  if (m->idq) dcm__idq_drop_owner(m->idq, x);
  for (int s = 0; s < m->shard_count; s++) /* gone: nothing to wait for */
    if (m->leaving[s] == x) dcm__handoff_done(m, s);
  dcm__handoff_arm(m);
  dcm__fleet_remove(m, x);
}

static void failover(dcm_master_t *m, dcm__machine_t *x, const char *why) {
  size_t n = x->nshards;
  int *shards = malloc((n ? n : 1) * sizeof *shards);
  char id[DCM_ID_MAX + 1];
  dcm__pmachine_t dead = {id, x->cores, dcm__machine_loadavg(x), x->standby, shards, n};
  snprintf(id, sizeof id, "%s", x->id);
  if (shards && n) memcpy(shards, x->shards, n * sizeof *shards);
  forget(m, x);
  m->counters.failovers++;
  dcm__warn(&m->log, id, "failed: %s; moving its %zu shards", why, n);
  dcm__emit(m, DCM_EVENT_FAILED_OVER, id, (int)n, why);
  if (shards && n) move_shards(m, &dead, NULL, NULL);
  free(shards);
  dcm__coord_pump(m);
}

static void grace_timer_cb(uv_timer_t *t) {
  dcm__machine_t *x = t->data;
  char why[64];
  if (!dcm__ha_leading(x->m)) return; /* lost leadership: the step down has begun */
  snprintf(why, sizeof why, "no reconnect within %.3gs", x->m->o.reconnect_grace);
  failover(x->m, x, why);
}

void dcm__coord_lost(dcm_master_t *m, dcm__machine_t *x, int timed_out) {
  if (m->stopping || !dcm__ha_leading(m)) return;
  int was_pending = x->info_pending;
  x->info_pending = 0;
  /* Its waiting requests go; after a reconnect it asks again. */
  if (m->idq) dcm__idq_drop_owner(m->idq, x);
  uv_timer_stop(&x->timer);
  x->connect = DCM_CONNECT_NONE;
  if (timed_out) {
    dcm__emit(m, DCM_EVENT_TIMED_OUT, x->id, DCM_CLOSE_DEAD, NULL);
    failover(m, x, "heartbeat timeout");
  } else if (!m->allocated && x->nshards == 0) {
    dcm__emit(m, DCM_EVENT_DISCONNECTED, x->id, 0, NULL);
    dcm__info(&m->log, x->id, "left before the allocation");
    dcm__fleet_remove(m, x);
  } else if (x->draining && x->nshards == 0) { /* a planned drain is over: no failure */
    dcm__emit(m, DCM_EVENT_DISCONNECTED, x->id, 0, NULL);
    dcm__info(&m->log, x->id, "left after its drain");
    forget(m, x);
    dcm__coord_pump(m);
  } else {
    dcm__emit(m, DCM_EVENT_DISCONNECTED, x->id, 0, NULL);
    x->state = DCM_MACHINE_DISCONNECTED;
    dcm__info(&m->log, x->id, "connection lost; keeping its %zu shards for %.3gs", x->nshards,
              m->o.reconnect_grace);
    uv_timer_start(&x->timer, grace_timer_cb, dcm__ms(m->o.reconnect_grace), 0);
    dcm__coord_pump(m);
  }
  if (was_pending && m->refreshing && --m->info_waiting == 0) {
    uv_timer_stop(&m->timer);
    allocate(m);
  }
  dcm__handoff_progress(m);
}

void dcm__coord_joined(dcm_master_t *m, dcm__machine_t *x, int resumed) {
  if (!m->allocated) {
    if (m->window_over && !m->refreshing) {
      allocate(m);
    } else if (!m->window_over && m->o.expected_machines > 0 &&
               m->nmachines >= (size_t)m->o.expected_machines) {
      end_window(m, "expected machines joined");
    } else if (!m->window_over && dcm__ha_fleet_back(m)) {
      end_window(m, "the last leader's machines are back");
    }
    return;
  }
  if (!resumed) {
    x->standby = 1;
    dcm__info(&m->log, x->id, "joined after the initial connect: standby");
  }
  dcm__coord_queue_connect(m, x);
  place_unassigned(m, 0);
  dcm__coord_pump(m);
}

void dcm__coord_info(dcm_master_t *m, dcm__machine_t *x) {
  if (!x->info_pending) return;
  x->info_pending = 0;
  if (m->refreshing && --m->info_waiting == 0) {
    uv_timer_stop(&m->timer);
    allocate(m);
  }
}

void dcm__coord_ack(dcm_master_t *m, dcm__machine_t *x, int op) {
  if (op == DCM_OP_CONNECT && x->connect == DCM_CONNECT_SENT) {
    x->connect = DCM_CONNECT_ACKED;
    dcm__debug(&m->log, x->id, "acknowledged connect");
  }
}

static int same_set(const int *sorted, size_t n, const int *v, size_t k) {
  if (n != k) return 0;
  int *c = malloc((k ? k : 1) * sizeof *c);
  if (c == NULL) return 0;
  if (k) memcpy(c, v, k * sizeof *c);
  qsort(c, k, sizeof *c, cmp_int);
  int eq = k == 0 || memcmp(c, sorted, k * sizeof *c) == 0;
  free(c);
  return eq;
}

int dcm__coord_ready(dcm_master_t *m, dcm__machine_t *x, const int *shards, size_t n) {
  if (!same_set(x->sent, x->nsent, shards, n)) return DCM_EINVAL;
  int late = x->connect == DCM_CONNECT_LATE;
  uv_timer_stop(&x->timer);
  x->connect = DCM_CONNECT_READY;
  dcm__info(&m->log, x->id, "ready with %zu shards%s", n,
            late ? " (after the connect timeout)" : "");
  dcm__emit(m, DCM_EVENT_READY, x->id, (int)n, NULL);
  maybe_running(m);
  dcm__handoff_progress(m);
  return 0;
}

void dcm__coord_offload(dcm_master_t *m, dcm__machine_t *x) {
  size_t n = x->nshards;
  m->counters.drains += !x->draining; /* a repeated offload is the same drain */
  x->standby = 1;
  x->draining = 1; /* never a receiver from now on */
  if (!m->allocated) {
    dcm__info(&m->log, x->id, "offload before the allocation: it becomes standby");
    return;
  }
  int *shards = malloc((n ? n : 1) * sizeof *shards);
  if (shards == NULL) return;
  if (n) memcpy(shards, x->shards, n * sizeof *shards);
  dcm__pmachine_t dead = {x->id, x->cores, dcm__machine_loadavg(x), 1, shards, n};
  dcm__fleet_release(m, x);
  dcm__info(&m->log, x->id, "offload: moving its %zu shards%s; it stands by", n,
            x->handoff ? " once they stopped there, with their sessions" : "");
  dcm__coord_queue_connect(m, x); /* stop before start: the sender's empty connect goes first */
  move_shards(m, &dead, x, x);
  free(shards);
  dcm__coord_pump(m);
}

void dcm__coord_failed(dcm_master_t *m, dcm__machine_t *x, int *shards, size_t n) {
  free(x->failed);
  x->failed = shards; /* shown in /status until they run elsewhere */
  x->nfailed = n;
  if (!m->allocated || x->state != DCM_MACHINE_LIVE) return;
  int *mine = malloc((n ? n : 1) * sizeof *mine);
  size_t k = 0;
  if (mine == NULL) return;
  for (size_t i = 0; i < n; i++)
    if (shards[i] < m->shard_count && m->owner[shards[i]] == x && dcm__fleet_take(m, x, shards[i]) == 0)
      mine[k++] = shards[i];
  if (k > 0) {
    dcm__pmachine_t from = {x->id, x->cores, dcm__machine_loadavg(x), x->standby, mine, k};
    dcm__warn(&m->log, x->id, "%zu shards are in clusters it gave up on; moving them", k);
    move_shards(m, &from, NULL, x); /* they failed: nothing runs them */
    dcm__coord_queue_connect(m, x);
    dcm__coord_pump(m);
  }
  free(mine);
}

void dcm__coord_fatal(dcm_master_t *m, dcm__machine_t *x, int code, const char *message,
                      int shard) {
  char line[DCM_MESSAGE_MAX + 64];
  if (shard >= 0)
    snprintf(line, sizeof line, "shard %d: %s", shard, message);
  else
    snprintf(line, sizeof line, "%s", message);
  if (!dcm__discord_fatal_code(code)) {
    dcm__warn(&m->log, x->id, "cluster failure %d (%s): reconnectable, not fatal; the fleet "
              "keeps running", code, line);
    return;
  }
  dcm__error(&m->log, x->id, "fatal Discord error %d: %s; shutting the whole fleet down", code,
             line);
  fatal_stop(m, 3, x->id, code, line);
}

int dcm__coord_reload_policy(dcm_master_t *m) {
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  if (xs == NULL) return DCM_ENOMEM;
  size_t n = m->shard_count > 0 ? dcm__fleet_live(m, xs, 1) : 0;
  dcm__pmachine_t *pm = n ? policy_view(xs, n) : NULL;
  dcm__pctx_t ctx = {m->shard_count, m->max_concurrency};
  int r = dcm__policy_reload(m->policy, pm, pm ? n : 0, &ctx);
  free(pm);
  free(xs);
  return r;
}

void dcm__coord_stop(dcm_master_t *m) {
  set_state(m, DCM_STATE_SHUTDOWN);
  uv_timer_stop(&m->timer);
  while (!dcm__list_empty(&m->connect_queue)) dcm__list_remove(m->connect_queue.next);
}
