/*
 * json.h: lua-cjson, the project's one JSON codec, behind a small C API.
 * A decoded document lives on a Lua stack; C reads it with the field helpers
 * below. Each owner keeps its own state (no globals). Depends on Lua 5.4.
 */
#ifndef DCM_JSON_H
#define DCM_JSON_H

#include <lua.h>
#include <stddef.h>

/* A fresh state with cjson loaded (no other libraries). NULL on OOM. */
lua_State *dcm__json_new(void);

/* Pushes the decoded value; on error pushes nothing and returns -1. */
int dcm__json_decode(lua_State *L, const char *s, size_t n);

/*
 * Encodes the value at idx. Returns a pointer to the text, which stays valid
 * while the string pushed on the stack stays; NULL on error (nothing pushed).
 */
const char *dcm__json_encode(lua_State *L, int idx, size_t *len);

/* cjson encodes {} for an empty table; this value encodes as []. */
void dcm__json_push_empty_array(lua_State *L);

/* Pushes an array of integers, [] when n == 0. */
void dcm__json_push_int_array(lua_State *L, const int *v, size_t n);

/* Pushes t[key], with JSON null turned into nil; returns the Lua type. */
int dcm__json_field(lua_State *L, int idx, const char *key);

/* 1 if the value at idx is a number holding an exact integer. */
int dcm__json_tointeger(lua_State *L, int idx, long long *out);

/* 1 if the value at idx is a table whose keys are exactly 1..n. */
int dcm__json_isarray(lua_State *L, int idx, size_t *n);

/* 1 if the value at idx is a table with no integer keys (a JSON object). */
int dcm__json_isobject(lua_State *L, int idx);

#endif
