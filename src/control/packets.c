/* packets.c: see packets.h. */
#include "packets.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define FAIL(code, ...) \
  do { snprintf(err, errlen, __VA_ARGS__); return (code); } while (0)

void dcm__ctl_packet_clear(dcm__ctl_packet_t *p) {
  if (p->token) {
    memset(p->token, 0, strlen(p->token));
    free(p->token);
  }
  free(p->shards);
  free(p->sessions);
  p->token = NULL;
  p->shards = NULL;
  p->sessions = NULL;
  p->nshards = p->nsessions = 0;
}

static int int_field(lua_State *L, int d, const char *key, long long lo, long long hi,
                     long long *out) {
  int ok = dcm__json_field(L, d, key) == LUA_TNUMBER && dcm__json_tointeger(L, -1, out) &&
           *out >= lo && *out <= hi;
  lua_pop(L, 1);
  return ok;
}

/* Copies an optional string field into out; 0 if present but not a string. */
static int str_field(lua_State *L, int d, const char *key, char *out, size_t n) {
  int t = dcm__json_field(L, d, key);
  if (t == LUA_TSTRING) snprintf(out, n, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  return t == LUA_TSTRING || t == LUA_TNIL;
}

int dcm__ctl_gateway_url_ok(const char *s, size_t n) {
  if (n > DCM_CTL_GATEWAY_URL_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return 1;
}

static int decode_initialise(lua_State *L, int d, dcm__ctl_packet_t *p, char *err,
                             size_t errlen) {
  long long v;
  size_t n;
  if (!int_field(L, d, "protocol", 0, 1000000, &v))
    FAIL(DCM_ERR_MALFORMED, "initialise: d.protocol must be an integer");
  p->protocol = (int)v;
  int t = dcm__json_field(L, d, "token");
  if (t != LUA_TSTRING && t != LUA_TNIL) FAIL(DCM_ERR_MALFORMED, "initialise: d.token must be a string");
  const char *tok = t == LUA_TSTRING ? lua_tolstring(L, -1, &n) : "";
  if (t == LUA_TNIL) n = 0;
  if (n > DCM_CTL_TOKEN_MAX || memchr(tok, '\0', n) != NULL)
    FAIL(DCM_ERR_MALFORMED, "initialise: d.token is not a usable token");
  p->token = malloc(n + 1);
  if (p->token == NULL) FAIL(DCM_ERR_MALFORMED, "out of memory");
  memcpy(p->token, tok, n + 1);
  lua_pop(L, 1);
  if (!int_field(L, d, "heartbeat_interval", 1, 86400000LL, &v))
    FAIL(DCM_ERR_MALFORMED, "initialise: d.heartbeat_interval must be a positive integer (ms)");
  p->heartbeat_ms = v;
  if (!int_field(L, d, "shard_count", 1, 1 << 20, &v))
    FAIL(DCM_ERR_MALFORMED, "initialise: d.shard_count must be an integer >= 1");
  p->shard_count = (int)v;
  p->max_concurrency = 1;
  t = dcm__json_field(L, d, "max_concurrency");
  lua_pop(L, 1);
  if (t != LUA_TNIL) {
    if (!int_field(L, d, "max_concurrency", 0, 1 << 20, &v))
      FAIL(DCM_ERR_MALFORMED, "initialise: d.max_concurrency must be an integer");
    p->max_concurrency = v > 0 ? (int)v : 1;
  }
  snprintf(p->gateway_url, sizeof p->gateway_url, "%s", DCM_CTL_DEFAULT_GATEWAY_URL);
  t = dcm__json_field(L, d, "gateway_url");
  if (t == LUA_TSTRING) {
    const char *url = lua_tolstring(L, -1, &n);
    if (!dcm__ctl_gateway_url_ok(url, n))
      FAIL(DCM_ERR_MALFORMED, "initialise: d.gateway_url must be at most %d bytes without "
           "control characters", DCM_CTL_GATEWAY_URL_MAX);
    if (n > 0) memcpy(p->gateway_url, url, n + 1);
  } else if (t != LUA_TNIL) {
    FAIL(DCM_ERR_MALFORMED, "initialise: d.gateway_url must be a string");
  }
  lua_pop(L, 1);
  return 0;
}

static int cmp_shard(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* A shard id as an object key: decimal, no sign, no leading zero. */
static int key_shard(const char *k, size_t n, int *shard) {
  long long v = 0;
  if (n == 0 || n > 10 || (n > 1 && k[0] == '0')) return 0;
  for (size_t i = 0; i < n; i++) {
    if (k[i] < '0' || k[i] > '9') return 0;
    v = v * 10 + (k[i] - '0');
  }
  if (v > 0x7fffffffLL) return 0;
  *shard = (int)v;
  return 1;
}

/*
 * connect.sessions, an extension: never invalidates the connect. Entries
 * that are not valid sessions, or name a shard outside d.shards, are
 * counted in nbad; so is everything when the field is not an object.
 * Keys are unique shards, so at most nshards entries are kept.
 */
static void decode_connect_sessions(lua_State *L, int d, dcm__ctl_packet_t *p) {
  size_t n = 0, klen, idlen, urllen;
  long long seq;
  int shard;
  int t = dcm__json_field(L, d, "sessions");
  int obj = lua_gettop(L);
  if (t == LUA_TNIL) goto out;
  if (t != LUA_TTABLE || !dcm__json_isobject(L, obj)) {
    p->nbad = 1;
    goto out;
  }
  lua_pushnil(L);
  while (lua_next(L, obj) != 0) n++, lua_pop(L, 1);
  size_t nsorted = p->nshards, cap = n < nsorted ? n : nsorted;
  int *sorted = malloc((nsorted ? nsorted : 1) * sizeof *sorted);
  p->sessions = malloc((cap ? cap : 1) * sizeof *p->sessions);
  if (sorted == NULL || p->sessions == NULL) {
    free(sorted);
    p->nbad = n;
    goto out;
  }
  memcpy(sorted, p->shards, nsorted * sizeof *sorted);
  qsort(sorted, nsorted, sizeof *sorted, cmp_shard);
  lua_pushnil(L);
  while (lua_next(L, obj) != 0) {
    int v = lua_gettop(L);
    const char *id = NULL, *url = NULL, *k = lua_type(L, v - 1) == LUA_TSTRING
                                                  ? lua_tolstring(L, v - 1, &klen) : NULL;
    int ok = k && key_shard(k, klen, &shard) &&
             bsearch(&shard, sorted, nsorted, sizeof *sorted, cmp_shard) != NULL &&
             dcm__json_isobject(L, v) &&
             (dcm__json_field(L, v, "seq"), dcm__json_tointeger(L, -1, &seq)) &&
             dcm__json_field(L, v, "session_id") == LUA_TSTRING &&
             (id = lua_tolstring(L, -1, &idlen)) != NULL &&
             dcm__json_field(L, v, "resume_url") == LUA_TSTRING &&
             (url = lua_tolstring(L, -1, &urllen)) != NULL &&
             dcm__session_valid(id, idlen, seq, url, urllen);
    if (ok && p->nsessions < cap) {
      dcm__session_t *s = &p->sessions[p->nsessions++];
      s->shard = shard;
      s->seq = seq;
      memcpy(s->session_id, id, idlen + 1);
      memcpy(s->resume_url, url, urllen + 1);
    } else {
      p->nbad++;
    }
    lua_settop(L, v - 1); /* the key stays for lua_next */
  }
  free(sorted);
out:
  lua_settop(L, obj - 1);
}

static int decode_connect(lua_State *L, int d, size_t max, dcm__ctl_packet_t *p, char *err,
                          size_t errlen) {
  size_t n;
  long long v;
  dcm__json_field(L, d, "shards");
  if (!dcm__json_isarray(L, -1, &n)) FAIL(DCM_ERR_MALFORMED, "connect: d.shards must be an array");
  if (n > max) FAIL(DCM_ERR_MALFORMED, "connect: d.shards has %zu entries, more than %zu", n, max);
  p->shards = malloc((n ? n : 1) * sizeof *p->shards);
  if (p->shards == NULL) FAIL(DCM_ERR_MALFORMED, "out of memory");
  p->nshards = n;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    if (!dcm__json_tointeger(L, -1, &v) || v < 0 || v > 0x7fffffff)
      FAIL(DCM_ERR_MALFORMED, "connect: d.shards[%zu] is not a shard id", i);
    p->shards[i] = (int)v;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  int t = dcm__json_field(L, d, "redundant");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN) FAIL(DCM_ERR_MALFORMED, "connect: d.redundant must be a boolean");
  p->redundant = lua_toboolean(L, -1);
  lua_pop(L, 1);
  decode_connect_sessions(L, d, p);
  return 0;
}

/* d.epoch of initialise, connect and grant: optional, an integer 0 to
 * DCM_CTL_EPOCH_MAX. */
static int decode_epoch(lua_State *L, int d, dcm__ctl_packet_t *p, char *err, size_t errlen) {
  int t = dcm__json_field(L, d, "epoch");
  lua_pop(L, 1);
  if (t == LUA_TNIL) return 0;
  if (!int_field(L, d, "epoch", 0, DCM_CTL_EPOCH_MAX, &p->epoch))
    FAIL(DCM_ERR_MALFORMED, "%s: d.epoch must be an integer from 0 to 2^53",
         dcm__op_name(p->op));
  p->has_epoch = 1;
  size_t n;
  if (dcm__json_field(L, d, "epoch_source") == LUA_TSTRING) { /* optional */
    const char *s = lua_tolstring(L, -1, &n);
    if (n == 0 || n >= sizeof p->epoch_source || strspn(s, "0123456789") != n) {
      lua_pop(L, 1);
      FAIL(DCM_ERR_MALFORMED, "%s: d.epoch_source must be 1-23 decimal digits",
           dcm__op_name(p->op));
    }
    memcpy(p->epoch_source, s, n + 1);
  }
  lua_pop(L, 1);
  return 0;
}

static int decode_d(lua_State *L, int d, size_t max, dcm__ctl_packet_t *p, char *err,
                    size_t errlen) {
  long long v;
  if ((p->op == DCM_OP_INITIALISE || p->op == DCM_OP_CONNECT || p->op == DCM_OP_GRANT) &&
      decode_epoch(L, d, p, err, errlen) != 0)
    return DCM_ERR_MALFORMED;
  switch (p->op) {
    case DCM_OP_INITIALISE:
      return decode_initialise(L, d, p, err, errlen);
    case DCM_OP_CONNECT:
      return decode_connect(L, d, max, p, err, errlen);
    case DCM_OP_ACK:
      if (!int_field(L, d, "o", 0, 255, &v)) FAIL(DCM_ERR_MALFORMED, "ack: d.o must be an opcode");
      p->ack_op = (int)v;
      return 0;
    case DCM_OP_GRANT:
      if (!int_field(L, d, "shard", 0, 0x7fffffffLL, &v))
        FAIL(DCM_ERR_MALFORMED, "grant: d.shard must be a shard id");
      p->shard = (int)v;
      return 0;
    case DCM_OP_ERROR:
    case DCM_OP_SHUTDOWN:
      /* Lenient: a stop or an error report must never be lost to a bad field. */
      if (int_field(L, d, "code", -0x80000000LL, 0x7fffffffLL, &v)) p->code = (int)v;
      if (p->op == DCM_OP_ERROR && int_field(L, d, "shard", 0, 0x7fffffffLL, &v))
        p->shard = (int)v;
      if (!str_field(L, d, p->op == DCM_OP_ERROR ? "message" : "reason", p->message,
                     sizeof p->message))
        p->message[0] = '\0';
      return 0;
    default: /* info request, command, and C->M opcodes the caller ignores */
      return 0;
  }
}

int dcm__ctl_decode(lua_State *L, const char *buf, size_t len, size_t max_shards,
                    dcm__ctl_packet_t *p, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  p->shard = -1;
  int top = lua_gettop(L);
  int r = dcm__packet_open(L, buf, len, &p->op, err, errlen);
  if (r == 0) r = decode_d(L, top + 1, max_shards, p, err, errlen);
  lua_settop(L, top);
  if (r != 0) dcm__ctl_packet_clear(p);
  return r;
}

const char *dcm__ctl_enc_info(lua_State *L, const char *id, int cores, double loadavg,
                              int standby, const int *shards, size_t n, int shard_count,
                              const char *version, size_t *len) {
  lua_createtable(L, 0, 9);
  lua_pushstring(L, id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, cores);
  lua_setfield(L, -2, "cores");
  lua_pushnumber(L, loadavg);
  lua_setfield(L, -2, "loadavg");
  lua_pushboolean(L, standby);
  lua_setfield(L, -2, "standby");
  dcm__json_push_int_array(L, shards, n);
  lua_setfield(L, -2, "shards");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "identify_queue");
  lua_pushboolean(L, 1); /* it confirms stops with `stopped` */
  lua_setfield(L, -2, "handoff");
  if (n > 0 && shard_count > 0) { /* the count its shards run with: no reshard */
    lua_pushinteger(L, shard_count);
    lua_setfield(L, -2, "shard_count");
  }
  if (version) {
    lua_pushstring(L, version);
    lua_setfield(L, -2, "version");
  }
  return dcm__packet_seal(L, DCM_OP_INFO, len);
}

static size_t digits(long long v) {
  size_t n = v < 0 ? 2 : 1;
  for (unsigned long long u = v < 0 ? -(unsigned long long)v : (unsigned long long)v; u >= 10;
       u /= 10)
    n++;
  return n;
}

/* Bytes of an entry's JSON without its shards, with room for every field
 * at its widest and the comma between entries. */
#define ENTRY_FIXED 160

size_t dcm__ctl_failed_fit(dcm__ctl_failed_t *f, size_t n) {
  size_t used = 2, k; /* the brackets */
  for (k = 0; k < n && k < DCM_CTL_FAILED_LIST_MAX; k++) {
    size_t need = ENTRY_FIXED, i;
    for (i = 0; i < f[k].nshards; i++) {
      size_t w = digits(f[k].shards[i]) + 1;
      if (used + need + w > DCM_CTL_FAILED_JSON_MAX) break;
      need += w;
    }
    if (i < f[k].nshards) {
      if (k > 0 || i == 0) break;
      f[k].shards_more += f[k].nshards - i; /* the first entry is cut */
      f[k].nshards = i;
    }
    used += need;
  }
  return k;
}

const char *dcm__ctl_enc_heartbeat(lua_State *L, double loadavg,
                                   const dcm__ctl_failed_t *failed, size_t nfailed,
                                   size_t more, int same, size_t *len) {
  char canonical[sizeof DCM_HEARTBEAT_HEAD + DCM_HEARTBEAT_NUM_MAX + sizeof DCM_HEARTBEAT_TAIL];
  int form = same ? DCM_HEARTBEAT_SAME : DCM_HEARTBEAT_EMPTY;
  size_t n = nfailed == 0 && more == 0
                 ? dcm__heartbeat_format(canonical, sizeof canonical, loadavg, form) : 0;
  if (n > 0) {
    lua_pushlstring(L, canonical, n);
    return lua_tolstring(L, -1, len);
  }
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, loadavg);
  lua_setfield(L, -2, "loadavg");
  if (nfailed == 0) {
    dcm__json_push_empty_array(L);
  } else {
    lua_createtable(L, (int)nfailed, 0);
    for (size_t i = 0; i < nfailed; i++) {
      lua_createtable(L, 0, 6);
      lua_pushinteger(L, failed[i].cluster);
      lua_setfield(L, -2, "cluster");
      dcm__json_push_int_array(L, failed[i].shards, failed[i].nshards);
      lua_setfield(L, -2, "shards");
      lua_pushinteger(L, failed[i].exit_status);
      lua_setfield(L, -2, "exit");
      lua_pushinteger(L, failed[i].term_signal);
      lua_setfield(L, -2, "signal");
      if (failed[i].over_cap) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "over_cap");
      }
      if (failed[i].shards_more) {
        lua_pushinteger(L, (lua_Integer)failed[i].shards_more);
        lua_setfield(L, -2, "shards_more");
      }
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  }
  lua_setfield(L, -2, "failed_clusters");
  lua_pushinteger(L, (lua_Integer)more);
  lua_setfield(L, -2, "failed_clusters_more");
  return dcm__packet_seal(L, DCM_OP_HEARTBEAT, len);
}

static const char *enc_shards(lua_State *L, int op, const int *shards, size_t n,
                              size_t *len) {
  lua_createtable(L, 0, 1);
  dcm__json_push_int_array(L, shards, n);
  lua_setfield(L, -2, "shards");
  return dcm__packet_seal(L, op, len);
}

const char *dcm__ctl_enc_ready(lua_State *L, const int *shards, size_t n, size_t *len) {
  return enc_shards(L, DCM_OP_READY, shards, n, len);
}

const char *dcm__ctl_enc_stopped(lua_State *L, const int *shards, size_t n, size_t *len) {
  return enc_shards(L, DCM_OP_STOPPED, shards, n, len);
}

/* An entry's JSON at its widest: the keys, punctuation and numbers (76
 * bytes in `sessions`, fewer in SHARD_SESSIONS), and cjson's "\/" for
 * every byte of the url. */
#define SESSION_FIXED 96

size_t dcm__ctl_sessions_fit(const dcm__session_t *const *s, size_t n, size_t max_entries,
                             size_t max_bytes) {
  size_t used = 32, k; /* the envelope */
  for (k = 0; k < n && k < max_entries; k++) {
    size_t w = SESSION_FIXED + strlen(s[k]->session_id) + 2 * strlen(s[k]->resume_url);
    if (used + w > max_bytes) break;
    used += w;
  }
  return k;
}

/* Pushes {"session_id", "seq", "resume_url"} and, with shard set, "shard". */
static void push_session(lua_State *L, const dcm__session_t *s, int shard) {
  lua_createtable(L, 0, 4);
  if (shard) {
    lua_pushinteger(L, s->shard);
    lua_setfield(L, -2, "shard");
  }
  lua_pushstring(L, s->session_id);
  lua_setfield(L, -2, "session_id");
  lua_pushinteger(L, (lua_Integer)s->seq);
  lua_setfield(L, -2, "seq");
  lua_pushstring(L, s->resume_url);
  lua_setfield(L, -2, "resume_url");
}

const char *dcm__ctl_enc_sessions(lua_State *L, const dcm__session_t *const *s, size_t n,
                                  size_t *len) {
  lua_createtable(L, 0, 1);
  if (n == 0) {
    dcm__json_push_empty_array(L);
  } else {
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
      push_session(L, s[i], 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  }
  lua_setfield(L, -2, "sessions");
  return dcm__packet_seal(L, DCM_OP_SESSIONS, len);
}

const char *dcm__ctl_enc_shard_sessions(lua_State *L, const dcm__session_t *const *s, size_t n,
                                        size_t *len) {
  char key[16];
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    push_session(L, s[i], 0);
    snprintf(key, sizeof key, "%d", s[i]->shard);
    lua_setfield(L, -2, key);
  }
  const char *text = dcm__json_encode(L, -1, len);
  if (text == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_remove(L, -2);
  return text;
}

const char *dcm__ctl_enc_fatal(lua_State *L, int code, const char *message, int shard,
                               size_t *len) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  if (shard >= 0) {
    lua_pushinteger(L, shard);
    lua_setfield(L, -2, "shard");
  }
  return dcm__packet_seal(L, DCM_OP_FATAL, len);
}

const char *dcm__ctl_enc_offload(lua_State *L, size_t *len) {
  lua_createtable(L, 0, 0);
  return dcm__packet_seal(L, DCM_OP_OFFLOAD, len);
}
