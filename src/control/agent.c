/*
 * agent.c: the CONTROL agent's protocol and lifecycle. Connects (and keeps
 * retrying), identifies with `info`, heartbeats, turns each `connect` into
 * cluster groups (keeping groups that are unchanged), reports `ready` once
 * every cluster of the assignment printed READY, relays the FATAL codes
 * that stop the fleet (and restarts a cluster that reports any other),
 * carries identify requests and grants between the identify endpoint and
 * MASTER, and stops: on `shutdown` at once, on SIGTERM after an `offload`
 * drain. Losing MASTER never stops the clusters.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "discluster/master.h"
#include "json.h"
#include "packets.h"

extern char **environ;

#define MIN_HEARTBEAT_MS 100
#define IDLE_GRACE_MS 15000 /* silence beyond two heartbeats before MASTER counts as gone */
#define FAST_RETRY_MS 100   /* first attempt after losing an established session */

static uint64_t ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

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

static void send_info(dcm__agent_t *a) {
  size_t len, total = cluster_shard_total(a);
  int *shards = malloc((total ? total : 1) * sizeof *shards);
  if (shards == NULL) return;
  size_t n = running_shards(a, shards);
  const char *s = dcm__ctl_enc_info(a->json, a->cfg.id, dcm__ctl_cores(), dcm__ctl_loadavg(),
                                    a->cfg.standby && n == 0, shards, n, DCM_VERSION, &len);
  send_text(a, s, len);
  free(shards);
}

static void send_heartbeat(dcm__agent_t *a) {
  size_t nf = 0, len;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next)
    nf += cl->state == DCM_CLUSTER_FAILED && !cl->destroying;
  dcm__ctl_failed_t *f = calloc(nf ? nf : 1, sizeof *f);
  if (f == NULL) return;
  nf = 0;
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) {
    if (cl->state != DCM_CLUSTER_FAILED || cl->destroying) continue;
    dcm__ctl_failed_t x = {cl->id, cl->shards, cl->nshards, cl->exit_status, cl->term_signal};
    f[nf++] = x;
  }
  const char *s = dcm__ctl_enc_heartbeat(a->json, dcm__ctl_loadavg(), f, nf, &len);
  send_text(a, s, len);
  free(f);
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

/* ---- assignment ---------------------------------------------------------- */

static void stop_all_clusters(dcm__agent_t *a) {
  for (dcm__cluster_t *cl = a->clusters; cl; cl = cl->next) dcm__cluster_stop(cl);
}

/* Takes want (sorted, unique, malloc'd). */
static void apply(dcm__agent_t *a, int *want, size_t n) {
  size_t kept = 0, stopped = 0, started = 0, nk = 0;
  char list[160];
  free(a->assigned);
  a->assigned = want;
  a->nassigned = n;
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
  /* Retry failed groups only after the plan, so their restart is the new
   * assignment's; ready is checked once everything is in place. */
  a->ready_pending = 0;
  for (size_t i = 0; i < nrest; i += g) {
    size_t k = nrest - i < g ? nrest - i : g;
    if (dcm__cluster_create(a, rest + i, k) != 0)
      dcm__error(&a->log, me(a), "out of memory creating a cluster");
    else
      started++;
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
  a->ready_pending = 1;
  check_ready(a);
}

static void on_connect(dcm__agent_t *a, dcm__ctl_packet_t *p) {
  size_t len, n = 0;
  const char *s = dcm__enc_ack(a->json, DCM_OP_CONNECT, &len);
  send_text(a, s, len);
  if (a->mode == DCM_AGENT_STOPPING) return;
  for (size_t i = 0; i < p->nshards; i++) {
    if (p->shards[i] < a->shard_count)
      p->shards[n++] = p->shards[i];
    else
      dcm__warn(&a->log, me(a), "connect names shard %d of only %d; ignored", p->shards[i],
                a->shard_count);
  }
  n = dcm__ctl_sort_unique(p->shards, n);
  int *want = p->shards;
  p->shards = NULL;
  p->nshards = 0;
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
    stop_all_clusters(a);
    free(a->assigned);
    a->assigned = NULL;
    a->nassigned = 0;
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
  a->had_session = 1;
  dcm__client_set_idle(a->client, 2 * a->heartbeat_ms + IDLE_GRACE_MS);
  uv_timer_start(&a->heartbeat_timer, heartbeat_cb, a->heartbeat_ms, a->heartbeat_ms);
  dcm__info(&a->log, me(a), "initialised: %d shards, max_concurrency %d, heartbeat every %.3gs",
            a->shard_count, a->max_concurrency, (double)a->heartbeat_ms / 1000.0);
  if (a->fatal_pending) send_fatal(a);
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

static void connect_now(dcm__agent_t *a) {
  if (a->client || a->mode == DCM_AGENT_STOPPING) return;
  dcm__debug(&a->log, me(a), "connecting to ws://%s%s", a->cfg.master.hostport,
             a->cfg.master.path);
  int r = dcm__client_start(a, &a->client);
  if (r != 0) {
    dcm__error(&a->log, me(a), "cannot start a connection: %s", dcm_strerror(r));
    uv_timer_start(&a->retry_timer, retry_cb, ms(a->cfg.retry), 0);
  }
}

static void retry_cb(uv_timer_t *t) { connect_now(t->data); }

void dcm__agent_on_open(dcm__agent_t *a) {
  dcm__info(&a->log, me(a), "connected to MASTER at %s", a->cfg.master.hostport);
  send_info(a);
}

void dcm__agent_on_closed(dcm__agent_t *a, int established, const char *why) {
  int was_session = a->session;
  a->client = NULL;
  a->session = 0;
  a->ready_pending = 0;
  uv_timer_stop(&a->heartbeat_timer);
  if (a->mode == DCM_AGENT_STOPPING) {
    maybe_finish(a);
    return;
  }
  uint64_t now = uv_now(a->loop), wait = ms(a->cfg.retry);
  if (was_session && now - a->last_fast_retry >= wait) {
    wait = FAST_RETRY_MS;
    a->last_fast_retry = now;
  }
  if (was_session)
    dcm__warn(&a->log, me(a), "lost MASTER (%s); clusters keep running; reconnecting in %.3gs",
              why[0] ? why : "connection closed", (double)wait / 1000.0);
  else
    dcm__warn(&a->log, me(a), "no session with MASTER (%s); retrying in %.3gs",
              why[0] ? why : (established ? "closed before initialise" : "connect failed"),
              (double)wait / 1000.0);
  uv_timer_start(&a->retry_timer, retry_cb, wait, 0);
}

/* ---- clusters report ----------------------------------------------------- */

void dcm__agent_cluster_changed(dcm__agent_t *a, dcm__cluster_t *cl) {
  dcm__debug(&a->log, me(a), "cluster %d is %s", cl->id, dcm__cluster_state_name(cl->state));
  check_ready(a);
}

void dcm__agent_cluster_failed(dcm__agent_t *a, dcm__cluster_t *cl) {
  (void)cl;
  if (a->session) send_heartbeat(a); /* MASTER learns of it now, not at the next beat */
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
  maybe_finish(a);
}

/* ---- lifecycle ----------------------------------------------------------- */

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void maybe_finish(dcm__agent_t *a) {
  if (a->mode != DCM_AGENT_STOPPING || a->closed || a->nclusters > 0) return;
  if (a->client) {
    if (a->client->phase == DCM_CLIENT_OPEN) dcm__client_close(a->client, 1000, "control stopping");
    return; /* on_closed comes back here */
  }
  a->closed = 1;
  dcm__info(&a->log, me(a), "every cluster stopped; exiting");
  close_handle((uv_handle_t *)&a->retry_timer);
  close_handle((uv_handle_t *)&a->heartbeat_timer);
  close_handle((uv_handle_t *)&a->drain_timer);
  close_handle((uv_handle_t *)&a->sigterm);
  close_handle((uv_handle_t *)&a->sigint);
  dcm__ident_stop(&a->ident);
}

static void begin_stop(dcm__agent_t *a, const char *why) {
  if (a->mode == DCM_AGENT_STOPPING) return;
  a->mode = DCM_AGENT_STOPPING;
  dcm__info(&a->log, me(a), "stopping (%s): %zu clusters to stop", why, a->nclusters);
  uv_timer_stop(&a->retry_timer);
  uv_timer_stop(&a->drain_timer);
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
    uv_timer_start(&a->drain_timer, drain_cb, ms(a->cfg.drain_timeout), 0);
  } else {
    begin_stop(a, a->session ? name : "signal while not connected to MASTER");
  }
}

/* ---- setup --------------------------------------------------------------- */

static int is_cluster_var(const char *e) {
  static const char *const names[] = {"SHARD_IDS=",       "SHARD_COUNT=",
                                      "CLUSTER_ID=",      "DISCORD_TOKEN=",
                                      "MAX_CONCURRENCY=", "DISCORD_GATEWAY_URL=",
                                      "DISCLUSTER_IDENTIFY_URL=", "DISCLUSTER_AUTH="};
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
  uv_signal_init(loop, &a->sigterm);
  uv_signal_init(loop, &a->sigint);
  a->retry_timer.data = a->heartbeat_timer.data = a->drain_timer.data = a;
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
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  dcm__info(&a->log, me(a), "discluster-control %s: MASTER ws://%s%s, %d cores%s; identify "
            "endpoint on 127.0.0.1:%d", DCM_VERSION, a->cfg.master.hostport, a->cfg.master.path,
            dcm__ctl_cores(), a->cfg.standby ? ", standby" : "", a->ident.port);
  a->last_fast_retry = uv_now(a->loop) - ms(a->cfg.retry) - 1;
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
  if (a->json) lua_close(a->json);
  dcm__log_close(&a->log);
  a->environ_base = NULL;
  a->token = NULL;
  a->assigned = NULL;
  a->json = NULL;
}
