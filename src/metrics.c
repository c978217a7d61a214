/* metrics.c: the Prometheus text writer and MASTER's /metrics; see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- the text format ----------------------------------------------------- */

void dcm__prom_init(dcm__prom_t *p) { memset(p, 0, sizeof *p); }

void dcm__prom_free(dcm__prom_t *p) {
  free(p->buf);
  memset(p, 0, sizeof *p);
}

static int reserve(dcm__prom_t *p, size_t more) {
  if (p->failed) return -1;
  if (p->len + more + 1 > DCM_PROM_MAX) {
    p->failed = 1;
    return -1;
  }
  if (p->len + more + 1 <= p->cap) return 0;
  size_t cap = p->cap ? p->cap : 4096;
  while (cap < p->len + more + 1) cap *= 2;
  if (cap > DCM_PROM_MAX) cap = DCM_PROM_MAX;
  char *b = realloc(p->buf, cap);
  if (b == NULL) {
    p->failed = 1;
    return -1;
  }
  p->buf = b;
  p->cap = cap;
  return 0;
}

static void put(dcm__prom_t *p, const char *s, size_t n) {
  if (reserve(p, n) != 0) return;
  memcpy(p->buf + p->len, s, n);
  p->len += n;
  p->buf[p->len] = '\0';
}

static void puts_(dcm__prom_t *p, const char *s) { put(p, s, strlen(s)); }

static void putf(dcm__prom_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(dcm__prom_t *p, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) put(p, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Label values escape \ " and newline; HELP text escapes \ and newline. */
static void escaped(dcm__prom_t *p, const char *s, int quotes) {
  for (; *s; s++) {
    if (*s == '\\') puts_(p, "\\\\");
    else if (*s == '\n') puts_(p, "\\n");
    else if (*s == '"' && quotes) puts_(p, "\\\"");
    else put(p, s, 1);
  }
}

void dcm__prom_family(dcm__prom_t *p, const char *name, const char *type, const char *help) {
  puts_(p, "# HELP ");
  puts_(p, name); /* names are the callers' literals */
  put(p, " ", 1);
  escaped(p, help, 0);
  puts_(p, "\n# TYPE ");
  puts_(p, name);
  put(p, " ", 1);
  puts_(p, type);
  put(p, "\n", 1);
}

static void head(dcm__prom_t *p, const char *name, const char *const *labels) {
  puts_(p, name);
  if (labels == NULL || labels[0] == NULL) return;
  put(p, "{", 1);
  for (size_t i = 0; labels[i]; i += 2) {
    if (i) put(p, ",", 1);
    puts_(p, labels[i]);
    put(p, "=\"", 2);
    escaped(p, labels[i + 1], 1);
    put(p, "\"", 1);
  }
  put(p, "}", 1);
}

void dcm__prom_int(dcm__prom_t *p, const char *name, const char *const *labels, uint64_t v) {
  head(p, name, labels);
  putf(p, " %llu\n", (unsigned long long)v);
}

void dcm__prom_num(dcm__prom_t *p, const char *name, const char *const *labels, double v) {
  head(p, name, labels);
  putf(p, " %.3f\n", v);
}

char *dcm__prom_take(dcm__prom_t *p, size_t *len) {
  char *b = p->failed ? NULL : p->buf;
  *len = p->failed ? 0 : p->len;
  if (p->failed) free(p->buf);
  memset(p, 0, sizeof *p);
  return b;
}

/* ---- MASTER's page ------------------------------------------------------- */

static void one(dcm__prom_t *p, const char *name, const char *type, const char *help,
                uint64_t v) {
  dcm__prom_family(p, name, type, help);
  dcm__prom_int(p, name, NULL, v);
}

static void machines(dcm__prom_t *p, dcm_master_t *m, uint64_t now) {
  static const char *const states[] = {"live", "disconnected"};
  static const char *const roles[] = {"active", "standby"};
  uint64_t count[2][2] = {{0, 0}, {0, 0}}, draining = 0, failed = 0, oldest = 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->state > DCM_MACHINE_DISCONNECTED) continue; /* dead ones leave the list */
    /* as /status: a standby that took shards runs them as an active */
    count[x->state][x->standby && x->nshards == 0]++;
    draining += x->draining != 0;
    failed += x->nfailed;
    if (x->conn && now - x->conn->last_heartbeat > oldest) oldest = now - x->conn->last_heartbeat;
  }
  dcm__prom_family(p, "discluster_machines", "gauge",
                   "Machines (CONTROLs) by state (live, or disconnected inside the reconnect "
                   "grace) and role.");
  for (int s = 0; s < 2; s++)
    for (int r = 0; r < 2; r++) {
      const char *labels[] = {"state", states[s], "role", roles[r], NULL};
      dcm__prom_int(p, "discluster_machines", labels, count[s][r]);
    }
  one(p, "discluster_machines_draining", "gauge", "Machines that sent offload.", draining);

  one(p, "discluster_shard_count", "gauge", "The fleet's shard count (0 until known).",
      (uint64_t)m->shard_count);
  one(p, "discluster_shards_assigned", "gauge", "Shards with a machine.",
      (uint64_t)m->shard_count - m->nunassigned);
  one(p, "discluster_shards_unassigned", "gauge", "Shards without a machine.", m->nunassigned);
  one(p, "discluster_shards_failed", "gauge",
      "Shards in clusters their machines gave up on (heartbeat failed_clusters).", failed);

  dcm__prom_family(p, "discluster_machine_heartbeat_age_seconds", "gauge",
                   "Time since each connected machine's last heartbeat (at most "
                   STR(DCM_METRICS_MACHINES_MAX) " machines listed).");
  size_t listed = 0;
  for (dcm__link_t *l = m->machines.next; l != &m->machines; l = l->next) {
    dcm__machine_t *x = DCM_CONTAINER(l, dcm__machine_t, link);
    if (x->conn == NULL || x->state != DCM_MACHINE_LIVE) continue;
    if (listed++ == DCM_METRICS_MACHINES_MAX) break;
    const char *labels[] = {"machine", x->id, NULL};
    dcm__prom_num(p, "discluster_machine_heartbeat_age_seconds", labels,
                  (double)(now - x->conn->last_heartbeat) / 1000.0);
  }
  dcm__prom_family(p, "discluster_heartbeat_age_max_seconds", "gauge",
                   "The oldest last heartbeat of any connected machine.");
  dcm__prom_num(p, "discluster_heartbeat_age_max_seconds", NULL, (double)oldest / 1000.0);
}

static void identify(dcm__prom_t *p, dcm_master_t *m) {
  const dcm__idq_t *q = m->idq;
  one(p, "discluster_identify_grants_total", "counter", "Identify grants sent.",
      q ? dcm__idq_granted(q) : 0);
  one(p, "discluster_identify_returned_total", "counter",
      "Identify grants given back unused (release).", q ? dcm__idq_returned(q) : 0);
  one(p, "discluster_identify_waiting", "gauge", "Identify requests waiting, every bucket.",
      q ? dcm__idq_waiting(q) : 0);
  one(p, "discluster_identify_blocked", "gauge",
      "1 while requests wait and the session-start budget blocks every grant.",
      q ? (uint64_t)dcm__idq_budget_blocked(q) : 0);
  dcm__prom_family(p, "discluster_identify_queue_depth", "gauge",
                   "Identify requests waiting in each rate-limit bucket (buckets with "
                   "requests only).");
  for (int b = 0; q && b < dcm__idq_buckets(q); b++) { /* max_concurrency <= 1024 */
    size_t depth = dcm__idq_depth(q, b);
    if (depth == 0) continue;
    char num[16];
    snprintf(num, sizeof num, "%d", b);
    const char *labels[] = {"bucket", num, NULL};
    dcm__prom_int(p, "discluster_identify_queue_depth", labels, depth);
  }
  if (m->have_gw) { /* only once Discord was asked */
    long left = q ? dcm__idq_remaining(q) : m->gw.remaining;
    one(p, "discluster_session_start_limit_remaining", "gauge",
        "Identifies left of Discord's session_start_limit.", left > 0 ? (uint64_t)left : 0);
    one(p, "discluster_session_start_limit_total", "gauge",
        "Discord's session_start_limit total.", m->gw.total > 0 ? (uint64_t)m->gw.total : 0);
  }
}

static void connections(dcm__prom_t *p, dcm_master_t *m) {
  static const char *const phases[] = {"http", "hello", "active", "closing", "plain"};
  uint64_t count[5] = {0};
  for (dcm__link_t *l = m->conns.next; l != &m->conns; l = l->next) {
    dcm__conn_t *c = DCM_CONTAINER(l, dcm__conn_t, link);
    if ((unsigned)c->phase < 5) count[c->phase]++;
  }
  dcm__prom_family(p, "discluster_connections", "gauge",
                   "Open connections by phase: http (request head), hello (upgraded, no info "
                   "yet), active (identified), closing, plain (an HTTP reply).");
  for (int i = 0; i < 5; i++) {
    const char *labels[] = {"phase", phases[i], NULL};
    dcm__prom_int(p, "discluster_connections", labels, count[i]);
  }
}

char *dcm__metrics_text(dcm_master_t *m, size_t *len) {
  const dcm__counters_t *k = &m->counters;
  uint64_t now = uv_now(m->loop);
  dcm__prom_t p;
  dcm__prom_init(&p);

  dcm__prom_family(&p, "discluster_build_info", "gauge", "The build: always 1.");
  {
    char proto[16];
    snprintf(proto, sizeof proto, "%d", DCM_PROTOCOL_VERSION);
    const char *labels[] = {"version", DCM_VERSION, "protocol", proto, NULL};
    dcm__prom_int(&p, "discluster_build_info", labels, 1);
  }
  dcm__prom_family(&p, "discluster_state", "gauge", "1 for MASTER's lifecycle state.");
  for (int s = 0; s <= DCM_STATE_SHUTDOWN; s++) {
    const char *labels[] = {"state", dcm__state_name((dcm__state)s), NULL};
    dcm__prom_int(&p, "discluster_state", labels, m->state == (dcm__state)s);
  }
  dcm__prom_family(&p, "discluster_ha_role", "gauge",
                   "1 for this MASTER's role: standalone (no etcd), leader or follower.");
  for (int r = 0; r < 3; r++) {
    static const char *const roles[] = {"standalone", "leader", "follower"};
    const char *labels[] = {"role", roles[r], NULL};
    dcm__prom_int(&p, "discluster_ha_role", labels, strcmp(dcm__ha_role(m), roles[r]) == 0);
  }
  one(&p, "discluster_ha_epoch", "gauge", "The leader's term (etcd revision); 0 unless leading.",
      dcm__ha_epoch(m));
  machines(&p, m, now);
  identify(&p, m);

  one(&p, "discluster_failovers_total", "counter",
      "Machines declared dead (heartbeat timeout, no reconnect within the grace).",
      k->failovers);
  one(&p, "discluster_drains_total", "counter", "Machines that asked to drain (offload).", k->drains);
  one(&p, "discluster_resumes_handed_total", "counter",
      "Shards handed to a machine with their session to resume.", k->resumes_handed);
  one(&p, "discluster_rebalances_total", "counter", "Rebalances started.", k->rebalances);
  one(&p, "discluster_rebalancing", "gauge", "1 while a rebalance is under way.",
      m->rebalancing != 0);

  dcm__policy_stats_t ps;
  dcm__policy_stats(m->policy, &ps);
  one(&p, "discluster_policy_calls_total", "counter",
      "Policy decisions asked (allocate, failover).", ps.calls);
  one(&p, "discluster_policy_errors_total", "counter",
      "Policy calls that failed or returned a rejected result.", ps.errors);
  one(&p, "discluster_policy_reloads_total", "counter", "Successful policy reloads.",
      ps.reloads);
  one(&p, "discluster_policy_reload_failures_total", "counter",
      "Policy reloads that failed (the running policy stayed).", ps.reload_failures);

  connections(&p, m);
  one(&p, "discluster_received_bytes_total", "counter", "Bytes read from every connection.",
      k->bytes_in);
  one(&p, "discluster_sent_bytes_total", "counter", "Bytes written to every connection.",
      k->bytes_out);
  one(&p, "discluster_received_packets_total", "counter",
      "WebSocket messages received from CONTROLs.", k->packets_in);
  one(&p, "discluster_sent_packets_total", "counter", "WebSocket messages sent to CONTROLs.",
      k->packets_out);
  return dcm__prom_take(&p, len);
}
