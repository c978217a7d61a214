/*
 * embed_example.c: the README's embedding example. Runs a master on the
 * caller's loop (any free port, a fixed shard count, so no Discord token),
 * prints its events, stops it 200 ms after it listens, and checks that
 * every handle was closed.
 */
#include <discluster/master.h>
#include <stdio.h>

static const char *const names[] = {
    "listening", "connected", "resumed",  "disconnected",    "timed_out", "failed_over",
    "assigned",  "ready",     "state",    "policy_reloaded", "fatal",     "stopped"};

typedef struct {
  uv_timer_t timer;
  dcm_master_t *master;
  int listened, stopped;
} app_t;

static void on_stopped(dcm_master_t *m, void *arg) {
  app_t *app = arg;
  (void)m;
  app->stopped = 1;
  uv_close((uv_handle_t *)&app->timer, NULL);
}

static void on_timer(uv_timer_t *timer) {
  app_t *app = timer->data;
  /* 0: CONTROLs keep their clusters and wait for the next MASTER. */
  dcm_master_stop(app->master, 0, on_stopped, app);
}

static void on_event(dcm_master_t *m, const dcm_event_t *ev, void *arg) {
  app_t *app = arg;
  (void)m;
  unsigned t = (unsigned)ev->type;
  printf("event %s machine=%s code=%d message=%s\n", t < sizeof names / sizeof *names ? names[t] : "?",
         ev->machine ? ev->machine : "-", ev->code, ev->message ? ev->message : "-");
  if (ev->type == DCM_EVENT_LISTENING) {
    app->listened = 1;
    uv_timer_start(&app->timer, on_timer, 200, 0);
  }
}

int main(void) {
  uv_loop_t loop;
  app_t app = {0};
  dcm_options_t opts;
  int rc;

  uv_loop_init(&loop);
  dcm_options_init(&opts);
  opts.listen_port = 0; /* any free port; dcm_master_port() tells which */
  opts.shards = 4;      /* fixed: no Discord token needed */
  opts.no_auth = 1;     /* loopback only: no CONTROL secret, on purpose */
  rc = dcm_master_new(&loop, &opts, &app.master);
  if (rc != 0) {
    fprintf(stderr, "dcm_master_new: %s\n", dcm_strerror(rc));
    return 1;
  }
  uv_timer_init(&loop, &app.timer);
  app.timer.data = &app;
  rc = dcm_master_start(app.master, on_event, &app);
  if (rc != 0) {
    fprintf(stderr, "dcm_master_start: %s\n", dcm_strerror(rc));
    uv_close((uv_handle_t *)&app.timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* lets closing handles finish */
    dcm_master_free(app.master);
    uv_loop_close(&loop);
    return 1;
  }
  printf("listening on port %d\n", dcm_master_port(app.master));
  uv_run(&loop, UV_RUN_DEFAULT); /* returns once the master and timer closed */

  rc = dcm_master_exit_status(app.master);
  dcm_master_free(app.master);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "a handle is still open\n");
    return 1;
  }
  if (!app.listened || !app.stopped) {
    fprintf(stderr, "missed the listening event or the stop callback\n");
    return 1;
  }
  return rc;
}
