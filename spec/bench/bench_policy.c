/*
 * bench_policy.c: times the policy engine and prints the figures; it never
 * fails on timing. allocate for 1,000 machines and 100,000 shards (Lua
 * call, result validated in C), the same for 10,000 machines next to its
 * time budget, failover, and reload. Run through scripts/bench-policy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy.h"

#define RUNS 25

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void report_as(const char *what, double *ms, int n, const char *as, double target) {
  qsort(ms, (size_t)n, sizeof *ms, cmp);
  printf("%-44s median %7.2f ms  min %7.2f  max %7.2f  (%s < %g ms: %s)\n",
         what, ms[n / 2], ms[0], ms[n - 1], as, target,
         ms[n / 2] < target ? "ok" : "OVER");
}

static void report(const char *what, double *ms, int n, double target) {
  report_as(what, ms, n, "target", target);
}

static void quiet(dcm_log_level level, const char *line, size_t len, void *a) {
  (void)a;
  if (level >= DCM_LOG_WARN) fprintf(stderr, "%.*s\n", (int)len, line);
}

int main(int argc, char **argv) {
  enum { N = 1000, S = 100000 };
  const char *src = getenv("DCM_SOURCE_DIR");
  char dir[4096], user[4200];
  snprintf(dir, sizeof dir, "%s/policies", src ? src : DCM_BENCH_SOURCE_DIR);
  snprintf(user, sizeof user, "%s/spec/policy/fixtures/by_cores.lua",
           src ? src : DCM_BENCH_SOURCE_DIR);
  const char *path = argc > 1 ? argv[1] : NULL;
  dcm__log_t lg;
  dcm__log_init(&lg, DCM_LOG_INFO, DCM_LOG_TEXT, quiet, NULL);
  dcm__policy_t *p;
  int rc = dcm__policy_new(path, dir, 0, &lg, &p);
  if (rc != 0) {
    fprintf(stderr, "bench_policy: cannot load the policy: %s\n", dcm_strerror(rc));
    return 1;
  }
  printf("policy: %s\n", dcm__policy_path(p));

  static dcm__pmachine_t m[N];
  static char ids[N][16];
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof ids[i], "machine-%04d", (i * 7919) % N);
    m[i] = (dcm__pmachine_t){ids[i], 1 + (i * 37) % 64, (i % 13) * 0.7, 0, NULL, 0};
  }
  int *owner = malloc(sizeof *owner * S);
  double ms[RUNS];
  const int mcs[] = {1, 16};
  for (int k = 0; k < 2; k++) {
    dcm__pctx_t ctx = {S, mcs[k]};
    for (int r = 0; r < RUNS; r++) {
      double t0 = now_ms();
      rc = dcm__policy_allocate(p, m, N, &ctx, owner);
      ms[r] = now_ms() - t0;
      if (rc != 0) {
        fprintf(stderr, "bench_policy: allocate: %s\n", dcm_strerror(rc));
        return 1;
      }
    }
    char what[80];
    snprintf(what, sizeof what, "allocate 1000 machines, 100000 shards, mc %d", mcs[k]);
    report(what, ms, RUNS, 20);
  }

  {
    /* 10,000 machines: how far from its time budget a big call stays */
    enum { BIG = 10000 };
    static dcm__pmachine_t mb[BIG];
    static char idb[BIG][16];
    for (int i = 0; i < BIG; i++) {
      snprintf(idb[i], sizeof idb[i], "machine-%05d", (i * 7919) % BIG);
      mb[i] = (dcm__pmachine_t){idb[i], 1 + (i * 37) % 64, (i % 13) * 0.7, 0, NULL, 0};
    }
    dcm__pctx_t ctx = {S, 1};
    int *big_owner = malloc(sizeof *big_owner * S); /* owner stays the 1,000-machine split */
    for (int r = 0; r < RUNS && big_owner; r++) {
      double t0 = now_ms();
      rc = dcm__policy_allocate(p, mb, BIG, &ctx, big_owner);
      ms[r] = now_ms() - t0;
      if (rc != 0) {
        fprintf(stderr, "bench_policy: allocate: %s\n", dcm_strerror(rc));
        return 1;
      }
    }
    /* the default policy_timeout, 1 s, per 10,000,000 units of budget */
    double budget_ms = 1e3 * (1 + 100.0 * (BIG + S) / 1e7);
    char what[96];
    snprintf(what, sizeof what, "allocate 10000 machines, 100000 shards, mc 1");
    if (big_owner) report_as(what, ms, RUNS, "time budget", budget_ms);
    free(big_owner);
  }

  /* one machine of the allocation dies; the rest keep their shards */
  int *runs = malloc(sizeof *runs * S), *off = calloc(N + 1, sizeof *off);
  for (int s = 0; s < S; s++) off[owner[s] + 1]++;
  for (int i = 0; i < N; i++) off[i + 1] += off[i];
  int *fill = calloc(N, sizeof *fill);
  for (int s = 0; s < S; s++) runs[off[owner[s]] + fill[owner[s]]++] = s;
  for (int i = 0; i < N; i++) {
    m[i].shards = runs + off[i];
    m[i].nshards = (size_t)(off[i + 1] - off[i]);
  }
  int big = 0;
  for (int i = 1; i < N; i++)
    if (m[i].nshards > m[big].nshards) big = i;
  dcm__pmachine_t tmp = m[0];
  m[0] = m[big];
  m[big] = tmp;
  dcm__pctx_t ctx = {S, 1};
  static int fo[S];
  for (int r = 0; r < RUNS; r++) {
    double t0 = now_ms();
    rc = dcm__policy_failover(p, &m[0], m + 1, N - 1, &ctx, fo);
    ms[r] = now_ms() - t0;
    if (rc != 0) {
      fprintf(stderr, "bench_policy: failover: %s\n", dcm_strerror(rc));
      return 1;
    }
  }
  char what[96];
  snprintf(what, sizeof what, "failover of %zu shards to 999 survivors",
           m[0].nshards);
  report(what, ms, RUNS, 20);

  for (int r = 0; r < RUNS; r++) {
    double t0 = now_ms();
    rc = dcm__policy_reload(p, NULL, 0, NULL);
    ms[r] = now_ms() - t0;
    if (rc != 0) return 1;
  }
  report(path ? "reload (user policy + default.lua)" : "reload (default.lua)", ms, RUNS, 10);
  dcm__policy_free(p);
  if (path == NULL) {
    rc = dcm__policy_new(user, dir, 0, &lg, &p);
    if (rc != 0) return 1;
    for (int r = 0; r < RUNS; r++) {
      double t0 = now_ms();
      rc = dcm__policy_reload(p, NULL, 0, NULL);
      ms[r] = now_ms() - t0;
      if (rc != 0) return 1;
    }
    report("reload (by_cores.lua over default.lua)", ms, RUNS, 10);
    dcm__policy_free(p);
  }
  free(owner);
  free(runs);
  free(off);
  free(fill);
  dcm__log_close(&lg);
  return 0;
}
