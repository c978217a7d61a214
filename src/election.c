/* election.c: see election.h. One campaign or renewal request is in flight
 * at a time (e->op); the step timer schedules the next one. Record writes
 * have their own queue, one in flight. All times are uv_now() ms. */
#include "election.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "etcd.h"
#include "json.h"
#include "options.h"

#define FIRST_BACKOFF_MS 500
#define MAX_BACKOFF_MS 5000
#define MAX_CAMPAIGN_MS 500
#define MAX_ATTEMPT_MS 5000     /* one etcd request, at most */
#define CLOSE_REVOKE_MS 1000    /* the revoke at close, per endpoint */
#define MAX_EVENTS 16           /* queued for delivery; a turn makes two or three */
#define PREFIX "/discluster/"

typedef enum { ST_NEW, ST_CAMPAIGN, ST_LEADING, ST_CLOSING } state_t;

typedef struct put_s {
  char name[DCM_ELECT_MAX_NAME + 1];
  char *value;
  size_t len;
  struct put_s *next;
} put_t;

typedef struct get_s {
  dcm__elect_t *e;
  dcm__etcd_op_t *op;
  char name[DCM_ELECT_MAX_NAME + 1];
  void (*cb)(void *arg, const char *value, size_t len);
  void *arg;
  struct get_s *prev, *next;
} get_t;

struct dcm__elect_s {
  uv_loop_t *loop;
  dcm__log_t *log;
  dcm__etcd_t *etcd;
  uv_timer_t step_timer;  /* the next campaign, renewal or retry */
  uv_timer_t valid_timer; /* leading: fires at valid_until */
  uv_timer_t event_timer; /* delivers queued events */
  uv_timer_t put_timer;   /* the retry of a record write */
  int open_handles;       /* the timers and etcd, until their close cbs */
  state_t state;
  char *cluster, *prefix, *leader_key, *self_url;
  double ttl;
  uint64_t ttl_ms, margin_ms, renew_ms, campaign_ms;
  int64_t lease_ttl_s;
  /* the lease */
  int64_t lease;
  uint64_t lease_sent;   /* send time of its last successful grant or renewal */
  uint64_t lease_ms;     /* min(ttl, etcd's granted TTL) */
  int64_t stale_lease;   /* the lease of the term just ended: may hold the key */
  /* the term */
  uint64_t epoch, valid_until;
  char cluster_id[24];   /* etcd's cluster id when elected: epochs count within it */
  char *leader_url;      /* learnt from etcd, NULL when unknown */
  dcm__etcd_op_t *op;    /* the campaign or renewal step in flight */
  uint64_t op_sent;
  dcm__etcd_op_t *revoke_op; /* the stale lease's revoke */
  /* etcd's health */
  int outage;            /* the error line of this outage is out */
  int unavailable_sent;  /* DCM_ELECT_UNAVAILABLE of this outage is out */
  int following_sent;    /* DCM_ELECT_FOLLOWING sent since the last change */
  uint64_t backoff_ms;
  /* records */
  put_t *puts, *puts_tail, *put_inflight;
  size_t nputs;
  dcm__etcd_op_t *put_op;
  uint64_t put_epoch;
  get_t *gets;
  size_t ngets;
  /* events */
  dcm__elect_event events[MAX_EVENTS];
  size_t nev;
  dcm__elect_cb cb;
  void *cb_arg;
  void (*done)(void *arg);
  void *done_arg;
};

static void step(dcm__elect_t *e);
static void kick_puts(dcm__elect_t *e);

/* ---- small helpers --------------------------------------------------------- */

static int name_ok(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > DCM_ELECT_MAX_NAME) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

const char *dcm__elect_event_name(dcm__elect_event ev) {
  switch (ev) {
    case DCM_ELECT_LEADING: return "leading";
    case DCM_ELECT_FOLLOWING: return "following";
    case DCM_ELECT_STEPPED_DOWN: return "stepped down";
    case DCM_ELECT_UNAVAILABLE: return "unavailable";
  }
  return "?";
}

static void on_event_timer(uv_timer_t *t) {
  dcm__elect_t *e = t->data;
  size_t i = 0;
  /* The callback may close e: nothing is delivered after that. */
  while (i < e->nev && e->state != ST_CLOSING) {
    dcm__elect_event ev = e->events[i++];
    e->cb(e->cb_arg, ev);
  }
  if (e->state != ST_CLOSING) {
    memmove(e->events, e->events + i, (e->nev - i) * sizeof e->events[0]);
    e->nev -= i;
  }
}

static void emit(dcm__elect_t *e, dcm__elect_event ev) {
  if (e->nev == MAX_EVENTS) {
    dcm__error(e->log, NULL, "election: event queue full; dropping \"%s\"",
               dcm__elect_event_name(ev));
    return;
  }
  e->events[e->nev++] = ev;
  uv_timer_start(&e->event_timer, on_event_timer, 0, 0);
}

static void on_step_timer(uv_timer_t *t) { step(t->data); }

static void schedule(dcm__elect_t *e, uint64_t ms) {
  uv_timer_start(&e->step_timer, on_step_timer, ms, 0);
}

/* The leader's URL goes into headers, JSON and close reasons as it is: a
   ws[s]:// URL of printable characters without quotes, backslashes or blanks. */
static int usable_url(const char *v, size_t len) {
  char buf[DCM_ELECT_MAX_URL + 1];
  if (len == 0 || len > DCM_ELECT_MAX_URL) return 0;
  for (size_t i = 0; i < len; i++)
    if (v[i] <= 0x20 || v[i] >= 0x7f || v[i] == '"' || v[i] == '\\') return 0;
  memcpy(buf, v, len);
  buf[len] = '\0';
  return dcm__url_ok(buf, 1);
}

static void set_leader(dcm__elect_t *e, const char *url, size_t len) {
  if (url == NULL) {
    free(e->leader_url);
    e->leader_url = NULL;
    return;
  }
  if (e->leader_url && strlen(e->leader_url) == len && memcmp(e->leader_url, url, len) == 0)
    return;
  char *copy = strndup(url, len);
  if (copy == NULL) return; /* unknown rather than stale */
  free(e->leader_url);
  e->leader_url = copy;
  e->following_sent = 0; /* tell the owner about the new leader */
}

static void drop_puts(dcm__elect_t *e, const char *why) {
  size_t n = e->nputs + (e->put_inflight != NULL);
  if (e->put_op) dcm__etcd_cancel(e->put_op);
  e->put_op = NULL;
  uv_timer_stop(&e->put_timer);
  if (e->put_inflight) {
    free(e->put_inflight->value);
    free(e->put_inflight);
    e->put_inflight = NULL;
  }
  while (e->puts) {
    put_t *p = e->puts;
    e->puts = p->next;
    free(p->value);
    free(p);
  }
  e->puts_tail = NULL;
  e->nputs = 0;
  if (n > 0 && why) dcm__warn(e->log, NULL, "election: %zu record write(s) dropped: %s", n, why);
}

/* ---- etcd's health --------------------------------------------------------- */

static void reachable(dcm__elect_t *e, const dcm__etcd_result_t *r) {
  if (e->outage)
    dcm__info(e->log, NULL, "etcd: %s reachable again", r->endpoint);
  e->outage = 0;
  e->unavailable_sent = 0;
  e->backoff_ms = FIRST_BACKOFF_MS;
}

/* A step failed: one error line per outage; while leading keep trying to
 * renew at the campaign pace, otherwise back off. */
static void failed(dcm__elect_t *e, const dcm__etcd_result_t *r, const char *what) {
  if (!e->outage) {
    e->outage = 1;
    if (dcm__etcd_transient(r->err))
      dcm__error(e->log, NULL, "etcd: %s unreachable (%s): %s; retrying with backoff",
                 r->endpoint, what, r->detail);
    else
      dcm__error(e->log, NULL, "etcd: %s %s failed: %s: %s; retrying with backoff",
                 r->endpoint, what, dcm__etcd_strerror(r->err), r->detail);
  } else {
    dcm__debug(e->log, NULL, "etcd: %s %s failed again: %s", r->endpoint, what, r->detail);
  }
  if (e->state == ST_LEADING) {
    schedule(e, e->campaign_ms);
    return;
  }
  set_leader(e, NULL, 0);
  if (!e->unavailable_sent) {
    e->unavailable_sent = 1;
    e->following_sent = 0;
    emit(e, DCM_ELECT_UNAVAILABLE);
  }
  schedule(e, e->backoff_ms);
  e->backoff_ms = e->backoff_ms * 2 > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : e->backoff_ms * 2;
}

/* ---- terms ----------------------------------------------------------------- */

static void on_stale_revoked(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  e->revoke_op = NULL;
  if (r->err == 0 || r->err == DCM_ETCD_ENOLEASE)
    dcm__debug(e->log, NULL, "etcd: the previous term's lease is gone");
  else
    dcm__debug(e->log, NULL, "etcd: revoking the previous term's lease failed: %s", r->detail);
}

static void step_down(dcm__elect_t *e, const char *why) {
  dcm__warn(e->log, NULL, "election: stepping down as leader of cluster %s (epoch %llu): %s",
            e->cluster, (unsigned long long)e->epoch, why);
  e->state = ST_CAMPAIGN;
  uv_timer_stop(&e->valid_timer);
  if (e->op) dcm__etcd_cancel(e->op);
  e->op = NULL;
  drop_puts(e, "no longer the leader");
  /* The key may outlive us (etcd merely slow): revoking it lets the next
   * leader in at once; it expires with the lease otherwise. */
  if (e->revoke_op) dcm__etcd_cancel(e->revoke_op);
  e->revoke_op = NULL;
  e->stale_lease = e->lease;
  if (e->lease && dcm__etcd_revoke(e->etcd, e->lease, on_stale_revoked, e, &e->revoke_op) != 0)
    e->revoke_op = NULL;
  e->lease = 0;
  e->epoch = 0;
  e->valid_until = 0;
  set_leader(e, NULL, 0);
  e->following_sent = 0;
  emit(e, DCM_ELECT_STEPPED_DOWN);
  schedule(e, e->outage ? e->backoff_ms : 0);
}

static void on_valid_timer(uv_timer_t *t) {
  dcm__elect_t *e = t->data;
  if (e->state == ST_LEADING) step_down(e, "the lease renewal was not confirmed in time");
}

static void arm_validity(dcm__elect_t *e) {
  /* lease_ms >= ttl >= 2 s unless etcd shortened the lease: then no trust */
  e->valid_until = e->lease_ms > e->margin_ms ? e->lease_sent + e->lease_ms - e->margin_ms
                                              : e->lease_sent;
  uint64_t now = uv_now(e->loop);
  uv_timer_start(&e->valid_timer, on_valid_timer,
                 e->valid_until > now ? e->valid_until - now : 0, 0);
}

/* The next renewal: ttl/4 after the last one was sent. */
static void schedule_renewal(dcm__elect_t *e) {
  uint64_t now = uv_now(e->loop), at = e->lease_sent + e->renew_ms;
  schedule(e, at > now ? at - now : 0);
}

static void lead(dcm__elect_t *e, uint64_t epoch, const char *cluster_id) {
  e->state = ST_LEADING;
  e->epoch = epoch;
  snprintf(e->cluster_id, sizeof e->cluster_id, "%s", cluster_id);
  e->stale_lease = 0;
  set_leader(e, e->self_url, strlen(e->self_url));
  arm_validity(e);
  dcm__info(e->log, NULL, "election: leading cluster %s as %s, epoch %llu (lease ttl %.1f s)",
            e->cluster, e->self_url, (unsigned long long)epoch, e->ttl);
  emit(e, DCM_ELECT_LEADING);
  schedule_renewal(e);
}

/* ---- the steps ------------------------------------------------------------- */

static void on_grant(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  e->op = NULL;
  if (r->err) {
    failed(e, r, "lease grant");
    return;
  }
  reachable(e, r);
  e->lease = r->id;
  e->lease_sent = e->op_sent;
  uint64_t granted = (uint64_t)r->ttl * 1000;
  e->lease_ms = granted < e->ttl_ms ? granted : e->ttl_ms;
  dcm__debug(e->log, NULL, "etcd: lease %llx granted by %s (ttl %lld s)",
             (unsigned long long)r->id, r->endpoint, (long long)r->ttl);
  step(e);
}

static void on_keepalive(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  e->op = NULL;
  if (r->err == DCM_ETCD_ENOLEASE) {
    reachable(e, r);
    e->lease = 0;
    if (e->state == ST_LEADING) step_down(e, "etcd says the lease has expired");
    else step(e);
    return;
  }
  if (r->err) {
    failed(e, r, "lease renewal");
    return;
  }
  reachable(e, r);
  e->lease_sent = e->op_sent;
  uint64_t granted = (uint64_t)r->ttl * 1000;
  e->lease_ms = granted < e->ttl_ms ? granted : e->ttl_ms;
  if (e->state == ST_LEADING) {
    arm_validity(e);
    schedule_renewal(e);
  } else {
    step(e);
  }
}

static void on_campaign(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  e->op = NULL;
  if (r->err == DCM_ETCD_ENOLEASE) {
    reachable(e, r);
    e->lease = 0; /* a new one, at once */
    step(e);
    return;
  }
  if (r->err) {
    failed(e, r, "campaign");
    return;
  }
  reachable(e, r);
  if (r->succeeded) {
    lead(e, (uint64_t)r->create_revision, r->cluster_id);
    return;
  }
  if (r->found && r->lease == e->lease && r->create_revision > 0) {
    /* Our own earlier txn went through though its answer was lost (a
     * timeout): the key is ours, bound to the lease we keep alive. */
    lead(e, (uint64_t)r->create_revision, r->cluster_id);
    return;
  }
  if (!r->found || (e->stale_lease && r->lease == e->stale_lease)) {
    set_leader(e, NULL, 0); /* none, or our own term that just ended */
  } else if (!usable_url(r->value, r->value_len)) {
    if (e->leader_url || !e->following_sent)
      dcm__warn(e->log, NULL, "election: the leader key holds no usable URL (%zu bytes)",
                r->value_len);
    set_leader(e, NULL, 0);
  } else {
    set_leader(e, r->value, r->value_len);
  }
  if (!e->following_sent) {
    e->following_sent = 1;
    dcm__info(e->log, NULL, "election: following in cluster %s: leader %s (epoch %lld)",
              e->cluster, e->leader_url ? e->leader_url : "unknown",
              (long long)r->create_revision);
    emit(e, DCM_ELECT_FOLLOWING);
  }
  schedule(e, e->campaign_ms);
}

static void step(dcm__elect_t *e) {
  if (e->op || e->state == ST_NEW || e->state == ST_CLOSING) return;
  uv_timer_stop(&e->step_timer);
  uint64_t now = uv_now(e->loop);
  int rc;
  const char *what;
  e->op_sent = now;
  if (e->state == ST_LEADING) {
    what = "lease renewal";
    rc = dcm__etcd_keepalive(e->etcd, e->lease, on_keepalive, e, &e->op);
  } else if (e->lease == 0) {
    what = "lease grant";
    rc = dcm__etcd_grant(e->etcd, e->lease_ttl_s, on_grant, e, &e->op);
  } else if (now - e->lease_sent >= e->renew_ms) {
    /* Renewed first, so a win leaves at least ttl/3 of trust. */
    what = "lease renewal";
    rc = dcm__etcd_keepalive(e->etcd, e->lease, on_keepalive, e, &e->op);
  } else {
    what = "campaign";
    rc = dcm__etcd_create(e->etcd, e->leader_key, e->self_url, strlen(e->self_url), e->lease,
                          on_campaign, e, &e->op);
  }
  if (rc != 0) { /* out of memory or too many requests: try again later */
    e->op = NULL;
    dcm__warn(e->log, NULL, "election: could not send the %s: %s", what,
              dcm__etcd_strerror(rc));
    schedule(e, e->state == ST_LEADING ? e->campaign_ms : e->backoff_ms);
  }
}

/* ---- records --------------------------------------------------------------- */

static void on_put_timer(uv_timer_t *t) { kick_puts(t->data); }

static void on_put(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  put_t *p = e->put_inflight;
  e->put_op = NULL;
  if (r->err == DCM_ETCD_EFENCED) {
    dcm__warn(e->log, NULL, "election: record %s fenced out: epoch %llu is no longer the "
              "current term", p->name, (unsigned long long)e->put_epoch);
    drop_puts(e, "fenced out");
    if (e->state == ST_LEADING && e->epoch == e->put_epoch)
      step_down(e, "a newer term holds the leader key");
    return;
  }
  if (r->err) {
    /* Kept in order: retried while leading, dropped otherwise. */
    dcm__debug(e->log, NULL, "etcd: %s writing record %s failed: %s", r->endpoint, p->name,
               r->detail);
    if (e->state == ST_LEADING && e->epoch == e->put_epoch)
      uv_timer_start(&e->put_timer, on_put_timer, e->campaign_ms, 0);
    else
      drop_puts(e, "no longer the leader");
    return;
  }
  dcm__debug(e->log, NULL, "etcd: record %s written (%zu bytes, epoch %llu)", p->name, p->len,
             (unsigned long long)e->put_epoch);
  free(p->value);
  free(p);
  e->put_inflight = NULL;
  kick_puts(e);
}

static void kick_puts(dcm__elect_t *e) {
  if (e->put_op || e->state != ST_LEADING) return;
  if (e->put_inflight == NULL) {
    if (e->puts == NULL) return;
    e->put_inflight = e->puts;
    e->puts = e->puts->next;
    if (e->puts == NULL) e->puts_tail = NULL;
    e->put_inflight->next = NULL;
    e->nputs--;
  }
  put_t *p = e->put_inflight;
  char key[sizeof PREFIX + 2 * DCM_ELECT_MAX_NAME + 2];
  snprintf(key, sizeof key, "%s%s", e->prefix, p->name);
  e->put_epoch = e->epoch;
  int rc = dcm__etcd_put_fenced(e->etcd, e->leader_key, (int64_t)e->epoch, key, p->value,
                                p->len, on_put, e, &e->put_op);
  if (rc != 0) {
    e->put_op = NULL;
    uv_timer_start(&e->put_timer, on_put_timer, e->campaign_ms, 0);
  }
}

int dcm__elect_put(dcm__elect_t *e, const char *name, const char *value, size_t len) {
  if (e == NULL || !name_ok(name) || strcmp(name, "leader") == 0 || (value == NULL && len) ||
      len > DCM_ETCD_MAX_VALUE)
    return DCM_EINVAL;
  if (!dcm__elect_leading(e)) {
    dcm__debug(e->log, NULL, "election: record %s not written: not the leader", name);
    return DCM_ESTATE;
  }
  char *copy = malloc(len + 1);
  if (copy == NULL) return DCM_ENOMEM;
  if (len) memcpy(copy, value, len);
  copy[len] = '\0';
  for (put_t *p = e->puts; p; p = p->next) {
    if (strcmp(p->name, name) == 0) { /* the newer record supersedes it */
      free(p->value);
      p->value = copy;
      p->len = len;
      return 0;
    }
  }
  if (e->nputs >= DCM_ELECT_MAX_PUTS) {
    free(copy);
    return DCM_ENOMEM;
  }
  put_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    free(copy);
    return DCM_ENOMEM;
  }
  snprintf(p->name, sizeof p->name, "%s", name);
  p->value = copy;
  p->len = len;
  if (e->puts_tail) e->puts_tail->next = p; else e->puts = p;
  e->puts_tail = p;
  e->nputs++;
  kick_puts(e);
  return 0;
}

static void get_unlink(get_t *g) {
  dcm__elect_t *e = g->e;
  if (g->prev) g->prev->next = g->next; else e->gets = g->next;
  if (g->next) g->next->prev = g->prev;
  e->ngets--;
}

static void on_get(void *arg, const dcm__etcd_result_t *r) {
  get_t *g = arg;
  dcm__elect_t *e = g->e;
  get_unlink(g);
  if (r->err)
    dcm__warn(e->log, NULL, "etcd: %s reading record %s failed: %s: %s", r->endpoint, g->name,
              dcm__etcd_strerror(r->err), r->detail);
  if (r->err == 0 && r->found) g->cb(g->arg, r->value, r->value_len);
  else g->cb(g->arg, NULL, 0);
  free(g);
}

int dcm__elect_get(dcm__elect_t *e, const char *name,
                   void (*cb)(void *arg, const char *value, size_t len), void *arg) {
  if (e == NULL || cb == NULL || !name_ok(name)) return DCM_EINVAL;
  if (e->state == ST_CLOSING || e->ngets >= DCM_ELECT_MAX_GETS) return DCM_ESTATE;
  get_t *g = calloc(1, sizeof(*g));
  if (g == NULL) return DCM_ENOMEM;
  char key[sizeof PREFIX + 2 * DCM_ELECT_MAX_NAME + 2];
  snprintf(key, sizeof key, "%s%s", e->prefix, name);
  snprintf(g->name, sizeof g->name, "%s", name);
  g->e = e;
  g->cb = cb;
  g->arg = arg;
  int rc = dcm__etcd_get(e->etcd, key, on_get, g, &g->op);
  if (rc != 0) {
    free(g);
    return rc;
  }
  g->next = e->gets;
  if (e->gets) e->gets->prev = g;
  e->gets = g;
  e->ngets++;
  return 0;
}

/* ---- lifecycle ------------------------------------------------------------- */

static void elect_free(dcm__elect_t *e) {
  free(e->cluster);
  free(e->prefix);
  free(e->leader_key);
  free(e->self_url);
  free(e->leader_url);
  free(e);
}

int dcm__elect_new(uv_loop_t *loop, dcm__log_t *log, const dcm__elect_opts_t *o,
                   dcm__elect_cb cb, void *arg, dcm__elect_t **out) {
  if (loop == NULL || o == NULL || cb == NULL || out == NULL) return DCM_EINVAL;
  if (!name_ok(o->cluster) || o->self_url == NULL || !isfinite(o->ttl) || o->ttl < 2 ||
      o->ttl > 60)
    return DCM_EINVAL;
  size_t ulen = strlen(o->self_url);
  if (ulen == 0 || ulen > DCM_ELECT_MAX_URL || !dcm__json_plain_text(o->self_url, ulen))
    return DCM_EINVAL;
  dcm__elect_t *e = calloc(1, sizeof(*e));
  if (e == NULL) return DCM_ENOMEM;
  e->loop = loop;
  e->log = log;
  e->cb = cb;
  e->cb_arg = arg;
  e->ttl = o->ttl;
  e->ttl_ms = dcm__ms(o->ttl);
  e->margin_ms = e->ttl_ms / 3; /* valid_until: renewal sent + 2 ttl/3 */
  e->renew_ms = e->ttl_ms / 4;
  e->campaign_ms = e->ttl_ms / 8 < MAX_CAMPAIGN_MS ? e->ttl_ms / 8 : MAX_CAMPAIGN_MS;
  e->lease_ttl_s = (int64_t)ceil(o->ttl);
  e->backoff_ms = FIRST_BACKOFF_MS;
  size_t clen = strlen(o->cluster);
  e->cluster = strdup(o->cluster);
  e->self_url = strdup(o->self_url);
  e->prefix = malloc(sizeof PREFIX + clen + 1);
  e->leader_key = malloc(sizeof PREFIX + clen + sizeof "/leader");
  if (!e->cluster || !e->self_url || !e->prefix || !e->leader_key) {
    elect_free(e);
    return DCM_ENOMEM;
  }
  snprintf(e->prefix, sizeof PREFIX + clen + 1, PREFIX "%s/", o->cluster);
  snprintf(e->leader_key, sizeof PREFIX + clen + sizeof "/leader", PREFIX "%s/leader",
           o->cluster);
  dcm__etcd_opts_t eo;
  memset(&eo, 0, sizeof eo);
  eo.endpoints = o->endpoints;
  eo.cacert = o->cacert;
  eo.cert = o->cert;
  eo.key = o->key;
  /* One attempt may take ttl/6: a renewal sent at ttl/4 that hangs on one
   * endpoint times out at 5 ttl/12 and the next endpoint's answer is due by
   * 7 ttl/12, still before valid_until (8 ttl/12). */
  uint64_t attempt = e->ttl_ms / 6 < MAX_ATTEMPT_MS ? e->ttl_ms / 6 : MAX_ATTEMPT_MS;
  eo.timeout = (double)attempt / 1000.0;
  int rc = dcm__etcd_new(loop, log, &eo, &e->etcd);
  if (rc != 0) {
    elect_free(e);
    return rc;
  }
  uv_timer_init(loop, &e->step_timer);
  uv_timer_init(loop, &e->valid_timer);
  uv_timer_init(loop, &e->event_timer);
  uv_timer_init(loop, &e->put_timer);
  e->step_timer.data = e->valid_timer.data = e->event_timer.data = e->put_timer.data = e;
  e->open_handles = 5;
  *out = e;
  return 0;
}

int dcm__elect_start(dcm__elect_t *e) {
  if (e == NULL) return DCM_EINVAL;
  if (e->state != ST_NEW) return DCM_ESTATE;
  e->state = ST_CAMPAIGN;
  dcm__info(e->log, NULL, "election: campaigning for cluster %s as %s (lease ttl %.1f s)",
            e->cluster, e->self_url, e->ttl);
  schedule(e, 0); /* from the loop: nothing happens inside this call */
  return 0;
}

int dcm__elect_leading(dcm__elect_t *e) {
  return e && e->state == ST_LEADING && uv_now(e->loop) < e->valid_until;
}

const char *dcm__elect_cluster_id(const dcm__elect_t *e) { return e->cluster_id; }

uint64_t dcm__elect_epoch(const dcm__elect_t *e) {
  return e && e->state == ST_LEADING && uv_now(e->loop) < e->valid_until ? e->epoch : 0;
}

const char *dcm__elect_leader(const dcm__elect_t *e) {
  if (e == NULL || e->state == ST_CLOSING) return NULL;
  if (e->state == ST_LEADING) return dcm__elect_epoch(e) ? e->self_url : NULL;
  return e->leader_url;
}

double dcm__elect_ttl(const dcm__elect_t *e) { return e ? e->ttl : 0; }

static void handle_closed(dcm__elect_t *e) {
  if (--e->open_handles > 0) return;
  void (*done)(void *) = e->done;
  void *arg = e->done_arg;
  elect_free(e);
  if (done) done(arg);
}

static void timer_closed(uv_handle_t *h) { handle_closed(h->data); }
static void etcd_closed(void *arg) { handle_closed(arg); }

static void finish_close(dcm__elect_t *e) {
  dcm__etcd_close(e->etcd, etcd_closed, e);
  uv_close((uv_handle_t *)&e->step_timer, timer_closed);
  uv_close((uv_handle_t *)&e->valid_timer, timer_closed);
  uv_close((uv_handle_t *)&e->event_timer, timer_closed);
  uv_close((uv_handle_t *)&e->put_timer, timer_closed);
}

static void on_close_revoked(void *arg, const dcm__etcd_result_t *r) {
  dcm__elect_t *e = arg;
  if (r->err == 0 || r->err == DCM_ETCD_ENOLEASE)
    dcm__info(e->log, NULL, "election: lease released at %s%s", r->endpoint,
              e->epoch ? " (leadership handed over)" : "");
  else
    dcm__warn(e->log, NULL, "etcd: %s revoking the lease at close failed: %s; it expires "
              "within %.1f s", r->endpoint, r->detail, e->ttl);
  finish_close(e);
}

void dcm__elect_close(dcm__elect_t *e, void (*done)(void *arg), void *arg) {
  if (e == NULL || e->state == ST_CLOSING) return;
  int was_leading = e->state == ST_LEADING;
  e->state = ST_CLOSING;
  e->done = done;
  e->done_arg = arg;
  e->nev = 0;
  uv_timer_stop(&e->step_timer);
  uv_timer_stop(&e->valid_timer);
  uv_timer_stop(&e->event_timer);
  if (e->op) dcm__etcd_cancel(e->op);
  e->op = NULL;
  /* A step down's revoke still on its way is sent again below rather than
     dropped: the next leader then takes over at once, not at the expiry. */
  int64_t lease = e->lease ? e->lease : e->revoke_op ? e->stale_lease : 0;
  if (e->revoke_op) dcm__etcd_cancel(e->revoke_op);
  e->revoke_op = NULL;
  drop_puts(e, was_leading ? "closing" : NULL);
  while (e->gets) {
    get_t *g = e->gets;
    dcm__etcd_cancel(g->op);
    get_unlink(g);
    free(g);
  }
  if (!was_leading) e->epoch = 0;
  if (lease) {
    dcm__etcd_set_timeout(e->etcd, CLOSE_REVOKE_MS);
    if (dcm__etcd_revoke(e->etcd, lease, on_close_revoked, e, NULL) == 0) return;
  }
  finish_close(e);
}
