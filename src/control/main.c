/*
 * main.c: the discluster-control CLI: flags and environment into a config,
 * one agent on a private loop, exit status. Depends on agent.h.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "discluster/master.h"
#include "protocol.h"
#include "tls.h"

static const char usage[] =
    "Usage: discluster-control --master wss://HOST[:PORT][/PATH]... --cluster-command CMD\n"
    "                          [OPTION...]\n"
    "\n"
    "The CONTROL agent of one bot machine: connects to a discluster MASTER\n"
    "(protocol v1) and runs the shards it assigns as cluster processes.\n"
    "\n"
    "      --master URL              MASTER's address, wss:// (TLS) or ws://; the port\n"
    "                                defaults to 8642. Repeat it (up to 16) for the\n"
    "                                MASTERs of a high-availability group: the agent\n"
    "                                follows the leader. Without it, DISCLUSTER_MASTER\n"
    "                                (a comma-separated list)\n"
    "      --ca-file FILE            with wss://: trust the CAs in FILE (PEM) instead\n"
    "                                of the system store (env DISCLUSTER_CA_FILE)\n"
    "      --id ID                   machine id, [A-Za-z0-9._:-]{1,128} (the hostname)\n"
    "      --standby                 a spare: no shards unless another machine fails\n"
    "      --cluster-command CMD     run with /bin/sh -c for each cluster\n"
    "                                (env DISCLUSTER_CLUSTER_COMMAND)\n"
    "      --shards-per-cluster N    shards per cluster process; rounded up to a\n"
    "                                multiple of max_concurrency (10)\n"
    "      --max-clusters N          clusters (processes) at once, 1 to 4096 (256);\n"
    "                                shards beyond are reported to MASTER as failed\n"
    "      --retry S                 longest wait between connection attempts; the\n"
    "                                wait starts near 1 s and doubles (30). With\n"
    "                                several MASTERs the next one is tried at once;\n"
    "                                the wait comes after all failed (200-500 ms\n"
    "                                while a follower reports an election)\n"
    "      --drain-timeout S         on SIGTERM, how long to wait for MASTER to move\n"
    "                                the shards away (30)\n"
    "      --stop-timeout S          SIGTERM to SIGKILL for a cluster (5)\n"
    "      --restart-backoff S       first restart delay of a crashed cluster, doubled\n"
    "                                for each of its 3 restarts (1)\n"
    "      --connect-timeout S       TCP connect plus upgrade plus initialise (10)\n"
    "      --lease-timeout S         stop every cluster after S seconds without a\n"
    "                                session with MASTER (0, the default: never).\n"
    "                                Off, clusters keep running while MASTER\n"
    "                                restarts; on, a machine cut off from MASTER\n"
    "                                never keeps running shards MASTER moved away\n"
    "      --identify-port N         the clusters' identify endpoint listens on\n"
    "                                127.0.0.1:N (0, the default: any free port)\n"
    "      --metrics-port N          serve GET /metrics (Prometheus text format) on\n"
    "                                127.0.0.1:N; 0: any free port, logged (off)\n"
    "      --log-format text|json    log line format (text); json wraps the clusters'\n"
    "                                stdout and stderr lines too\n"
    "      --log-level debug|info|warn|error\n"
    "                                lowest level logged (info)\n"
    "  -h, --help                    print this help and exit\n"
    "  -V, --version                 print the version and exit\n"
    "\n"
    "Times are seconds and may be fractions (0.25). The shared secret comes from\n"
    "DISCLUSTER_AUTH and goes in the upgrade's Authorization header. With wss://\n"
    "MASTER's certificate chain and host name are verified; a failure is logged\n"
    "and retried, never answered by falling back to plaintext.\n"
    "Clusters get SHARD_IDS (comma-separated), SHARD_COUNT, CLUSTER_ID,\n"
    "DISCORD_TOKEN, MAX_CONCURRENCY, DISCORD_GATEWAY_URL,\n"
    "DISCLUSTER_IDENTIFY_URL and, when sessions of their shards are known,\n"
    "SHARD_SESSIONS (JSON: shard id -> session_id, seq, resume_url; RESUME\n"
    "those); before each IDENTIFY a cluster asks\n"
    "GET $DISCLUSTER_IDENTIFY_URL?shard=N, answered 200 when MASTER grants it.\n"
    "A line READY on stdout means connected; a line\n"
    "SESSION <shard> <session_id> <seq> <resume_url> reports a shard's session\n"
    "(relayed to MASTER); a line\n"
    "FATAL <code> [shard=<id>] <message> stops the whole fleet when the code is\n"
    "4004 or 4010-4014, and otherwise restarts that cluster.\n"
    "Signals: SIGTERM/SIGINT offload the shards to other machines, then stop (a\n"
    "second one stops at once). Exit status: 0 after a stop, 1 on a runtime\n"
    "error, 2 on bad usage.\n";

enum {
  OPT_MASTER = 256, OPT_ID, OPT_STANDBY, OPT_COMMAND, OPT_PER, OPT_MAXCL, OPT_RETRY, OPT_DRAIN,
  OPT_STOP, OPT_BACKOFF, OPT_CONNECT, OPT_IPORT, OPT_LFORMAT, OPT_LLEVEL, OPT_LEASE,
  OPT_MPORT, OPT_CAFILE
};

static const struct option longopts[] = {
    {"master", required_argument, NULL, OPT_MASTER},
    {"ca-file", required_argument, NULL, OPT_CAFILE},
    {"id", required_argument, NULL, OPT_ID},
    {"standby", no_argument, NULL, OPT_STANDBY},
    {"cluster-command", required_argument, NULL, OPT_COMMAND},
    {"shards-per-cluster", required_argument, NULL, OPT_PER},
    {"max-clusters", required_argument, NULL, OPT_MAXCL},
    {"retry", required_argument, NULL, OPT_RETRY},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN},
    {"stop-timeout", required_argument, NULL, OPT_STOP},
    {"restart-backoff", required_argument, NULL, OPT_BACKOFF},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT},
    {"lease-timeout", required_argument, NULL, OPT_LEASE},
    {"identify-port", required_argument, NULL, OPT_IPORT},
    {"metrics-port", required_argument, NULL, OPT_MPORT},
    {"log-format", required_argument, NULL, OPT_LFORMAT},
    {"log-level", required_argument, NULL, OPT_LLEVEL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0}};

static int fail(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "discluster-control: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  return -1;
}

static int parse_seconds(const char *flag, const char *v, double min, double *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(d) || d < min || d > 86400.0 * 365)
    return fail("--%s: '%s' is not a usable number of seconds", flag, v);
  *out = d;
  return 0;
}

/* Adds one MASTER URL (n bytes of text) to the list; where says where it
 * came from for the error ("--master", "DISCLUSTER_MASTER"). */
static int add_master(dcm__ctl_config_t *c, const char *where, const char *text, size_t n) {
  char err[96], shown[DCM_CTL_URL_MAX + 1];
  dcm__ctl_url_t u;
  snprintf(shown, sizeof shown, "%.*s", (int)(n < DCM_CTL_URL_MAX ? n : DCM_CTL_URL_MAX), text);
  if (n == 0) return fail("%s: an empty MASTER URL%s", where, "");
  if (c->nmasters == DCM_CTL_MASTERS_MAX) {
    fprintf(stderr, "discluster-control: %s: more than %d MASTER URLs\n", where,
            DCM_CTL_MASTERS_MAX);
    return -1;
  }
  if (dcm__ctl_parse_url(text, n, &u, err, sizeof err) != 0) {
    fprintf(stderr, "discluster-control: %s %s: %s%s\n", where, shown, err,
            memchr(text, ',', n) && strcmp(where, "--master") == 0
                ? " (one URL per --master: repeat the flag; DISCLUSTER_MASTER takes a "
                  "comma-separated list)" : "");
    return -1;
  }
  for (size_t i = 0; i < c->nmasters; i++)
    if (dcm__ctl_url_same(&c->masters[i], &u))
      return fail("%s %s: the same MASTER is listed twice", where, shown);
  c->masters[c->nmasters++] = u;
  return 0;
}

/* DISCLUSTER_MASTER: URLs separated by commas (blanks around them ignored). */
static int add_master_list(dcm__ctl_config_t *c, const char *list) {
  const char *p = list;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    while (n > 0 && (*p == ' ' || *p == '\t')) p++, n--;
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    if (add_master(c, "DISCLUSTER_MASTER", p, n) != 0) return -1;
    if (e == NULL) return 0;
    p = e + 1;
  }
}

/* The hostname, with characters outside the id alphabet replaced by '-'. */
static void default_id(char *out, size_t n) {
  char host[256];
  size_t len = sizeof host;
  if (uv_os_gethostname(host, &len) != 0 || len == 0) snprintf(host, sizeof host, "control");
  snprintf(out, n, "%.128s", host);
  for (char *s = out; *s; s++)
    if (!dcm__valid_id(s, 1)) *s = '-';
}

static int any_tls(const dcm__ctl_config_t *c) {
  for (size_t i = 0; i < c->nmasters; i++)
    if (c->masters[i].tls) return 1;
  return 0;
}

typedef struct {
  dcm__ctl_config_t cfg;
  dcm_log_level level;
  dcm_log_format format;
  const char *ca_file;
} args_t;

/* Returns 0 to run, 1 to exit 0 (help, version), -1 on bad usage. */
static int parse_args(int argc, char **argv, args_t *a) {
  const char *master = getenv("DISCLUSTER_MASTER");
  const char *command = getenv("DISCLUSTER_CLUSTER_COMMAND");
  const char *ca_file = getenv("DISCLUSTER_CA_FILE");
  dcm__ctl_config_t *c = &a->cfg;
  int opt;
  long per;
  char *end;
  memset(a, 0, sizeof *a);
  c->shards_per_cluster = 10;
  c->max_clusters = DCM_CTL_MAX_CLUSTERS;
  c->retry = 30;
  c->drain_timeout = 30;
  c->stop_timeout = 5;
  c->restart_backoff = 1;
  c->connect_timeout = 10;
  c->metrics_port = -1;
  a->level = DCM_LOG_INFO;
  a->format = DCM_LOG_TEXT;
  default_id(c->id, sizeof c->id);
  opterr = 0;
  while ((opt = getopt_long(argc, argv, ":hV", longopts, NULL)) != -1) {
    const char *v = optarg;
    switch (opt) {
      case 'h':
        fputs(usage, stdout);
        return 1;
      case 'V':
        printf("discluster-control %s (protocol %d)\n", DCM_VERSION, DCM_PROTOCOL_VERSION);
        return 1;
      case OPT_MASTER:
        if (add_master(c, "--master", v, strlen(v)) != 0) return -1;
        break;
      case OPT_CAFILE: ca_file = v; break;
      case OPT_ID:
        if (!dcm__valid_id(v, strlen(v)))
          return fail("--id '%s': must be 1-128 characters of [A-Za-z0-9._:-]%s", v, "");
        snprintf(c->id, sizeof c->id, "%s", v);
        break;
      case OPT_STANDBY: c->standby = 1; break;
      case OPT_COMMAND: command = v; break;
      case OPT_PER:
        errno = 0;
        per = strtol(v, &end, 10);
        if (errno || end == v || *end || per < 1 || per > 100000)
          return fail("--shards-per-cluster '%s': must be an integer from 1 to 100000%s", v, "");
        c->shards_per_cluster = (size_t)per;
        break;
      case OPT_MAXCL:
        errno = 0;
        per = strtol(v, &end, 10);
        if (errno || end == v || *end || per < 1 || per > DCM_CTL_MAX_CLUSTERS_LIMIT)
          return fail("--max-clusters '%s': must be an integer from 1 to %s", v,
                      DCM_CTL_STR(DCM_CTL_MAX_CLUSTERS_LIMIT));
        c->max_clusters = (size_t)per;
        break;
      case OPT_RETRY: if (parse_seconds("retry", v, 0.01, &c->retry)) return -1; break;
      case OPT_DRAIN: if (parse_seconds("drain-timeout", v, 0, &c->drain_timeout)) return -1; break;
      case OPT_STOP: if (parse_seconds("stop-timeout", v, 0, &c->stop_timeout)) return -1; break;
      case OPT_BACKOFF:
        if (parse_seconds("restart-backoff", v, 0, &c->restart_backoff)) return -1;
        break;
      case OPT_CONNECT:
        if (parse_seconds("connect-timeout", v, 0.01, &c->connect_timeout)) return -1;
        break;
      case OPT_LEASE:
        if (parse_seconds("lease-timeout", v, 0, &c->lease_timeout)) return -1;
        break;
      case OPT_IPORT:
        errno = 0;
        per = strtol(v, &end, 10);
        if (errno || end == v || *end || per < 0 || per > 65535)
          return fail("--identify-port '%s': must be a port from 0 to 65535%s", v, "");
        c->identify_port = (int)per;
        break;
      case OPT_MPORT:
        errno = 0;
        per = strtol(v, &end, 10);
        if (errno || end == v || *end || per < 0 || per > 65535)
          return fail("--metrics-port '%s': must be a port from 0 to 65535%s", v, "");
        c->metrics_port = (int)per;
        break;
      case OPT_LFORMAT:
        if (strcmp(v, "text") == 0) a->format = DCM_LOG_TEXT;
        else if (strcmp(v, "json") == 0) a->format = DCM_LOG_JSON;
        else return fail("--log-format '%s': must be text or json%s", v, "");
        break;
      case OPT_LLEVEL: {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        int found = -1;
        for (int i = 0; i < 4; i++)
          if (strcmp(v, names[i]) == 0) found = i;
        if (found < 0) return fail("--log-level '%s': must be debug, info, warn or error%s", v, "");
        a->level = (dcm_log_level)found;
        break;
      }
      case ':':
        return fail("%s needs a value%s", argv[optind - 1], "");
      default:
        return fail("unknown option '%s' (see --help)%s", argv[optind - 1], "");
    }
  }
  if (optind < argc) return fail("unexpected argument '%s' (see --help)%s", argv[optind], "");
  if (c->nmasters == 0) {
    if (master == NULL || *master == '\0')
      return fail("--master is required (see --help)%s%s", "", "");
    if (add_master_list(c, master) != 0) return -1;
  }
  if (command == NULL || *command == '\0')
    return fail("--cluster-command is required (see --help)%s%s", "", "");
  if (ca_file && *ca_file && !any_tls(c))
    return fail("--ca-file %s: only used with a wss:// --master%s", ca_file, "");
  a->ca_file = ca_file && *ca_file ? ca_file : NULL;
  c->cluster_command = command;
  return 0;
}

static void report_handle(uv_handle_t *h, void *arg) {
  dcm__error(arg, NULL, "handle still open at exit: %s", uv_handle_type_name(uv_handle_get_type(h)));
}

int main(int argc, char **argv) {
  args_t args;
  dcm__agent_t agent;
  uv_loop_t loop;
  char *auth = NULL;
  int status = 0;

  signal(SIGPIPE, SIG_IGN);
  int r = parse_args(argc, argv, &args);
  if (r != 0) return r > 0 ? (fflush(stdout) == 0 ? 0 : 1) : 2;
  const char *secret = getenv("DISCLUSTER_AUTH");
  if (secret && *secret) {
    if (strpbrk(secret, "\r\n")) {
      fprintf(stderr, "discluster-control: DISCLUSTER_AUTH must be one line\n");
      return 2;
    }
    auth = strdup(secret);
    if (auth == NULL) return 1;
    args.cfg.auth = auth;
  }
  if (any_tls(&args.cfg)) {
    char err[512];
    if (dcm__tls_client_ctx(args.ca_file, &args.cfg.tls_ctx, err, sizeof err) != 0) {
      fprintf(stderr, "discluster-control: %s\n", err);
      if (auth) {
        explicit_bzero(auth, strlen(auth));
        free(auth);
      }
      return 2;
    }
  }
  if (uv_loop_init(&loop) != 0) return 1;
  r = dcm__agent_init(&agent, &loop, &args.cfg, args.level, args.format);
  if (r != 0) {
    dcm__error(&agent.log, NULL, "%s", dcm_strerror(r)); /* the log is set up first */
    status = 1; /* init made no handles: it fails before them */
  } else {
    dcm__agent_start(&agent);
    uv_run(&loop, UV_RUN_DEFAULT);
    status = agent.exit_status;
  }
  r = uv_loop_close(&loop);
  if (r != 0) {
    uv_walk(&loop, report_handle, &agent.log);
    if (status == 0) status = 1;
  }
  dcm__agent_free(&agent);
  if (args.cfg.tls_ctx) dcm__tls_ctx_free(args.cfg.tls_ctx);
  if (auth) {
    memset(auth, 0, strlen(auth));
    free(auth);
  }
  return status;
}
