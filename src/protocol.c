/* protocol.c: see protocol.h. */
#include "protocol.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char *const op_names[] = {
    "info", "fatal", "command", "offload", "shutdown", "initialise",
    "connect", "error", "ack", "heartbeat", "ready", "identify", "grant",
    "release", "sessions", "stopped"};

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

#define FAIL(code, ...) \
  do { snprintf(err, errlen, __VA_ARGS__); return (code); } while (0)

void dcm__packet_clear(dcm__packet_t *p) {
  if (p->shards || p->failed_json || p->sessions) { /* most packets hold nothing */
    free(p->shards);
    free(p->failed_json);
    free(p->sessions);
    p->shards = NULL;
    p->failed_json = NULL;
    p->sessions = NULL;
  }
  p->nshards = p->nsessions = 0;
}

int dcm__session_valid(const char *id, size_t idlen, long long seq, const char *url,
                       size_t urllen) {
  if (idlen < 1 || idlen > DCM_SESSION_ID_MAX || seq < 0 || seq > (1LL << 53) ||
      urllen > DCM_RESUME_URL_MAX ||
      (strncmp(url, "ws://", 5) != 0 && strncmp(url, "wss://", 6) != 0))
    return 0;
  for (size_t i = 0; i < idlen; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-'))
      return 0;
  }
  for (size_t i = 0; i < urllen; i++)
    if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f || url[i] == '"' || url[i] == '\\')
      return 0;
  return 1;
}

/* sessions.sessions: valid entries kept, the rest counted in nbad. */
static int decode_sessions(lua_State *L, int d, dcm__packet_t *p, char *err, size_t errlen) {
  size_t n, idlen, urllen;
  long long shard, seq;
  dcm__json_field(L, d, "sessions");
  int arr = lua_gettop(L);
  if (!dcm__json_isarray(L, arr, &n)) FAIL(DCM_ERR_MALFORMED, "sessions: d.sessions must be an array");
  if (n > DCM_SESSIONS_MAX)
    FAIL(DCM_ERR_MALFORMED, "sessions: %zu entries, more than %d", n, DCM_SESSIONS_MAX);
  if (n && (p->sessions = malloc(n * sizeof *p->sessions)) == NULL)
    FAIL(DCM_ERR_MALFORMED, "out of memory");
  for (size_t i = 1; i <= n; i++) {
    lua_settop(L, arr);
    lua_rawgeti(L, arr, (lua_Integer)i);
    int e = lua_gettop(L);
    const char *id = NULL, *url = NULL;
    int ok = dcm__json_isobject(L, e) &&
             (dcm__json_field(L, e, "shard"), dcm__json_tointeger(L, -1, &shard)) &&
             shard >= 0 && shard <= INT32_MAX &&
             (dcm__json_field(L, e, "seq"), dcm__json_tointeger(L, -1, &seq)) &&
             dcm__json_field(L, e, "session_id") == LUA_TSTRING &&
             (id = lua_tolstring(L, -1, &idlen)) != NULL &&
             dcm__json_field(L, e, "resume_url") == LUA_TSTRING &&
             (url = lua_tolstring(L, -1, &urllen)) != NULL &&
             dcm__session_valid(id, idlen, seq, url, urllen);
    if (!ok) {
      p->nbad++;
      continue;
    }
    dcm__session_t *s = &p->sessions[p->nsessions++];
    s->shard = (int)shard;
    s->seq = seq;
    memcpy(s->session_id, id, idlen + 1);
    memcpy(s->resume_url, url, urllen + 1);
  }
  lua_settop(L, arr - 1);
  return 0;
}


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
  t = dcm__json_field(L, d, "shard_count");
  if (t != LUA_TNIL && (!dcm__json_tointeger(L, -1, &v) || v < 1 || v > 1000000))
    FAIL(DCM_ERR_MALFORMED, "info: d.shard_count must be an integer 1-1000000");
  p->shard_count = t == LUA_TNIL ? 0 : (int)v;
  t = dcm__json_field(L, d, "handoff");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    FAIL(DCM_ERR_MALFORMED, "info: d.handoff must be a boolean");
  p->handoff = lua_toboolean(L, -1);
  int r = read_shards(L, d, "shards", max, p, err, errlen);
  if (r < 0) return DCM_ERR_MALFORMED;
  p->has_shards = r == 0;
  return 0;
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/*
 * heartbeat.failed_clusters: [{"cluster": int, "shards": [int], ...}], an
 * extension: it never invalidates the heartbeat. A bad one is ignored with
 * its reason in p->message; a valid one sets has_failed, its shards (sorted,
 * unique, at most max) go into p->shards and, when the JSON is at most
 * DCM_FAILED_JSON_MAX bytes, its text into p->failed_json for /status.
 */
static void decode_failed(lua_State *L, int d, size_t max, dcm__packet_t *p) {
  size_t n, k, len, total = 0;
  long long v;
  if (dcm__json_field(L, d, "failed_clusters") == LUA_TNIL) return;
  int arr = lua_gettop(L);
  if (!dcm__json_isarray(L, arr, &n)) {
    snprintf(p->message, sizeof p->message, "failed_clusters must be an array");
    return;
  }
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, arr, (lua_Integer)i);
    int item = lua_gettop(L);
    if (!dcm__json_isobject(L, item) || (dcm__json_field(L, item, "cluster"),
                                         !dcm__json_tointeger(L, -1, &v)) ||
        (dcm__json_field(L, item, "shards"), !dcm__json_isarray(L, -1, &k))) {
      snprintf(p->message, sizeof p->message, "failed_clusters[%zu] needs cluster and shards",
               i - 1);
      return;
    }
    total += k;
    lua_settop(L, arr);
  }
  if (total > max) {
    snprintf(p->message, sizeof p->message, "failed_clusters names %zu shards, more than %zu",
             total, max);
    return;
  }
  if (total > 0 && (p->shards = malloc(total * sizeof(int))) == NULL) return;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, arr, (lua_Integer)i);
    dcm__json_field(L, lua_gettop(L), "shards");
    dcm__json_isarray(L, -1, &k);
    for (size_t j = 1; j <= k; j++) {
      lua_rawgeti(L, -1, (lua_Integer)j);
      if (dcm__json_tointeger(L, -1, &v) && v >= 0 && v <= INT32_MAX)
        p->shards[p->nshards++] = (int)v;
      lua_pop(L, 1);
    }
    lua_settop(L, arr);
  }
  if (p->nshards) qsort(p->shards, p->nshards, sizeof(int), cmp_int);
  size_t u = 0;
  for (size_t i = 0; i < p->nshards; i++)
    if (u == 0 || p->shards[u - 1] != p->shards[i]) p->shards[u++] = p->shards[i];
  p->nshards = u;
  p->has_failed = 1;
  const char *s = n ? dcm__json_encode(L, arr, &len) : NULL;
  if (s && len <= DCM_FAILED_JSON_MAX && (p->failed_json = malloc(len + 1)) != NULL)
    memcpy(p->failed_json, s, len + 1);
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
      decode_failed(L, d, max, p);
      return 0;
    case DCM_OP_IDENTIFY:
    case DCM_OP_RELEASE:
      dcm__json_field(L, d, "shard");
      if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > INT32_MAX)
        FAIL(DCM_ERR_MALFORMED, "%s: d.shard must be a shard id", dcm__op_name(p->op));
      p->shard = (int)v;
      return 0;
    case DCM_OP_SESSIONS:
      return decode_sessions(L, d, p, err, errlen);
    case DCM_OP_STOPPED:
      t = read_shards(L, d, "shards", max, p, err, errlen);
      if (t == 1) FAIL(DCM_ERR_MALFORMED, "stopped: d.shards must be an array of shard ids");
      return t < 0 ? DCM_ERR_MALFORMED : 0;
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

/* ---- the canonical heartbeat ------------------------------------------- */

/* Powers of ten a double holds exactly. */
static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* (0|[1-9][0-9]*)(.[0-9]+)?, all n bytes, n <= DCM_HEARTBEAT_NUM_MAX.
   With m the integer of its digits (at most 2^53, checked digit by digit)
   and d decimals (at most 22), m and 10^d are exact doubles and IEEE
   division rounds once, so m / 10^d is the correctly rounded value strtod
   returns. Anything else: 0. */
static int exact_number(const char *s, size_t n, double *out) {
  uint64_t m = 0;
  size_t i = 0, point = 0, digits = 0;
  if (n == 0 || n > DCM_HEARTBEAT_NUM_MAX) return 0;
  if (s[0] == '0' && n > 1 && s[1] != '.') return 0; /* a leading zero */
  for (; i < n; i++) {
    if (s[i] == '.') {
      if (point || digits == 0) return 0;
      point = i + 1;
      continue;
    }
    if (s[i] < '0' || s[i] > '9') return 0;
    m = m * 10 + (uint64_t)(s[i] - '0');
    if (m > (1ull << 53)) return 0;
    digits++;
  }
  if (point == n) return 0; /* "1." */
  size_t decimals = point ? n - point : 0;
  if (decimals >= sizeof pow10_exact / sizeof pow10_exact[0]) return 0;
  *out = (double)m / pow10_exact[decimals];
  return 1;
}

/* 1 if buf ends with tail and the bytes between head and it are a number
   exact_number reads. */
static int ends_with(const char *buf, size_t len, const char *tail, size_t t, double *v) {
  const size_t h = sizeof DCM_HEARTBEAT_HEAD - 1;
  return len > h + t && len <= h + t + DCM_HEARTBEAT_NUM_MAX &&
         memcmp(buf + len - t, tail, t) == 0 && exact_number(buf + h, len - h - t, v);
}

int dcm__heartbeat_canonical(const char *buf, size_t len, double *loadavg) {
  static const char head[] = DCM_HEARTBEAT_HEAD, tail[] = DCM_HEARTBEAT_TAIL,
                    same[] = DCM_HEARTBEAT_TAIL_SAME;
  if (len < sizeof head - 1 || memcmp(buf, head, sizeof head - 1) != 0) return 0;
  /* the long tail first: its start would not read as a number anyway */
  if (ends_with(buf, len, tail, sizeof tail - 1, loadavg)) return DCM_HEARTBEAT_EMPTY;
  if (ends_with(buf, len, same, sizeof same - 1, loadavg)) return DCM_HEARTBEAT_SAME;
  return 0;
}

size_t dcm__heartbeat_format(char *buf, size_t cap, double loadavg, int form) {
  if (!isfinite(loadavg)) return 0;
  int n = snprintf(buf, cap, DCM_HEARTBEAT_HEAD "%.14g%s", loadavg,
                   form == DCM_HEARTBEAT_SAME ? DCM_HEARTBEAT_TAIL_SAME : DCM_HEARTBEAT_TAIL);
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* ---- decoding ---------------------------------------------------------- */

int dcm__packet_decode(lua_State *L, const char *buf, size_t len,
                       size_t max_shards, dcm__packet_t *p, char *err,
                       size_t errlen) {
  double loadavg;
  int form = dcm__heartbeat_canonical(buf, len, &loadavg);
  if (!form) return dcm__packet_decode_json(L, buf, len, max_shards, p, err, errlen);
  memset(p, 0, sizeof(*p));
  /* what cjson's path makes of it: failed_clusters [] is a valid empty list */
  p->op = DCM_OP_HEARTBEAT;
  p->shard = -1;
  p->loadavg = loadavg;
  p->has_loadavg = 1;
  p->has_failed = form == DCM_HEARTBEAT_EMPTY;
  if (errlen) err[0] = '\0';
  return 0;
}

int dcm__packet_decode_json(lua_State *L, const char *buf, size_t len,
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

/* The leader's term (HA); NULL = a master running alone: no field. */
static void push_epoch(lua_State *L, const dcm__epoch_t *epoch) {
  if (epoch == NULL || epoch->n == 0) return;
  lua_pushinteger(L, (lua_Integer)epoch->n);
  lua_setfield(L, -2, "epoch");
  if (epoch->source[0] == '\0') return;
  lua_pushstring(L, epoch->source);
  lua_setfield(L, -2, "epoch_source");
}

const char *dcm__enc_initialise(lua_State *L, const char *token,
                                long long heartbeat_ms, int shard_count,
                                int max_concurrency, const char *gateway_url,
                                const dcm__epoch_t *epoch, size_t *len) {
  lua_createtable(L, 0, 8);
  push_epoch(L, epoch);
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
                             int redundant, const dcm__session_t *const *sess,
                             const dcm__epoch_t *epoch, size_t *len) {
  lua_createtable(L, 0, 5);
  push_epoch(L, epoch);
  dcm__json_push_int_array(L, shards, n);
  lua_setfield(L, -2, "shards");
  lua_pushboolean(L, redundant);
  lua_setfield(L, -2, "redundant");
  int any = 0;
  for (size_t i = 0; sess && i < n; i++) {
    if (sess[i] == NULL) continue;
    if (!any) lua_createtable(L, 0, 0);
    any = 1;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, sess[i]->session_id);
    lua_setfield(L, -2, "session_id");
    lua_pushinteger(L, (lua_Integer)sess[i]->seq);
    lua_setfield(L, -2, "seq");
    lua_pushstring(L, sess[i]->resume_url);
    lua_setfield(L, -2, "resume_url");
    char key[16];
    snprintf(key, sizeof key, "%d", shards[i]);
    lua_setfield(L, -2, key);
  }
  if (any) lua_setfield(L, -2, "sessions");
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

const char *dcm__enc_grant(lua_State *L, int shard, const dcm__epoch_t *epoch, size_t *len) {
  lua_createtable(L, 0, 3);
  push_epoch(L, epoch);
  lua_pushinteger(L, shard);
  lua_setfield(L, -2, "shard");
  return dcm__packet_seal(L, DCM_OP_GRANT, len);
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
