/*
 * test_election.c: election.c (and under it etcd.c and http.c) against a
 * real etcd started here: a temporary data dir, free loopback ports, killed
 * at the end. Two electors on one etcd, hand-over on close, epochs across
 * terms, records (fenced put, get, round trips), a stale epoch fenced out,
 * the lease revoked behind the leader's back, etcd stopped while leading,
 * etcd down at start, endpoint failover, bad options, close bounds.
 * etcd is /usr/bin/etcd (Debian's etcd-server) or $DCM_ETCD_BIN.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "election.h"
#include "etcd.h"
#include "http.h"

#define WATCHDOG_MS 40000

static const char *g_case = "";

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "FAIL %s: %s:%d: %s\n", g_case, __FILE__, __LINE__, #c); \
      dump_logs();                                                             \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

static void dump_logs(void);

/* ---- etcd ---------------------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port, peer;
  int tls; /* https with client certificates, from make_certs() in dir */
  char dir[64];
  char url[64];
} etcd_t;

#define MAX_ETCD 4
static etcd_t *g_etcd[MAX_ETCD];

static const char *etcd_bin(void) {
  const char *b = getenv("DCM_ETCD_BIN");
  return b && *b ? b : "/usr/bin/etcd";
}

/* A loopback port nothing listens on (bound, then released). */
static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(getsockname(s, (struct sockaddr *)&a, &len) == 0);
  close(s);
  return ntohs(a.sin_port);
}

/* Starts etcd without waiting for it (the electors retry until it
 * answers). port 0: a free one. */
static void etcd_spawn(etcd_t *x, int port) {
  if (x->dir[0] == '\0') {
    snprintf(x->dir, sizeof x->dir, "/tmp/dcm-etcd-XXXXXX");
    CHECK(mkdtemp(x->dir) != NULL);
    x->port = port ? port : free_port();
    x->peer = free_port();
    snprintf(x->url, sizeof x->url, "%s://127.0.0.1:%d", x->tls ? "https" : "http", x->port);
    for (int i = 0; i < MAX_ETCD; i++)
      if (g_etcd[i] == NULL) {
        g_etcd[i] = x;
        break;
      }
  }
  char data[128], logf[128], peer[64], cluster[96], cert[128], key[128], ca[128];
  snprintf(data, sizeof data, "%s/data", x->dir);
  snprintf(cert, sizeof cert, "%s/server.pem", x->dir);
  snprintf(key, sizeof key, "%s/server.key", x->dir);
  snprintf(ca, sizeof ca, "%s/ca.pem", x->dir);
  snprintf(logf, sizeof logf, "%s/etcd.log", x->dir);
  snprintf(peer, sizeof peer, "http://127.0.0.1:%d", x->peer);
  snprintf(cluster, sizeof cluster, "t=%s", peer);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    char *argv[] = {"etcd", "--name", "t", "--data-dir", data, "--listen-client-urls",
                    x->url, "--advertise-client-urls", x->url, "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
                    "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                    "--client-cert-auth", NULL};
    if (!x->tls) argv[15] = NULL; /* no --cert-file and after */
    execv(etcd_bin(), argv);
    _exit(127);
  }
  x->pid = pid;
}

static void etcd_kill(etcd_t *x) {
  if (x->pid > 0) {
    kill(x->pid, SIGCONT);
    kill(x->pid, SIGKILL);
    waitpid(x->pid, NULL, 0);
  }
  x->pid = -1;
}

static void etcd_remove(etcd_t *x) {
  etcd_kill(x);
  if (x->dir[0]) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", x->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", x->dir);
    x->dir[0] = '\0';
  }
  for (int i = 0; i < MAX_ETCD; i++)
    if (g_etcd[i] == x) g_etcd[i] = NULL;
}

static void kill_all(void) {
  for (int i = 0; i < MAX_ETCD; i++)
    if (g_etcd[i]) etcd_remove(g_etcd[i]);
}

/* ---- one test case's world --------------------------------------------- */

#define MAX_EV 64

typedef struct T T;

typedef struct {
  T *t;
  const char *name, *cluster;
  char url[64];
  dcm__elect_t *e;
  dcm__log_t log;
  char logs[1 << 16];
  size_t loglen;
  dcm__elect_event ev[MAX_EV];
  uint64_t at[MAX_EV], epoch[MAX_EV];
  size_t nev;
  int closed;
} E;

struct T {
  uv_loop_t loop;
  uv_timer_t watchdog, tick;
  E *electors[4];
  size_t nelectors;
  uint64_t t0;
  void (*on_tick)(T *t);
  uint64_t stop_at; /* etcd SIGSTOPped at (0: not) */
  uint64_t ttl_ms;
};

static T *g_t;

static void dump_logs(void) {
  if (g_t == NULL) return;
  for (size_t i = 0; i < g_t->nelectors; i++)
    if (g_t->electors[i])
      fprintf(stderr, "---- %s logs:\n%s", g_t->electors[i]->name, g_t->electors[i]->logs);
}

static void log_cb(dcm_log_level level, const char *line, size_t len, void *arg) {
  E *x = arg;
  (void)level;
  if (getenv("DCM_TEST_VERBOSE")) fprintf(stderr, "[%s] %.*s\n", x->name, (int)len, line);
  if (x->loglen + len + 2 < sizeof x->logs) {
    memcpy(x->logs + x->loglen, line, len);
    x->loglen += len;
    x->logs[x->loglen++] = '\n';
    x->logs[x->loglen] = '\0';
  }
}

/* Lines with s logged since byte offset from. */
static size_t count_log_from(E *x, size_t from, const char *s) {
  size_t n = 0;
  for (const char *p = x->logs + from; (p = strstr(p, s)) != NULL; p += strlen(s)) n++;
  return n;
}

static size_t count_log(E *x, const char *s) { return count_log_from(x, 0, s); }

static void on_watchdog(uv_timer_t *w) {
  (void)w;
  fprintf(stderr, "FAIL %s: watchdog after %d ms\n", g_case, WATCHDOG_MS);
  dump_logs();
  exit(1);
}

/* Safety every 10 ms: never two leaders of a cluster at once; a stopped
 * etcd's leader stops trusting its lease before the lease could expire. */
static void on_tick(uv_timer_t *h) {
  T *t = h->data;
  for (size_t i = 0; i < t->nelectors; i++) {
    E *x = t->electors[i];
    if (x->closed || !dcm__elect_leading(x->e)) continue;
    if (t->stop_at) CHECK(uv_now(&t->loop) < t->stop_at + t->ttl_ms);
    for (size_t j = i + 1; j < t->nelectors; j++) {
      E *y = t->electors[j];
      if (!y->closed && strcmp(x->cluster, y->cluster) == 0) CHECK(!dcm__elect_leading(y->e));
    }
  }
  if (t->on_tick) t->on_tick(t);
}

static void setup(T *t, const char *name, double ttl) {
  memset(t, 0, sizeof *t);
  g_case = name;
  g_t = t;
  fprintf(stderr, "-- %s\n", name);
  CHECK(uv_loop_init(&t->loop) == 0);
  CHECK(uv_timer_init(&t->loop, &t->watchdog) == 0);
  CHECK(uv_timer_init(&t->loop, &t->tick) == 0);
  t->watchdog.data = t->tick.data = t;
  uv_timer_start(&t->watchdog, on_watchdog, WATCHDOG_MS, 0);
  uv_timer_start(&t->tick, on_tick, 10, 10);
  uv_unref((uv_handle_t *)&t->watchdog);
  uv_unref((uv_handle_t *)&t->tick);
  t->ttl_ms = (uint64_t)(ttl * 1000);
  t->t0 = uv_now(&t->loop);
}

static void on_event(void *arg, dcm__elect_event ev) {
  E *x = arg;
  CHECK(!x->closed);
  CHECK(x->nev < MAX_EV);
  x->ev[x->nev] = ev;
  x->at[x->nev] = uv_now(&x->t->loop);
  x->epoch[x->nev] = dcm__elect_epoch(x->e);
  x->nev++;
  if (getenv("DCM_TEST_VERBOSE"))
    fprintf(stderr, "[%s] event %s epoch %llu at %llu\n", x->name, dcm__elect_event_name(ev),
            (unsigned long long)dcm__elect_epoch(x->e),
            (unsigned long long)(uv_now(&x->t->loop) - x->t->t0));
  /* What the event says holds when it arrives. */
  if (ev == DCM_ELECT_LEADING) {
    CHECK(dcm__elect_leading(x->e) && dcm__elect_epoch(x->e) > 0);
    CHECK(strcmp(dcm__elect_leader(x->e), x->url) == 0);
  }
  if (ev == DCM_ELECT_STEPPED_DOWN || ev == DCM_ELECT_UNAVAILABLE)
    CHECK(!dcm__elect_leading(x->e) && dcm__elect_epoch(x->e) == 0);
  if (ev == DCM_ELECT_FOLLOWING) CHECK(!dcm__elect_leading(x->e));
}

static E *elector_tls(T *t, const char *name, const char *endpoints, const char *cluster,
                      double ttl, const char *cacert, const char *cert, const char *key) {
  E *x = calloc(1, sizeof *x);
  CHECK(x != NULL);
  x->t = t;
  x->name = name;
  x->cluster = cluster;
  snprintf(x->url, sizeof x->url, "ws://%s.example:7000", name);
  CHECK(dcm__log_init(&x->log, DCM_LOG_DEBUG, DCM_LOG_TEXT, log_cb, x) == 0);
  dcm__elect_opts_t o = {endpoints, cluster, x->url, ttl, cacert, cert, key};
  CHECK(dcm__elect_new(&t->loop, &x->log, &o, on_event, x, &x->e) == 0);
  CHECK(dcm__elect_start(x->e) == 0);
  CHECK(dcm__elect_start(x->e) == DCM_ESTATE);
  CHECK(x->nev == 0 && !dcm__elect_leading(x->e)); /* nothing inside the call */
  CHECK(t->nelectors < sizeof t->electors / sizeof t->electors[0]);
  t->electors[t->nelectors++] = x;
  return x;
}

static E *elector(T *t, const char *name, const char *endpoints, const char *cluster,
                  double ttl) {
  return elector_tls(t, name, endpoints, cluster, ttl, NULL, NULL, NULL);
}

static int g_done;
static void on_closed(void *arg) {
  E *x = arg;
  x->closed = 2;
  g_done++;
}

static void close_elector(E *x) {
  x->closed = 1;
  dcm__elect_close(x->e, on_closed, x);
  dcm__elect_close(x->e, on_closed, x); /* twice: a no-op */
}

static int last_ev(E *x, dcm__elect_event ev) { return x->nev > 0 && x->ev[x->nev - 1] == ev; }

static size_t count_ev(E *x, dcm__elect_event ev) {
  size_t n = 0;
  for (size_t i = 0; i < x->nev; i++) n += x->ev[i] == ev;
  return n;
}

/* Runs the loop until cond() holds; fails after limit_ms. */
#define RUN_UNTIL(t, cond, limit_ms)                                        \
  do {                                                                      \
    uint64_t start_ = uv_now(&(t)->loop);                                   \
    uv_ref((uv_handle_t *)&(t)->tick);                                      \
    while (!(cond)) {                                                       \
      if (uv_now(&(t)->loop) - start_ > (limit_ms)) {                       \
        fprintf(stderr, "FAIL %s: %s:%d: not within %d ms: %s\n", g_case,   \
                __FILE__, __LINE__, (int)(limit_ms), #cond);                \
        dump_logs();                                                        \
        exit(1);                                                            \
      }                                                                     \
      uv_run(&(t)->loop, UV_RUN_ONCE);                                      \
    }                                                                       \
    uv_unref((uv_handle_t *)&(t)->tick);                                    \
  } while (0)

static void run_for(T *t, uint64_t ms) {
  uint64_t end = uv_now(&t->loop) + ms;
  RUN_UNTIL(t, uv_now(&t->loop) >= end, ms + 1000);
}

static void teardown(T *t) {
  for (size_t i = 0; i < t->nelectors; i++)
    if (t->electors[i] && !t->electors[i]->closed) close_elector(t->electors[i]);
  uv_close((uv_handle_t *)&t->watchdog, NULL);
  uv_close((uv_handle_t *)&t->tick, NULL);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  for (size_t i = 0; i < t->nelectors; i++) {
    E *x = t->electors[i];
    CHECK(x->closed == 2);
    dcm__log_close(&x->log);
  }
  CHECK(uv_loop_close(&t->loop) == 0); /* every handle closed */
  for (size_t i = 0; i < t->nelectors; i++) free(t->electors[i]);
  g_t = NULL;
}

/* The elector of xs that leads, NULL if none. */
static E *leader_of(E **xs, size_t n) {
  E *l = NULL;
  for (size_t i = 0; i < n; i++)
    if (!xs[i]->closed && dcm__elect_leading(xs[i]->e)) l = xs[i];
  return l;
}

/* ---- a raw etcd client, for what the tests do behind the electors' backs - */

typedef struct {
  int done;
  dcm__etcd_result_t r;
  char value[1024];
} sync_t;

static void on_sync(void *arg, const dcm__etcd_result_t *r) {
  sync_t *s = arg;
  s->done = 1;
  s->r = *r;
  snprintf(s->value, sizeof s->value, "%.*s", (int)(r->value_len < 1000 ? r->value_len : 1000),
           r->value ? r->value : "");
  s->r.value = s->value;
  s->r.detail = NULL;
  s->r.endpoint = NULL;
}

#define SYNC(t, s, call)             \
  do {                               \
    memset(&(s), 0, sizeof(s));      \
    CHECK((call) == 0);              \
    RUN_UNTIL(t, (s).done, 10000);   \
  } while (0)

static int g_raw_closed;
static void on_raw_closed(void *arg) { g_raw_closed = *(int *)arg; }

static const char *g_cacert, *g_cert, *g_key; /* TLS of raw clients */

static dcm__etcd_t *raw_client(T *t, const char *endpoints, dcm__log_t *log) {
  dcm__etcd_t *c;
  dcm__etcd_opts_t o = {endpoints, g_cacert, g_cert, g_key, 2};
  CHECK(dcm__etcd_new(&t->loop, log, &o, &c) == 0);
  return c;
}

static void raw_close(T *t, dcm__etcd_t *c) {
  static int one = 1;
  g_raw_closed = 0;
  dcm__etcd_close(c, on_raw_closed, &one);
  RUN_UNTIL(t, g_raw_closed, 5000);
}

/* ---- cases ---------------------------------------------------------------- */

static etcd_t g_main; /* shared by the cases that do not stop it */

static void test_two_electors(void) {
  T t;
  setup(&t, "two electors: one leads, hand-over on close, epochs grow", 6);
  E *a = elector(&t, "a", g_main.url, "two", 6);
  E *b = elector(&t, "b", g_main.url, "two", 6);
  E *xs[2] = {a, b};
  RUN_UNTIL(&t, leader_of(xs, 2) && (last_ev(a, DCM_ELECT_FOLLOWING) ||
                                     last_ev(b, DCM_ELECT_FOLLOWING)), 15000);
  E *l = leader_of(xs, 2), *f = l == a ? b : a;
  uint64_t e1 = dcm__elect_epoch(l->e);
  CHECK(e1 > 0 && dcm__elect_epoch(f->e) == 0);
  CHECK(count_ev(l, DCM_ELECT_LEADING) == 1 && count_ev(f, DCM_ELECT_LEADING) == 0);
  CHECK(strcmp(dcm__elect_leader(f->e), l->url) == 0);
  CHECK(strcmp(dcm__elect_leader(l->e), l->url) == 0);
  CHECK(dcm__elect_ttl(l->e) == 6);
  /* Past a renewal (every 2 s): still the one leader, nothing new. */
  size_t nl = l->nev, nf = f->nev;
  run_for(&t, 2600);
  CHECK(dcm__elect_leading(l->e) && dcm__elect_epoch(l->e) == e1);
  CHECK(l->nev == nl && f->nev == nf);
  CHECK(count_log(l, "unreachable") == 0 && count_log(f, "unreachable") == 0);

  /* The leader closes: its lease is revoked, the follower takes over well
   * before the 6 s lease could have expired. */
  uint64_t closed_at = uv_now(&t.loop);
  close_elector(l);
  RUN_UNTIL(&t, last_ev(f, DCM_ELECT_LEADING), 10000);
  CHECK(f->at[f->nev - 1] - closed_at < 3000);
  uint64_t e2 = dcm__elect_epoch(f->e);
  CHECK(e2 > e1);
  CHECK(strstr(l->logs, "lease released") != NULL);

  /* A newcomer follows the new leader; then takes over with a third term. */
  E *c = elector(&t, "c", g_main.url, "two", 6);
  RUN_UNTIL(&t, last_ev(c, DCM_ELECT_FOLLOWING), 5000);
  CHECK(strcmp(dcm__elect_leader(c->e), f->url) == 0);
  CHECK(dcm__elect_epoch(c->e) == 0);
  close_elector(f);
  RUN_UNTIL(&t, last_ev(c, DCM_ELECT_LEADING), 10000);
  CHECK(dcm__elect_epoch(c->e) > e2);
  teardown(&t);
}

/* Other clusters on the same etcd do not interfere. */
static void test_clusters_apart(void) {
  T t;
  setup(&t, "clusters are apart", 2);
  E *a = elector(&t, "a", g_main.url, "alpha", 2);
  E *b = elector(&t, "b", g_main.url, "beta", 2);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING) && last_ev(b, DCM_ELECT_LEADING), 10000);
  teardown(&t);
}

typedef struct {
  int calls, found;
  char value[1 << 19];
  size_t len;
} got_t;

static void on_got(void *arg, const char *value, size_t len) {
  got_t *g = arg;
  g->calls++;
  g->found = value != NULL;
  g->len = len;
  if (value) {
    CHECK(len < sizeof g->value && value[len] == '\0');
    memcpy(g->value, value, len);
  }
}

static got_t g_got;

static void get_now(T *t, E *x, const char *name) {
  memset(&g_got, 0, sizeof g_got);
  CHECK(dcm__elect_get(x->e, name, on_got, &g_got) == 0);
  CHECK(g_got.calls == 0); /* never inside the call */
  RUN_UNTIL(t, g_got.calls == 1, 10000);
}

/* Gets name until it reads value (the writes are fire and forget). */
static void wait_value(T *t, E *x, const char *name, const char *value, size_t len) {
  for (int i = 0; i < 200; i++) {
    get_now(t, x, name);
    if (g_got.found && g_got.len == len && memcmp(g_got.value, value, len) == 0) return;
    run_for(t, 20);
  }
  CHECK(!"the record never read back");
}

static void test_records(void) {
  T t;
  setup(&t, "records: fenced put, get, round trips", 2);
  E *a = elector(&t, "a", g_main.url, "rec", 2);
  E *b = elector(&t, "b", g_main.url, "rec", 2);
  E *xs[2] = {a, b};
  RUN_UNTIL(&t, leader_of(xs, 2) && (last_ev(a, DCM_ELECT_FOLLOWING) ||
                                     last_ev(b, DCM_ELECT_FOLLOWING)), 10000);
  E *l = leader_of(xs, 2), *f = l == a ? b : a;

  get_now(&t, f, "identify");
  CHECK(!g_got.found);
  const char *ident = "{\"epoch\":1,\"interval_ms\":5000,\"buckets\":{\"0\":17},\"x\":\"a\\\"b\"}";
  CHECK(dcm__elect_put(l->e, "identify", "old", 3) == 0);
  CHECK(dcm__elect_put(l->e, "identify", ident, strlen(ident)) == 0);
  static const char bin[] = {'a', 0, '\n', '"', (char)0xff, (char)0x80, '\\', 'z'};
  CHECK(dcm__elect_put(l->e, "fleet", bin, sizeof bin) == 0);
  CHECK(dcm__elect_put(l->e, "empty", "", 0) == 0);
  wait_value(&t, f, "identify", ident, strlen(ident)); /* a follower reads them */
  wait_value(&t, l, "fleet", bin, sizeof bin);
  wait_value(&t, f, "empty", "", 0);

  /* A large record (the bound is 512 KiB) round-trips; past it: refused. */
  size_t big = 400 * 1024;
  char *v = malloc(DCM_ETCD_MAX_VALUE + 1);
  CHECK(v != NULL);
  for (size_t i = 0; i < DCM_ETCD_MAX_VALUE + 1; i++) v[i] = (char)('a' + i % 26);
  CHECK(dcm__elect_put(l->e, "big", v, big) == 0);
  wait_value(&t, f, "big", v, big);
  CHECK(dcm__elect_put(l->e, "big", v, DCM_ETCD_MAX_VALUE + 1) == DCM_EINVAL);
  free(v);

  /* Bad names; a follower cannot write. */
  const char *bad[] = {"", "a/b", "../leader", "sp ace", "x\n",
                       "0123456789012345678901234567890123456789012345678901234567890123456789"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK(dcm__elect_put(l->e, bad[i], "x", 1) == DCM_EINVAL);
    CHECK(dcm__elect_get(l->e, bad[i], on_got, &g_got) == DCM_EINVAL);
  }
  CHECK(dcm__elect_put(l->e, NULL, "x", 1) == DCM_EINVAL);
  CHECK(dcm__elect_put(f->e, "identify", "x", 1) == DCM_ESTATE);
  /* At most DCM_ELECT_MAX_PUTS distinct names wait. */
  int refused = 0;
  for (int i = 0; i < DCM_ELECT_MAX_PUTS + 4; i++) {
    char name[16];
    snprintf(name, sizeof name, "n%d", i);
    int rc = dcm__elect_put(l->e, name, "v", 1);
    CHECK(rc == 0 || rc == DCM_ENOMEM);
    refused += rc == DCM_ENOMEM;
  }
  CHECK(refused >= 3);
  wait_value(&t, f, "n0", "v", 1);
  /* The leader key is the election's own: no record may overwrite it. */
  CHECK(dcm__elect_put(l->e, "leader", "x", 1) == DCM_EINVAL);
  get_now(&t, f, "leader");
  CHECK(g_got.found && strcmp(g_got.value, l->url) == 0);
  teardown(&t);
}

static void test_fenced(void) {
  T t;
  setup(&t, "a stale epoch is fenced out", 2);
  dcm__log_t rawlog;
  CHECK(dcm__log_init(&rawlog, DCM_LOG_WARN, DCM_LOG_TEXT, NULL, NULL) == 0);
  E *a = elector(&t, "a", g_main.url, "fence", 2);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING), 10000);
  uint64_t e1 = dcm__elect_epoch(a->e);
  CHECK(dcm__elect_put(a->e, "identify", "one", 3) == 0);
  wait_value(&t, a, "identify", "one", 3);
  close_elector(a);
  E *b = elector(&t, "b", g_main.url, "fence", 2);
  RUN_UNTIL(&t, last_ev(b, DCM_ELECT_LEADING), 10000);
  uint64_t e2 = dcm__elect_epoch(b->e);
  CHECK(e2 > e1);

  dcm__etcd_t *c = raw_client(&t, g_main.url, &rawlog);
  sync_t s;
  SYNC(&t, s, dcm__etcd_put_fenced(c, "/discluster/fence/leader", (int64_t)e1,
                                   "/discluster/fence/identify", "stale", 5, on_sync, &s,
                                   NULL));
  CHECK(s.r.err == DCM_ETCD_EFENCED);
  SYNC(&t, s, dcm__etcd_get(c, "/discluster/fence/identify", on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.found && strcmp(s.value, "one") == 0);
  SYNC(&t, s, dcm__etcd_put_fenced(c, "/discluster/fence/leader", (int64_t)e2,
                                   "/discluster/fence/identify", "two", 3, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.succeeded);
  /* The leader's own writes go through. */
  CHECK(dcm__elect_put(b->e, "identify", "three", 5) == 0);
  wait_value(&t, b, "identify", "three", 5);

  /* Its lease revoked behind its back: the leader steps down at its next
   * renewal (ttl/3) and campaigns again, winning a new term. */
  SYNC(&t, s, dcm__etcd_get(c, "/discluster/fence/leader", on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.found && strcmp(s.value, b->url) == 0);
  CHECK((uint64_t)s.r.create_revision == e2 && s.r.lease != 0);
  int64_t lease = s.r.lease;
  SYNC(&t, s, dcm__etcd_revoke(c, lease, on_sync, &s, NULL));
  CHECK(s.r.err == 0);
  SYNC(&t, s, dcm__etcd_keepalive(c, lease, on_sync, &s, NULL));
  CHECK(s.r.err == DCM_ETCD_ENOLEASE);
  RUN_UNTIL(&t, last_ev(b, DCM_ELECT_LEADING) && count_ev(b, DCM_ELECT_STEPPED_DOWN) == 1,
            10000);
  CHECK(dcm__elect_epoch(b->e) > e2);
  /* A write from the old term, now fenced out. */
  SYNC(&t, s, dcm__etcd_put_fenced(c, "/discluster/fence/leader", (int64_t)e2,
                                   "/discluster/fence/identify", "late", 4, on_sync, &s, NULL));
  CHECK(s.r.err == DCM_ETCD_EFENCED);
  raw_close(&t, c);
  teardown(&t);
  dcm__log_close(&rawlog);
}

/* The raw client: its results and errors. */
static void test_etcd_client(void) {
  T t;
  setup(&t, "etcd client", 2);
  dcm__log_t rawlog;
  CHECK(dcm__log_init(&rawlog, DCM_LOG_WARN, DCM_LOG_TEXT, NULL, NULL) == 0);
  dcm__etcd_t *c = raw_client(&t, g_main.url, &rawlog);
  sync_t s;
  SYNC(&t, s, dcm__etcd_grant(c, 5, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.id != 0 && s.r.ttl == 5);
  int64_t lease = s.r.id;
  SYNC(&t, s, dcm__etcd_create(c, "/t/k", "v1", 2, lease, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.succeeded && s.r.create_revision > 0);
  int64_t rev = s.r.create_revision;
  SYNC(&t, s, dcm__etcd_create(c, "/t/k", "v2", 2, lease, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && !s.r.succeeded && s.r.found && strcmp(s.value, "v1") == 0);
  CHECK(s.r.create_revision == rev && s.r.lease == lease);
  SYNC(&t, s, dcm__etcd_put(c, "/t/p", "x", 1, 0, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.revision > rev);
  SYNC(&t, s, dcm__etcd_get(c, "/t/p", on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.found && strcmp(s.value, "x") == 0 && s.r.lease == 0);
  SYNC(&t, s, dcm__etcd_get(c, "/t/none", on_sync, &s, NULL));
  CHECK(s.r.err == 0 && !s.r.found);
  SYNC(&t, s, dcm__etcd_keepalive(c, lease, on_sync, &s, NULL));
  CHECK(s.r.err == 0 && s.r.ttl == 5);
  SYNC(&t, s, dcm__etcd_revoke(c, lease, on_sync, &s, NULL));
  CHECK(s.r.err == 0);
  SYNC(&t, s, dcm__etcd_get(c, "/t/k", on_sync, &s, NULL));
  CHECK(s.r.err == 0 && !s.r.found); /* went with the lease */
  SYNC(&t, s, dcm__etcd_revoke(c, lease, on_sync, &s, NULL));
  CHECK(s.r.err == DCM_ETCD_ENOLEASE);
  SYNC(&t, s, dcm__etcd_create(c, "/t/k", "v", 1, lease, on_sync, &s, NULL));
  CHECK(s.r.err == DCM_ETCD_ENOLEASE);
  SYNC(&t, s, dcm__etcd_put(c, "/t/q", "v", 1, 12345, on_sync, &s, NULL));
  CHECK(s.r.err == DCM_ETCD_ENOLEASE);
  /* Bad arguments: refused at the call. */
  CHECK(dcm__etcd_grant(c, 0, on_sync, &s, NULL) == DCM_EINVAL);
  CHECK(dcm__etcd_keepalive(c, 0, on_sync, &s, NULL) == DCM_EINVAL);
  CHECK(dcm__etcd_get(c, "", on_sync, &s, NULL) == DCM_EINVAL);
  CHECK(dcm__etcd_put(c, "/k", NULL, 3, 0, on_sync, &s, NULL) == DCM_EINVAL);
  CHECK(dcm__etcd_put_fenced(c, "/f", 0, "/k", "v", 1, on_sync, &s, NULL) == DCM_EINVAL);
  /* A canceled operation never calls back. */
  dcm__etcd_op_t *op;
  memset(&s, 0, sizeof s);
  CHECK(dcm__etcd_get(c, "/t/p", on_sync, &s, &op) == 0);
  dcm__etcd_cancel(op);
  run_for(&t, 200);
  CHECK(!s.done);
  /* At most DCM_ETCD_MAX_OPS in flight; close drops them without a call. */
  int n = 0, rc;
  while ((rc = dcm__etcd_get(c, "/t/p", on_sync, &s, NULL)) == 0) n++;
  CHECK(rc == DCM_ESTATE && n == DCM_ETCD_MAX_OPS);
  raw_close(&t, c);
  CHECK(!s.done);
  /* Bad endpoint lists. */
  const char *bad[] = {"", "127.0.0.1:2379", "ftp://x", "http://", "http://u:p@x:1",
                       "http://x:1/path", "http://x:1?q", "http://a:1,,http://b:1",
                       "http://a b:1", "http://1,http://2,http://3,http://4,http://5,"
                       "http://6,http://7,http://8,http://9"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    dcm__etcd_opts_t o = {bad[i], NULL, NULL, NULL, 0};
    CHECK(dcm__etcd_new(&t.loop, &rawlog, &o, &c) == DCM_EINVAL);
  }
  dcm__etcd_opts_t o = {" http://a:1/ , https://b:2", NULL, NULL, NULL, 0};
  CHECK(dcm__etcd_new(&t.loop, &rawlog, &o, &c) == 0);
  raw_close(&t, c);
  teardown(&t);
  dcm__log_close(&rawlog);
}

/* SIGSTOP etcd under a leader: it steps down before its lease could have
 * expired, says etcd is unavailable once, and leads again once etcd is
 * back. */
static void test_etcd_stopped(void) {
  T t;
  etcd_t x;
  memset(&x, 0, sizeof x);
  etcd_spawn(&x, 0);
  setup(&t, "etcd stopped while leading", 2);
  E *a = elector(&t, "a", x.url, "stop", 2);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING), 15000);
  uint64_t e1 = dcm__elect_epoch(a->e);
  run_for(&t, 1000); /* renewals happen */
  CHECK(dcm__elect_leading(a->e));
  size_t mark = a->loglen;
  size_t unavailable = count_ev(a, DCM_ELECT_UNAVAILABLE); /* 1 if etcd was slow to start */
  CHECK(kill(x.pid, SIGSTOP) == 0);
  uv_update_time(&t.loop);
  t.stop_at = uv_now(&t.loop);
  RUN_UNTIL(&t, count_ev(a, DCM_ELECT_STEPPED_DOWN) == 1, 5000);
  size_t i = a->nev - 1;
  CHECK(a->at[i] < t.stop_at + t.ttl_ms);
  CHECK(dcm__elect_leader(a->e) == NULL);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_UNAVAILABLE), 10000);
  run_for(&t, 1500); /* more failed tries, no more error lines */
  CHECK(count_log_from(a, mark, "failed again") >= 1);
  CHECK(count_log_from(a, mark, "unreachable") == 1);
  CHECK(count_ev(a, DCM_ELECT_UNAVAILABLE) == unavailable + 1);
  t.stop_at = 0;
  CHECK(kill(x.pid, SIGCONT) == 0);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING), 20000);
  CHECK(dcm__elect_epoch(a->e) > e1);
  CHECK(count_log_from(a, mark, "reachable again") == 1);
  CHECK(count_log_from(a, mark, "unreachable") == 1);
  CHECK(count_ev(a, DCM_ELECT_UNAVAILABLE) == unavailable + 1);

  /* Closing while etcd is stopped: the revoke gives up after a second. */
  CHECK(kill(x.pid, SIGSTOP) == 0);
  uv_update_time(&t.loop);
  uint64_t t0 = uv_now(&t.loop);
  close_elector(a);
  RUN_UNTIL(&t, a->closed == 2, 5000);
  CHECK(uv_now(&t.loop) - t0 < 3000);
  CHECK(strstr(a->logs, "revoking the lease at close failed") != NULL);
  teardown(&t);
  etcd_remove(&x);
}

static void start_etcd_cb(uv_timer_t *h) { etcd_spawn(h->data, 0); }

/* etcd down at start: one error line and one UNAVAILABLE while retrying,
 * then it leads once etcd comes up. */
static void test_etcd_late(void) {
  T t;
  etcd_t x;
  memset(&x, 0, sizeof x);
  setup(&t, "etcd down at start", 2);
  x.port = free_port();
  x.peer = free_port();
  snprintf(x.url, sizeof x.url, "http://127.0.0.1:%d", x.port);
  E *a = elector(&t, "a", x.url, "late", 2);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_UNAVAILABLE), 5000);
  CHECK(dcm__elect_leader(a->e) == NULL && !dcm__elect_leading(a->e));
  RUN_UNTIL(&t, count_log(a, "failed again") >= 2, 10000); /* it retries */
  CHECK(count_log(a, "unreachable") == 1);
  char want[128];
  snprintf(want, sizeof want, "etcd: %s unreachable (lease grant): Couldn't connect", x.url);
  CHECK(strstr(a->logs, want) != NULL);
  /* Close with nothing to revoke: at once. */
  E *b = elector(&t, "b", x.url, "late", 2);
  RUN_UNTIL(&t, last_ev(b, DCM_ELECT_UNAVAILABLE), 5000);
  close_elector(b);
  RUN_UNTIL(&t, b->closed == 2, 1000);

  uv_timer_t later;
  uv_timer_init(&t.loop, &later);
  later.data = &x;
  /* etcd_spawn keeps the ports chosen above */
  snprintf(x.dir, sizeof x.dir, "/tmp/dcm-etcd-XXXXXX");
  CHECK(mkdtemp(x.dir) != NULL);
  for (int i = 0; i < MAX_ETCD; i++)
    if (g_etcd[i] == NULL) {
      g_etcd[i] = &x;
      break;
    }
  uv_timer_start(&later, start_etcd_cb, 10, 0);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING), 25000);
  CHECK(count_ev(a, DCM_ELECT_UNAVAILABLE) == 1);
  CHECK(count_log(a, "unreachable") == 1);
  CHECK(count_log(a, "reachable again") == 1);
  uv_close((uv_handle_t *)&later, NULL);
  teardown(&t);
  etcd_remove(&x);
}

/* A dead endpoint first in the list: the next one serves, no error line. */
static void test_failover(void) {
  T t;
  setup(&t, "endpoint failover", 2);
  char eps[160];
  snprintf(eps, sizeof eps, "http://127.0.0.1:%d,%s", free_port(), g_main.url);
  E *a = elector(&t, "a", eps, "failover", 2);
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING), 10000);
  CHECK(count_log(a, "unreachable") == 0);
  CHECK(strstr(a->logs, "; trying http://127.0.0.1") != NULL);
  CHECK(dcm__elect_put(a->e, "x", "y", 1) == 0);
  wait_value(&t, a, "x", "y", 1);
  teardown(&t);
}

static void test_bad_options(void) {
  T t;
  setup(&t, "bad options", 2);
  dcm__log_t lg;
  CHECK(dcm__log_init(&lg, DCM_LOG_WARN, DCM_LOG_TEXT, NULL, NULL) == 0);
  dcm__elect_t *e;
  char longname[80], longurl[1100];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  memset(longurl, 'u', sizeof longurl - 1);
  longurl[sizeof longurl - 1] = '\0';
  dcm__elect_opts_t bad[] = {
      {g_main.url, "", "ws://a", 5, NULL, NULL, NULL},
      {g_main.url, "a/b", "ws://a", 5, NULL, NULL, NULL},
      {g_main.url, longname, "ws://a", 5, NULL, NULL, NULL},
      {g_main.url, NULL, "ws://a", 5, NULL, NULL, NULL},
      {g_main.url, "c", "", 5, NULL, NULL, NULL},
      {g_main.url, "c", NULL, 5, NULL, NULL, NULL},
      {g_main.url, "c", "ws://a\r\nx", 5, NULL, NULL, NULL},
      {g_main.url, "c", longurl, 5, NULL, NULL, NULL},
      {g_main.url, "c", "ws://a", 1.5, NULL, NULL, NULL},
      {g_main.url, "c", "ws://a", 61, NULL, NULL, NULL},
      {g_main.url, "c", "ws://a", 0.0 / 0.0, NULL, NULL, NULL},
      {"", "c", "ws://a", 5, NULL, NULL, NULL},
      {NULL, "c", "ws://a", 5, NULL, NULL, NULL},
      {"localhost:2379", "c", "ws://a", 5, NULL, NULL, NULL},
      {"http://user:secret@127.0.0.1:1", "c", "ws://a", 5, NULL, NULL, NULL},
      {g_main.url, "c", "ws://a", 5, "", NULL, NULL},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(dcm__elect_new(&t.loop, &lg, &bad[i], on_event, NULL, &e) == DCM_EINVAL);
  /* Closed before it starts: nothing to revoke, every handle closed. */
  dcm__elect_opts_t ok = {g_main.url, "c", "ws://a", 5, NULL, NULL, NULL};
  CHECK(dcm__elect_new(&t.loop, &lg, &ok, on_event, NULL, &e) == 0);
  CHECK(dcm__elect_leader(e) == NULL && dcm__elect_epoch(e) == 0 && !dcm__elect_leading(e));
  int done = 0;
  g_raw_closed = 0;
  static int one = 1;
  dcm__elect_close(e, on_raw_closed, &one);
  (void)done;
  RUN_UNTIL(&t, g_raw_closed, 2000);
  teardown(&t);
  dcm__log_close(&lg);
}

static void dummy_done(void *arg) { *(int *)arg = 1; }

static void on_http(void *arg, const dcm__http_resp_t *r) {
  int *got = arg;
  *got = r->status;
}

/* http.c's own bounds, against etcd's gateway. */
static void test_http(void) {
  T t;
  setup(&t, "http bounds", 2);
  dcm__http_t *h;
  CHECK(dcm__http_new(&t.loop, &h) == 0);
  char url[128];
  snprintf(url, sizeof url, "%s/version", g_main.url);
  int got = 0;
  dcm__http_opts_t o;
  memset(&o, 0, sizeof o);
  o.url = url;
  o.max_body = 4; /* the answer is longer */
  CHECK(dcm__http_request(h, &o, on_http, &got, NULL) == 0);
  CHECK(got == 0);
  RUN_UNTIL(&t, got != 0, 5000);
  CHECK(got == DCM_HTTP_ETOOBIG);
  o.max_body = 0;
  got = 0;
  CHECK(dcm__http_request(h, &o, on_http, &got, NULL) == 0);
  RUN_UNTIL(&t, got != 0, 5000);
  CHECK(got == 200);
  o.url = "gopher://127.0.0.1:1/";
  got = 0;
  CHECK(dcm__http_request(h, &o, on_http, &got, NULL) == 0);
  RUN_UNTIL(&t, got != 0, 5000);
  CHECK(got == DCM_HTTP_EURL);
  /* Requests left in flight at close are dropped without a call. */
  o.url = url;
  got = 0;
  for (int i = 0; i < 3; i++) CHECK(dcm__http_request(h, &o, on_http, &got, NULL) == 0);
  int closed = 0;
  dcm__http_close(h, dummy_done, &closed);
  RUN_UNTIL(&t, closed, 2000);
  CHECK(got == 0);
  teardown(&t);
}

/* A CA, a server certificate for 127.0.0.1 and a client certificate, with
 * the openssl tool, into dir. etcd's gateway dials etcd itself with the
 * server certificate: it must be good for client auth too. */
static void make_certs(const char *dir) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "set -e; cd '%s'; "
           "K='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'; "
           "exec 2>/dev/null >/dev/null; openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=dcm-test-ca; "
           "printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > s.ext; "
           "printf 'extendedKeyUsage=clientAuth\n' > c.ext; "
           "for n in server client; do "
           "openssl req $K -keyout $n.key -out $n.csr -subj /CN=$n; "
           "openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
           "-out $n.pem -days 2 -extfile $(echo $n | cut -c1).ext; done",
           dir);
  int rc = system(cmd);
  if (rc != 0) fprintf(stderr, "openssl failed (%d): %s\n", rc, cmd);
  CHECK(rc == 0);
}

static int wait_ready(etcd_t *x);

/* etcd over https with client certificates: the TLS options reach curl. */
static void test_tls(void) {
  etcd_t x;
  memset(&x, 0, sizeof x);
  x.tls = 1;
  snprintf(x.dir, sizeof x.dir, "/tmp/dcm-etcd-XXXXXX");
  CHECK(mkdtemp(x.dir) != NULL);
  x.port = free_port();
  x.peer = free_port();
  snprintf(x.url, sizeof x.url, "https://127.0.0.1:%d", x.port);
  for (int i = 0; i < MAX_ETCD; i++)
    if (g_etcd[i] == NULL) {
      g_etcd[i] = &x;
      break;
    }
  make_certs(x.dir);
  etcd_spawn(&x, 0);
  char ca[128], cert[128], key[128];
  snprintf(ca, sizeof ca, "%s/ca.pem", x.dir);
  snprintf(cert, sizeof cert, "%s/client.pem", x.dir);
  snprintf(key, sizeof key, "%s/client.key", x.dir);
  g_cacert = ca;
  g_cert = cert;
  g_key = key;
  if (!wait_ready(&x)) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "tail -n 20 '%s/etcd.log' >&2", x.dir);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    CHECK(!"etcd over TLS did not answer");
  }
  g_cacert = g_cert = g_key = NULL;

  T t;
  setup(&t, "etcd over TLS with client certificates", 2);
  E *a = elector_tls(&t, "a", x.url, "tls", 2, ca, cert, key);
  E *b = elector_tls(&t, "b", x.url, "tls", 2, NULL, NULL, NULL); /* the system store */
  E *c = elector_tls(&t, "c", x.url, "tls", 2, ca, NULL, NULL);   /* no client certificate */
  RUN_UNTIL(&t, last_ev(a, DCM_ELECT_LEADING) && last_ev(b, DCM_ELECT_UNAVAILABLE) &&
                    last_ev(c, DCM_ELECT_UNAVAILABLE), 15000);
  CHECK(dcm__elect_put(a->e, "identify", "tls", 3) == 0);
  wait_value(&t, a, "identify", "tls", 3);
  CHECK(strstr(b->logs, "SSL certificate problem") != NULL);
  CHECK(count_log(b, "unreachable") == 1 && count_log(c, "unreachable") == 1);
  CHECK(strstr(c->logs, x.url) != NULL);
  teardown(&t);
  etcd_remove(&x);
}

static int wait_ready(etcd_t *x) {
  T t;
  setup(&t, "etcd starts", 2);
  dcm__log_t lg;
  CHECK(dcm__log_init(&lg, DCM_LOG_ERROR, DCM_LOG_TEXT, NULL, NULL) == 0);
  dcm__etcd_t *c = raw_client(&t, x->url, &lg);
  sync_t s;
  int ok = 0;
  for (int i = 0; i < 200 && !ok; i++) {
    SYNC(&t, s, dcm__etcd_get(c, "/ready", on_sync, &s, NULL));
    ok = s.r.err == 0;
    if (!ok) run_for(&t, 50);
  }
  raw_close(&t, c);
  teardown(&t);
  dcm__log_close(&lg);
  return ok;
}

int main(void) {
  atexit(kill_all);
  signal(SIGPIPE, SIG_IGN);
  /* A proxy from the environment would break loopback tests. */
  const char *proxies[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                           "ALL_PROXY", "all_proxy"};
  for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++) unsetenv(proxies[i]);
  if (access(etcd_bin(), X_OK) != 0) {
    fprintf(stderr, "FAIL: etcd not found at %s (%s): install etcd-server (scripts/test "
            "installs it) or set DCM_ETCD_BIN\n", etcd_bin(), strerror(errno));
    return 1;
  }
  etcd_spawn(&g_main, 0);
  if (!wait_ready(&g_main)) {
    char cmd[160];
    fprintf(stderr, "FAIL: etcd did not answer at %s; its log:\n", g_main.url);
    snprintf(cmd, sizeof cmd, "tail -n 20 '%s/etcd.log' >&2", g_main.dir);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    return 1;
  }
  /* DCM_TEST_ONLY=word runs the cases whose function name holds it. */
#define CASE(fn) \
  if (getenv("DCM_TEST_ONLY") == NULL || strstr(#fn, getenv("DCM_TEST_ONLY"))) fn()
  CASE(test_bad_options);
  CASE(test_http);
  CASE(test_etcd_client);
  CASE(test_two_electors);
  CASE(test_clusters_apart);
  CASE(test_records);
  CASE(test_fenced);
  CASE(test_failover);
  CASE(test_etcd_late);
  CASE(test_etcd_stopped);
  CASE(test_tls);
  etcd_remove(&g_main);
  fprintf(stderr, "all election tests passed\n");
  return 0;
}
