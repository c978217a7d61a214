/* json.c: see json.h. */
#include "json.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC_KEY "dcm.json.decode"
#define NULL_KEY "dcm.json.null"
#define ENCODE_DEPTH 64            /* nesting the encoder follows */
#define ENCODE_MAX (256u << 20)    /* bytes of text it writes, at most */

/* Its address is the empty-array value: no peer can make a light userdata. */
static const char empty_array = 0;

lua_State *dcm__json_new(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_requiref(L, "cjson", luaopen_cjson, 0);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, DEC_KEY);
  lua_getfield(L, -1, "null");
  lua_setfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  /* Bound nesting: packets are shallow, a deep one is an attack. */
  lua_getfield(L, -1, "decode_max_depth");
  lua_pushinteger(L, 32);
  lua_call(L, 1, 0);
  lua_getfield(L, -1, "decode_invalid_numbers");
  lua_pushboolean(L, 0);
  lua_call(L, 1, 0);
  lua_settop(L, 0);
  return L;
}

int dcm__json_decode(lua_State *L, const char *s, size_t n) {
  lua_getfield(L, LUA_REGISTRYINDEX, DEC_KEY);
  lua_pushlstring(L, s, n);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

/* ---- the encoder ---- */

typedef struct {
  char *buf;
  size_t len, cap;
  int failed;
} enc_t;

static void put(enc_t *e, const char *s, size_t n) {
  if (e->failed) return;
  if (n > ENCODE_MAX - e->len) {
    e->failed = 1;
    return;
  }
  if (e->len + n > e->cap) {
    size_t cap = e->cap ? e->cap : 256;
    while (cap < e->len + n) cap *= 2;
    char *nb = realloc(e->buf, cap);
    if (nb == NULL) {
      e->failed = 1;
      return;
    }
    e->buf = nb;
    e->cap = cap;
  }
  memcpy(e->buf + e->len, s, n);
  e->len += n;
}

#define PUT(e, lit) put((e), lit, sizeof(lit) - 1)

/* Bytes of the well-formed UTF-8 sequence at s (n left), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  size_t k;
  if (s[0] < 0x80) return 1;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) k = 2;
  else if (s[0] >= 0xE0 && s[0] <= 0xEF) k = 3;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) k = 4;
  else return 0;
  if (n < k) return 0;
  for (size_t i = 1; i < k; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  /* overlong forms, UTF-16 surrogates, past U+10FFFF */
  if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0) ||
      (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))
    return 0;
  return k;
}

static void put_string(enc_t *e, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  PUT(e, "\"");
  size_t run = 0; /* bytes copied as they are, pending */
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t k = c >= 0x20 && c != '"' && c != '\\' && c != '/' && c != 0x7f
                   ? utf8_seq(s + i, n - i)
                   : 0;
    if (k > 0) {
      i += k;
      run += k;
      continue;
    }
    put(e, str + i - run, run);
    run = 0;
    char esc[8];
    switch (c) {
      case '"': PUT(e, "\\\""); break;
      case '\\': PUT(e, "\\\\"); break;
      case '/': PUT(e, "\\/"); break; /* as lua-cjson wrote it */
      case '\n': PUT(e, "\\n"); break;
      case '\r': PUT(e, "\\r"); break;
      case '\t': PUT(e, "\\t"); break;
      case '\b': PUT(e, "\\b"); break;
      case '\f': PUT(e, "\\f"); break;
      default:
        if (c < 0x20 || c == 0x7f) {
          snprintf(esc, sizeof esc, "\\u%04x", c);
          put(e, esc, 6);
        } else {
          PUT(e, "\\ufffd"); /* not UTF-8 */
        }
    }
    i++;
  }
  put(e, str + n - run, run);
  PUT(e, "\"");
}

static void put_number(enc_t *e, lua_State *L, int idx) {
  char num[64];
  int k;
  if (lua_isinteger(L, idx)) {
    k = snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
  } else {
    double d = lua_tonumber(L, idx);
    if (!isfinite(d)) {
      e->failed = 1;
      return;
    }
    k = snprintf(num, sizeof num, "%.14g", d); /* cjson's precision */
  }
  put(e, num, (size_t)k);
}

static void put_value(enc_t *e, lua_State *L, int idx, int depth);

/* An array when the keys are exactly 1..n (n > 0), else an object. */
static void put_table(enc_t *e, lua_State *L, int idx, int depth) {
  if (depth > ENCODE_DEPTH || !lua_checkstack(L, 3)) {
    e->failed = 1;
    return;
  }
  lua_Unsigned count = 0, max = 0;
  int array = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
    if (array && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
      if ((lua_Unsigned)lua_tointeger(L, -1) > max) max = (lua_Unsigned)lua_tointeger(L, -1);
    } else {
      array = 0;
    }
  }
  if (array && count > 0 && max == count) {
    PUT(e, "[");
    for (lua_Unsigned i = 1; i <= count && !e->failed; i++) {
      if (i > 1) PUT(e, ",");
      lua_rawgeti(L, idx, (lua_Integer)i);
      put_value(e, L, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
    }
    PUT(e, "]");
    return;
  }
  PUT(e, "{");
  int first = 1;
  lua_pushnil(L);
  while (!e->failed && lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      e->failed = 1;
      lua_pop(L, 2);
      return;
    }
    size_t kl;
    const char *k = lua_tolstring(L, -2, &kl); /* a string: not converted */
    if (!first) PUT(e, ",");
    first = 0;
    put_string(e, k, kl);
    PUT(e, ":");
    put_value(e, L, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  if (e->failed) {
    lua_pop(L, 1); /* the key lua_next left */
    return;
  }
  PUT(e, "}");
}

static void put_value(enc_t *e, lua_State *L, int idx, int depth) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      PUT(e, "null");
      break;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) PUT(e, "true");
      else PUT(e, "false");
      break;
    case LUA_TNUMBER:
      put_number(e, L, idx);
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      put_string(e, s, n);
      break;
    }
    case LUA_TTABLE:
      put_table(e, L, idx, depth);
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == &empty_array) {
        PUT(e, "[]");
        break;
      }
      if (lua_touserdata(L, idx) == NULL) { /* cjson.null */
        PUT(e, "null");
        break;
      }
      e->failed = 1;
      break;
    default:
      e->failed = 1;
  }
}

/* Protected (pushing the text may run out of memory): enc_t, value. */
static int encode(lua_State *L) {
  enc_t *e = lua_touserdata(L, 1);
  put_value(e, L, 2, 1);
  if (e->failed) return 0;
  lua_pushlstring(L, e->buf, e->len);
  return 1;
}

const char *dcm__json_encode(lua_State *L, int idx, size_t *len) {
  enc_t e = {NULL, 0, 0, 0};
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 3)) return NULL;
  lua_pushcfunction(L, encode);
  lua_pushlightuserdata(L, &e);
  lua_pushvalue(L, idx);
  int st = lua_pcall(L, 2, 1, 0);
  free(e.buf);
  if (st != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    return NULL;
  }
  return lua_tolstring(L, -1, len);
}

void dcm__json_push_empty_array(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&empty_array);
}

void dcm__json_push_int_array(lua_State *L, const int *v, size_t n) {
  if (n == 0) {
    dcm__json_push_empty_array(L);
    return;
  }
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushinteger(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

int dcm__json_field(lua_State *L, int idx, const char *key) {
  if (!lua_istable(L, idx)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  int t = lua_getfield(L, idx, key);
  if (t == LUA_TLIGHTUSERDATA) {
    lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
    int isnull = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (isnull) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return LUA_TNIL;
    }
  }
  return t;
}

int dcm__json_tointeger(lua_State *L, int idx, long long *out) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  if (!ok) return 0;
  *out = (long long)v;
  return 1;
}

int dcm__json_isarray(lua_State *L, int idx, size_t *n) {
  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &empty_array) {
    *n = 0;
    return 1;
  }
  if (!lua_istable(L, idx)) return 0;
  idx = lua_absindex(L, idx);
  size_t len = (size_t)lua_rawlen(L, idx);
  size_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    count++;
    lua_pop(L, 1);
  }
  if (count != len) return 0;
  *n = len;
  return 1;
}

int dcm__json_isobject(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return 0;
  return lua_rawlen(L, idx) == 0;
}

int dcm__json_plain_text(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return 1;
}
