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

#include "fleet.h"
#include "internal.h"

#define REFRESH_WAIT_MS 5000

static uint64_t ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

static const char *const state_names[] = {"idle",       "fetching", "collecting",
                                          "connecting", "running",  "shutdown"};

const char *dcm__state_name(dcm__state s) { return state_names[s]; }

/* Returns 1 when an event callback stopped the master. */
static int set_state(dcm_master_t *m, dcm__state s) {
  if (m->state == s) return m->stopping;
  dcm__info(&m->log, NULL, "state %s -> %s", state_names[m->state], state_names[s]);
  m->state = s;
  return dcm__emit(m, DCM_EVENT_STATE, NULL, (int)s, state_names[s]);
}

int dcm__coord_accepting(const dcm_master_t *m) {
  return !m->stopping && m->state >= DCM_STATE_COLLECTING && m->state <= DCM_STATE_RUNNING;
}

static void fatal_stop(dcm_master_t *m, int status, const char *machine, int code,
                       const char *message) {
  if (m->stopping) return;
  m->exit_status = status;
  m->shutdown_code = code;
  snprintf(m->shutdown_reason, sizeof m->shutdown_reason, "%s%s%s", machine ? machine : "",
           machine ? ": " : "", message);
  dcm__emit(m, DCM_EVENT_FATAL, machine, code, message);
  dcm_master_stop(m, 1, NULL, NULL);
}

/* ---- identify budget ---------------------------------------------------- */

static void fetch_gateway(dcm_master_t *m);

static void budget_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  dcm__info(&m->log, NULL, "identify budget should have reset; asking Discord again");
  fetch_gateway(m);
}

/*
 * 1 if Discord's identify budget covers `needed` new identifies. Otherwise
 * nothing may start: wait for the reset, ask Discord again, then resume.
 */
static int budget_allows(dcm_master_t *m, size_t needed) {
  if (!m->have_gw || needed == 0) return 1;
  if (!m->budget_wait && (size_t)m->gw.remaining >= needed) return 1;
  if (!m->budget_wait) {
    uint64_t elapsed = uv_now(m->loop) - m->gw_at, reset = ms(m->gw.reset_after);
    uint64_t wait = (reset > elapsed ? reset - elapsed : 0) + 1000;
    dcm__warn(&m->log, NULL, "identify budget: %d sessions left, %zu needed; waiting %.0fs for the reset",
              m->gw.remaining, needed, (double)wait / 1000.0);
    m->budget_wait = 1;
    uv_timer_start(&m->budget_timer, budget_timer_cb, wait, 0);
  }
  return 0;
}

/* ---- policy calls ------------------------------------------------------ */

static dcm__pmachine_t *policy_view(dcm__machine_t **xs, size_t n) {
  dcm__pmachine_t *pm = calloc(n ? n : 1, sizeof *pm);
  if (pm == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    pm[i].id = xs[i]->id;
    pm[i].cores = xs[i]->cores;
    pm[i].loadavg = xs[i]->loadavg;
    pm[i].standby = xs[i]->standby;
    pm[i].shards = xs[i]->shards;
    pm[i].nshards = xs[i]->nshards;
  }
  return pm;
}

static void queue_connect(dcm_master_t *m, dcm__machine_t *x) {
  if (dcm__list_empty(&x->queue_link)) dcm__list_push(&m->connect_queue, &x->queue_link);
  x->connect = DCM_CONNECT_QUEUED;
}

static void spend_identifies(dcm_master_t *m, size_t n) {
  if (!m->have_gw) return;
  m->gw.remaining -= (int)n;
  if (m->gw.remaining < 0) m->gw.remaining = 0;
}

/*
 * Places shards (unassigned now) on machines through the failover policy,
 * as if `dead` had held them. Receivers are queued for a `connect`.
 * Returns how many were placed; the rest stay unassigned.
 */
static size_t place(dcm_master_t *m, const dcm__pmachine_t *dead,
                    dcm__machine_t **xs, size_t n) {
  if (dead->nshards == 0 || n == 0) return 0;
  if (!budget_allows(m, dead->nshards)) return 0;
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
        if (to->connect != DCM_CONNECT_QUEUED) queue_connect(m, to);
      }
    }
  } else {
    dcm__error(&m->log, dead->id, "failover policy gave no usable result; %zu shards stay unassigned",
               dead->nshards);
  }
  free(pm);
  free(owner);
  spend_identifies(m, placed);
  return placed;
}

static void place_unassigned(dcm_master_t *m, int active_only) {
  if (m->nunassigned == 0 || m->budget_wait) return;
  int *un = malloc(((size_t)m->shard_count + 1) * sizeof *un);
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  if (un && xs) {
    size_t nu = dcm__fleet_unassigned(m, un);
    size_t n = dcm__fleet_live(m, xs, !active_only);
    if (nu && n) {
      dcm__pmachine_t dead = {"(unassigned)", 0, 0, 0, un, nu};
      size_t placed = place(m, &dead, xs, n);
      dcm__info(&m->log, NULL, "placed %zu of %zu unassigned shards on %zu live machines",
                placed, nu, n);
    }
  }
  free(un);
  free(xs);
}

/* ---- sequential connect ------------------------------------------------ */

static void connect_timeout_cb(uv_timer_t *t);

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

static int send_connect(dcm_master_t *m, dcm__machine_t *x) {
  size_t len;
  char list[160];
  int *copy = malloc((x->nshards ? x->nshards : 1) * sizeof *copy);
  if (copy == NULL) return DCM_ENOMEM;
  if (x->nshards) memcpy(copy, x->shards, x->nshards * sizeof *copy);
  free(x->sent);
  x->sent = copy;
  x->nsent = x->nshards;
  const char *s = dcm__enc_connect(m->json, x->shards, x->nshards, x->nshards == 0, &len);
  if (s) dcm__conn_send(x->conn, s, len);
  lua_settop(m->json, 0);
  summarize(x->shards, x->nshards, list, sizeof list);
  dcm__info(&m->log, x->id, "connect: %zu shards (%s)%s", x->nshards, list,
            x->nshards == 0 ? ", redundant" : "");
  return dcm__emit(m, DCM_EVENT_ASSIGNED, x->id, (int)x->nshards, NULL) ? DCM_ECANCELED : 0;
}

static void pump(dcm_master_t *m) {
  while (m->connecting == NULL && !dcm__list_empty(&m->connect_queue) && !m->stopping) {
    dcm__link_t *l = m->connect_queue.next;
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, queue_link);
    dcm__list_remove(l);
    x->connect = DCM_CONNECT_NONE;
    if (x->state != DCM_MACHINE_LIVE || x->conn == NULL) continue; /* re-queued on resume */
    if (send_connect(m, x) != 0 || x->nshards == 0) continue;    /* nothing to wait for */
    x->connect = DCM_CONNECT_SENT;
    m->connecting = x;
    uv_timer_start(&m->timer, connect_timeout_cb, ms(m->o.connect_timeout), 0);
  }
  if (m->connecting == NULL && dcm__list_empty(&m->connect_queue) &&
      m->state == DCM_STATE_CONNECTING && !m->stopping)
    set_state(m, DCM_STATE_RUNNING);
}

static void connect_timeout_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
  dcm__machine_t *x = m->connecting;
  if (x == NULL) return;
  dcm__warn(&m->log, x->id, "not ready within the connect timeout (%.3gs); moving on to the next",
            m->o.connect_timeout);
  x->connect = DCM_CONNECT_NONE;
  m->connecting = NULL;
  pump(m);
}

static void done_connecting(dcm_master_t *m, dcm__machine_t *x) {
  if (m->connecting != x) return;
  m->connecting = NULL;
  uv_timer_stop(&m->timer);
}

/* ---- allocation -------------------------------------------------------- */

static void allocate(dcm_master_t *m);

/* Takes what the machines report running, first id wins a conflict. */
static size_t adopt(dcm_master_t *m, dcm__machine_t **xs, size_t n) {
  size_t adopted = 0;
  for (size_t i = 0; i < n; i++) {
    dcm__machine_t *x = xs[i];
    for (size_t k = 0; x->has_reported && k < x->nreported; k++) {
      int s = x->reported[k];
      if (s >= m->shard_count) {
        dcm__warn(&m->log, x->id, "reports shard %d, beyond the %d shards; ignored", s,
                  m->shard_count);
      } else if (m->owner[s] != NULL) {
        if (m->owner[s] != x)
          dcm__warn(&m->log, x->id, "reports shard %d, also reported by %s; %s keeps it", s,
                    m->owner[s]->id, m->owner[s]->id);
      } else if (dcm__fleet_give(m, x, s) == 0) {
        adopted++;
      }
    }
  }
  return adopted;
}

/* Distinct in-range shards the machines report running. */
static size_t reported_total(dcm_master_t *m, dcm__machine_t **xs, size_t n) {
  unsigned char *seen = calloc((size_t)m->shard_count, 1);
  size_t total = 0;
  if (seen == NULL) return 0; /* then every shard counts as new: the safe side */
  for (size_t i = 0; i < n; i++)
    for (size_t k = 0; xs[i]->has_reported && k < xs[i]->nreported; k++) {
      int s = xs[i]->reported[k];
      if (s < m->shard_count && !seen[s]) {
        seen[s] = 1;
        total++;
      }
    }
  free(seen);
  return total;
}

static int policy_allocate(dcm_master_t *m, dcm__machine_t **xs, size_t n) {
  dcm__pmachine_t *pm = policy_view(xs, n);
  int *owner = malloc((size_t)m->shard_count * sizeof *owner);
  dcm__pctx_t ctx = {m->shard_count, m->max_concurrency};
  int r = DCM_ENOMEM;
  if (pm && owner) r = dcm__policy_allocate(m->policy, pm, n, &ctx, owner);
  for (int s = 0; r == 0 && s < m->shard_count; s++) dcm__fleet_give(m, xs[owner[s]], s);
  free(pm);
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
  size_t needed = (size_t)m->shard_count - reported_total(m, xs, n);
  if (!budget_allows(m, needed)) {
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
      spend_identifies(m, (size_t)m->shard_count);
    }
    n = dcm__fleet_live(m, xs, 1);
  }
  for (size_t i = 0; i < n; i++) {
    free(xs[i]->reported);
    xs[i]->reported = NULL;
    xs[i]->nreported = 0;
    xs[i]->has_reported = 0;
    queue_connect(m, xs[i]);
  }
  free(xs);
  m->allocated = 1;
  if (set_state(m, DCM_STATE_CONNECTING)) return;
  pump(m);
}

static void refresh_timer_cb(uv_timer_t *t) {
  dcm_master_t *m = t->data;
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
  uint64_t wait = ms(m->o.handshake_timeout);
  uv_timer_start(&m->timer, refresh_timer_cb, wait < REFRESH_WAIT_MS ? wait : REFRESH_WAIT_MS, 0);
}

static void window_timer_cb(uv_timer_t *t) { end_window(t->data, "window elapsed"); }

static void begin_collecting(dcm_master_t *m) {
  if (set_state(m, DCM_STATE_COLLECTING)) return;
  dcm__info(&m->log, NULL, "collecting CONTROLs for %.3gs (%d shards, max_concurrency %d%s)",
            m->o.collect_window, m->shard_count, m->max_concurrency,
            m->o.expected_machines ? ", ends early at the expected machine count" : "");
  uv_timer_start(&m->timer, window_timer_cb, ms(m->o.collect_window), 0);
}

static void on_gateway(dcm__discord_t *d, int status, const dcm__gateway_t *gw, void *arg) {
  dcm_master_t *m = arg;
  (void)d;
  if (status != 0) {
    const char *msg = status == DCM_EAUTH ? "Discord rejected the bot token"
                                          : "Discord's /gateway/bot failed permanently";
    dcm__error(&m->log, NULL, "%s; stopping", msg);
    fatal_stop(m, 4, NULL, status, msg);
    return;
  }
  m->gw = *gw;
  m->have_gw = 1;
  m->gw_at = uv_now(m->loop);
  m->budget_wait = 0;
  dcm__info(&m->log, NULL, "Discord: %d shards recommended, max_concurrency %d, "
                           "identify budget %d/%d, resets in %.0fs",
            gw->shards, gw->max_concurrency, gw->remaining, gw->total, gw->reset_after);
  if (m->state == DCM_STATE_FETCHING) {
    int r = dcm__fleet_set_shards(m, gw->shards);
    if (r != 0) {
      fatal_stop(m, 1, NULL, r, "out of memory");
      return;
    }
    m->max_concurrency = m->o.max_concurrency ? m->o.max_concurrency : gw->max_concurrency;
    begin_collecting(m);
  } else if (!m->allocated) {
    if (m->window_over && !m->refreshing) allocate(m);
  } else {
    place_unassigned(m, 0);
    pump(m);
  }
}

static void fetch_gateway(dcm_master_t *m) {
  int r = dcm__discord_fetch(m->discord, on_gateway, m);
  if (r != 0) dcm__error(&m->log, NULL, "cannot ask Discord: %s", dcm_strerror(r));
}

int dcm__coord_start(dcm_master_t *m) {
  dcm__list_init(&m->connect_queue);
  if (m->o.shards > 0) {
    int r = dcm__fleet_set_shards(m, m->o.shards);
    if (r != 0) return r;
    m->max_concurrency = m->o.max_concurrency ? m->o.max_concurrency : 1;
    begin_collecting(m);
    return 0;
  }
  int r = dcm__discord_new(m->loop, m->o.api_base, m->o.token, &m->log, &m->discord);
  if (r != 0) return r;
  if (set_state(m, DCM_STATE_FETCHING)) return 0;
  return dcm__discord_fetch(m->discord, on_gateway, m);
}

/* ---- machine events ---------------------------------------------------- */

static void failover(dcm_master_t *m, dcm__machine_t *x, const char *why) {
  size_t n = x->nshards;
  int *shards = malloc((n ? n : 1) * sizeof *shards);
  char id[DCM_ID_MAX + 1];
  dcm__pmachine_t dead = {id, x->cores, x->loadavg, x->standby, shards, n};
  snprintf(id, sizeof id, "%s", x->id);
  if (shards && n) memcpy(shards, x->shards, n * sizeof *shards);
  done_connecting(m, x);
  dcm__fleet_remove(m, x);
  dcm__warn(&m->log, id, "failed: %s; moving its %zu shards", why, n);
  if (dcm__emit(m, DCM_EVENT_FAILED_OVER, id, (int)n, why)) {
    free(shards);
    return;
  }
  if (shards && n) {
    dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
    size_t live = xs ? dcm__fleet_live(m, xs, 1) : 0;
    size_t placed = live ? place(m, &dead, xs, live) : 0;
    if (placed < n)
      dcm__warn(&m->log, id, "%zu shards stay unassigned until a machine can take them",
                n - placed);
    free(xs);
  }
  free(shards);
  pump(m);
}

static void grace_timer_cb(uv_timer_t *t) {
  dcm__machine_t *x = t->data;
  char why[64];
  snprintf(why, sizeof why, "no reconnect within %.3gs", x->m->o.reconnect_grace);
  failover(x->m, x, why);
}

void dcm__coord_lost(dcm_master_t *m, dcm__machine_t *x, int timed_out) {
  if (m->stopping) return;
  int was_pending = x->info_pending;
  x->info_pending = 0;
  if (timed_out) {
    if (dcm__emit(m, DCM_EVENT_TIMED_OUT, x->id, DCM_CLOSE_DEAD, NULL)) return;
    failover(m, x, "heartbeat timeout");
  } else if (!m->allocated && x->nshards == 0) {
    if (dcm__emit(m, DCM_EVENT_DISCONNECTED, x->id, 0, NULL)) return;
    dcm__info(&m->log, x->id, "left before the allocation");
    dcm__fleet_remove(m, x);
  } else {
    if (dcm__emit(m, DCM_EVENT_DISCONNECTED, x->id, 0, NULL)) return;
    done_connecting(m, x);
    x->state = DCM_MACHINE_DISCONNECTED;
    dcm__info(&m->log, x->id, "connection lost; keeping its %zu shards for %.3gs", x->nshards,
              m->o.reconnect_grace);
    uv_timer_start(&x->grace, grace_timer_cb, ms(m->o.reconnect_grace), 0);
    pump(m);
  }
  if (was_pending && m->refreshing && --m->info_waiting == 0) {
    uv_timer_stop(&m->timer);
    allocate(m);
  }
}

void dcm__coord_joined(dcm_master_t *m, dcm__machine_t *x, int resumed) {
  if (!m->allocated) {
    if (m->window_over && !m->refreshing && !m->budget_wait) {
      allocate(m);
    } else if (!m->window_over && m->o.expected_machines > 0 &&
               m->nmachines >= (size_t)m->o.expected_machines) {
      end_window(m, "expected machines joined");
    }
    return;
  }
  if (!resumed) {
    x->standby = 1;
    dcm__info(&m->log, x->id, "joined after the initial connect: standby");
  }
  queue_connect(m, x);
  place_unassigned(m, 0);
  pump(m);
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
  if (op == DCM_OP_CONNECT && x == m->connecting && x->connect == DCM_CONNECT_SENT) {
    x->connect = DCM_CONNECT_ACKED;
    dcm__debug(&m->log, x->id, "acknowledged connect");
  }
}

static int cmp_int(const void *a, const void *b) {
  int p = *(const int *)a, q = *(const int *)b;
  return (p > q) - (p < q);
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
  if (x == m->connecting) {
    x->connect = DCM_CONNECT_READY;
    dcm__info(&m->log, x->id, "ready with %zu shards", n);
    done_connecting(m, x);
    if (dcm__emit(m, DCM_EVENT_READY, x->id, (int)n, NULL)) return 0;
    pump(m);
  } else {
    dcm__info(&m->log, x->id, "ready with %zu shards (after its turn)", n);
  }
  return 0;
}

void dcm__coord_offload(dcm_master_t *m, dcm__machine_t *x) {
  size_t n = x->nshards;
  x->standby = 1;
  if (!m->allocated) {
    dcm__info(&m->log, x->id, "offload before the allocation: it becomes standby");
    return;
  }
  int *shards = malloc((n ? n : 1) * sizeof *shards);
  if (shards == NULL) return;
  if (n) memcpy(shards, x->shards, n * sizeof *shards);
  dcm__pmachine_t dead = {x->id, x->cores, x->loadavg, 1, shards, n};
  dcm__fleet_release(m, x);
  done_connecting(m, x);
  dcm__list_remove(&x->queue_link); /* its empty connect goes after the receivers' */
  dcm__info(&m->log, x->id, "offload: moving its %zu shards, then it stands by", n);
  dcm__machine_t **xs = malloc((m->nmachines + 1) * sizeof *xs);
  size_t live = xs ? dcm__fleet_live(m, xs, 1) : 0, k = 0;
  for (size_t i = 0; i < live; i++)
    if (xs[i] != x) xs[k++] = xs[i];
  size_t placed = place(m, &dead, xs, k);
  if (placed < n)
    dcm__warn(&m->log, x->id, "%zu offloaded shards stay unassigned: no machine can take them",
              n - placed);
  queue_connect(m, x);
  free(xs);
  free(shards);
  pump(m);
}

void dcm__coord_fatal(dcm_master_t *m, dcm__machine_t *x, int code, const char *message,
                      int shard) {
  char line[DCM_MESSAGE_MAX + 64];
  if (shard >= 0)
    snprintf(line, sizeof line, "shard %d: %s", shard, message);
  else
    snprintf(line, sizeof line, "%s", message);
  dcm__error(&m->log, x->id, "fatal Discord error %d: %s; shutting the whole fleet down", code,
             line);
  fatal_stop(m, 3, x->id, code, line);
}

void dcm__coord_stop(dcm_master_t *m) {
  set_state(m, DCM_STATE_SHUTDOWN);
  uv_timer_stop(&m->timer);
  m->connecting = NULL;
  while (!dcm__list_empty(&m->connect_queue)) dcm__list_remove(m->connect_queue.next);
}
