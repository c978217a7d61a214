/*
 * agent.h: the CONTROL agent's internal structs and the calls between its
 * parts: the WebSocket client transport (client.c), the cluster processes
 * (clusters.c), the processes that escape a cluster's process group
 * (reaper.c), the identify endpoint (identify.c), the store of the shards'
 * Discord sessions (sessions.c), the walk over the MASTERs (masters.c) and
 * the protocol and lifecycle state machine (agent.c).
 * Ownership: the agent owns at most one client connection at a time and
 * every cluster; each is freed only in its handles' close callbacks.
 * Depends on libuv, http-parser and the core's ws.h, log.h and json.h.
 */
#ifndef DCM_CTL_AGENT_H
#define DCM_CTL_AGENT_H

#include <http_parser.h>
#include <lua.h>
#include <stdint.h>
#include <uv.h>

#include "log.h"
#include "masters.h"
#include "packets.h"
#include "plan.h"
#include "protocol.h"
#include "outq.h"
#include "sessions.h"
#include "tls.h"
#include "ws.h"

#define DCM_CTL_MAX_MESSAGE (1u << 20) /* protocol v1's bound */
#define DCM_CTL_MAX_OUTBOUND (4u << 20)
#define DCM_CTL_HEAD_MAX 8192
#define DCM_CTL_RESTARTS 3 /* restarts of a crashed cluster before it is failed */
#define DCM_CTL_MAX_CLUSTERS 256      /* --max-clusters default */
#define DCM_CTL_MAX_CLUSTERS_LIMIT 4096 /* --max-clusters' largest value */
#define DCM_CTL_SPAWNS_PER_TURN 16    /* cluster processes started per loop turn */

typedef struct dcm__agent_s dcm__agent_t;
typedef struct dcm__client_s dcm__client_t;
typedef struct dcm__cluster_s dcm__cluster_t;

/* ---- configuration (main.c fills it) ------------------------------------ */

typedef struct {
  /* MASTERs in the order given (--master, DISCLUSTER_MASTER); at least one */
  dcm__ctl_url_t masters[DCM_CTL_MASTERS_MAX];
  size_t nmasters;
  char id[129];
  int standby;
  const char *cluster_command;
  size_t shards_per_cluster; /* 10 */
  size_t max_clusters;       /* 256: clusters (processes) at once, beyond: over_cap */
  double retry;              /* 30 s: the cap of the reconnect backoff */
  double drain_timeout;      /* 30 s */
  double stop_timeout;       /* 5 s from SIGTERM to SIGKILL for a cluster */
  double restart_backoff;    /* 1 s, doubled per restart */
  double connect_timeout;    /* 10 s for TCP connect + upgrade + initialise */
  double lease_timeout;      /* 0 = off: stop the clusters after this long without MASTER */
  int identify_port;         /* the identify endpoint's port on 127.0.0.1; 0 = any */
  int metrics_port;          /* GET /metrics on 127.0.0.1; 0 = any, -1 = off */
  const char *auth;          /* shared secret or NULL; never logged */
  struct ssl_ctx_st *tls_ctx; /* wss://: verifies MASTER (--ca-file or the system store) */
} dcm__ctl_config_t;

/* ---- the WebSocket client (client.c) ------------------------------------ */

typedef enum {
  DCM_CLIENT_RESOLVING,
  DCM_CLIENT_CONNECTING,
  DCM_CLIENT_HANDSHAKE, /* TLS */
  DCM_CLIENT_UPGRADING,
  DCM_CLIENT_OPEN,
  DCM_CLIENT_CLOSING
} dcm__client_phase;

struct dcm__client_s {
  dcm__agent_t *a;
  const dcm__ctl_url_t *url; /* the MASTER this attempt is for */
  dcm__client_phase phase;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_tcp_t tcp;
  uv_timer_t timer; /* connect/upgrade deadline, idle deadline, close linger */
  int gai_pending, tcp_open, handles;
  char head[DCM_CTL_HEAD_MAX];
  size_t headlen;
  char accept[32]; /* the Sec-WebSocket-Accept we expect */
  dcm__ws_t ws;
  int ws_ready;
  dcm__tls_t tls; /* wss:// only */
  int tls_on;
  dcm__outq_t out; /* ciphertext under TLS */
  uint64_t idle_ms; /* 0 = no idle deadline */
  uint64_t last_rx;
  dcm__ctl_ending_t end; /* follower refusal, 4020 and the leader they name */
  char why[1024]; /* why it closed, for the log (names a leader URL at most) */
  char rbuf[65536];
  char pbuf[16384]; /* one TLS record's plaintext */
};

/* Starts one connection attempt to url; on_closed always follows, exactly
 * once. */
int dcm__client_start(dcm__agent_t *a, const dcm__ctl_url_t *url, dcm__client_t **out);
int dcm__client_send(dcm__client_t *c, const char *text, size_t len);
/* Close handshake with code and reason, then the socket (bounded linger). */
void dcm__client_close(dcm__client_t *c, uint16_t code, const char *reason);
/* Drops the connection now. */
void dcm__client_abort(dcm__client_t *c, const char *why);
/* Silence from MASTER longer than ms closes the connection; 0 = none. */
void dcm__client_set_idle(dcm__client_t *c, uint64_t ms);

/* ---- clusters (clusters.c) ---------------------------------------------- */

typedef enum {
  DCM_CLUSTER_WAITING,  /* to start once an overlapping old cluster is gone */
  DCM_CLUSTER_STARTING, /* running, READY not printed yet */
  DCM_CLUSTER_READY,
  DCM_CLUSTER_BACKOFF,  /* crashed; restarts when the timer fires */
  DCM_CLUSTER_FAILED,   /* crashed more than DCM_CTL_RESTARTS times */
  DCM_CLUSTER_STOPPING  /* SIGTERM sent (SIGKILL after stop_timeout) */
} dcm__cluster_state;

/*
 * A run of a cluster is its command's process (the leader, started by
 * libuv in a new session), the process group it leads, and every process
 * of it that the subreaper adopted (reaper.c). The run is over only when
 * all of them are gone; a leader that exits while the rest runs on
 * leaves the cluster in its state ("lingering").
 */
struct dcm__cluster_s {
  dcm__agent_t *a;
  dcm__cluster_t *prev, *next;
  int id; /* CLUSTER_ID */
  int *shards;
  size_t nshards;
  dcm__cluster_state state;
  int restarts;
  int exit_status, term_signal; /* of the leader's last exit */
  uint64_t ready_at;
  uv_timer_t timer; /* backoff, stop deadline, stdout drain */
  uv_process_t proc;
  uv_pipe_t out; /* the cluster's stdout */
  uv_pipe_t err; /* its stderr */
  uv_pipe_t in;  /* its stdin: EOF tells it the agent is gone */
  int queued;    /* to be spawned by the starter (one loop turn at a time) */
  int running;   /* the leader has not exited: libuv reaps it, never reaper.c */
  int live;      /* this run is not over */
  int group_left; /* the leader's process group may still have members */
  int lingering_logged;
  int stop_level; /* this run got 0 nothing, 1 SIGTERM, 2 SIGKILL */
  size_t norphans; /* adopted processes of this run not yet reaped */
  int run_handles; /* proc/out/err/in still open */
  int out_eof;     /* stdout and stderr both read to the end (or cut off) */
  int out_closed, err_closed;
  int exited, destroying;
  int handles;     /* every open handle, timer included */
  pid_t pid;       /* the leader, and the id of its process group */
  int fatal_restart; /* printed a FATAL that is not fatal: restarting it */
  unsigned epoch;    /* the agent's bot epoch when created: SESSION lines of an
                        older bot (token or shard count changed) are ignored */
  /* this run's key (DISCLUSTER_IDENTIFY_URL); "" when no run is live */
  char key[DCM_CTL_KEY_HEX + 1];
  dcm__ctl_lines_t lines;     /* stdout */
  dcm__ctl_lines_t err_lines; /* stderr */
  char rbuf[4096];
};

/* Creates a cluster for sorted shards (copied) and queues its start: the
 * starter spawns at most DCM_CTL_SPAWNS_PER_TURN per loop turn, and none
 * that shares a shard with a cluster still stopping. */
int dcm__cluster_create(dcm__agent_t *a, const int *shards, size_t n);
void dcm__cluster_stop(dcm__cluster_t *cl);
/* Sends SIGKILL to every cluster that is stopping (second signal). */
void dcm__clusters_kill_all(dcm__agent_t *a);
/* Runs the starter on the next loop turns (a stopping cluster is gone, a
 * restart is due). */
void dcm__clusters_start_waiting(dcm__agent_t *a);
/* Restarts a failed cluster with a fresh restart budget. */
void dcm__cluster_retry(dcm__cluster_t *cl);
/* A running cluster that reported a FATAL that does not stop the fleet:
 * SIGTERM after a grace unless it exits first; the exit takes the crash
 * path (restart with backoff). */
void dcm__cluster_restart_soon(dcm__cluster_t *cl);
/* After a reaper sweep or poll: ends the runs with nothing left. Returns 1
 * while a run lingers (its leader exited, something of it still runs);
 * *urgent when one of those is being stopped. */
int dcm__clusters_check_runs(dcm__agent_t *a, int *urgent);
/* Starts the starter's handle (agent start) and closes it (exit). */
void dcm__clusters_init(dcm__agent_t *a);
void dcm__clusters_close(dcm__agent_t *a);
const char *dcm__cluster_state_name(dcm__cluster_state s);

/* ---- adopted processes (reaper.c) --------------------------------------- */

/*
 * The agent is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever a
 * cluster starts and leaves behind (a double fork, setsid) becomes the
 * agent's child instead of init's. A sweep reads /proc for the agent's
 * children that libuv did not spawn (libuv waits for its own pids only, so
 * these waitpid() calls never take its children), reaps the dead ones and
 * adopts the living: each is matched to a live run by its process group
 * or by the run key in its environment, and signalled along with that
 * run. One that matches no run is stopped (SIGTERM, SIGKILL after
 * --stop-timeout); children the agent already had when it started are
 * left alone (only reaped). Sweeps follow SIGCHLD, stops and leader exits,
 * at most one per DCM_CTL_SWEEP_MIN_MS; at most DCM_CTL_ORPHANS_MAX
 * adopted processes are tracked, any beyond get SIGKILL at once.
 */
#define DCM_CTL_ORPHANS_MAX 4096
#define DCM_CTL_STR_(x) #x
#define DCM_CTL_STR(x) DCM_CTL_STR_(x)
#define DCM_CTL_SWEEP_MIN_MS 50

typedef struct {
  pid_t pid;
  dcm__cluster_t *cl; /* NULL: matches no run; it is being stopped */
  int in_group;       /* in cl's process group: the group's signals reach it */
  int sent;           /* 0, 1 SIGTERM, 2 SIGKILL */
  uint64_t kill_at;   /* without a cluster: when SIGKILL follows */
  unsigned seen;      /* sweep generation */
} dcm__orphan_t;

typedef struct {
  dcm__agent_t *a;
  uv_signal_t sigchld;
  uv_timer_t sweep_timer; /* the next sweep (coalesced) */
  uv_timer_t poll_timer;  /* lingering runs' groups, SIGKILL deadlines */
  int open;               /* handles initialised and not closed */
  int subreaper;          /* prctl succeeded */
  dcm__orphan_t *orphans; /* sorted by pid */
  size_t norphans, cap;
  pid_t *before;          /* children the agent had at start: not its clusters' */
  size_t nbefore;
  unsigned generation;
  uint64_t last_sweep;
  uint64_t over_limit;    /* processes killed because the table was full */
} dcm__reaper_t;

void dcm__reaper_init(dcm__reaper_t *r, dcm__agent_t *a);
/* Becomes the subreaper and watches SIGCHLD; 0 or a libuv/errno error. */
int dcm__reaper_start(dcm__reaper_t *r);
/* A sweep soon (coalesced). */
void dcm__reaper_kick(dcm__reaper_t *r);
/* Signals the adopted processes of cl's run up to cl->stop_level. */
void dcm__reaper_signal(dcm__reaper_t *r, dcm__cluster_t *cl);
/* cl is being freed: its adopted processes, if any, lose their run. */
void dcm__reaper_forget(dcm__reaper_t *r, dcm__cluster_t *cl);
/* Sweeps now; 1 if the agent has no child left that libuv does not own. */
int dcm__reaper_idle(dcm__reaper_t *r);
void dcm__reaper_close(dcm__reaper_t *r);

/* ---- the identify endpoint (identify.c) --------------------------------- */

/*
 * A loopback HTTP server for the clusters: GET /<run key>?shard=N waits for
 * MASTER's grant of shard N. Bounds: DCM_CTL_IDENT_MAX_CONNS connections;
 * up to DCM_CTL_IDENT_OVERFLOW more are answered 503 and closed, past that
 * they are closed unanswered; a request head is at most
 * DCM_CTL_IDENT_HEAD_MAX bytes and must arrive within DCM_CTL_IDENT_HEAD_MS;
 * a waiting client may send DCM_CTL_IDENT_EXTRA_MAX more bytes (ignored).
 */
#define DCM_CTL_IDENT_MAX_CONNS 1024
#define DCM_CTL_IDENT_OVERFLOW 64
#define DCM_CTL_IDENT_HEAD_MAX 8192
#define DCM_CTL_IDENT_HEAD_MS 10000
#define DCM_CTL_IDENT_EXTRA_MAX 8192
#define DCM_CTL_IDENT_URL_MAX 512

typedef struct dcm__ident_conn_s dcm__ident_conn_t;

typedef struct {
  dcm__agent_t *a;
  uv_tcp_t tcp;
  int listening; /* tcp initialised and not yet closed */
  int port;
  dcm__ident_conn_t *conns; /* every open connection */
  size_t nconns, noverflow;
  uint64_t refused, last_refusal_log;
  char rbuf[16384]; /* shared: each read is consumed in its callback */
} dcm__ident_t;

/* Listens on 127.0.0.1:port (0 = any free port); 0 or a libuv error. */
int dcm__ident_start(dcm__ident_t *s, dcm__agent_t *a, int port);
/* Binds tcp to 127.0.0.1:port (0: any) and listens; *bound_port is the port.
   On error *listening tells the caller's stop to close the handle. */
int dcm__ctl_listen_loopback(uv_loop_t *loop, uv_tcp_t *tcp, void *data, int port, int backlog,
                             uv_connection_cb cb, int *listening, int *bound_port);
/* Closes the listener and every connection (the agent is exiting). */
void dcm__ident_stop(dcm__ident_t *s);
/* A fresh run key (uv_random); 0 or a libuv error. */
int dcm__ident_new_key(char key[DCM_CTL_KEY_HEX + 1]);
/* The cluster is stopping or its run ended: its waiting requests get 503
 * and are released at MASTER. */
void dcm__ident_cluster_gone(dcm__ident_t *s, dcm__cluster_t *cl);
/* grant from MASTER: 200 to the request waiting for shard, else release. */
void dcm__ident_granted(dcm__ident_t *s, int shard);
/* error 4007 for shard: its waiting request gets 403. */
void dcm__ident_refused(dcm__ident_t *s, int shard);
/* A new session: asks MASTER again for every waiting request. */
void dcm__ident_resend(dcm__ident_t *s);
/* Requests waiting for MASTER's grant (for /metrics). */
size_t dcm__ident_waiting(const dcm__ident_t *s);

/* ---- GET /metrics (metrics.c) ------------------------------------------- */

/*
 * --metrics-port: a loopback HTTP server answering GET /metrics in the
 * Prometheus text format. Bounds: DCM_CTL_METRICS_MAX_CONNS connections
 * (more are closed at once), a request head of DCM_CTL_METRICS_HEAD_MAX
 * bytes within DCM_CTL_METRICS_HEAD_MS.
 */
#define DCM_CTL_METRICS_MAX_CONNS 16
#define DCM_CTL_METRICS_HEAD_MAX 8192
#define DCM_CTL_METRICS_HEAD_MS 5000

typedef struct dcm__ctl_mconn_s dcm__ctl_mconn_t;

typedef struct {
  dcm__agent_t *a;
  uv_tcp_t tcp;
  int listening; /* tcp initialised and not yet closed */
  int port;
  dcm__ctl_mconn_t *conns;
  size_t nconns;
  char rbuf[4096]; /* shared: each read is consumed in its callback */
} dcm__ctl_metrics_t;

/* Listens on 127.0.0.1:port (0 = any free port); 0 or a libuv error. */
int dcm__ctl_metrics_start(dcm__ctl_metrics_t *s, dcm__agent_t *a, int port);
/* Closes the listener and every connection. */
void dcm__ctl_metrics_stop(dcm__ctl_metrics_t *s);

/* ---- the agent (agent.c) ------------------------------------------------ */

typedef enum {
  DCM_AGENT_RUNNING,
  DCM_AGENT_DRAINING, /* offload sent; waiting for an empty connect */
  DCM_AGENT_STOPPING  /* stopping clusters, then the connection, then exit */
} dcm__agent_mode;

struct dcm__agent_s {
  uv_loop_t *loop;
  dcm__log_t log;
  dcm__ctl_config_t cfg;
  lua_State *json;
  char **environ_base; /* the agent's environment minus the cluster variables */
  /* connection */
  dcm__client_t *client; /* NULL between attempts */
  int session;           /* initialise received on the current connection */
  int empty_sent;        /* a heartbeat on it said failed_clusters []: while
                            nothing fails the next ones leave it out */
  int shutdown_received;
  uv_timer_t retry_timer;
  uv_timer_t heartbeat_timer;
  uv_timer_t drain_timer;
  uv_timer_t report_timer; /* an early heartbeat: failures, shards over the cap */
  uv_timer_t sessions_timer; /* the next coalesced `sessions` packet */
  uv_timer_t lease_timer;    /* --lease-timeout: MASTER unreachable this long */
  uv_signal_t sigterm, sigint;
  /* the walk over cfg.masters (high availability) */
  dcm__ctl_masters_t masters;
  /* from initialise */
  char *token;
  int shard_count;
  int max_concurrency;
  uint64_t heartbeat_ms;
  char gateway_url[DCM_CTL_GATEWAY_URL_MAX + 1];
  unsigned epoch; /* bumped when the token or shard count changes */
  /* the latest session per shard, and when `sessions` was last sent */
  dcm__ctl_sessions_t sessions;
  uint64_t sessions_last;
  /* shards a connect removed whose `stopped` is not sent yet (sorted):
   * still held by a cluster that is stopping, or MASTER not connected */
  int *removing;
  size_t nremoving;
  /* assignment */
  int *assigned;
  size_t nassigned;
  int ready_pending;
  dcm__cluster_t *clusters, *clusters_tail; /* in creation order */
  size_t nclusters;         /* cluster structs not yet freed */
  uint64_t *ids;            /* CLUSTER_IDs in use, a bitmap */
  size_t nids_words;
  uv_idle_t starter;        /* spawns queued clusters, a few per loop turn */
  int starter_open;
  /* shards of the assignment beyond --max-clusters (sorted): not started,
   * reported in failed_clusters as over_cap */
  int *over;
  size_t nover;
  /* a fatal to relay once connected */
  int fatal_pending, fatal_code, fatal_shard;
  char fatal_message[DCM_MESSAGE_MAX + 1];
  dcm__ident_t ident;
  dcm__ctl_metrics_t metrics;
  uint64_t restarts_total; /* crashed clusters restarted, for /metrics */
  dcm__reaper_t reaper;
  dcm__agent_mode mode;
  int exit_status;
  int closed; /* every handle asked to close */
};

int dcm__agent_init(dcm__agent_t *a, uv_loop_t *loop, const dcm__ctl_config_t *cfg,
                    dcm_log_level level, dcm_log_format format);
void dcm__agent_start(dcm__agent_t *a);
/* Frees what the agent owns after the loop ran dry. */
void dcm__agent_free(dcm__agent_t *a);

/* From client.c */
void dcm__agent_on_open(dcm__agent_t *a);
void dcm__agent_on_message(dcm__agent_t *a, const char *msg, size_t len);
void dcm__agent_on_closed(dcm__agent_t *a, const dcm__ctl_ending_t *end, const char *why);

/* From clusters.c */
void dcm__agent_cluster_changed(dcm__agent_t *a, dcm__cluster_t *cl);
void dcm__agent_cluster_failed(dcm__agent_t *a, dcm__cluster_t *cl);
void dcm__agent_cluster_fatal(dcm__agent_t *a, dcm__cluster_t *cl, int code,
                              const char *msg, size_t len, int shard);
void dcm__agent_cluster_freed(dcm__agent_t *a);
/* A valid SESSION line of cl (dcm__ctl_parse_session). */
void dcm__agent_cluster_session(dcm__agent_t *a, dcm__cluster_t *cl, const dcm__session_t *s);
/* A run of cl is over and its stdout read: its last SESSION lines are in. */
void dcm__agent_cluster_ended(dcm__agent_t *a, dcm__cluster_t *cl);
/* From reaper.c: a sweep or poll ended (maybe the agent can exit now). */
void dcm__agent_reaper_changed(dcm__agent_t *a);

/* From identify.c: identify or release {"shard": shard}, sent only while a
 * session is up (MASTER forgets a connection's requests when it closes). */
void dcm__agent_send_shard_op(dcm__agent_t *a, int op, int shard);

/* 15-minute load average, 0 when unknown. */
double dcm__ctl_loadavg(void);
int dcm__ctl_cores(void);

#endif
