/*
 * bench_sandbox.c: how long the sandbox takes to stop each attack in
 * spec/policy/fixtures/bad (*_bomb.lua, plus infinite.lua as the plain
 * instruction loop for comparison). Each fixture spends the whole budget
 * of one call (10,000,000 units) inside the function it attacks, so the
 * time printed is the worst time of one call at the budget limit. With
 * arguments, times those policy files instead. Prints the figures; never
 * fails on timing. Run through scripts/bench-policy.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy.h"

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

int main(int argc, char **argv) {
  const char *src = getenv("DCM_SOURCE_DIR");
  char dir[4096], fixtures[4096];
  snprintf(dir, sizeof dir, "%s/policies", src ? src : DCM_BENCH_SOURCE_DIR);
  snprintf(fixtures, sizeof fixtures, "%s/spec/policy/fixtures/bad",
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
  dcm__log_t lg;
  dcm__log_init(&lg, DCM_LOG_INFO, DCM_LOG_TEXT, keep, NULL);
  for (int i = 0; i < n; i++) {
    char path[8300];
    if (argc > 1)
      snprintf(path, sizeof path, "%s", names[i]);
    else
      snprintf(path, sizeof path, "%s/%s", fixtures, names[i]);
    dcm__policy_t *p = NULL;
    last[0] = '\0';
    double t0 = now_ms();
    int rc = dcm__policy_new(path, dir, &lg, &p);
    double ms = now_ms() - t0;
    const char *cut = strstr(last, ".lua:");
    printf("%-20s %9.1f ms  %s\n", names[i], ms,
           rc == 0 ? "loaded (not stopped)" : cut ? cut + 5 : last);
    dcm__policy_free(p);
    free(names[i]);
  }
  return 0;
}
