/* The public handle's edge cases: failed start, double stop, bad options. */
#include <discluster/master.h>

#include "check.h"

static void quiet(dcm_log_level level, const char *line, size_t len, void *arg) {
  (void)level, (void)line, (void)len, (void)arg;
}

static void init(dcm_options_t *o) {
  dcm_options_init(o);
  o->listen_port = 0;
  o->shards = 2;
  o->log_cb = quiet;
}

static void free_right_after_a_failed_start(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *a, *b;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  CHECK_EQ(dcm_master_new(&loop, &o, &a), 0);
  CHECK_EQ(dcm_master_start(a, NULL, NULL), 0);
  o.listen_port = dcm_master_port(a); /* taken by a */
  CHECK_EQ(dcm_master_new(&loop, &o, &b), 0);
  CHECK_EQ(dcm_master_start(b, NULL, NULL), UV_EADDRINUSE);
  CHECK_EQ(dcm_master_start(b, NULL, NULL), DCM_ESTATE);
  dcm_master_free(b); /* completes once the listener has closed */
  CHECK_EQ(dcm_master_stop(a, 0, NULL, NULL), 0);
  CHECK_EQ(dcm_master_stop(a, 0, NULL, NULL), DCM_ESTATE);
  CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  dcm_master_free(a);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

static int stopped_events;

static void stop_from_event(dcm_master_t *m, const dcm_event_t *ev, void *arg) {
  (void)arg;
  if (ev->type == DCM_EVENT_LISTENING) CHECK_EQ(dcm_master_stop(m, 1, NULL, NULL), 0);
  if (ev->type == DCM_EVENT_STOPPED) stopped_events++;
}

static void stop_inside_the_event_callback(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *m;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  CHECK_EQ(dcm_master_start(m, stop_from_event, NULL), 0);
  CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_EQ(stopped_events, 1);
  CHECK_EQ(dcm_master_exit_status(m), 0);
  dcm_master_free(m);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

static void bad_options_are_refused(void) {
  uv_loop_t loop;
  dcm_options_t o;
  dcm_master_t *m = NULL;
  CHECK_EQ(uv_loop_init(&loop), 0);
  init(&o);
  o.heartbeat_interval = -1;
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.listen_host = "0.0.0.0";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINSECURE);
  o.auth = "secret";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), 0);
  dcm_master_free(m);
  init(&o);
  o.shards = 0; /* auto without a token */
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EINVAL);
  init(&o);
  o.policy = "/nonexistent/policy.lua";
  CHECK_EQ(dcm_master_new(&loop, &o, &m), DCM_EPOLICY);
  CHECK(strcmp(dcm_strerror(DCM_EAUTH), "Discord rejected the bot token") == 0);
  CHECK_EQ(uv_loop_close(&loop), 0);
}

int main(void) {
  RUN(free_right_after_a_failed_start);
  RUN(stop_inside_the_event_callback);
  RUN(bad_options_are_refused);
  return 0;
}
