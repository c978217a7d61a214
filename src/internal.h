/*
 * internal.h: the structs shared by the core's subsystems (server, session,
 * fleet, coordinator, master). Nothing here is public. Ownership: the master
 * owns connections and machines; a connection points at its machine once
 * identified, and a machine at its live connection, if any.
 */
#ifndef DCM_INTERNAL_H
#define DCM_INTERNAL_H

#include <http_parser.h>
#include <lua.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "discluster/master.h"
#include "discord.h"
#include "ha.h"
#include "identify.h"
#include "log.h"
#include "metrics.h"
#include "outq.h"
#include "policy.h"
#include "protocol.h"
#include "tls.h"
#include "ws.h"

typedef struct dcm__conn_s dcm__conn_t;
typedef struct dcm__machine_s dcm__machine_t;
typedef struct dcm__addr_s dcm__addr_t; /* unauth.c: one source address */

/* Intrusive doubly linked list node; the list head is a sentinel node. */
typedef struct dcm__link_s {
  struct dcm__link_s *prev, *next;
} dcm__link_t;

#define DCM_CONTAINER(ptr, type, field) \
  ((type *)((char *)(ptr) - offsetof(type, field)))

/* Zeroed memory that starts a cache line, for the structs whose hot fields
   are laid out by line (connection, machine); freed with free(). */
static inline void *dcm__calloc_lines(size_t size) {
  size_t n = (size + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n);
  if (p) memset(p, 0, n);
  return p;
}

static inline void dcm__list_init(dcm__link_t *h) { h->prev = h->next = h; }
static inline int dcm__list_empty(const dcm__link_t *h) { return h->next == h; }
static inline void dcm__list_push(dcm__link_t *h, dcm__link_t *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}
static inline void dcm__list_remove(dcm__link_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

typedef enum {
  DCM_CONN_HTTP,    /* reading the request head */
  DCM_CONN_HELLO,   /* upgraded, waiting for `info` */
  DCM_CONN_ACTIVE,  /* identified: bound to a machine */
  DCM_CONN_CLOSING, /* close frame sent or connection failed */
  DCM_CONN_PLAIN    /* answering a plain HTTP request, then closing */
} dcm__conn_phase;

#define DCM_HDR_FIELD_MAX 64
#define DCM_HDR_VALUE_MAX 1024

/* What parsing one HTTP request head needs; gone after the upgrade. */
typedef struct dcm__http_head_s {
  http_parser parser;
  size_t head_bytes;
  char field[DCM_HDR_FIELD_MAX + 1];
  size_t fieldlen;
  char value[DCM_HDR_VALUE_MAX + 1];
  size_t valuelen;
  int in_value, field_truncated, value_truncated, head_done;
  char path[256];
  size_t pathlen;
  unsigned hdr_upgrade : 1, hdr_conn_upgrade : 1, hdr_version13 : 1,
      hdr_auth_ok : 1,   /* Authorization: the CONTROL secret (auth) */
      hdr_status_ok : 1, /* Authorization: the read-only secret (status_auth) */
      hdr_has_key : 1;
  char wskey[32];
} dcm__http_head_t;

struct dcm__conn_s {
  /* What every heartbeat touches, in 40 bytes: tcp's first fields (data,
     loop, type), which libuv reads on every read, share this line, and
     tcp's next line (close_cb to next_closing) is one a heartbeat never
     touches (dcm__calloc_lines: this line is the first). At 10,000
     connections every line is cold by the next heartbeat. */
  dcm_master_t *m;
  dcm__machine_t *machine;
  uint64_t last_heartbeat; /* uv_now() ms; a sliding deadline counts from it */
  double loadavg; /* the machine's while bound to it: dcm__machine_loadavg */
  dcm__conn_phase phase;
  unsigned tls_on : 1, ws_ready : 1,
      send_failed : 1,  /* a write failed: the timer aborts it next turn */
      reads_paused : 1, /* the peer does not read our replies */
      finishing : 1;    /* shutdown requested; the close follows */
  uv_tcp_t tcp;
  _Alignas(64) dcm__ws_t ws; /* WebSocket: its hot fields lead, one line */
  dcm__outq_t out; /* bounded outbound queue: ciphertext under TLS; hot fields lead */
  /* the rest */
  uint64_t deadline; /* uv_now() ms; the timer re-arms lazily towards it */
  uint64_t slide;    /* not 0: the deadline is last_heartbeat + slide */
  dcm__addr_t *addr; /* unidentified: counted against its address (unauth.c) */
  uv_timer_t timer; /* handshake, heartbeat or close-linger deadline */
  dcm__link_t link;
  int handles_open; /* freed when both handles have closed */
  int counted_unauth;
  int timed_out;    /* closed for a missed heartbeat: fail over at once */
  char peer[64];
  struct dcm__http_head_s *h; /* the request head's state; freed once routed */
  dcm__tls_t tls;             /* when tls_on: between the socket and HTTP/WebSocket */
  dcm__link_t addr_link;      /* in addr->conns, oldest first */
};

typedef enum {
  DCM_MACHINE_LIVE,         /* connected and identified */
  DCM_MACHINE_DISCONNECTED, /* socket gone, inside the reconnect grace */
  DCM_MACHINE_DEAD          /* failed over; kept until its timer closes */
} dcm__machine_state;

typedef enum {
  DCM_CONNECT_NONE,  /* nothing pending */
  DCM_CONNECT_SENT,  /* `connect` sent, waiting for ack */
  DCM_CONNECT_ACKED, /* ack received, waiting for ready */
  DCM_CONNECT_READY, /* ready received for the current assignment */
  DCM_CONNECT_LATE   /* not ready within the connect timeout */
} dcm__connect_state;

struct dcm__machine_s {
  char id[DCM_ID_MAX + 1];
  /* what a heartbeat touches, together (the line at 128), when it
     carries failed_clusters (the first on a connection) */
  double loadavg; /* while conn is set, conn->loadavg is the current one */
  char *failed_clusters; /* JSON array from its heartbeat, NULL if none */
  int *failed;           /* its shards in failed_clusters, sorted */
  size_t nfailed;
  int failed_warned;     /* a bad failed_clusters was logged */
  int cores;
  int standby;
  char version[64];
  dcm__machine_state state;
  dcm__conn_t *conn;
  dcm_master_t *m;
  dcm__link_t link;       /* master's machine list */
  dcm__link_t queue_link; /* in m->connect_queue: a `connect` is due */
  dcm__machine_t *hnext;  /* id hash chain */
  uv_timer_t timer;       /* live: connect timeout; disconnected: reconnect
                             grace. Closed before free */
  int *shards;            /* assignment, sorted ascending */
  size_t nshards, cap;
  int *reported;          /* info.shards, for resume after a MASTER restart */
  size_t nreported;
  int reported_count;     /* info.shard_count: what those shards run with */
  int has_reported;
  dcm__connect_state connect;
  int identify_queue;     /* info.identify_queue: it asks for grants */
  int handoff;            /* info.handoff: it confirms stops with `stopped` */
  int draining;           /* sent `offload`: never a receiver again */
  int declared_standby;   /* info.standby (standby is also set for late joiners
                             and cleared when a rebalance gives it shards) */
  int held;               /* identified while fetching: no `initialise` yet */
  size_t awaiting;        /* its new shards still stopping elsewhere: its
                             `connect` waits (stop before start) */
  uint64_t handoff_deadline; /* the wait ends then, stopped or not */
  int info_pending;       /* refresh `info` asked, not yet answered */
  int *sent;              /* shards of the last `connect` sent */
  size_t nsent;
};

/* The machine's load average: a heartbeat stores it on the connection
   alone, whose line it touches anyway (at 10,000 machines the machine's
   line is one more cache miss per heartbeat). */
static inline double dcm__machine_loadavg(const dcm__machine_t *x) {
  return x->conn ? x->conn->loadavg : x->loadavg;
}
static inline void dcm__machine_set_loadavg(dcm__machine_t *x, double loadavg) {
  x->loadavg = loadavg;
  if (x->conn) x->conn->loadavg = loadavg;
}


/* ---- master ---------------------------------------------------------- */

typedef enum {
  DCM_STATE_IDLE,
  DCM_STATE_FETCHING,
  DCM_STATE_COLLECTING,
  DCM_STATE_CONNECTING,
  DCM_STATE_RUNNING,
  DCM_STATE_SHUTDOWN
} dcm__state;

struct dcm_master_s {
  uv_loop_t *loop;
  dcm_options_t o;  /* strings point at owned copies */
  char *owned[16];
  dcm__log_t log;
  lua_State *json;  /* cjson state for packets and /status */
  uint8_t heartbeat_ack[32]; /* the ack's frame, */
  size_t heartbeat_ack_len;  /* made at the first heartbeat */
  dcm_event_cb cb;
  void *cb_arg;
  dcm__link_t events; /* queued for the embedder; delivered by `flush` */
  uv_prepare_t flush; /* runs once per loop turn while events wait */
  int depth;          /* inside embedder code: a free is deferred */
  /* server */
  uv_tcp_t listener;
  int port;
  char readbuf[65536]; /* shared: reads are consumed synchronously */
  dcm__ws_pool_t *wspool; /* wslay contexts lent to connections mid-frame */
  struct ssl_ctx_st *tls_ctx; /* NULL: plaintext. Swapped by dcm_master_reload_tls */
  char plainbuf[16384];       /* shared: one TLS record's plaintext at a time */
  dcm__link_t conns;
  int unauth;          /* connections not yet identified */
  uint64_t last_refusal_log;
  unsigned long refused;
  /* unidentified connections by source address (unauth.c) */
  dcm__addr_t *addr_hash[256];
  dcm__link_t *addr_counts; /* addresses by count of connections; [0] unused */
  int addr_count_max;       /* highest count addr_counts holds */
  int addr_top;             /* highest count in use */
  size_t naddrs;
  uint32_t addr_seed;
  unsigned long evicted;
  uint64_t last_evict_log[2]; /* per address, global */
  /* fleet */
  dcm__link_t machines;
  dcm__machine_t **htab;
  size_t hsize, nmachines;
  dcm__machine_t **owner; /* shard -> machine, NULL = unassigned */
  dcm__machine_t **leaving; /* shard -> the machine it is moving away from,
                               until that one confirms the stop (`stopped`) */
  dcm__session_t **session; /* shard -> its latest Discord session, or NULL */
  int shard_count;
  int recommended;   /* Discord's count, when the running fleet keeps another */
  int max_concurrency;
  /* lifecycle */
  dcm__state state;
  uv_timer_t timer; /* collection window, info refresh, connect timeout */
  uv_timer_t budget_timer; /* waits for the identify budget to reset */
  int budget_wait;
  uint64_t gw_at;   /* uv_now() when gw was fetched */
  size_t nunassigned;
  dcm__link_t connect_queue; /* machines owed a `connect` this loop turn */
  dcm__idq_t *idq;           /* identify queue and budget; once shards are known */
  uv_timer_t idq_timer;      /* the next grant that may be due */
  uv_timer_t handoff_timer;  /* the earliest handoff deadline */
  double refetch_backoff;    /* seconds; asking Discord again while running */
  int rebalancing;           /* a rebalance is under way */
  int rebalance_step;
  dcm__gateway_t gw;
  int have_gw;
  char gateway_url[512]; /* sent in initialise: Discord's url, or the option */
  int window_over; /* collection window ended */
  int refreshing;  /* waiting for `info` replies before allocating */
  int info_waiting;
  int allocated;   /* the initial allocation has been made */
  dcm__policy_t *policy;
  dcm__discord_t *discord;
  dcm__counters_t counters; /* for /metrics (metrics.h) */
  /* high availability (ha.c); all unused without the etcd option */
  struct dcm__elect_s *elect;
  int ha_leading;   /* elected, and the coordinator started */
  int ha_reading;   /* elected, reading the last leader's record */
  int ha_stepping;  /* lost leadership: the stop is under way */
  int ha_closed;    /* the elector is closing or closed */
  uint64_t ha_epoch;
  dcm__epoch_t ha_term;     /* what packets carry: the epoch and etcd's cluster id */
  char ha_self[128];        /* this master's URL: the leader key's value */
  char ha_last_leader[128]; /* the leader last logged while following */
  struct dcm__ha_record_s *ha_rec; /* the last leader's identify record */
  long long *ha_last;       /* per bucket: wall ms of our last grant */
  int ha_nlast, ha_dirty;
  char **ha_expect;         /* the last leader's machines: the window ends when back */
  size_t ha_nexpect;
  char *ha_fleet_last;      /* the fleet record last written */
  /* stop */
  int started, stopping, start_failed, free_pending;
  int open_handles;
  dcm_close_cb close_cb;
  void *close_arg;
  int exit_status;
  int shutdown_code;        /* sent in `shutdown` */
  char shutdown_reason[256];
};

/* server.c */
int dcm__server_start(dcm_master_t *m);
void dcm__server_stop(dcm_master_t *m); /* closes the listener */
/* Serves a connected stream socket as if accepted (the fuzz harness feeds
   requests through a socketpair). 0: fd is the connection's (closed with
   it); an error: fd is still the caller's. */
int dcm__server_adopt(dcm_master_t *m, uv_os_sock_t fd);
int dcm__conn_send(dcm__conn_t *c, const char *text, size_t len);
/* A message sent often, framed once (dcm__ws_encode): its frame's length
   in out, or 0 (then send the text). */
size_t dcm__conn_frame(dcm_master_t *m, const char *text, size_t len, uint8_t *out,
                       size_t cap);
int dcm__conn_send_frame(dcm__conn_t *c, const uint8_t *frame, size_t len);
void dcm__conn_close(dcm__conn_t *c, uint16_t code, const char *reason);
void dcm__conn_abort(dcm__conn_t *c);
void dcm__conn_set_deadline(dcm__conn_t *c, uint64_t deadline);
/* A deadline slide ms after c->last_heartbeat, which the owner moves on
   (a heartbeat stores nothing else); set_deadline ends it. */
void dcm__conn_slide_deadline(dcm__conn_t *c, uint64_t slide);

void dcm__conn_evict(dcm__conn_t *c); /* closes with a reset: no TIME_WAIT here */

/* unauth.c: unidentified connections counted per source address */
int dcm__unauth_init(dcm_master_t *m);     /* the tables; at listen */
void dcm__unauth_release(dcm_master_t *m); /* frees them once stopping and empty */
/* "host:port" of t for logs, the key its address is counted under, and its name */
void dcm__unauth_peer(uv_tcp_t *t, char *out, size_t n, unsigned char key[16], char *addr,
                      size_t addrn);
/* Closes the unidentified connection a newcomer from key displaces, if any. */
void dcm__unauth_make_room(dcm_master_t *m, const unsigned char key[16], const char *name);
int dcm__unauth_link(dcm__conn_t *c, const unsigned char key[16], const char *name);
void dcm__unauth_unlink(dcm__conn_t *c); /* identified or gone */
void dcm__unauth_touch(dcm__conn_t *c);  /* upgraded: counts as new again */

/* session.c: protocol v1 on one identified or identifying connection */
void dcm__session_open(dcm__conn_t *c);
void dcm__session_message(dcm__conn_t *c, const char *msg, size_t len);
void dcm__session_deadline(dcm__conn_t *c);
void dcm__session_closed(dcm__conn_t *c);
void dcm__session_initialise(dcm__conn_t *c); /* sends `initialise` */
const char *dcm__status_json(dcm_master_t *m, size_t *len);

/* coordinator.c: the lifecycle */
int dcm__coord_start(dcm_master_t *m);
int dcm__coord_accepting(const dcm_master_t *m);
void dcm__coord_joined(dcm_master_t *m, dcm__machine_t *x, int resumed);
/* A machine reports shards running with `count` before the allocation. */
void dcm__coord_running_count(dcm_master_t *m, dcm__machine_t *x, int count);
void dcm__coord_lost(dcm_master_t *m, dcm__machine_t *x, int timed_out);
void dcm__coord_info(dcm_master_t *m, dcm__machine_t *x);
void dcm__coord_ack(dcm_master_t *m, dcm__machine_t *x, int op);
int dcm__coord_ready(dcm_master_t *m, dcm__machine_t *x, const int *shards,
                     size_t n);
void dcm__coord_identify(dcm_master_t *m, dcm__machine_t *x, int shard);
void dcm__coord_release(dcm_master_t *m, dcm__machine_t *x, int shard);
/* failed_clusters' shards (sorted): moved off the machine. */
void dcm__coord_failed(dcm_master_t *m, dcm__machine_t *x, int *shards, size_t n);
void dcm__coord_sessions(dcm_master_t *m, dcm__machine_t *x, const dcm__session_t *s,
                         size_t n, size_t nbad);
void dcm__coord_stopped(dcm_master_t *m, dcm__machine_t *x, const int *shards, size_t n);
void dcm__coord_offload(dcm_master_t *m, dcm__machine_t *x);
void dcm__coord_fatal(dcm_master_t *m, dcm__machine_t *x, int code,
                      const char *message, int shard);
void dcm__coord_stop(dcm_master_t *m);
/* Reloads the policy, self-checked on the live fleet when there is one. */
int dcm__coord_reload_policy(dcm_master_t *m);
const char *dcm__state_name(dcm__state s);

/* master.c */
/* Queues an event (strings copied); the embedder gets it from the loop, at
   the end of this turn, never inside the caller's stack. */
void dcm__emit(dcm_master_t *m, dcm_event_type type, const char *machine,
               int code, const char *message);
void dcm__handle_closed(uv_handle_t *h); /* close cb of handles whose data is m */
void dcm__master_release(dcm_master_t *m); /* one master-owned handle closed */

#endif
