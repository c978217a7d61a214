/*
 * bench_sandbox.c: how long the sandbox takes to stop each attack in
 * spec/policy/fixtures/bad (*_bomb.lua, plus infinite.lua as the plain
 * instruction loop for comparison). Each fixture attacks while its file
 * loads, with the default budgets of one call (10,000,000 units, 1 s), so
 * the time printed is the worst time of one call. Attacks the time budget
 * stops also print how far past it they ran (the load of default.lua,
 * timed alone, taken off), the worst of five runs with a 0.25 s budget;
 * attacks that hold one VM step past the budget plus the grace print when
 * the host gave up and when the abandoned step ended. A load is one job:
 * the host waits twice the time budget plus DCM_SANDBOX_GRACE_MS. With arguments,
 * times those policy files instead. Prints the figures; never fails on
 * timing. Run through scripts/bench-policy.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy.h"
#include "sandbox.h"

#define RUNS 5
#define SHORT_TIME 0.25 /* seconds: the time budget of the repeated runs */

static char last[512];

static void keep(dcm_log_level level, const char *line, size_t len, void *a) {
  (void)a;
  if (level >= DCM_LOG_ERROR) snprintf(last, sizeof last, "%.*s", (int)len, line);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static dcm__log_t lg;
static char dir[4096];

/* Loads path with a time budget of time s; ms elapsed, rc in *rc. */
static double load(const char *path, double time, int *rc) {
  dcm__policy_t *p = NULL;
  last[0] = '\0';
  double t0 = now_ms();
  *rc = dcm__policy_new(path, dir, time, &lg, &p);
  double ms = now_ms() - t0;
  dcm__policy_free(p);
  return ms;
}

/* Waits for abandoned steps to end; ms waited. */
static double drain(void) {
  double t0 = now_ms();
  while (dcm__sandbox_abandoned() > 0 && now_ms() - t0 < 600e3) usleep(10000);
  return now_ms() - t0;
}

int main(int argc, char **argv) {
  const char *src = getenv("DCM_SOURCE_DIR");
  char fixtures[4096], base[4200];
  snprintf(dir, sizeof dir, "%s/policies", src ? src : DCM_BENCH_SOURCE_DIR);
  snprintf(fixtures, sizeof fixtures, "%s/spec/policy/fixtures/bad",
           src ? src : DCM_BENCH_SOURCE_DIR);
  snprintf(base, sizeof base, "%s/spec/policy/fixtures/by_cores.lua",
           src ? src : DCM_BENCH_SOURCE_DIR);
  DIR *d = opendir(fixtures);
  if (d == NULL) {
    perror(fixtures);
    return 1;
  }
  char *names[64];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && n < 64 && argc < 2)
    if (strstr(e->d_name, "_bomb.lua") || strcmp(e->d_name, "infinite.lua") == 0)
      names[n++] = strdup(e->d_name);
  closedir(d);
  for (int i = 1; i < argc && n < 64; i++) names[n++] = strdup(argv[i]);
  qsort(names, (size_t)n, sizeof names[0], by_name);
  dcm__log_init(&lg, DCM_LOG_INFO, DCM_LOG_TEXT, keep, NULL);

  /* what a load costs besides the file's own run: default.lua, twice */
  double ms[RUNS];
  int rc;
  for (int r = 0; r < RUNS; r++) ms[r] = load(base, 0, &rc);
  qsort(ms, RUNS, sizeof ms[0], by_value);
  double overhead = ms[RUNS / 2];
  printf("time budget 1000 ms per call (2000 ms per load), grace %d ms; a load without "
         "the attack takes %.1f ms\n", DCM_SANDBOX_GRACE_MS, overhead);

  for (int i = 0; i < n; i++) {
    char path[8300];
    if (argc > 1)
      snprintf(path, sizeof path, "%s", names[i]);
    else
      snprintf(path, sizeof path, "%s/%s", fixtures, names[i]);
    double took = load(path, 0, &rc);
    const char *cut = strstr(last, ".lua:");
    printf("%-22s %9.1f ms  %s\n", names[i], took,
           rc == 0 ? "loaded (not stopped)" : cut ? cut + 5 : last);
    if (strstr(last, "abandoned")) {
      printf("%22s the host gave up after %.0f ms; the step it was stuck in ended %.1f s later\n",
             "", took, drain() / 1e3);
    } else if (strstr(last, "time budget exceeded")) {
      int gave_up = 0;
      for (int r = 0; r < RUNS; r++) {
        ms[r] = load(path, SHORT_TIME, &rc) - overhead - SHORT_TIME * 1e3;
        if (strstr(last, "abandoned")) gave_up++;
        drain();
      }
      qsort(ms, RUNS, sizeof ms[0], by_value);
      printf("%22s past a %.0f ms time budget: worst %.1f ms, median %.1f ms of %d runs%s\n",
             "", SHORT_TIME * 1e3, ms[RUNS - 1], ms[RUNS / 2], RUNS,
             gave_up ? " (some abandoned: one step outlasted the grace)" : "");
    }
    free(names[i]);
  }
  dcm__log_close(&lg);
  return 0;
}
