/*
 * main.c: the discluster-master CLI, a thin shell over the library: load
 * the configuration, run one master on a private loop, map signals to stop
 * and reloads (policy, TLS certificate), exit with the master's status.
 * Nothing the library needs lives here. Depends on config.h, check_policy.h and log.h.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check_policy.h"
#include "rebalance_cli.h"
#include "config.h"
#include "discluster/master.h"
#include "log.h"

typedef struct {
  dcm_master_t *master;
  dcm__log_t log;
  uv_signal_t sigs[3]; /* SIGINT, SIGTERM, SIGHUP */
  uv_timer_t again;    /* HA: a master that stepped down is replaced by a fresh one */
  dcm_options_t opts;  /* the configuration, for a fresh master after a step down */
  int stopping;
  int status;
  int tls; /* serving TLS: SIGHUP reloads the certificate too */
} cli_t;

static void close_signals(cli_t *cli) {
  for (int i = 0; i < 3; i++)
    if (!uv_is_closing((uv_handle_t *)&cli->sigs[i])) uv_close((uv_handle_t *)&cli->sigs[i], NULL);
  if (!uv_is_closing((uv_handle_t *)&cli->again)) uv_close((uv_handle_t *)&cli->again, NULL);
}

static void on_stopped(dcm_master_t *m, void *arg) {
  close_signals(arg);
}

static void on_event(dcm_master_t *m, const dcm_event_t *ev, void *arg);

/* A fresh master campaigns again as a follower: nothing of the old term
   (timers, machines, queue) survives a lost leadership. */
static void again_cb(uv_timer_t *t) {
  cli_t *cli = t->data;
  if (cli->opts.listen_port == 0) /* keep the port agents and peers know */
    cli->opts.listen_port = dcm_master_port(cli->master);
  dcm_master_free(cli->master);
  cli->master = NULL;
  int rc = dcm_master_new(t->loop, &cli->opts, &cli->master);
  if (rc == 0) rc = dcm_master_start(cli->master, on_event, cli);
  if (rc < 0) {
    dcm__error(&cli->log, NULL, "cannot start again after stepping down: %s", dcm_strerror(rc));
    dcm_master_free(cli->master); /* completes once its closing handles are done */
    cli->master = NULL;
    cli->status = 1;
    close_signals(cli);
  }
}

static void on_event(dcm_master_t *m, const dcm_event_t *ev, void *arg) {
  cli_t *cli = arg;
  (void)m;
  /* The library logs every event itself; a self-initiated stop (fatal)
   * ends here rather than in on_stopped. */
  if (ev->type != DCM_EVENT_STOPPED) return;
  if (ev->code == DCM_EXIT_STEPPED_DOWN && !cli->stopping) {
    dcm__info(&cli->log, NULL, "stepped down; starting again as a follower");
    uv_timer_start(&cli->again, again_cb, 0, 0);
    return;
  }
  /* An operator's stop that overtook a step down ends cleanly. */
  cli->status = ev->code == DCM_EXIT_STEPPED_DOWN ? 0 : ev->code;
  close_signals(cli);
}

static void on_signal(uv_signal_t *h, int signum) {
  cli_t *cli = h->data;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (signum == SIGHUP) {
    if (cli->master == NULL || uv_is_active((uv_handle_t *)&cli->again)) return;
    dcm__info(&cli->log, NULL, "SIGHUP: reloading the policy%s",
              cli->tls ? " and the TLS certificate" : "");
    dcm_master_reload_policy(cli->master); /* logs and emits its outcome itself */
    if (cli->tls) dcm_master_reload_tls(cli->master); /* logs its outcome itself */
    return;
  }
  if (cli->stopping) {
    /* The operator insists: leave without waiting for the graceful stop. */
    dcm__warn(&cli->log, NULL, "%s again: exiting at once", name);
    _exit(128 + signum);
  }
  cli->stopping = 1;
  dcm__info(&cli->log, NULL, "%s: stopping (a second one exits at once)", name);
  if (uv_is_active((uv_handle_t *)&cli->again)) { /* between two masters: nothing runs */
    dcm_master_free(cli->master);
    cli->master = NULL;
    cli->status = 0;
    close_signals(cli);
    return;
  }
  /* No shutdown packet: CONTROLs keep running and reconnect to the next MASTER. */
  int rc = dcm_master_stop(cli->master, 0, on_stopped, cli);
  if (rc < 0) dcm__debug(&cli->log, NULL, "stop: %s", dcm_strerror(rc)); /* already stopping */
}

static void report_handle(uv_handle_t *h, void *arg) {
  dcm__error(arg, NULL, "handle still open at exit: %s", uv_handle_type_name(uv_handle_get_type(h)));
}

/* A broken policy file is bad configuration too: the log line above names file:line. */
static int config_status(int rc) {
  return rc == DCM_EINVAL || rc == DCM_EINSECURE || rc == DCM_EPOLICY ? 2 : 1;
}

int main(int argc, char **argv) {
  static const int signums[3] = {SIGINT, SIGTERM, SIGHUP};
  dcm__config_t cfg;
  cli_t cli;
  uv_loop_t loop;
  char err[512];
  int rc, status;

  if (argc > 1 && strcmp(argv[1], "check-policy") == 0)
    return dcm__check_policy_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "rebalance") == 0)
    return dcm__rebalance_main(argc - 1, argv + 1);
  signal(SIGPIPE, SIG_IGN);

  rc = dcm__config_load(&cfg, argc, argv, stdout, err, sizeof err);
  if (rc != DCM_CONFIG_RUN) {
    dcm__config_free(&cfg);
    if (rc == DCM_CONFIG_EXIT) return fflush(stdout) == 0 ? 0 : 1;
    fprintf(stderr, "discluster-master: %s\n", err);
    return 2;
  }
  memset(&cli, 0, sizeof cli);
  cli.tls = cfg.opts.tls_cert != NULL;
  cli.opts = cfg.opts;
  rc = dcm__log_init(&cli.log, cfg.opts.log_level, cfg.opts.log_format, NULL, NULL);
  if (rc == 0) rc = uv_loop_init(&loop);
  if (rc < 0) {
    fprintf(stderr, "discluster-master: %s\n", dcm_strerror(rc));
    dcm__log_close(&cli.log);
    dcm__config_free(&cfg);
    return 1;
  }

  uv_timer_init(&loop, &cli.again);
  cli.again.data = &cli;
  for (int i = 0; i < 3; i++) {
    uv_signal_init(&loop, &cli.sigs[i]);
    cli.sigs[i].data = &cli;
    uv_signal_start(&cli.sigs[i], on_signal, signums[i]);
  }
  rc = dcm_master_new(&loop, &cfg.opts, &cli.master);
  if (rc == 0) rc = dcm_master_start(cli.master, on_event, &cli);
  if (rc < 0) {
    if (cfg.opts.log_format == DCM_LOG_JSON) /* every line a JSON line */
      dcm__error(&cli.log, NULL, "%s", dcm_strerror(rc));
    else
      fprintf(stderr, "discluster-master: %s\n", dcm_strerror(rc));
    close_signals(&cli);
    /* A failed start may have closed handles that point at the master:
     * let their callbacks run before it is freed. */
    uv_run(&loop, UV_RUN_DEFAULT);
    dcm_master_free(cli.master);
    uv_loop_close(&loop);
    dcm__log_close(&cli.log);
    dcm__config_free(&cfg);
    return config_status(rc);
  }
  uv_run(&loop, UV_RUN_DEFAULT);

  status = cli.master ? dcm_master_exit_status(cli.master) : cli.status;
  if (status == DCM_EXIT_STEPPED_DOWN) status = 0; /* stopped by the operator meanwhile */
  rc = uv_loop_close(&loop);
  if (rc != 0) {
    uv_walk(&loop, report_handle, &cli.log);
    dcm__error(&cli.log, NULL, "event loop did not close: %s", uv_strerror(rc));
    if (status == 0) status = 1;
  }
  dcm_master_free(cli.master);
  dcm__log_close(&cli.log);
  dcm__config_free(&cfg);
  return status;
}
