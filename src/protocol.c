/* protocol.c: see protocol.h. */
#include "protocol.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char *const op_names[] = {
    "info", "fatal", "command", "offload", "shutdown", "initialise",
    "connect", "error", "ack", "heartbeat", "ready", "identify", "grant",
    "release"};

const char *dcm__op_name(int op) {
  if (op < 0 || op > DCM_OP_MAX) return "unknown";
  return op_names[op];
}

int dcm__valid_id(const char *id, size_t len) {
  if (len < 1 || len > DCM_ID_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
          c == '-'))
      return 0;
  }
  return 1;
}

void dcm__packet_clear(dcm__packet_t *p) {
  free(p->shards);
  free(p->failed_json);
  p->shards = NULL;
  p->failed_json = NULL;
  p->nshards = 0;
}

#define FAIL(code, ...) \
  do { snprintf(err, errlen, __VA_ARGS__); return (code); } while (0)

/* Reads d[key] as an int array of shard ids into p->shards. */
static int read_shards(lua_State *L, int d, const char *key, size_t max,
                       dcm__packet_t *p, char *err, size_t errlen) {
  size_t n;
  int t = dcm__json_field(L, d, key);
  if (t == LUA_TNIL) return 1; /* absent */
  if (!dcm__json_isarray(L, -1, &n))
    FAIL(-1, "d.%s must be an array of shard ids", key);
  if (n > max) FAIL(-1, "d.%s has %zu entries, more than the %zu shards", key, n, max);
  p->shards = malloc((n ? n : 1) * sizeof(int));
  if (p->shards == NULL) FAIL(-1, "out of memory");
  p->nshards = n;
  for (size_t i = 0; i < n; i++) {
    long long v;
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > 0x7fffffff)
      FAIL(-1, "d.%s[%zu] is not a shard id", key, i);
    p->shards[i] = (int)v;
    lua_pop(L, 1);
  }
  return 0;
}

static int decode_info(lua_State *L, int d, size_t max, dcm__packet_t *p,
                       char *err, size_t errlen) {
  long long v;
  size_t len;
  if (dcm__json_field(L, d, "id") != LUA_TSTRING)
    FAIL(DCM_ERR_MALFORMED, "info: d.id must be a string");
  const char *id = lua_tolstring(L, -1, &len);
  if (!dcm__valid_id(id, len))
    FAIL(DCM_ERR_MALFORMED, "info: d.id must be 1-128 characters of [A-Za-z0-9._:-]");
  memcpy(p->id, id, len + 1);
  dcm__json_field(L, d, "cores");
  if (!dcm__json_tointeger(L, -1, &v) || v < 1 || v > 1000000)
    FAIL(DCM_ERR_MALFORMED, "info: d.cores must be an integer >= 1");
  p->cores = (int)v;
  if (dcm__json_field(L, d, "loadavg") != LUA_TNUMBER)
    FAIL(DCM_ERR_MALFORMED, "info: d.loadavg must be a number >= 0");
  p->loadavg = lua_tonumber(L, -1);
  if (!isfinite(p->loadavg) || p->loadavg < 0)
    FAIL(DCM_ERR_MALFORMED, "info: d.loadavg must be a number >= 0");
  int t = dcm__json_field(L, d, "standby");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    FAIL(DCM_ERR_MALFORMED, "info: d.standby must be a boolean");
  p->standby = lua_toboolean(L, -1);
  t = dcm__json_field(L, d, "version");
  if (t == LUA_TSTRING) {
    if (!dcm__json_plain_text(lua_tostring(L, -1), lua_rawlen(L, -1)))
      FAIL(DCM_ERR_MALFORMED, "info: d.version must not contain control characters");
    snprintf(p->version, sizeof p->version, "%s", lua_tostring(L, -1));
  } else if (t != LUA_TNIL) {
    FAIL(DCM_ERR_MALFORMED, "info: d.version must be a string");
  }
  t = dcm__json_field(L, d, "identify_queue");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    FAIL(DCM_ERR_MALFORMED, "info: d.identify_queue must be a boolean");
  p->identify_queue = lua_toboolean(L, -1);
  int r = read_shards(L, d, "shards", max, p, err, errlen);
  if (r < 0) return DCM_ERR_MALFORMED;
  p->has_shards = r == 0;
  return 0;
}

/* heartbeat.failed_clusters: [{"cluster": int, "shards": [int], ...}] */
static int decode_failed(lua_State *L, int d, dcm__packet_t *p, char *err, size_t errlen) {
  size_t n, k, len;
  long long v;
  if (dcm__json_field(L, d, "failed_clusters") == LUA_TNIL) return 0;
  int arr = lua_gettop(L);
  if (!dcm__json_isarray(L, arr, &n))
    FAIL(DCM_ERR_MALFORMED, "heartbeat: d.failed_clusters must be an array");
  p->has_failed = 1;
  if (n == 0) return 0;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, arr, (lua_Integer)i);
    int item = lua_gettop(L);
    if (!dcm__json_isobject(L, item) || (dcm__json_field(L, item, "cluster"),
                                         !dcm__json_tointeger(L, -1, &v)) ||
        (dcm__json_field(L, item, "shards"), !dcm__json_isarray(L, -1, &k)))
      FAIL(DCM_ERR_MALFORMED, "heartbeat: d.failed_clusters[%zu] needs cluster and shards", i - 1);
    lua_settop(L, arr);
  }
  const char *s = dcm__json_encode(L, arr, &len);
  if (s == NULL || len > DCM_FAILED_JSON_MAX)
    FAIL(DCM_ERR_MALFORMED, "heartbeat: d.failed_clusters is too large");
  p->failed_json = malloc(len + 1);
  if (p->failed_json == NULL) FAIL(DCM_ERR_MALFORMED, "out of memory");
  memcpy(p->failed_json, s, len + 1);
  return 0;
}

static int decode_d(lua_State *L, int d, size_t max, dcm__packet_t *p,
                    char *err, size_t errlen) {
  long long v;
  int t;
  switch (p->op) {
    case DCM_OP_INFO:
      return decode_info(L, d, max, p, err, errlen);
    case DCM_OP_FATAL:
      dcm__json_field(L, d, "code");
      if (!dcm__json_tointeger(L, -1, &v) || v < INT32_MIN || v > INT32_MAX)
        FAIL(DCM_ERR_MALFORMED, "fatal: d.code must be an integer");
      p->code = (int)v;
      if (dcm__json_field(L, d, "message") != LUA_TSTRING)
        FAIL(DCM_ERR_MALFORMED, "fatal: d.message must be a string");
      if (!dcm__json_plain_text(lua_tostring(L, -1), lua_rawlen(L, -1)))
        FAIL(DCM_ERR_MALFORMED, "fatal: d.message must not contain control characters");
      snprintf(p->message, sizeof p->message, "%s", lua_tostring(L, -1));
      t = dcm__json_field(L, d, "shard");
      if (t == LUA_TNIL) {
        p->shard = -1;
      } else if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > INT32_MAX) {
        FAIL(DCM_ERR_MALFORMED, "fatal: d.shard must be a shard id");
      } else {
        p->shard = (int)v;
      }
      return 0;
    case DCM_OP_ACK:
      dcm__json_field(L, d, "o");
      if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > 255)
        FAIL(DCM_ERR_MALFORMED, "ack: d.o must be an opcode");
      p->ack_op = (int)v;
      return 0;
    case DCM_OP_HEARTBEAT:
      t = dcm__json_field(L, d, "loadavg");
      if (t != LUA_TNIL) {
        if (t != LUA_TNUMBER || !isfinite(lua_tonumber(L, -1)) || lua_tonumber(L, -1) < 0)
          FAIL(DCM_ERR_MALFORMED, "heartbeat: d.loadavg must be a number >= 0");
        p->loadavg = lua_tonumber(L, -1);
        p->has_loadavg = 1;
      }
      return decode_failed(L, d, p, err, errlen);
    case DCM_OP_IDENTIFY:
    case DCM_OP_RELEASE:
      dcm__json_field(L, d, "shard");
      if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > INT32_MAX)
        FAIL(DCM_ERR_MALFORMED, "%s: d.shard must be a shard id", dcm__op_name(p->op));
      p->shard = (int)v;
      return 0;
    case DCM_OP_READY:
      t = read_shards(L, d, "shards", max, p, err, errlen);
      if (t == 1) FAIL(DCM_ERR_MALFORMED, "ready: d.shards must be an array of shard ids");
      return t < 0 ? DCM_ERR_MALFORMED : 0;
    default: /* offload, and M->C opcodes whose d the caller rejects */
      return 0;
  }
}

int dcm__packet_open(lua_State *L, const char *buf, size_t len, int *op,
                     char *err, size_t errlen) {
  long long o;
  int top = lua_gettop(L);
  int r = DCM_ERR_MALFORMED;
  err[0] = '\0';
  if (dcm__json_decode(L, buf, len) != 0) {
    snprintf(err, errlen, "not valid JSON");
  } else if (!dcm__json_isobject(L, -1)) {
    snprintf(err, errlen, "a packet must be a JSON object");
  } else if (dcm__json_field(L, top + 1, "o") != LUA_TNUMBER ||
             !dcm__json_tointeger(L, -1, &o)) {
    snprintf(err, errlen, "\"o\" must be an integer");
  } else if (o < 0 || o > DCM_OP_MAX) {
    snprintf(err, errlen, "unknown opcode %lld", o);
    r = DCM_ERR_UNKNOWN_OP;
  } else if (*op = (int)o, dcm__json_field(L, top + 1, "d") != LUA_TTABLE ||
                               !dcm__json_isobject(L, -1)) {
    snprintf(err, errlen, "\"d\" must be an object");
  } else {
    lua_replace(L, top + 1); /* d takes the packet's slot */
    lua_settop(L, top + 1);
    return 0;
  }
  lua_settop(L, top);
  return r;
}

int dcm__packet_decode(lua_State *L, const char *buf, size_t len,
                       size_t max_shards, dcm__packet_t *p, char *err,
                       size_t errlen) {
  memset(p, 0, sizeof(*p));
  p->shard = -1;
  int top = lua_gettop(L);
  int r = dcm__packet_open(L, buf, len, &p->op, err, errlen);
  if (r == 0) r = decode_d(L, top + 1, max_shards, p, err, errlen);
  lua_settop(L, top);
  if (r != 0) dcm__packet_clear(p);
  return r;
}

const char *dcm__packet_seal(lua_State *L, int op, size_t *len) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, op);
  lua_setfield(L, -2, "o");
  lua_insert(L, -2);
  lua_setfield(L, -2, "d");
  const char *s = dcm__json_encode(L, -1, len);
  if (s == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_remove(L, -2);
  return s;
}

const char *dcm__enc_info_request(lua_State *L, size_t *len) {
  lua_createtable(L, 0, 0);
  return dcm__packet_seal(L, DCM_OP_INFO, len);
}

const char *dcm__enc_initialise(lua_State *L, const char *token,
                                long long heartbeat_ms, int shard_count,
                                int max_concurrency, const char *gateway_url,
                                size_t *len) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "protocol");
  lua_pushstring(L, token ? token : "");
  lua_setfield(L, -2, "token");
  lua_pushinteger(L, heartbeat_ms);
  lua_setfield(L, -2, "heartbeat_interval");
  lua_pushinteger(L, shard_count);
  lua_setfield(L, -2, "shard_count");
  lua_pushinteger(L, max_concurrency);
  lua_setfield(L, -2, "max_concurrency");
  lua_pushstring(L, gateway_url ? gateway_url : "");
  lua_setfield(L, -2, "gateway_url");
  return dcm__packet_seal(L, DCM_OP_INITIALISE, len);
}

const char *dcm__enc_connect(lua_State *L, const int *shards, size_t n,
                             int redundant, size_t *len) {
  lua_createtable(L, 0, 2);
  dcm__json_push_int_array(L, shards, n);
  lua_setfield(L, -2, "shards");
  lua_pushboolean(L, redundant);
  lua_setfield(L, -2, "redundant");
  return dcm__packet_seal(L, DCM_OP_CONNECT, len);
}

const char *dcm__enc_error(lua_State *L, int code, const char *message,
                           int shard, size_t *len) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  if (shard >= 0) {
    lua_pushinteger(L, shard);
    lua_setfield(L, -2, "shard");
  }
  return dcm__packet_seal(L, DCM_OP_ERROR, len);
}

const char *dcm__enc_shard_op(lua_State *L, int op, int shard, size_t *len) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, shard);
  lua_setfield(L, -2, "shard");
  return dcm__packet_seal(L, op, len);
}

const char *dcm__enc_ack(lua_State *L, int op, size_t *len) {
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, op);
  lua_setfield(L, -2, "o");
  return dcm__packet_seal(L, DCM_OP_ACK, len);
}

const char *dcm__enc_shutdown(lua_State *L, int code, const char *reason,
                              size_t *len) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, reason);
  lua_setfield(L, -2, "reason");
  return dcm__packet_seal(L, DCM_OP_SHUTDOWN, len);
}
