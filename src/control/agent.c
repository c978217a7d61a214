/*
 * agent.c: the CONTROL agent's protocol and lifecycle. Connects (and keeps
 * retrying), identifies with `info`, heartbeats, turns each `connect` into
 * cluster groups (keeping groups that are unchanged), reports `ready` once
 * every cluster of the assignment printed READY, relays the FATAL codes
 * that stop the fleet (and restarts a cluster that reports any other),
 * carries identify requests and grants between the identify endpoint and
 * MASTER, relays the clusters' SESSION lines in `sessions` (coalesced,
 * at most one packet a second; at once when a cluster stops; in full after
 * every `initialise`), hands the sessions it knows to the clusters it
 * starts (SHARD_SESSIONS), confirms with `stopped` the shards a `connect`
 * removed once their clusters are gone, and stops: on `shutdown` at once,
 * on SIGTERM after an `offload` drain. Losing MASTER does not stop the
 * clusters, unless --lease-timeout passes first. Which MASTER each attempt
 * goes to, and when, is masters.c's (high availability); a packet it
 * finds stale (a deposed leader's epoch) is refused with close 4021. At
 * most --max-clusters clusters run; the shards beyond are reported as
 * failed (over_cap) so MASTER moves them. The heartbeat's failed_clusters
 * is a bounded summary.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "clock.h"
#include "discluster/master.h"
#include "json.h"
#include "packets.h"

extern char **environ;

#define MIN_HEARTBEAT_MS 100
#define IDLE_GRACE_MS 15000 /* silence beyond two heartbeats before MASTER counts as gone */
#define REPORT_MS 20        /* failures within this long share one early heartbeat */
#define SESSIONS_EVERY_MS 1000 /* coalesced `sessions` packets: at most one this often */

static const char *me(const dcm__agent_t *a) { return a->cfg.id; }

static void begin_stop(dcm__agent_t *a, const char *why);
static void maybe_finish(dcm__agent_t *a);

/* ---- machine facts ------------------------------------------------------- */

double dcm__ctl_loadavg(void) {
  double v[3] = {0, 0, 0};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    int n = fscanf(f, "%lf %lf %lf", &v[0], &v[1], &v[2]);
    fclose(f);
    if (n == 3 && v[2] >= 0) return v[2];
  }
  uv_loadavg(v);
  return v[2] >= 0 ? v[2] : 0;
}

int dcm__ctl_cores(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n >= 1 ? (int)(n > 1000000 ? 1000000 : n) : 1;
}

/* ---- sending ------------------------------------------------------------- */

static void send_text(dcm__agent_t *a, const char *s, size_t n) {
  if (s && a->client && a->client->phase == DCM_CLIENT_OPEN) dcm__client_send(a->client, s, n);
  lua_settop(a->json, 0);
}

/* The shards of clusters that run now (or are about to restart), sorted. */
static size_t running_shards(dcm__agent_t *a, int *out) {
  size_t n = 0;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) {
    if (cl->destroying || cl->state == DCM_CLUSTER_FAILED || cl->state == DCM_CLUSTER_WAITING)
      continue;
    memcpy(out + n, cl->shards, cl->nshards * sizeof *out);
    n += cl->nshards;
  }
  return dcm__ctl_sort_unique(out, n);
}

static size_t cluster_shard_total(dcm__agent_t *a) {
  size_t n = 0;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) n += cl->nshards;
  return n;
}

/* The shards of every cluster (with stopping ones when all is set),
 * sorted, malloc'd into *out; the count, or (size_t)-1 on exhaustion. */
static size_t held_shards(dcm__agent_t *a, int all, int **out) {
  size_t n = 0;
  int *v = malloc((cluster_shard_total(a) + 1) * sizeof *v);
  *out = v;
  if (v == NULL) return (size_t)-1;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) {
    if (cl->destroying && !all) continue;
    memcpy(v + n, cl->shards, cl->nshards * sizeof *v);
    n += cl->nshards;
  }
  return dcm__ctl_sort_unique(v, n);
}

static int cmp_int(const void *x, const void *y) {
  int p = *(const int *)x, q = *(const int *)y;
  return (p > q) - (p < q);
}

static int in_set(const int *v, size_t n, int x) {
  return n > 0 && bsearch(&x, v, n, sizeof *v, cmp_int) != NULL;
}

static void send_info(dcm__agent_t *a) {
  size_t len, total = cluster_shard_total(a), k = 0;
  int *shards = malloc((total ? total : 1) * sizeof *shards);
  if (shards == NULL) return;
  size_t n = running_shards(a, shards);
  /* Only shards of the bot MASTER knows: never more than shard_count. */
  while (a->shard_count > 0 && n > 0 && shards[n - 1] >= a->shard_count) n--, k++;
  if (k)
    dcm__warn(&a->log, me(a), "info: %zu running shards are not below shard_count %d (%d to "
              "%d); left out of info.shards", k, a->shard_count, shards[n], shards[n + k - 1]);
  const char *s = dcm__ctl_enc_info(a->json, a->cfg.id, dcm__ctl_cores(), dcm__ctl_loadavg(),
                                    a->cfg.standby && n == 0, shards, n, a->shard_count,
                                    DCM_VERSION, &len);
  send_text(a, s, len);
  free(shards);
}

/* failed_clusters: failed clusters in creation order, then the shards over
 * --max-clusters in groups, cut to the bounds of dcm__ctl_failed_fit; the
 * rest is counted in failed_clusters_more. */
static void send_heartbeat(dcm__agent_t *a) {
  dcm__ctl_failed_t f[DCM_CTL_FAILED_LIST_MAX];
  size_t nf = 0, total = 0, len;
  uv_timer_stop(&a->report_timer);
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) {
    if (cl->state != DCM_CLUSTER_FAILED || cl->destroying) continue;
    if (nf < DCM_CTL_FAILED_LIST_MAX) {
      dcm__ctl_failed_t x = {cl->id, cl->shards, cl->nshards, cl->exit_status,
                             cl->term_signal, 0, 0};
      f[nf++] = x;
    }
    total++;
  }
  size_t g = dcm__ctl_group_size(a->cfg.shards_per_cluster, a->max_concurrency), i;
  for (i = 0; i < a->nover && nf < DCM_CTL_FAILED_LIST_MAX; i += g) {
    dcm__ctl_failed_t x = {-1, a->over + i, a->nover - i < g ? a->nover - i : g, 0, 0, 1, 0};
    f[nf++] = x;
    total++;
  }
  if (i < a->nover) total += (a->nover - i + g - 1) / g; /* groups not even looked at */
  nf = dcm__ctl_failed_fit(f, nf);
  const char *s = dcm__ctl_enc_heartbeat(a->json, dcm__ctl_loadavg(), f, nf, total - nf,
                                         a->empty_sent, &len);
  send_text(a, s, len);
  a->empty_sent = s && total == 0;
}

/* An early heartbeat, once for everything that changes within REPORT_MS. */
static void report_cb(uv_timer_t *t) {
  dcm__agent_t *a = t->data;
  if (a->session) send_heartbeat(a);
}

static void report_soon(dcm__agent_t *a) {
  if (a->session && !a->closed && !uv_is_active((uv_handle_t *)&a->report_timer))
    uv_timer_start(&a->report_timer, report_cb, REPORT_MS, 0);
}

static void send_fatal(dcm__agent_t *a) {
  size_t len;
  const char *s = dcm__ctl_enc_fatal(a->json, a->fatal_code, a->fatal_message, a->fatal_shard,
                                     &len);
  send_text(a, s, len);
  a->fatal_pending = 0;
  dcm__info(&a->log, me(a), "relayed fatal %d to MASTER", a->fatal_code);
}

void dcm__agent_send_shard_op(dcm__agent_t *a, int op, int shard) {
  size_t len;
  if (!a->session) return;
  const char *s = dcm__enc_shard_op(a->json, op, shard, &len);
  send_text(a, s, len);
}

static void send_offload(dcm__agent_t *a) {
  size_t len;
  const char *s = dcm__ctl_enc_offload(a->json, &len);
  send_text(a, s, len);
}

static void check_ready(dcm__agent_t *a) {
  size_t ready = 0, len;
  if (!a->ready_pending || !a->session || a->mode == DCM_AGENT_STOPPING) return;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (!cl->destroying && cl->state == DCM_CLUSTER_READY) ready += cl->nshards;
  if (ready != a->nassigned) return;
  a->ready_pending = 0;
  const char *s = dcm__ctl_enc_ready(a->json, a->assigned, a->nassigned, &len);
  send_text(a, s, len);
  dcm__info(&a->log, me(a), "ready: all %zu assigned shards connected", a->nassigned);
}

/* ---- sessions and stopped ------------------------------------------------ */

/* One `sessions` packet with the oldest queued entries that fit its
 * bounds; 0 when nothing is queued (or nothing could be encoded). */
static int send_sessions_packet(dcm__agent_t *a) {
  const dcm__session_t *v[DCM_SESSIONS_MAX];
  size_t n = dcm__ctl_sessions_peek(&a->sessions, v, DCM_SESSIONS_MAX), len;
  if (n == 0) return 0;
  size_t k = dcm__ctl_sessions_fit(v, n, DCM_SESSIONS_MAX, DCM_CTL_SESSIONS_JSON_MAX);
  if (k == 0) k = 1; /* cannot happen: one entry is under 2 KiB */
  const char *s = dcm__ctl_enc_sessions(a->json, v, k, &len);
  if (s == NULL) {
    lua_settop(a->json, 0);
    return 0; /* out of memory: the entries stay queued */
  }
  send_text(a, s, len);
  dcm__ctl_sessions_pop(&a->sessions, k);
  a->sessions_last = uv_now(a->loop);
  dcm__debug(&a->log, me(a), "sent %zu sessions to MASTER", k);
  return 1;
}

static void sessions_cb(uv_timer_t *t) {
  dcm__agent_t *a = t->data;
  if (a->session && send_sessions_packet(a) && a->sessions.nqueued)
    uv_timer_start(&a->sessions_timer, sessions_cb, SESSIONS_EVERY_MS, 0);
}

/* The next packet, at most one per SESSIONS_EVERY_MS; without a session
 * the queue waits for the full report after `initialise`. */
static void sessions_soon(dcm__agent_t *a) {
  if (!a->session || a->closed || a->sessions.nqueued == 0 ||
      uv_is_active((uv_handle_t *)&a->sessions_timer))
    return;
  uint64_t now = uv_now(a->loop), due = a->sessions_last + SESSIONS_EVERY_MS;
  uv_timer_start(&a->sessions_timer, sessions_cb, due > now ? due - now : 0, 0);
}

/* Everything queued, now, in as many packets as it takes. */
static void sessions_flush(dcm__agent_t *a) {
  if (!a->session) return;
  uv_timer_stop(&a->sessions_timer);
  while (send_sessions_packet(a)) {
  }
}

/*
 * The shards a connect removed that no cluster holds any more are
 * stopped: MASTER gets their final sessions, then `stopped`, and the
 * agent forgets those sessions (the shards run elsewhere now). Without a
 * session this waits for the next `initialise`.
 */
static void check_stopped(dcm__agent_t *a) {
  size_t k = 0, keep = 0, len;
  int *held;
  if (a->nremoving == 0 || !a->session) return;
  size_t nheld = held_shards(a, 1, &held);
  int *done = malloc(a->nremoving * sizeof *done);
  if (nheld == (size_t)-1 || done == NULL) {
    free(held);
    free(done);
    return; /* out of memory: the next cluster freed tries again */
  }
  for (size_t i = 0; i < a->nremoving; i++) {
    if (in_set(held, nheld, a->removing[i])) a->removing[keep++] = a->removing[i];
    else done[k++] = a->removing[i];
  }
  free(held);
  a->nremoving = keep;
  if (k > 0) {
    char list[160];
    sessions_flush(a);
    for (size_t i = 0; i < k; i += DCM_CTL_STOPPED_MAX) {
      size_t m = k - i < DCM_CTL_STOPPED_MAX ? k - i : DCM_CTL_STOPPED_MAX;
      const char *s = dcm__ctl_enc_stopped(a->json, done + i, m, &len);
      send_text(a, s, len);
    }
    for (size_t i = 0; i < k; i++) dcm__ctl_sessions_drop(&a->sessions, done[i]);
    if (dcm__ctl_join(done, k, list, sizeof list) == 0) snprintf(list, sizeof list, "...");
    dcm__info(&a->log, me(a), "stopped: the %zu shards MASTER moved away are stopped [%s]", k,
              list);
  }
  free(done);
}

/* Adds the shards of the old assignment missing from want (both sorted)
 * to the removed shards, and takes want's shards out of them. */
static void note_removed(dcm__agent_t *a, const int *want, size_t n) {
  size_t k = 0;
  int *v = malloc((a->nremoving + a->nassigned + 1) * sizeof *v);
  if (v == NULL) return; /* out of memory: no `stopped` for these; MASTER's timeout moves them */
  for (size_t i = 0; i < a->nremoving; i++)
    if (!in_set(want, n, a->removing[i])) v[k++] = a->removing[i];
  for (size_t i = 0; i < a->nassigned; i++)
    if (!in_set(want, n, a->assigned[i])) v[k++] = a->assigned[i];
  free(a->removing);
  a->removing = v;
  a->nremoving = dcm__ctl_sort_unique(v, k);
}

/* After a full report: sessions of shards the agent neither holds, nor
 * is assigned, nor still has to confirm stopped are MASTER's business. */
static void prune_sessions(dcm__agent_t *a) {
  int *held;
  size_t nheld = held_shards(a, 1, &held);
  if (nheld == (size_t)-1) return;
  for (size_t i = 0; i < a->sessions.nslots && a->sessions.count > 0; i++) {
    int x = (int)i;
    if (dcm__ctl_sessions_get(&a->sessions, x) && !in_set(held, nheld, x) &&
        !in_set(a->assigned, a->nassigned, x) && !in_set(a->removing, a->nremoving, x))
      dcm__ctl_sessions_drop(&a->sessions, x);
  }
  free(held);
}

/* connect.sessions for shards new to this machine: kept as their latest
 * session unless a cluster here runs the shard (its own is current) or
 * the agent knows the same session at a later seq. */
static void take_sessions(dcm__agent_t *a, const dcm__ctl_packet_t *p) {
  size_t took = 0, ignored = p->nbad;
  int *held;
  if (p->nsessions == 0) {
    if (ignored)
      dcm__warn(&a->log, me(a), "connect: %zu handed-over sessions ignored (invalid, or for "
                "shards not in the connect)", ignored);
    return;
  }
  size_t nheld = held_shards(a, 0, &held);
  if (nheld == (size_t)-1) return;
  for (size_t i = 0; i < p->nsessions; i++) {
    const dcm__session_t *s = &p->sessions[i], *cur;
    if (s->shard >= a->shard_count) {
      ignored++;
      continue;
    }
    cur = dcm__ctl_sessions_get(&a->sessions, s->shard);
    if (in_set(held, nheld, s->shard) ||
        (cur && strcmp(cur->session_id, s->session_id) == 0 && cur->seq >= s->seq)) {
      dcm__debug(&a->log, me(a), "connect: shard %d: the session this agent knows is kept",
                 s->shard);
      continue;
    }
    if (dcm__ctl_sessions_put(&a->sessions, s, 0) >= 0) took++;
  }
  free(held);
  if (ignored)
    dcm__warn(&a->log, me(a), "connect: %zu handed-over sessions ignored (invalid, or for "
              "shards not in the connect)", ignored);
  if (took) dcm__info(&a->log, me(a), "connect hands over %zu sessions to resume", took);
}

void dcm__agent_cluster_session(dcm__agent_t *a, dcm__cluster_t *cl, const dcm__session_t *s) {
  if (cl->epoch != a->epoch) return; /* a session of the bot before the change */
  if (!in_set(cl->shards, cl->nshards, s->shard)) {
    dcm__debug(&a->log, me(a), "cluster %d: SESSION for shard %d, not one of its shards; "
               "ignored", cl->id, s->shard);
    return;
  }
  const dcm__session_t *cur = dcm__ctl_sessions_get(&a->sessions, s->shard);
  if (cur && cur->seq > s->seq && strcmp(cur->session_id, s->session_id) == 0)
    return; /* a stopping cluster's last word on a session resumed since */
  int r = dcm__ctl_sessions_put(&a->sessions, s, 1);
  if (r < 0) {
    dcm__warn(&a->log, me(a), "cluster %d: out of memory keeping the session of shard %d",
              cl->id, s->shard);
  } else if (r > 0) {
    dcm__debug(&a->log, me(a), "cluster %d: shard %d session %s seq %lld", cl->id, s->shard,
               s->session_id, s->seq);
    sessions_soon(a);
  }
}

void dcm__agent_cluster_ended(dcm__agent_t *a, dcm__cluster_t *cl) {
  (void)cl;
  sessions_flush(a); /* its final SESSION lines: MASTER may move the shards now */
}

/* ---- assignment ---------------------------------------------------------- */

static void stop_all_clusters(dcm__agent_t *a) {
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) dcm__cluster_stop(cl);
}

/* Stops every cluster and forgets the assignment: MASTER gives a new one. */
static void stop_all(dcm__agent_t *a) {
  stop_all_clusters(a);
  free(a->assigned);
  a->assigned = NULL;
  a->nassigned = 0;
  free(a->over);
  a->over = NULL;
  a->nover = 0;
}

/* Takes want (sorted, unique, malloc'd). Linear but for sorting: the kept
 * groups are found with a binary search each, the rest by marks. */
static void apply(dcm__agent_t *a, int *want, size_t n) {
  size_t kept = 0, stopped = 0, started = 0, nk = 0;
  char list[160];
  note_removed(a, want, n);
  free(a->assigned);
  a->assigned = want;
  a->nassigned = n;
  free(a->over);
  a->over = NULL;
  a->nover = 0;
  size_t count = 0;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) count++;
  const int **groups = calloc(count + 1, sizeof *groups);
  size_t *sizes = calloc(count + 1, sizeof *sizes);
  int *rest = malloc((n ? n : 1) * sizeof *rest);
  if (groups == NULL || sizes == NULL || rest == NULL) {
    dcm__error(&a->log, me(a), "out of memory applying an assignment");
    free(groups);
    free(sizes);
    free(rest);
    return;
  }
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) {
    if (cl->destroying) continue;
    if (dcm__ctl_subset(cl->shards, cl->nshards, want, n)) {
      groups[nk] = cl->shards;
      sizes[nk++] = cl->nshards;
      kept++;
    } else {
      dcm__cluster_stop(cl);
      stopped++;
    }
  }
  size_t nrest = dcm__ctl_rest(want, n, groups, sizes, nk, rest);
  size_t g = dcm__ctl_group_size(a->cfg.shards_per_cluster, a->max_concurrency);
  size_t room = a->cfg.max_clusters > kept ? a->cfg.max_clusters - kept : 0;
  size_t fits = room * g < nrest ? room * g : nrest; /* room <= 4096, g <= 2^20 */
  /* Retry failed groups only after the plan, so their restart is the new
   * assignment's; ready is checked once everything is in place. */
  a->ready_pending = 0;
  for (size_t i = 0; i < fits; i += g) {
    size_t k = fits - i < g ? fits - i : g;
    if (dcm__cluster_create(a, rest + i, k) != 0)
      dcm__error(&a->log, me(a), "out of memory creating a cluster");
    else
      started++;
  }
  if (fits < nrest) {
    size_t over = nrest - fits;
    a->over = malloc(over * sizeof *a->over);
    if (a->over) {
      memcpy(a->over, rest + fits, over * sizeof *a->over);
      a->nover = over;
    }
    dcm__error(&a->log, me(a), "connect: %zu shards (%d to %d) need %zu more clusters than "
               "--max-clusters %zu allows; they are not started and are reported to MASTER as "
               "failed (over_cap)", over, rest[fits], rest[nrest - 1], (over + g - 1) / g,
               a->cfg.max_clusters);
  }
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    if (!cl->destroying && cl->state == DCM_CLUSTER_FAILED) dcm__cluster_retry(cl);
  free(groups);
  free(sizes);
  free(rest);
  list[0] = '\0';
  if (n && dcm__ctl_join(want, n, list, sizeof list) == 0) snprintf(list, sizeof list, "...");
  dcm__info(&a->log, me(a), "connect: %zu shards [%s]: %zu clusters kept, %zu started, %zu stopped",
            n, list, kept, started, stopped);
  if (a->nover) report_soon(a); /* MASTER learns at once which shards to move */
  a->ready_pending = 1;
  check_ready(a);
  check_stopped(a); /* removed shards that had no cluster left are stopped already */
}

static void on_connect(dcm__agent_t *a, dcm__ctl_packet_t *p) {
  size_t len, n = 0;
  const char *s = dcm__enc_ack(a->json, DCM_OP_CONNECT, &len);
  send_text(a, s, len);
  if (a->mode == DCM_AGENT_STOPPING) return;
  size_t bad = 0;
  int first = 0, last = 0;
  for (size_t i = 0; i < p->nshards; i++) {
    int x = p->shards[i];
    if (x < a->shard_count) {
      p->shards[n++] = x;
      continue;
    }
    if (bad++ == 0 || x < first) first = x;
    if (x > last) last = x;
  }
  if (bad) /* one line, however many */
    dcm__warn(&a->log, me(a), "connect names %zu shards not below shard_count %d (%d to %d); "
              "ignored", bad, a->shard_count, first, last);
  n = dcm__ctl_sort_unique(p->shards, n);
  int *want = p->shards;
  p->shards = NULL;
  p->nshards = 0;
  take_sessions(a, p); /* before apply: the clusters it starts get them */
  apply(a, want, n);
  if (a->mode == DCM_AGENT_DRAINING && n == 0) begin_stop(a, "drained: MASTER moved every shard");
}

static void heartbeat_cb(uv_timer_t *t) { send_heartbeat(t->data); }

static void on_initialise(dcm__agent_t *a, dcm__ctl_packet_t *p) {
  if (p->protocol != DCM_PROTOCOL_VERSION) {
    dcm__error(&a->log, me(a), "MASTER speaks protocol %d, this agent %d; disconnecting",
               p->protocol, DCM_PROTOCOL_VERSION);
    dcm__client_close(a->client, 1002, "unsupported protocol version");
    return;
  }
  int changed = a->shard_count && (a->shard_count != p->shard_count ||
                                   strcmp(a->token ? a->token : "", p->token) != 0);
  if (changed && a->clusters) {
    dcm__warn(&a->log, me(a), "MASTER's shard count or bot token changed; stopping every "
                              "cluster until it assigns shards again");
    stop_all(a);
  }
  if (changed || a->sessions.nslots != (size_t)p->shard_count) {
    /* Sessions belong to one bot and shard count: a change voids them. */
    a->epoch++;
    dcm__ctl_sessions_reset(&a->sessions, (size_t)p->shard_count);
    free(a->removing);
    a->removing = NULL;
    a->nremoving = 0;
  }
  if (a->token) {
    memset(a->token, 0, strlen(a->token));
    free(a->token);
  }
  a->token = p->token;
  p->token = NULL;
  a->shard_count = p->shard_count;
  a->max_concurrency = p->max_concurrency;
  memcpy(a->gateway_url, p->gateway_url, sizeof a->gateway_url);
  a->heartbeat_ms = p->heartbeat_ms < MIN_HEARTBEAT_MS ? MIN_HEARTBEAT_MS : (uint64_t)p->heartbeat_ms;
  a->session = 1;
  a->empty_sent = 0; /* a new connection: a new MASTER, maybe, hears [] first */
  dcm__ctl_masters_session(&a->masters);
  uv_timer_stop(&a->lease_timer);
  dcm__client_set_idle(a->client, 2 * a->heartbeat_ms + IDLE_GRACE_MS);
  uv_timer_start(&a->heartbeat_timer, heartbeat_cb, a->heartbeat_ms, a->heartbeat_ms);
  dcm__info(&a->log, me(a), "initialised: %d shards, max_concurrency %d, heartbeat every %.3gs",
            a->shard_count, a->max_concurrency, (double)a->heartbeat_ms / 1000.0);
  if (a->fatal_pending) send_fatal(a);
  /* Every session it knows (a restarted MASTER learns them again), then
   * the removed shards that stopped while MASTER was away. */
  dcm__ctl_sessions_queue_all(&a->sessions);
  sessions_flush(a);
  check_stopped(a);
  prune_sessions(a);
  if (a->mode == DCM_AGENT_DRAINING) send_offload(a);
  dcm__ident_resend(&a->ident); /* MASTER forgot them with the old connection */
}

void dcm__agent_on_message(dcm__agent_t *a, const char *msg, size_t len) {
  dcm__ctl_packet_t p;
  char err[160];
  size_t max = a->shard_count > 0 ? (size_t)a->shard_count : (size_t)1 << 20;
  int r = dcm__ctl_decode(a->json, msg, len, max, &p, err, sizeof err);
  if (r != 0) {
    dcm__warn(&a->log, me(a), "ignoring a bad packet from MASTER: %s", err);
    return;
  }
  if (!a->session && p.op != DCM_OP_INITIALISE && p.op != DCM_OP_SHUTDOWN &&
      p.op != DCM_OP_ERROR) {
    dcm__warn(&a->log, me(a), "ignoring %s before initialise", dcm__op_name(p.op));
    dcm__ctl_packet_clear(&p);
    return;
  }
  if (dcm__ctl_masters_stale(&a->masters, &p)) {
    dcm__client_close(a->client, DCM_CLOSE_STALE_EPOCH, "stale epoch");
    dcm__ctl_packet_clear(&p);
    return;
  }
  switch (p.op) {
    case DCM_OP_INFO:
      send_info(a);
      break;
    case DCM_OP_INITIALISE:
      on_initialise(a, &p);
      break;
    case DCM_OP_CONNECT:
      on_connect(a, &p);
      break;
    case DCM_OP_ERROR:
      dcm__warn(&a->log, me(a), "MASTER reports error %d: %s", p.code, p.message);
      if (p.code == DCM_ERR_NOT_YOURS && p.shard >= 0) dcm__ident_refused(&a->ident, p.shard);
      break;
    case DCM_OP_GRANT:
      dcm__ident_granted(&a->ident, p.shard);
      break;
    case DCM_OP_SHUTDOWN:
      dcm__warn(&a->log, me(a), "MASTER sent shutdown (%d: %s)", p.code, p.message);
      a->shutdown_received = 1;
      begin_stop(a, "shutdown from MASTER");
      break;
    case DCM_OP_ACK:
      break;
    default:
      dcm__debug(&a->log, me(a), "ignoring %s from MASTER", dcm__op_name(p.op));
  }
  dcm__ctl_packet_clear(&p);
}

/* ---- connection ---------------------------------------------------------- */

static void retry_cb(uv_timer_t *t);

/* A uniform random number in [0, 1], for jitter. */
static double jitter(void) {
  uint32_t r;
  if (uv_random(NULL, NULL, &r, sizeof r, 0, NULL) != 0) r = (uint32_t)uv_hrtime();
  return (double)r / 4294967295.0;
}

static void connect_now(dcm__agent_t *a) {
  char url[DCM_CTL_URL_MAX + 16];
  if (a->client || a->mode == DCM_AGENT_STOPPING) return;
  const dcm__ctl_url_t *master = dcm__ctl_masters_current(&a->masters);
  dcm__ctl_url_format(master, url, sizeof url);
  dcm__debug(&a->log, me(a), "connecting to %s", url);
  int r = dcm__client_start(a, master, &a->client);
  if (r != 0) {
    uint64_t wait = dcm__ctl_masters_backoff(&a->masters, jitter());
    dcm__error(&a->log, me(a), "cannot start a connection: %s; retrying in %.3gs",
               dcm_strerror(r), (double)wait / 1000.0);
    uv_timer_start(&a->retry_timer, retry_cb, wait, 0);
  }
}

static void retry_cb(uv_timer_t *t) { connect_now(t->data); }

/* --lease-timeout: MASTER may have moved the shards; none runs here
 * unconfirmed. The final SESSION lines wait for the next `initialise`. */
static void lease_cb(uv_timer_t *t) {
  dcm__agent_t *a = t->data;
  size_t n = 0;
  if (a->session || a->mode == DCM_AGENT_STOPPING) return;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) n += !cl->destroying;
  if (n == 0) return;
  dcm__warn(&a->log, me(a), "no session with MASTER for %.3gs (--lease-timeout): stopping all "
            "%zu clusters; their sessions are reported when MASTER is back", a->cfg.lease_timeout,
            n);
  stop_all(a);
  a->ready_pending = 0;
}

void dcm__agent_on_open(dcm__agent_t *a) {
  dcm__info(&a->log, me(a), "connected to MASTER at %s",
            dcm__ctl_masters_current(&a->masters)->hostport);
  send_info(a);
}

/* The session's end (if it had one) and the next attempt, where and when
 * masters.c says. */
void dcm__agent_on_closed(dcm__agent_t *a, const dcm__ctl_ending_t *end, const char *why) {
  int was_session = a->session;
  char keep[96] = "clusters keep running";
  a->client = NULL;
  a->session = 0;
  a->ready_pending = 0;
  uv_timer_stop(&a->heartbeat_timer);
  uv_timer_stop(&a->sessions_timer);
  if (a->mode == DCM_AGENT_STOPPING) {
    maybe_finish(a);
    return;
  }
  if (was_session && a->cfg.lease_timeout > 0 && !uv_is_active((uv_handle_t *)&a->lease_timer))
    uv_timer_start(&a->lease_timer, lease_cb, dcm__ms(a->cfg.lease_timeout), 0);
  if (a->cfg.lease_timeout > 0)
    snprintf(keep, sizeof keep, "clusters keep running for up to %.3gs (--lease-timeout)",
             a->cfg.lease_timeout);
  uint64_t wait = dcm__ctl_masters_next(&a->masters, end, was_session, why, keep,
                                        uv_now(a->loop), jitter());
  uv_timer_start(&a->retry_timer, retry_cb, wait, 0);
}

/* ---- clusters report ----------------------------------------------------- */

void dcm__agent_cluster_changed(dcm__agent_t *a, dcm__cluster_t *cl) {
  dcm__debug(&a->log, me(a), "cluster %d is %s", cl->id, dcm__cluster_state_name(cl->state));
  check_ready(a);
}

void dcm__agent_cluster_failed(dcm__agent_t *a, dcm__cluster_t *cl) {
  (void)cl;
  report_soon(a); /* MASTER learns of it now, not at the next beat */
}

void dcm__agent_cluster_fatal(dcm__agent_t *a, dcm__cluster_t *cl, int code, const char *msg,
                              size_t len, int shard) {
  char where[32] = "";
  if (len > DCM_MESSAGE_MAX) len = DCM_MESSAGE_MAX;
  if (shard >= 0) snprintf(where, sizeof where, " on shard %d", shard);
  if (!dcm__discord_fatal_code(code)) {
    /* Only Discord's non-reconnectable codes stop the fleet; anything else
     * is this cluster failing, and it restarts like a crash. */
    dcm__warn(&a->log, me(a), "cluster %d failing: FATAL %d%s: %.*s (not a fatal Discord "
              "close code: the cluster restarts, the fleet keeps running)", cl->id, code,
              where, (int)len, msg);
    dcm__cluster_restart_soon(cl);
    return;
  }
  dcm__error(&a->log, me(a), "cluster %d reports FATAL %d%s: %.*s", cl->id, code, where,
             (int)len, msg);
  if (a->fatal_pending) return; /* the first one is what MASTER hears */
  a->fatal_pending = 1;
  a->fatal_code = code;
  a->fatal_shard = shard;
  memcpy(a->fatal_message, msg, len);
  a->fatal_message[len] = '\0';
  if (a->session) send_fatal(a);
}

void dcm__agent_cluster_freed(dcm__agent_t *a) {
  dcm__clusters_start_waiting(a);
  check_stopped(a);
  maybe_finish(a);
}

void dcm__agent_reaper_changed(dcm__agent_t *a) { maybe_finish(a); }

/* ---- lifecycle ----------------------------------------------------------- */

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void maybe_finish(dcm__agent_t *a) {
  if (a->mode != DCM_AGENT_STOPPING || a->closed || a->nclusters > 0) return;
  /* Nothing the clusters started may outlive the agent. */
  if (!dcm__reaper_idle(&a->reaper)) return; /* a sweep or the poll comes back here */
  if (a->client) {
    if (a->client->phase == DCM_CLIENT_OPEN) {
      /* The clusters' final sessions, and `stopped`, go out before the close. */
      sessions_flush(a);
      check_stopped(a);
      dcm__client_close(a->client, 1000, "control stopping");
    }
    return; /* on_closed comes back here */
  }
  a->closed = 1;
  dcm__info(&a->log, me(a), "every cluster stopped; exiting");
  close_handle((uv_handle_t *)&a->retry_timer);
  close_handle((uv_handle_t *)&a->heartbeat_timer);
  close_handle((uv_handle_t *)&a->drain_timer);
  close_handle((uv_handle_t *)&a->report_timer);
  close_handle((uv_handle_t *)&a->sessions_timer);
  close_handle((uv_handle_t *)&a->lease_timer);
  close_handle((uv_handle_t *)&a->sigterm);
  close_handle((uv_handle_t *)&a->sigint);
  dcm__ident_stop(&a->ident);
  dcm__ctl_metrics_stop(&a->metrics);
  dcm__clusters_close(a);
  dcm__reaper_close(&a->reaper);
}

static void begin_stop(dcm__agent_t *a, const char *why) {
  if (a->mode == DCM_AGENT_STOPPING) return;
  a->mode = DCM_AGENT_STOPPING;
  dcm__info(&a->log, me(a), "stopping (%s): %zu clusters to stop", why, a->nclusters);
  uv_timer_stop(&a->retry_timer);
  uv_timer_stop(&a->drain_timer);
  uv_timer_stop(&a->report_timer);
  uv_timer_stop(&a->lease_timer);
  stop_all_clusters(a);
  if (a->client && a->client->phase != DCM_CLIENT_OPEN && a->client->phase != DCM_CLIENT_CLOSING)
    dcm__client_abort(a->client, "stopping");
  maybe_finish(a);
}

static void drain_cb(uv_timer_t *t) {
  dcm__agent_t *a = t->data;
  dcm__warn(&a->log, me(a), "drain timeout (%.3gs): stopping the clusters anyway",
            a->cfg.drain_timeout);
  begin_stop(a, "drain timeout");
}

static void on_signal(uv_signal_t *h, int signum) {
  dcm__agent_t *a = h->data;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (a->mode == DCM_AGENT_STOPPING) {
    dcm__warn(&a->log, me(a), "%s while stopping: SIGKILL to the clusters", name);
    dcm__clusters_kill_all(a);
  } else if (a->mode == DCM_AGENT_DRAINING) {
    dcm__warn(&a->log, me(a), "%s again: stopping without waiting for the drain", name);
    begin_stop(a, name);
  } else if (a->session && a->nassigned > 0) {
    a->mode = DCM_AGENT_DRAINING;
    dcm__info(&a->log, me(a), "%s: offloading %zu shards; waiting up to %.3gs for MASTER to "
              "move them (a second signal stops at once)", name, a->nassigned,
              a->cfg.drain_timeout);
    send_offload(a);
    uv_timer_start(&a->drain_timer, drain_cb, dcm__ms(a->cfg.drain_timeout), 0);
  } else {
    begin_stop(a, a->session ? name : "signal while not connected to MASTER");
  }
}

/* ---- setup --------------------------------------------------------------- */

static int is_cluster_var(const char *e) {
  static const char *const names[] = {"SHARD_IDS=",       "SHARD_COUNT=",
                                      "CLUSTER_ID=",      "DISCORD_TOKEN=",
                                      "MAX_CONCURRENCY=", "DISCORD_GATEWAY_URL=",
                                      "DISCLUSTER_IDENTIFY_URL=", "DISCLUSTER_AUTH=",
                                      "SHARD_SESSIONS="};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strncmp(e, names[i], strlen(names[i])) == 0) return 1;
  return 0;
}

int dcm__agent_init(dcm__agent_t *a, uv_loop_t *loop, const dcm__ctl_config_t *cfg,
                    dcm_log_level level, dcm_log_format format) {
  size_t n = 0, k = 0;
  memset(a, 0, sizeof *a);
  a->loop = loop;
  a->cfg = *cfg;
  a->max_concurrency = 1;
  dcm__ctl_masters_init(&a->masters, a->cfg.masters, a->cfg.nmasters, dcm__ms(a->cfg.retry),
                        uv_now(loop), &a->log, a->cfg.id);
  snprintf(a->gateway_url, sizeof a->gateway_url, "%s", DCM_CTL_DEFAULT_GATEWAY_URL);
  int r = dcm__log_init(&a->log, level, format, NULL, NULL);
  if (r != 0) return r;
  a->json = dcm__json_new();
  while (environ && environ[n]) n++;
  a->environ_base = calloc(n + 1, sizeof *a->environ_base);
  if (a->json == NULL || a->environ_base == NULL) return DCM_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (is_cluster_var(environ[i])) continue;
    if ((a->environ_base[k++] = strdup(environ[i])) == NULL) return DCM_ENOMEM;
  }
  uv_timer_init(loop, &a->retry_timer);
  uv_timer_init(loop, &a->heartbeat_timer);
  uv_timer_init(loop, &a->drain_timer);
  uv_timer_init(loop, &a->report_timer);
  uv_timer_init(loop, &a->sessions_timer);
  uv_timer_init(loop, &a->lease_timer);
  uv_signal_init(loop, &a->sigterm);
  uv_signal_init(loop, &a->sigint);
  dcm__clusters_init(a);
  dcm__reaper_init(&a->reaper, a);
  a->retry_timer.data = a->heartbeat_timer.data = a->drain_timer.data = a;
  a->report_timer.data = a->sessions_timer.data = a->lease_timer.data = a;
  a->sigterm.data = a->sigint.data = a;
  return 0;
}

void dcm__agent_start(dcm__agent_t *a) {
  int r = dcm__ident_start(&a->ident, a, a->cfg.identify_port);
  if (r != 0) {
    dcm__error(&a->log, me(a), "cannot listen on 127.0.0.1:%d for the identify endpoint: %s",
               a->cfg.identify_port, uv_strerror(r));
    a->exit_status = 1;
    begin_stop(a, "no identify endpoint");
    return;
  }
  r = a->cfg.metrics_port >= 0 ? dcm__ctl_metrics_start(&a->metrics, a, a->cfg.metrics_port) : 0;
  if (r != 0) {
    dcm__error(&a->log, me(a), "cannot listen on 127.0.0.1:%d for GET /metrics: %s",
               a->cfg.metrics_port, uv_strerror(r));
    a->exit_status = 1;
    begin_stop(a, "no metrics endpoint");
    return;
  }
  if (a->cfg.metrics_port >= 0)
    dcm__info(&a->log, me(a), "metrics on http://127.0.0.1:%d/metrics", a->metrics.port);
  r = dcm__reaper_start(&a->reaper);
  if (r != 0) {
    dcm__error(&a->log, me(a), "cannot watch SIGCHLD: %s", uv_strerror(r));
    a->exit_status = 1;
    begin_stop(a, "no SIGCHLD watcher");
    return;
  }
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  char list[2048], url[DCM_CTL_URL_MAX + 16];
  size_t used = 0, i;
  for (i = 0; i < a->cfg.nmasters; i++) {
    dcm__ctl_url_format(&a->cfg.masters[i], url, sizeof url);
    int w = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", url);
    if (w < 0 || (size_t)w >= sizeof list - used - 16) break;
    used += (size_t)w;
  }
  list[used] = '\0';
  if (i < a->cfg.nmasters) snprintf(list + used, sizeof list - used, " and %zu more",
                                    a->cfg.nmasters - i);
  dcm__info(&a->log, me(a), "discluster-control %s: MASTER%s %s, %d cores%s; identify "
            "endpoint on 127.0.0.1:%d; at most %zu clusters", DCM_VERSION,
            a->cfg.nmasters > 1 ? "s" : "", list, dcm__ctl_cores(),
            a->cfg.standby ? ", standby" : "", a->ident.port, a->cfg.max_clusters);
  a->sessions_last = uv_now(a->loop) - SESSIONS_EVERY_MS;
  connect_now(a);
}

void dcm__agent_free(dcm__agent_t *a) {
  if (a->environ_base) {
    for (size_t i = 0; a->environ_base[i]; i++) free(a->environ_base[i]);
    free(a->environ_base);
  }
  if (a->token) {
    memset(a->token, 0, strlen(a->token));
    free(a->token);
  }
  free(a->assigned);
  free(a->over);
  free(a->ids);
  free(a->removing);
  dcm__ctl_sessions_free(&a->sessions);
  if (a->json) lua_close(a->json);
  dcm__log_close(&a->log);
  a->environ_base = NULL;
  a->token = NULL;
  a->assigned = NULL;
  a->over = NULL;
  a->ids = NULL;
  a->removing = NULL;
  a->json = NULL;
}
