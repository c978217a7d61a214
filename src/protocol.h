/*
 * protocol.h: protocol v1 packets ({"o": op, "d": {...}}) decoded from JSON
 * into validated C structs, and encoded back, through lua-cjson (json.h);
 * the one exception is the canonical heartbeat, recognised byte for byte
 * with the same result as cjson's. Opcodes, close codes and error codes
 * live here and nowhere else.
 * Pure: no sockets, no state beyond the caller's cjson lua_State.
 */
#ifndef DCM_PROTOCOL_H
#define DCM_PROTOCOL_H

#include <lua.h>
#include <stddef.h>

enum {
  DCM_OP_INFO = 0,
  DCM_OP_FATAL = 1,
  DCM_OP_COMMAND = 2,
  DCM_OP_OFFLOAD = 3,
  DCM_OP_SHUTDOWN = 4,
  DCM_OP_INITIALISE = 5,
  DCM_OP_CONNECT = 6,
  DCM_OP_ERROR = 7,
  DCM_OP_ACK = 8,
  DCM_OP_HEARTBEAT = 9,
  DCM_OP_READY = 10,
  /* extensions (docs/protocol.md) */
  DCM_OP_IDENTIFY = 11, /* C->M: ask for an identify grant for one shard */
  DCM_OP_GRANT = 12,    /* M->C: that shard may IDENTIFY now */
  DCM_OP_RELEASE = 13,  /* C->M: withdraw a request or return an unused grant */
  DCM_OP_SESSIONS = 14, /* C->M: the latest Discord sessions of its shards */
  DCM_OP_STOPPED = 15,  /* C->M: shards a `connect` removed are stopped */
  DCM_OP_MAX = DCM_OP_STOPPED
};

enum {
  DCM_CLOSE_NORMAL = 1000,
  DCM_CLOSE_GOING_AWAY = 1001,
  DCM_CLOSE_TOO_BIG = 1009,
  DCM_CLOSE_DEAD = 4001,
  DCM_CLOSE_BAD_INFO = 4002,
  DCM_CLOSE_DUPLICATE = 4003,
  /* high availability (docs/protocol.md) */
  DCM_CLOSE_NOT_LEADER = 4020,  /* M->C: stepped down; the reason names the new leader */
  DCM_CLOSE_STALE_EPOCH = 4021  /* C->M: a packet's epoch is below one already seen */
};

enum {
  DCM_ERR_MALFORMED = 4004,
  DCM_ERR_UNKNOWN_OP = 4005,
  DCM_ERR_BAD_STATE = 4006,
  DCM_ERR_NOT_YOURS = 4007 /* identify for a shard not assigned to the machine */
};

/* 1 for Discord's close codes a bot may not reconnect after (4004,
   4010-4014): the only `fatal` codes that stop the fleet. */
static inline int dcm__discord_fatal_code(int code) {
  return code == 4004 || (code >= 4010 && code <= 4014);
}

#define DCM_ID_MAX 128
#define DCM_MESSAGE_MAX 512
#define DCM_SESSION_ID_MAX 128
#define DCM_RESUME_URL_MAX 512
#define DCM_SESSIONS_MAX 1000 /* entries in one `sessions` packet */

/* A leader's term (HA): `epoch` n > 0, counted within `epoch_source`, etcd's
   cluster id (a new etcd cluster starts its revisions again). */
typedef struct {
  uint64_t n;
  char source[24];
} dcm__epoch_t;

/* One shard's Discord session, as a cluster reported it. */
typedef struct {
  int shard;
  long long seq;
  char session_id[DCM_SESSION_ID_MAX + 1];
  char resume_url[DCM_RESUME_URL_MAX + 1];
} dcm__session_t;

/* 1 if the fields are usable: id [A-Za-z0-9_-]{1,128}, seq 0..2^53,
   url ws:// or wss:// without control characters or quotes. */
int dcm__session_valid(const char *id, size_t idlen, long long seq, const char *url,
                       size_t urllen);

typedef struct {
  int op;
  /* info */
  char id[DCM_ID_MAX + 1];
  int cores;
  double loadavg;
  int standby;
  int has_shards; /* info.shards present */
  char version[64];
  int identify_queue; /* info.identify_queue: asks for grants */
  int handoff;        /* info.handoff: confirms stops with `stopped` */
  int shard_count;    /* info.shard_count: the count its shards run with, 0 = none */
  /* info.shards, ready.shards */
  int *shards;
  size_t nshards;
  /* fatal */
  int code;
  char message[DCM_MESSAGE_MAX + 1];
  int shard; /* fatal (-1 when absent), identify, release */
  /* ack */
  int ack_op;
  /* heartbeat */
  int has_loadavg;
  int has_failed;     /* d.failed_clusters present and valid (an extension;
                         a bad one leaves its reason in message) */
  char *failed_json;  /* re-encoded when non-empty and small, else NULL */
  /* sessions: the valid entries; nbad counts those ignored */
  dcm__session_t *sessions;
  size_t nsessions, nbad;
} dcm__packet_t;

#define DCM_FAILED_JSON_MAX 16384

/*
 * The envelope, for both directions: decodes {"o": op, "d": {...}}, checks
 * o and d, pushes d and sets *op. Returns 0, or DCM_ERR_MALFORMED /
 * DCM_ERR_UNKNOWN_OP with a reason in err and nothing pushed (*op is set
 * when it was read).
 */
int dcm__packet_open(lua_State *L, const char *buf, size_t len, int *op,
                     char *err, size_t errlen);

/* Wraps the d table on top of the stack into {"o": op, "d": d}, encodes. */
const char *dcm__packet_seal(lua_State *L, int op, size_t *len);

/*
 * Decodes one message. Returns 0, DCM_ERR_MALFORMED or DCM_ERR_UNKNOWN_OP
 * with a short reason in err. An invalid info report is DCM_ERR_MALFORMED
 * too; the caller turns it into close 4002 during the handshake.
 * max_shards bounds the arrays. Release with dcm__packet_clear.
 * The canonical heartbeat (below) is read without cjson: no Lua value, no
 * allocation; everything else goes to dcm__packet_decode_json.
 */
int dcm__packet_decode(lua_State *L, const char *buf, size_t len,
                       size_t max_shards, dcm__packet_t *p, char *err,
                       size_t errlen);
/* The same through cjson only, whatever the bytes: the reference the
   canonical heartbeat's result is tested against. */
int dcm__packet_decode_json(lua_State *L, const char *buf, size_t len,
                            size_t max_shards, dcm__packet_t *p, char *err,
                            size_t errlen);

/*
 * The canonical heartbeats: the exact bytes discluster-control sends while
 * no cluster failed (docs/protocol.md, a non-normative note): HEAD, the
 * load average as dcm__heartbeat_format writes it, then TAIL (failed_clusters
 * [], the first such heartbeat on a connection) or TAIL_SAME (failed_clusters
 * left out: as the last heartbeat said, so still none; the later ones).
 * MASTER recognises them with memcmp and one bounded number; any other form
 * of a heartbeat, however valid, is decoded by cjson as before.
 */
#define DCM_HEARTBEAT_HEAD "{\"o\":9,\"d\":{\"loadavg\":"
#define DCM_HEARTBEAT_TAIL ",\"failed_clusters\":[],\"failed_clusters_more\":0}}"
#define DCM_HEARTBEAT_TAIL_SAME "}}"
/* Bytes of the number the fast path reads at most (longer: cjson's). */
#define DCM_HEARTBEAT_NUM_MAX 24

enum { DCM_HEARTBEAT_EMPTY = 1, DCM_HEARTBEAT_SAME = 2 }; /* the two forms */

/* The form (DCM_HEARTBEAT_EMPTY or _SAME) and *loadavg set if buf is
   exactly a canonical heartbeat with a number (0|[1-9][0-9]*)(.[0-9]+)?
   that converts exactly (Clinger's fast path: at most 2^53 as an integer
   of its digits, at most 22 decimals), giving the double strtod (so cjson)
   gives; else 0, *loadavg untouched. */
int dcm__heartbeat_canonical(const char *buf, size_t len, double *loadavg);

/* Writes the canonical heartbeat of form for loadavg (%.14g, as json.c
   writes a number) and a NUL into buf; its length, or 0 when it does not
   fit or loadavg is not finite. */
size_t dcm__heartbeat_format(char *buf, size_t cap, double loadavg, int form);
void dcm__packet_clear(dcm__packet_t *p);

/* 1 if id is 1-128 characters of [A-Za-z0-9._:-]. */
int dcm__valid_id(const char *id, size_t len);

const char *dcm__op_name(int op);

/*
 * Encoders. Each returns the JSON text, valid until the caller pops the
 * string it leaves on L's stack (lua_settop(L, 0) is the usual reset), or
 * NULL on memory exhaustion.
 */
const char *dcm__enc_info_request(lua_State *L, size_t *len);
const char *dcm__enc_initialise(lua_State *L, const char *token,
                                long long heartbeat_ms, int shard_count,
                                int max_concurrency, const char *gateway_url,
                                const dcm__epoch_t *epoch, size_t *len);
/* sess: NULL, or one entry per shard (NULL = no session to hand over). */
const char *dcm__enc_connect(lua_State *L, const int *shards, size_t n,
                             int redundant, const dcm__session_t *const *sess,
                             const dcm__epoch_t *epoch, size_t *len);
/* epoch: the leader's term (HA); NULL when running alone (no field). */
const char *dcm__enc_grant(lua_State *L, int shard, const dcm__epoch_t *epoch, size_t *len);
/* shard < 0: no d.shard. */
const char *dcm__enc_error(lua_State *L, int code, const char *message,
                           int shard, size_t *len);
/* {"shard": shard} under op: identify, grant, release. */
const char *dcm__enc_shard_op(lua_State *L, int op, int shard, size_t *len);
const char *dcm__enc_ack(lua_State *L, int op, size_t *len);
const char *dcm__enc_shutdown(lua_State *L, int code, const char *reason,
                              size_t *len);

#endif
