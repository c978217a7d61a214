/*
 * packets.h: protocol v1 as the CONTROL side sees it: decoding what MASTER
 * sends (info request, initialise, connect with its sessions, error, ack,
 * shutdown, command, grant) and encoding what CONTROL sends (info,
 * heartbeat, ack, ready, fatal, offload, sessions, stopped; identify and
 * release use the core's dcm__enc_shard_op), the optional `epoch` of
 * initialise, connect and grant (high availability), and the clusters'
 * SHARD_SESSIONS. Opcodes come from the core's protocol.h; JSON goes
 * through lua-cjson (json.h). Pure: no sockets.
 */
#ifndef DCM_CTL_PACKETS_H
#define DCM_CTL_PACKETS_H

#include <lua.h>
#include <stddef.h>

#include "protocol.h"

#define DCM_CTL_TOKEN_MAX 1024
#define DCM_CTL_GATEWAY_URL_MAX 512
#define DCM_CTL_DEFAULT_GATEWAY_URL "wss://gateway.discord.gg"

typedef struct {
  int op;
  /* initialise */
  int protocol;
  char *token; /* malloc'd; the receiver may take it (set to NULL) */
  long long heartbeat_ms;
  int shard_count;
  int max_concurrency;
  /* d.gateway_url: absent or "" gives DCM_CTL_DEFAULT_GATEWAY_URL */
  char gateway_url[DCM_CTL_GATEWAY_URL_MAX + 1];
  /* connect */
  int *shards;
  size_t nshards;
  int redundant;
  /* connect.sessions: the valid entries for shards of d.shards (at most
   * one per shard); nbad counts the entries ignored */
  dcm__session_t *sessions;
  size_t nsessions, nbad;
  /* error (code, message, shard), shutdown (code, reason in message) */
  int code;
  int shard; /* grant; error's optional d.shard (-1 when absent) */
  char message[DCM_MESSAGE_MAX + 1];
  /* ack */
  int ack_op;
  /* initialise, connect, grant: the leader's term (HA); has_epoch 0 when
   * the field is absent (a MASTER without etcd) */
  int has_epoch;
  long long epoch;
  char epoch_source[24]; /* d.epoch_source: etcd's cluster id the epoch counts in, or "" */
} dcm__ctl_packet_t;

/* d.epoch's largest value (JSON's exact integers). */
#define DCM_CTL_EPOCH_MAX 9007199254740992LL

/*
 * Decodes one message from MASTER. Returns 0; DCM_ERR_MALFORMED or
 * DCM_ERR_UNKNOWN_OP with a reason in err. max_shards bounds connect's
 * array. Release with dcm__ctl_packet_clear (it wipes the token).
 */
int dcm__ctl_decode(lua_State *L, const char *buf, size_t len, size_t max_shards,
                    dcm__ctl_packet_t *p, char *err, size_t errlen);
void dcm__ctl_packet_clear(dcm__ctl_packet_t *p);

/*
 * One entry of the heartbeat's failed_clusters: a crashed-for-good
 * cluster, or (over_cap, cluster -1) a group of shards not started because
 * of --max-clusters. shards_more > 0: the entry's list was cut to fit and
 * this many more shards belong to it.
 */
typedef struct {
  int cluster;
  const int *shards;
  size_t nshards;
  int exit_status;
  int term_signal;
  int over_cap;
  size_t shards_more;
} dcm__ctl_failed_t;

/* Bounds of failed_clusters: entries listed, and the list's JSON bytes
 * (under 16 KiB); what is left out is counted in failed_clusters_more. */
#define DCM_CTL_FAILED_LIST_MAX 64
#define DCM_CTL_FAILED_JSON_MAX 16000

/*
 * Keeps the first entries of f (n of them) that fit both bounds and
 * returns how many; an entry that does not fit ends the list, except the
 * first, which is cut (nshards lowered, shards_more set) so that a
 * non-empty list always names something.
 */
size_t dcm__ctl_failed_fit(dcm__ctl_failed_t *f, size_t n);

/* 1 if s (n bytes) is a usable initialise.gateway_url: at most
 * DCM_CTL_GATEWAY_URL_MAX bytes, no control characters. */
int dcm__ctl_gateway_url_ok(const char *s, size_t n);

/*
 * Encoders. Each returns the JSON text, valid until the caller resets L's
 * stack (lua_settop(L, 0)), or NULL on memory exhaustion.
 */
/* info always says identify_queue and handoff: true (this agent asks for
   grants and confirms stops); shard_count when it runs shards. */
const char *dcm__ctl_enc_info(lua_State *L, const char *id, int cores, double loadavg,
                              int standby, const int *shards, size_t n, int shard_count,
                              const char *version, size_t *len);
/* more: entries left out of failed_clusters (failed_clusters_more). With
   nothing failed it is a canonical heartbeat (protocol.h), which MASTER
   reads without a JSON decode: without failed_clusters if same (an empty
   list was sent on this connection already), else with []. */
const char *dcm__ctl_enc_heartbeat(lua_State *L, double loadavg,
                                   const dcm__ctl_failed_t *failed, size_t nfailed,
                                   size_t more, int same, size_t *len);
const char *dcm__ctl_enc_ready(lua_State *L, const int *shards, size_t n, size_t *len);
const char *dcm__ctl_enc_fatal(lua_State *L, int code, const char *message, int shard,
                               size_t *len);
const char *dcm__ctl_enc_offload(lua_State *L, size_t *len);

/* stopped {"shards": [...]}: at most DCM_CTL_STOPPED_MAX shards a packet
 * (its JSON then stays far below MASTER's 1 MiB); more go in the next. */
#define DCM_CTL_STOPPED_MAX 100000
const char *dcm__ctl_enc_stopped(lua_State *L, const int *shards, size_t n, size_t *len);

/*
 * Bounds of one `sessions` packet: DCM_SESSIONS_MAX entries (protocol.h)
 * and DCM_CTL_SESSIONS_JSON_MAX bytes of JSON (under MASTER's 1 MiB).
 * SHARD_SESSIONS, one environment string, stays under Linux's 128 KiB
 * (MAX_ARG_STRLEN): DCM_CTL_SHARD_SESSIONS_MAX bytes.
 */
#define DCM_CTL_SESSIONS_JSON_MAX 900000
#define DCM_CTL_SHARD_SESSIONS_MAX 120000

/* How many of the first n entries fit max_entries and, counting each
 * entry at its widest encoding, max_bytes. */
size_t dcm__ctl_sessions_fit(const dcm__session_t *const *s, size_t n, size_t max_entries,
                             size_t max_bytes);

/* sessions {"sessions": [{"shard", "session_id", "seq", "resume_url"}]}. */
const char *dcm__ctl_enc_sessions(lua_State *L, const dcm__session_t *const *s, size_t n,
                                  size_t *len);

/* SHARD_SESSIONS: {"<shard>": {"session_id", "seq", "resume_url"}}, a
 * bare JSON object (not a packet); {} when n is 0. */
const char *dcm__ctl_enc_shard_sessions(lua_State *L, const dcm__session_t *const *s, size_t n,
                                        size_t *len);

#endif
