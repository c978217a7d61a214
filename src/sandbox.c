/* sandbox.c: see sandbox.h. */
#include "sandbox.h"

#include <lauxlib.h>

/* string.rep(s, n [, sep]) whose result is at most DCM_SANDBOX_REP_MAX. */
static int bounded_rep(lua_State *L) {
  size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  /* (l + lsep) * n, checked without overflow; empty parts still cost n steps */
  if ((lua_Unsigned)n > DCM_SANDBOX_REP_MAX ||
      (l + lsep) > DCM_SANDBOX_REP_MAX / (size_t)n)
    return luaL_error(L, "string.rep: result longer than %d bytes", (int)DCM_SANDBOX_REP_MAX);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* string.find(s, text [, init]): plain search only, no patterns. */
static int plain_find(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  lua_Integer init = luaL_optinteger(L, 3, 1);
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_pushinteger(L, init);
  lua_pushboolean(L, 1);
  lua_call(L, 4, LUA_MULTRET);
  return lua_gettop(L);
}

void dcm__sandbox_harden(lua_State *L, int base_idx, int string_idx) {
  static const char *const patterns[] = {"match", "gmatch", "gsub", NULL};
  base_idx = lua_absindex(L, base_idx);
  string_idx = lua_absindex(L, string_idx);
  lua_pushnil(L);
  lua_setfield(L, base_idx, "xpcall");
  for (int i = 0; patterns[i]; i++) {
    lua_pushnil(L);
    lua_setfield(L, string_idx, patterns[i]);
  }
  lua_getfield(L, string_idx, "rep");
  lua_pushcclosure(L, bounded_rep, 1);
  lua_setfield(L, string_idx, "rep");
  lua_getfield(L, string_idx, "find");
  lua_pushcclosure(L, plain_find, 1);
  lua_setfield(L, string_idx, "find");
}
