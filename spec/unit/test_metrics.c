/* The Prometheus text writer (metrics.h): layout, label escaping, the bound. */
#include "check.h"
#include "metrics.h"

static void test_family_and_samples(void) {
  dcm__prom_t p;
  size_t len;
  dcm__prom_init(&p);
  dcm__prom_family(&p, "x_total", "counter", "Things.");
  dcm__prom_int(&p, "x_total", NULL, 18446744073709551615ull);
  dcm__prom_family(&p, "age_seconds", "gauge", "Age.");
  const char *labels[] = {"machine", "a", "role", "b", NULL};
  dcm__prom_num(&p, "age_seconds", labels, 1.5);
  char *s = dcm__prom_take(&p, &len);
  CHECK(s != NULL);
  CHECK_STR(s, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 18446744073709551615\n"
               "# HELP age_seconds Age.\n# TYPE age_seconds gauge\n"
               "age_seconds{machine=\"a\",role=\"b\"} 1.500\n");
  CHECK_EQ(len, strlen(s));
  free(s);
}

static void test_escaping(void) {
  dcm__prom_t p;
  size_t len;
  dcm__prom_init(&p);
  dcm__prom_family(&p, "g", "gauge", "back\\slash\nnewline \"quotes\" kept");
  const char *labels[] = {"v", "a\"b\\c\nd", NULL};
  dcm__prom_int(&p, "g", labels, 0);
  char *s = dcm__prom_take(&p, &len);
  CHECK(s != NULL);
  CHECK_STR(s, "# HELP g back\\\\slash\\nnewline \"quotes\" kept\n# TYPE g gauge\n"
               "g{v=\"a\\\"b\\\\c\\nd\"} 0\n");
  free(s);
}

static void test_bound(void) {
  dcm__prom_t p;
  size_t len;
  char id[129];
  memset(id, 'm', sizeof id - 1);
  id[sizeof id - 1] = '\0';
  dcm__prom_init(&p);
  dcm__prom_family(&p, "g", "gauge", "Big.");
  const char *labels[] = {"machine", id, NULL};
  for (int i = 0; i < 20000 && !p.failed; i++) dcm__prom_int(&p, "g", labels, (uint64_t)i);
  CHECK(p.failed);
  CHECK(p.len < DCM_PROM_MAX);
  CHECK(dcm__prom_take(&p, &len) == NULL);
  CHECK_EQ(len, 0);
  CHECK(p.buf == NULL);
  /* the machine cap keeps MASTER's longest page (128-character ids) under the bound */
  CHECK((size_t)DCM_METRICS_MACHINES_MAX * (sizeof "discluster_machine_heartbeat_age_seconds"
        "{machine=\"\"} 12345678.123\n" + 128) < DCM_PROM_MAX / 2);
}

int main(void) {
  RUN(test_family_and_samples);
  RUN(test_escaping);
  RUN(test_bound);
  return 0;
}
