/* json.c: see json.h. */
#include "json.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <math.h>
#include <string.h>

#define ENC_KEY "dcm.json.encode"
#define DEC_KEY "dcm.json.decode"
#define NULL_KEY "dcm.json.null"
/* cjson escapes control bytes, so this sentinel can be found after encoding. */
#define EMPTY_SENTINEL "\x01\x02[]"
#define EMPTY_ENCODED "\"\\u0001\\u0002[]\""

lua_State *dcm__json_new(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_requiref(L, "cjson", luaopen_cjson, 0);
  lua_getfield(L, -1, "encode");
  lua_setfield(L, LUA_REGISTRYINDEX, ENC_KEY);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, DEC_KEY);
  lua_getfield(L, -1, "null");
  lua_setfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  /* Bound nesting: packets are shallow, a deep one is an attack. */
  lua_getfield(L, -1, "decode_max_depth");
  lua_pushinteger(L, 32);
  lua_call(L, 1, 0);
  lua_getfield(L, -1, "encode_invalid_numbers");
  lua_pushboolean(L, 0);
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

const char *dcm__json_encode(lua_State *L, int idx, size_t *len) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, LUA_REGISTRYINDEX, ENC_KEY);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return NULL;
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  if (strstr(s, EMPTY_ENCODED) != NULL) {
    luaL_gsub(L, s, EMPTY_ENCODED, "[]");
    lua_remove(L, -2);
    s = lua_tolstring(L, -1, &n);
  }
  if (len) *len = n;
  return s;
}

void dcm__json_push_empty_array(lua_State *L) {
  lua_pushliteral(L, EMPTY_SENTINEL);
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
  if (lua_type(L, idx) == LUA_TSTRING) {
    /* the empty-array sentinel counts as [] */
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len == sizeof(EMPTY_SENTINEL) - 1 && memcmp(s, EMPTY_SENTINEL, len) == 0) {
      *n = 0;
      return 1;
    }
    return 0;
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
