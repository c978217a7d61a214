/*
 * discluster/master.h: the public API of the Discluster MASTER core.
 *
 * A master coordinates the CONTROL agents of one Discord bot over protocol v1
 * (WebSocket, JSON). It runs on a uv_loop_t owned by the embedder and keeps
 * no global mutable state, so several masters may share a process.
 * Depends on libuv only at the API level.
 *
 * Functions return 0 or a negative error code; dcm_strerror() names it.
 * A function that takes a callback and fails never calls that callback.
 * Events are delivered from the loop, once per loop turn (a prepare handle),
 * never from inside a call into this library; DCM_EVENT_LISTENING arrives on
 * the first loop turn after dcm_master_start(). Events still queued when a
 * stop completes are delivered just before DCM_EVENT_STOPPED, which is last.
 * Event and stop callbacks may call dcm_master_stop(), and the stop callback
 * (or the DCM_EVENT_STOPPED event) may call dcm_master_free().
 * As with any libuv program, the embedder must ignore SIGPIPE: a CONTROL
 * that vanishes mid-write must be an error code, not a signal.
 */
#ifndef DISCLUSTER_MASTER_H
#define DISCLUSTER_MASTER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DCM_VERSION "0.1.0"
#define DCM_PROTOCOL_VERSION 1

/* Error codes. libuv's own (negative errno) codes pass through unchanged. */
enum {
  DCM_EINVAL = -30001,   /* invalid argument or option value */
  DCM_ENOMEM = -30002,   /* out of memory */
  DCM_ESTATE = -30003,   /* call not valid in the current state */
  DCM_EINSECURE = -30004, /* no CONTROL secret without no_auth, or plaintext
                             off loopback without allow_plaintext */
  DCM_EPOLICY = -30005,  /* policy failed to load, validate or run */
  DCM_EDISCORD = -30006, /* Discord REST call failed */
  DCM_EAUTH = -30007,    /* Discord rejected the bot token */
  DCM_EFATAL = -30008,   /* a CONTROL reported a fatal Discord error */
  DCM_ECANCELED = -30009, /* operation canceled by stop */
  DCM_ESTEPPED = -30010  /* lost leadership: the master stopped acting (HA) */
};

/* Exit status of a master that stepped down as leader: start a fresh one,
   which campaigns again as a follower. */
#define DCM_EXIT_STEPPED_DOWN 75

const char *dcm_strerror(int err);

typedef enum {
  DCM_LOG_DEBUG = 0,
  DCM_LOG_INFO = 1,
  DCM_LOG_WARN = 2,
  DCM_LOG_ERROR = 3
} dcm_log_level;

typedef enum { DCM_LOG_TEXT = 0, DCM_LOG_JSON = 1 } dcm_log_format;

/* Receives each formatted log line (no trailing newline). */
typedef void (*dcm_log_cb)(dcm_log_level level, const char *line, size_t len,
                           void *arg);

/*
 * Options. Initialise with dcm_options_init(), which sets the defaults.
 * Strings are borrowed: dcm_master_new() copies what it needs.
 * Times are seconds and may be fractional.
 */
typedef struct dcm_options_s {
  const char *listen_host;    /* "127.0.0.1" */
  int listen_port;            /* 8642; 0 picks a free port */
  int shards;                 /* 0 = auto: ask Discord */
  int max_concurrency;        /* 0 = from Discord (1 with fixed shards) */
  const char *api_base;       /* "https://discord.com/api/v10" */
  const char *policy;         /* policy file; NULL = default policy */
  const char *policy_dir;     /* where default.lua lives; NULL = search */
  double policy_timeout;      /* 1: time budget (s) of a policy call, plus as much
                                 per 100,000 shards and machines passed in */
  double collect_window;      /* 45 */
  int expected_machines;      /* 0 = wait for the whole window */
  double heartbeat_interval;  /* 30 */
  double heartbeat_grace;     /* 15 */
  double reconnect_grace;     /* 30 */
  double connect_timeout;     /* 600 */
  double handshake_timeout;   /* 10: `info`, from the upgrade */
  double identify_interval;   /* 5.5: least gap between two identifies of one
                                 bucket (Discord's 5 s plus a 0.5 s margin) */
  int identify_reserve;       /* 10: identifies of the daily budget never granted */
  const char *gateway_url;    /* NULL: Discord's `url` (wss://gateway.discord.gg
                                 with fixed shards); sent in `initialise` */
  double handoff_timeout;     /* 15: a planned move waits this long at most for
                                 the sender's `stopped` before the receiver starts */
  int rebalance_batch;        /* 32: shards a rebalance moves at a time */
  const char *token;          /* Discord bot token; secret */
  const char *auth;           /* shared secret for CONTROLs (joining) and
                                 POST /rebalance; secret. NULL needs no_auth */
  dcm_log_level log_level;    /* DCM_LOG_INFO */
  dcm_log_format log_format;  /* DCM_LOG_TEXT */
  dcm_log_cb log_cb;          /* NULL = one line per call on stderr */
  void *log_arg;
  /* Bounds. */
  size_t max_message;         /* 1 MiB: larger messages close with 1009 */
  size_t max_outbound;        /* 4 MiB queued per connection, overhead counted, before it is cut */
  size_t max_head;            /* 8 KiB per HTTP request head */
  int max_unauthenticated;    /* 256 connections before `info` */
  /* At the global cap the oldest connection of the busiest address goes. */
  double head_timeout;        /* 5: the HTTP request head, from accept */
  int max_unauthenticated_per_address; /* 32 from one IPv4 address or IPv6 /64;
                                          its oldest goes past it */
  /* Transport security. */
  const char *tls_cert;       /* PEM certificate chain: serve wss:// and https:// */
  const char *tls_key;        /* PEM private key (no passphrase); with tls_cert */
  const char *status_auth;    /* read-only secret for GET /status; never opens a
                                 CONTROL session or POSTs /rebalance; secret */
  int no_auth;                /* 1: run with no CONTROL secret (loopback only) */
  int allow_plaintext;        /* 1: listen off loopback without TLS (the token
                                 then travels in cleartext); warned at start */
  /* High availability: several masters, one leader elected through etcd. */
  const char *etcd;           /* NULL: run alone. "http[s]://host:port[,...]":
                                 campaign for leadership there */
  const char *cluster;        /* "discluster": keys under /discluster/<cluster>/,
                                 so one etcd serves several bots */
  double lease_ttl;           /* 5: a dead leader is replaced after this (2-60) */
  const char *advertise_url;  /* ws[s]://host:port agents use for this master;
                                 NULL: from listen_host (not a wildcard) */
  const char *etcd_cacert;    /* PEM CA bundle for https:// etcd endpoints */
  const char *etcd_cert;      /* PEM client certificate for etcd; with etcd_key */
  const char *etcd_key;       /* its private key */
} dcm_options_t;

void dcm_options_init(dcm_options_t *opts);

typedef struct dcm_master_s dcm_master_t;

typedef enum {
  DCM_EVENT_LISTENING,       /* socket bound; message = "host:port" */
  DCM_EVENT_CONNECTED,       /* a CONTROL identified; machine set */
  DCM_EVENT_RESUMED,         /* a CONTROL reconnected inside the grace */
  DCM_EVENT_DISCONNECTED,    /* socket closed; grace started */
  DCM_EVENT_TIMED_OUT,       /* heartbeat timeout (4001) */
  DCM_EVENT_FAILED_OVER,     /* machine's shards moved elsewhere */
  DCM_EVENT_ASSIGNED,        /* machine sent a new `connect` */
  DCM_EVENT_READY,           /* machine reported `ready` */
  DCM_EVENT_STATE,           /* lifecycle state changed; message = name */
  DCM_EVENT_POLICY_RELOADED, /* code = 0 or the error of a failed reload */
  DCM_EVENT_FATAL,           /* fatal from a CONTROL or Discord; stopping */
  DCM_EVENT_STOPPED,         /* every handle closed; code = exit status */
  DCM_EVENT_LEADER,          /* elected (HA); code = epoch (low 31 bits) */
  DCM_EVENT_FOLLOWER,        /* following; message = the leader's URL or NULL */
  DCM_EVENT_STEPPED_DOWN     /* lost leadership; the stop follows */
} dcm_event_type;

typedef struct {
  dcm_event_type type;
  const char *machine; /* machine id or NULL */
  int code;            /* event specific */
  const char *message; /* event specific, may be NULL */
} dcm_event_t;

typedef void (*dcm_event_cb)(dcm_master_t *m, const dcm_event_t *ev,
                             void *arg);
typedef void (*dcm_close_cb)(dcm_master_t *m, void *arg);

/* Validates opts and allocates a master on loop. Nothing runs yet. */
int dcm_master_new(uv_loop_t *loop, const dcm_options_t *opts,
                   dcm_master_t **out);

/* Binds the listener and starts the lifecycle. cb may be NULL. */
int dcm_master_start(dcm_master_t *m, dcm_event_cb cb, void *arg);

/* Port actually bound (useful with listen_port 0). */
int dcm_master_port(const dcm_master_t *m);

/* Reloads the policy files transactionally; on error the old one stays. */
int dcm_master_reload_policy(dcm_master_t *m);

/*
 * Reloads tls_cert and tls_key transactionally: the next connection gets the
 * new pair, open ones keep theirs; on error (one log line) the old pair
 * stays. DCM_ESTATE when the master serves no TLS.
 */
int dcm_master_reload_tls(dcm_master_t *m);

/*
 * Graceful stop: sends `shutdown` to every CONTROL when send_shutdown is
 * set, closes every socket and handle, then calls cb. Stopping twice is a
 * no-op returning DCM_ESTATE.
 */
int dcm_master_stop(dcm_master_t *m, int send_shutdown, dcm_close_cb cb,
                    void *arg);

/*
 * Moves shards to what the allocation policy gives for the current fleet
 * (live machines that are neither draining nor declared standby), with
 * session handoffs, at most rebalance_batch shards at a time. DCM_ESTATE
 * before the first allocation or while stopping; DCM_EINVAL when no machine
 * can take shards. A rebalance under way starts over from the current state.
 */
int dcm_master_rebalance(dcm_master_t *m);

/* Exit status the CLI should use: 0, or non-zero after a fatal stop. */
int dcm_master_exit_status(const dcm_master_t *m);

/*
 * Frees a master that was never started, whose start failed, or whose stop
 * callback ran. After a failed start the listener may still be closing: the
 * free then completes in its close callback, so run the loop before
 * uv_loop_close().
 */
void dcm_master_free(dcm_master_t *m);

#ifdef __cplusplus
}
#endif
#endif
